"""The import graph of framepack/, api/, scripts/ and the two scripts, read statically from every import statement
(function-level and TYPE_CHECKING imports included): no cycles, and the layers below.

Layers, from the bottom:

- the engine: every framepack module not named below (request, plan, models, sampling, generate, video, runner,
  record, ...). It imports no job, host, face or composition module, and no web, UI or SD.Next framework.
- the jobs: `framepack.jobs.*`, the job service. Engine only; no host, face or composition module, no framework.
- the host adapter: `framepack.host` (the only framepack module that touches SD.Next's `modules`) and
  `framepack.degraded` (the extension's degraded mode). Engine and jobs; no face, no composition module.
- the composition roots: `framepack.compose` (builds the job service over a host), `framepack.serve` (the
  standalone server). They may import everything.
- the command-line tools: `framepack.cli`, `framepack.__main__`, `encode-video.py`. They run the engine
  directly; the CLI reaches the server only through `framepack.serve`; none imports api/ or the tab.
- the faces, which talk to jobs only through the `JobService` protocol:
  - api/: of framepack only the request and plan models, the errors, `framepack.jobs.{service, events,
    models, errors}` and the store of its uploads, `framepack.uploads`;
  - framepack.ui: the same, plus the engine's pure helpers it renders with (images, defaults, the output file
    suffixes of `framepack.outputs`); never api/;
  - scripts/ (SD.Next's entry): the composition root, the host adapter, the tab and the defaults;
  - create-video.py (a REST client): the CLI's request flags, the request and error models, the job and event
    models, and the frame file names of `framepack.video.frames`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

SCRIPTS = {"create-video.py": "create_video", "encode-video.py": "encode_video"}
FRAMEWORKS = ("gradio", "fastapi", "starlette", "uvicorn", "modules")

JOBS = ("framepack.jobs",)
HOST = ("framepack.host", "framepack.degraded")
ROOTS = ("framepack.compose", "framepack.serve")
TOOLS = ("framepack.cli", "framepack.__main__", "encode_video")
UI = ("framepack.ui",)
API = ("api",)
FACES = (*API, *UI, "scripts", "create_video")
NOT_ENGINE = (*JOBS, *HOST, *ROOTS, *TOOLS, *FACES)
SERVICE_SIDE = ("framepack.jobs.service", "framepack.jobs.events", "framepack.jobs.models", "framepack.jobs.errors")
DATA_MODELS = ("framepack.request", "framepack.plan", "framepack.errors")

# For each face: the framepack modules it may import (prefixes), everything else of framepack being refused.
FACE_ALLOWED = {
    "api": (*DATA_MODELS, *SERVICE_SIDE, "framepack.uploads"),
    "framepack.ui": ("framepack.ui", *DATA_MODELS, *SERVICE_SIDE, "framepack.images", "framepack.defaults",
                     "framepack.outputs"),
    "scripts": ("framepack.compose", "framepack.host", "framepack.ui", "framepack.defaults", *SERVICE_SIDE),
    "create_video": ("framepack.cli", *DATA_MODELS, "framepack.jobs.models", "framepack.jobs.events",
                     "framepack.video.frames"),
}  # fmt: skip


def module_files() -> dict[str, Path]:
    """Module name -> file, for every module of framepack/, api/, scripts/ and the two scripts."""
    modules = {}
    for folder in ("framepack", "api", "scripts"):
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    for script, name in SCRIPTS.items():
        modules[name] = REPO / script
    return modules


def imported_names(name: str, path: Path) -> set[str]:
    """Every module an import statement anywhere in the file names (for `from a import b`: a.b when that is a
    module of ours, else a), relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def is_in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """Module -> the modules of ours its import statements name, and the third-party top-level packages as
    'ext:<name>'."""
    modules = module_files()
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = set()
        for imported in imported_names(name, path):
            if imported in modules:
                edges[name].add(imported)
            elif imported and imported.split(".")[0] not in ("framepack", "api", "scripts"):
                edges[name].add("ext:" + imported.split(".")[0])
        edges[name] -= {name, *_parents(name)}  # a package's own __init__ runs before its modules anyway
    return edges


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def with_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph with an edge to each package above an imported module (its __init__ runs on that import)."""
    return {
        name: {above for imported in imports for above in (*_parents(imported), imported)} - {name, *_parents(name)}
        for name, imports in graph.items()
    }


def test_the_walk_sees_lazy_and_relative_imports(graph):
    assert len(graph) > 70
    assert "framepack.serve" in graph["framepack.cli"]  # inside command_serve
    assert "api.errors" in graph["api.routes"]  # `from .errors import ...`
    assert "framepack.video.frames" in graph["create_video"]  # inside output_files
    assert "ext:gradio" in graph["framepack.host"]  # inside register_settings


def test_there_is_no_import_cycle(graph):
    cycles = strongly_connected(with_packages(graph))
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(sorted(cycle)) for cycle in cycles)


def test_the_layers(graph):
    wrong = []
    for module, imports in sorted(graph.items()):
        ours = {name for name in imports if not name.startswith("ext:")}
        frameworks = {name[4:] for name in imports if name.startswith("ext:") and name[4:] in FRAMEWORKS}
        if not is_in(module, NOT_ENGINE):  # the engine
            wrong += [(module, name) for name in ours if is_in(name, NOT_ENGINE)]
            wrong += [(module, name) for name in frameworks]
        elif is_in(module, JOBS):
            wrong += [(module, name) for name in ours if is_in(name, (*HOST, *ROOTS, *TOOLS, *FACES))]
            wrong += [(module, name) for name in frameworks]
        elif is_in(module, HOST):
            wrong += [(module, name) for name in ours if is_in(name, (*ROOTS, *TOOLS, *FACES))]
        elif is_in(module, TOOLS):
            wrong += [(module, name) for name in ours if is_in(name, (*API, *UI, "scripts", "create_video"))]
        for face, allowed in FACE_ALLOWED.items():
            if is_in(module, (face,)):
                wrong += [(module, name) for name in ours if not is_in(name, (face, *allowed)) and name != "framepack"]
    assert wrong == [], "imports across the layers: " + ", ".join(f"{a} -> {b}" for a, b in wrong)


def test_the_api_loads_no_engine():
    """The routes and the app need the service protocol and the models only: importing every api module imports
    neither torch nor the engine's heavy modules."""
    code = (
        "import sys, api.routes, api.server, api.streams, api.errors, api.tab_gate, api.schemas; "
        "print(sorted(m for m in ('torch', 'diffusers', 'av', 'framepack.runner', 'framepack.jobs.manager', "
        "'framepack.models.loader', 'gradio') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of modules that import each other, directly or through others (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for neighbour in graph.get(node, ()):
            if neighbour not in graph:
                continue
            if neighbour not in index:
                visit(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in on_stack:
                low[node] = min(low[node], index[neighbour])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups
