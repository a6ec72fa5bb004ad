"""Install what the host lacks from requirements.txt (SD.Next runs this file as a subprocess, with its own root
on PYTHONPATH, when the extension is installed or the host starts).

Skipped: torch, gradio, fastapi and the packages the host pins itself (it owns those versions). A requirement
that is installed at a satisfying version is left alone, so a second run installs nothing. Installs go through
the host's `installer.install(pkg)` when it is importable, else `python -m pip install`. Quiet: it prints only
what it installs.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"
# The host's own stack: never installed or upgraded by an extension.
HOST_OWNED = {
    "torch", "torchvision", "torchaudio", "gradio", "gradio-client", "fastapi", "starlette", "pydantic",
    "pydantic-core", "uvicorn", "httpx", "numpy", "pillow", "transformers", "diffusers", "accelerate",
    "safetensors", "tokenizers", "protobuf", "tqdm",
}  # fmt: skip


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(line: str) -> tuple[str, str] | None:
    """'name[extra]>=1.2 ; marker  # comment' -> ('name', '>=1.2'), None for blanks/comments/options."""
    line = line.split("#", 1)[0].split(";", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$", line)
    if not match:
        return None
    return match.group(1), match.group(3).replace(" ", "")


def satisfies(installed: str, spec: str) -> bool:
    """Whether `installed` meets `spec` (a PEP 440 specifier set; a spec packaging cannot parse counts as met, a
    version it cannot parse as not met). `packaging` is there wherever this runs: the host's own stack
    (transformers, accelerate, huggingface-hub, gradio) requires it."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        specifiers = SpecifierSet(spec)
    except InvalidSpecifier:
        return True
    return specifiers.contains(installed, prereleases=True)


def missing(requirements: Path = REQUIREMENTS) -> list[str]:
    """Requirement strings that are not installed at a satisfying version (host-owned ones left out)."""
    needed = []
    for line in requirements.read_text().splitlines():
        parsed = parse(line)
        if parsed is None:
            continue
        name, spec = parsed
        if canonical(name) in HOST_OWNED:
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            needed.append(f"{name}{spec}")
            continue
        if spec and not satisfies(installed, spec):
            needed.append(f"{name}{spec}")
    return needed


def install(package: str) -> None:
    try:
        import installer  # SD.Next's, found through the PYTHONPATH it gives this subprocess
    except ImportError:
        installer = None
    if installer is not None and hasattr(installer, "install"):
        installer.install(package, f"FramePack requirement: {package}")
        return
    try:
        import launch  # older hosts

        if hasattr(launch, "run_pip"):
            launch.run_pip(f'install "{package}"', f"FramePack requirement: {package}")
            return
    except ImportError:
        pass
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)


def main() -> int:
    for package in missing():
        print(f"FramePack: installing {package}", flush=True)
        install(package)
    return 0


if __name__ == "__main__":
    sys.exit(main())
