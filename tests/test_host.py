"""The host adapter and the SD.Next extension, against a FAKE SD.Next that behaves like the real one.

The fake host (`tests/fake_sdnext/`, copied into a temporary folder laid out like SD.Next's root) keeps the real
names and signatures of what the extension uses (vladmandic/sdnext 058a7f0): `shared.state` with
`begin(title="", task_id=0, api=None)` (which clears `interrupted`), `end(task_id=None, api=None)`, `outputs()`,
`/sdapi/v1/progress` and `/sdapi/v1/history`; `shared.opts` with `add_option(key, OptionInfo(...))`, `hfcache_dir`,
`offline_mode`; `cmd_opts.lora_dir`; `installer.pip()` that rewrites `>=` to `==` and appends a relative
`-c constraints.txt`. As SD.Next does, `install.py` runs as a subprocess with cwd = the extension folder and
PYTHONPATH = the host root, and the extension's script is imported with the extension root first on sys.path,
after another extension took the bare name `api`. The extension runs in a subprocess under a host-like Python
(Gradio 3.43.2, FastAPI 0.124; see `.ci/host-env.sh`, found through FRAMEPACK_HOST_PYTHON or `.venv-host/`) when
there is one, else under this Python (the tab test is then skipped).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from helpers import host_like_python, tiny_home

ROOT = Path(__file__).resolve().parent.parent
FAKE = Path(__file__).resolve().parent / "fake_sdnext"
EXTENSION_NAME = "framepack-studio-next"  # any name but the obsolete `sd-extension-framepack` the host disables
PROBES = {"framepack-probe-a": ("1.0", "1.1", "1.2"), "framepack-probe-b": ("1.0",)}
CONSTRAINTS = "framepack-probe-a<1.2\n"  # the host's constraints file: 1.2 exists but is not allowed
EXTRA_REQUIREMENTS = "framepack-probe-a>=1.0\nframepack-probe-b\n"


def load_fake(name: str):
    """A module of the fake SD.Next, loaded from its file (for unit tests in this process)."""
    spec = importlib.util.spec_from_file_location(f"fake_sdnext_{name}", FAKE / "modules" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_wheel(folder: Path, name: str, version: str) -> Path:
    """A pure-Python wheel of an empty package `name` (no index needed: pip installs it from `folder`)."""
    module = name.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: framepack-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
        archive.writestr(f"{dist}/RECORD", "".join(f"{member},,\n" for member in [*files, f"{dist}/RECORD"]))
    return path


@pytest.fixture(scope="module")
def host_python() -> str | None:
    return host_like_python()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    for name, versions in PROBES.items():
        for version in versions:
            build_wheel(folder, name, version)
    return folder


def make_host(root: Path, extra_requirements: str = "") -> Path:
    """The fake SD.Next at `root` with this extension (a copy) in extensions/, and another extension that owns
    the package name `api`. Returns the extension folder."""
    shutil.copytree(FAKE, root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "README.md"))
    (root / "constraints.txt").write_text(CONSTRAINTS)
    extension = root / "extensions" / EXTENSION_NAME
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("framepack", "api", "scripts"):  # a copy, so the import really comes from the extension folder
        shutil.copytree(ROOT / folder, extension / folder, ignore=ignore)
    shutil.copy(ROOT / "install.py", extension / "install.py")
    (extension / "requirements.txt").write_text((ROOT / "requirements.txt").read_text() + extra_requirements)
    other = root / "extensions" / "other-extension"
    (other / "api").mkdir(parents=True)
    (other / "api" / "__init__.py").write_text("NAME = 'the other extension'\n")
    (other / "scripts").mkdir()
    (other / "scripts" / "other.py").write_text("import api  # noqa: F401\n")
    return extension


def pip_env(wheels: Path, target: Path, *pythonpath: Path) -> dict[str, str]:
    """pip installs the probe wheels from a folder into `target` (not into this environment)."""
    target.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(path) for path in [*pythonpath, target]),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheels),
        "PIP_TARGET": str(target),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def run_install(script: Path, cwd: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=600
    )
    return result, time.perf_counter() - start


def installed_probes(target: Path) -> dict[str, str]:
    found = {}
    for info in target.glob("framepack_probe_*.dist-info"):
        name, version = info.name.removesuffix(".dist-info").rsplit("-", 1)
        found[name.replace("_", "-")] = version
    return found


def recorded_installs(root: Path) -> list[list[str]]:
    record = root / "installs.txt"
    return [line.split("|", 1) for line in record.read_text().splitlines()] if record.exists() else []


def driver_env(root: Path, home: Path) -> dict[str, str]:
    return {
        **{key: value for key, value in os.environ.items() if key != "FRAMEPACK_MODEL"},
        "PYTHONPATH": str(root),
        "FRAMEPACK_HOME": str(home),
        "EXTENSION_NAME": EXTENSION_NAME,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def run_driver(python: str, root: Path, home: Path, mode: str, given: dict | None = None) -> dict:
    result = subprocess.run(
        [python, str(root / "driver.py"), mode, json.dumps(given or {})],
        cwd=root, env=driver_env(root, home), capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, f"rc={result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return json.loads(lines[-1][len("REPORT ") :])


# ----------------------------------------------------------------------------------------------- the adapter


def test_importing_the_host_module_imports_nothing_of_sdnext():
    code = (
        "import sys, framepack.host as h; print(type(h.detect_host()).__name__, any(m == 'modules' or "
        "m.startswith('modules.') for m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False, timeout=120
    )
    assert result.stdout.split() == ["StandaloneHost", "False"], result.stderr


def test_only_the_host_adapter_and_the_entry_script_touch_sdnext_modules():
    pattern = re.compile(r"^\s*(from\s+modules(\.|\s+import)|import\s+modules\b)", re.MULTILINE)
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("framepack", "api")
        for path in (ROOT / folder).rglob("*.py")
        if pattern.search(path.read_text()) and path != ROOT / "framepack" / "host.py"
    ]
    assert offenders == []


@pytest.fixture
def sdnext_state(monkeypatch):
    """`modules.shared` with the fake SD.Next's State (the real one's logic) for SDNextHost in this process."""
    import logging
    import types

    state = load_fake("shared_state").State()
    shared = types.SimpleNamespace(state=state, opts=None, log=logging.getLogger("sd"))
    package = types.ModuleType("modules")
    package.shared = shared
    monkeypatch.setitem(sys.modules, "modules", package)
    monkeypatch.setitem(sys.modules, "modules.shared", shared)
    return state


def make_job(job_id: str, total_steps: int = 4, frames: int = 10):
    from framepack.jobs.models import Job, JobProgress, JobState

    progress = JobProgress(stage="queued", total_steps=total_steps, sections=2)
    return Job(
        id=job_id, state=JobState.QUEUED, request={}, plan={"generated_frames": frames}, progress=progress, created_at=0
    )


def test_sdnext_task_shows_the_job_id_progress_through_decode_and_its_outputs(sdnext_state):
    from framepack.host import SDNextHost

    state = sdnext_state
    hooks = SDNextHost().job_hooks(on_interrupt=lambda job_id: None)
    job = make_job("f00dcafe")
    hooks.submitted(job)
    with hooks.running(job):
        assert (state.job, state.id, state.calls) == ("FramePack", "f00dcafe", [("begin", "FramePack", "f00dcafe")])
        job.progress.stage, job.progress.done_steps, job.progress.sections_done = "sample", 4, 2
        hooks.progress(job)
        sampled = (state.sampling_step, state.sampling_steps, state.textinfo)
        job.progress.stage, job.progress.frames_written = "decode", 5
        hooks.progress(job)
        decoding = (state.sampling_step, state.sampling_steps, state.textinfo)
        hooks.outputs(job, ["outputs/video/a.mp4", "outputs/video/a.json"])
    assert sampled == (4, 14, "FramePack f00dcafe: sample, step 4/4, 2/2 sections")
    assert decoding == (9, 14, "FramePack f00dcafe: decode, 5/10 frames written")  # still moving after sampling
    assert state.calls[-1] == ("end", "f00dcafe") and state.job == "" and state.id == ""
    own = [(entry["op"], entry["job"], entry["outputs"]) for entry in state.state_history if entry["id"] == "f00dcafe"]
    files = ["outputs/video/a.mp4", "outputs/video/a.json"]
    assert own == [("begin", "framepack", []), ("output", "framepack", files), ("end", "framepack", [])]
    assert state.state_history[-1]["op"] == "output" and state.state_history[-1]["outputs"] == files


def test_an_interrupt_after_submit_cancels_the_job_although_begin_clears_the_flag(sdnext_state):
    from framepack.host import SDNextHost

    state, cancelled = sdnext_state, []
    hooks = SDNextHost().job_hooks(on_interrupt=cancelled.append)
    state.interrupted = True  # left by an earlier task; SD.Next is idle
    stale, pressed = make_job("stale"), make_job("pressed")
    hooks.submitted(stale)
    assert state.interrupted is False  # the stale flag is cleared, so a new press can be seen
    with hooks.running(stale):
        pass
    assert cancelled == []
    hooks.submitted(pressed)
    state.interrupt()  # before the job begins; its begin() clears the flag again
    with hooks.running(pressed):
        assert cancelled == ["pressed"] and state.interrupted is False


def test_an_interrupt_while_running_cancels_once_and_not_the_job_queued_behind(sdnext_state):
    from framepack.host import INTERRUPT_POLL_SECONDS, SDNextHost

    state, cancelled = sdnext_state, []
    hooks = SDNextHost().job_hooks(on_interrupt=cancelled.append)
    running, behind = make_job("running"), make_job("behind")
    hooks.submitted(running)
    with hooks.running(running):
        hooks.submitted(behind)
        state.interrupt()
        deadline = time.monotonic() + 10
        while not cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(3 * INTERRUPT_POLL_SECONDS)
    with hooks.running(behind):
        pass
    assert cancelled == ["running"]


def test_a_host_whose_begin_takes_no_task_id_gets_the_title(monkeypatch):
    import types

    from framepack.host import SDNextHost

    calls = []

    class OlderState:  # the A1111 signature: begin(self, job: str = "(unknown)"), end(self)
        def begin(self, job: str = "(unknown)"):
            calls.append(("begin", job))

        def end(self):
            calls.append(("end",))

    shared = types.SimpleNamespace(state=OlderState())
    package = types.ModuleType("modules")
    package.shared = shared
    monkeypatch.setitem(sys.modules, "modules", package)
    monkeypatch.setitem(sys.modules, "modules.shared", shared)
    host = SDNextHost()
    host.begin("FramePack", "abc")
    host.end("abc", [])
    assert calls == [("begin", "FramePack"), ("end",)]


def test_standalone_host_hooks_take_no_lock_and_show_nothing(tmp_path):
    from framepack.host import StandaloneHost

    host = StandaloneHost(output_dir=tmp_path / "out", data_dir=tmp_path / "data")
    assert (host.output_dir(), host.data_dir(), host.name) == (tmp_path / "out", tmp_path / "data", "standalone")
    assert (host.hub_cache(), host.lora_dirs()) == (None, [])
    hooks = host.job_hooks()
    for job_id in ("one", "two"):  # reusable, one job after another
        job = make_job(job_id)
        hooks.submitted(job)
        with hooks.running(job):
            assert not host.gpu_lock().locked()


def test_degraded_routes_use_the_api_prefix_and_error_shape():
    from api.errors import ErrorResponse
    from api.routes import PREFIX
    from framepack.degraded import ROUTE_PREFIX, error_body, unavailable_message

    assert ROUTE_PREFIX == PREFIX
    message = unavailable_message(["FramePack requirement av>=14: not installed. Fix: `pip install 'av>=14'`"])
    assert message == (
        "FramePack cannot start: FramePack requirement av>=14: not installed. Fix: `pip install 'av>=14'`; "
        "then restart SD.Next."
    )
    assert ErrorResponse.model_validate(error_body(message)).error.kind == "not_installed"


def test_install_parses_and_compares_versions():
    sys.path.insert(0, str(ROOT))
    try:
        import install
    finally:
        sys.path.remove(str(ROOT))
    assert install.parse("opencv-python-headless>=4.8  # comment") == ("opencv-python-headless", ">=4.8")
    assert install.parse("av[extra] >= 14 ; python_version > '3'") == ("av", ">=14")
    assert install.parse("# only a comment") is None and install.parse("-r other.txt") is None
    assert install.satisfies("14.2.0", ">=14") and not install.satisfies("13.1", ">=14")
    assert install.satisfies("0.2.1", ">=0.2,<0.3") and not install.satisfies("0.3.0", ">=0.2,<0.3")
    assert install.satisfies("0.36.0.dev0", ">=0.35")  # hosts install development builds


def test_sdnext_balanced_offload_is_the_hosts_when_its_setting_says_balanced(monkeypatch):
    """The host's `apply_balanced_offload` gets a diffusers pipeline object carrying our modules, and only when
    SD.Next's offload mode is "balanced" (else FramePack's own offload runs)."""
    import types

    import torch

    from framepack.host import SDNextHost

    received = []
    shared = types.SimpleNamespace(opts=types.SimpleNamespace(diffusers_offload_mode="balanced"))
    offload_module = types.SimpleNamespace(apply_balanced_offload=lambda pipeline: received.append(pipeline))
    package = types.ModuleType("modules")
    package.shared, package.sd_offload = shared, offload_module
    monkeypatch.setitem(sys.modules, "modules", package)
    monkeypatch.setitem(sys.modules, "modules.shared", shared)
    monkeypatch.setitem(sys.modules, "modules.sd_offload", offload_module)

    modules = {"transformer": torch.nn.Linear(2, 2), "vae": torch.nn.Linear(2, 3)}
    offload = SDNextHost().balanced_offload()
    offload(modules)
    assert len(received) == 1
    assert received[0].transformer is modules["transformer"] and received[0].vae is modules["vae"]
    assert set(received[0].components) == {"transformer", "vae"}

    shared.opts.diffusers_offload_mode = "model"
    assert SDNextHost().balanced_offload() is None


# ------------------------------------------------------------------------------------------ install.py


def test_the_fake_installer_fails_from_the_extension_folder_like_sdnext(tmp_path, wheels):
    """What broke the real install: SD.Next's installer.pip from the extension folder (its relative -c)."""
    root = tmp_path / "sdnext"
    extension = make_host(root, EXTRA_REQUIREMENTS)
    code = (
        "import installer; result, output = installer.pip('install framepack-probe-b'); "
        "print(result.returncode); print(output)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=extension, env=pip_env(wheels, tmp_path / "target", root),
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert result.stdout.splitlines()[0] != "0" and "constraints.txt" in result.stdout, result.stdout + result.stderr


def test_install_py_as_sdnext_runs_it_installs_verifies_and_a_second_run_is_quick(tmp_path, wheels):
    root = tmp_path / "sdnext"
    extension = make_host(root, EXTRA_REQUIREMENTS)
    target = tmp_path / "target"
    env = pip_env(wheels, target, root)  # SD.Next: cwd = the extension folder, PYTHONPATH = its root
    first, _ = run_install(extension / "install.py", extension, env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.splitlines() == [
        "FramePack: installing framepack-probe-a>=1.0",
        "FramePack: installing framepack-probe-b",
    ]
    assert first.stderr == ""
    # a: by pip with SD.Next's constraints file by absolute path (1.2 exists, the constraint says < 1.2; through
    # the host's installer, >= would have become ==1.0); b: through the host's installer, run from its root
    assert installed_probes(target) == {"framepack-probe-a": "1.1", "framepack-probe-b": "1.0"}
    assert recorded_installs(root) == [[str(root), "install framepack-probe-b"]]
    second, seconds = run_install(extension / "install.py", extension, env)
    assert (second.returncode, second.stdout, second.stderr) == (0, "", "")
    assert seconds < 2.0, f"a run with nothing to install took {seconds:.2f} s"
    assert len(recorded_installs(root)) == 1


def test_install_py_from_the_host_root_and_standalone(tmp_path, wheels):
    root = tmp_path / "sdnext"
    extension = make_host(root, EXTRA_REQUIREMENTS)
    from_root = tmp_path / "from-root"
    result, _ = run_install(extension / "install.py", root, pip_env(wheels, from_root))  # no PYTHONPATH to the host
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed_probes(from_root) == {"framepack-probe-a": "1.1", "framepack-probe-b": "1.0"}  # constrained
    standalone = tmp_path / "standalone" / "framepack"
    standalone.mkdir(parents=True)
    for name in ("install.py", "requirements.txt"):
        shutil.copy(extension / name, standalone / name)
    alone = tmp_path / "alone"
    result, _ = run_install(standalone / "install.py", standalone, pip_env(wheels, alone))
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed_probes(alone) == {"framepack-probe-a": "1.2", "framepack-probe-b": "1.0"}  # no host: no -c


def test_install_py_names_what_it_cannot_install_and_exits_1(tmp_path, wheels):
    root = tmp_path / "sdnext"
    extension = make_host(root, "framepack-probe-c>=9\nframepack-probe-a>=1.5\n")
    result, _ = run_install(extension / "install.py", extension, pip_env(wheels, tmp_path / "target", root))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    constraints = str(root / "constraints.txt")
    assert lines[0].startswith("FramePack requirement framepack-probe-c>=9: not installed (pip failed: ERROR: ")
    assert lines[0].endswith(f"Fix: `{sys.executable} -m pip install 'framepack-probe-c>=9' -c {constraints}`")
    # 1.2 exists, but SD.Next's constraints allow < 1.2 only
    assert lines[1].startswith("FramePack requirement framepack-probe-a>=1.5: not installed (pip failed: ERROR: ")
    assert "The user requested (constraint) framepack-probe-a<1.2" in lines[1]


# ------------------------------------------------------------------------------------------ the extension


@pytest.fixture
def fake_sdnext(tmp_path: Path, tiny_model_dir: Path) -> dict:
    root = tmp_path / "sdnext"
    make_host(root)
    home = tiny_home(tiny_model_dir, tmp_path / "framepack-home")
    return {"root": root, "home": home}


def hub_cache_with(model_dir: Path, cache: Path, repo: str) -> None:
    """`model_dir` as hub repo `repo` in a Hugging Face cache folder (refs/main -> one snapshot)."""
    revision = "0" * 40
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    shutil.copytree(model_dir, repo_dir / "snapshots" / revision, symlinks=False)


def write_host_lora(tiny_model_dir: Path, path: Path) -> None:
    import torch
    from diffusers import HunyuanVideoFramepackTransformer3DModel
    from safetensors.torch import save_file

    transformer = HunyuanVideoFramepackTransformer3DModel.from_pretrained(tiny_model_dir / "transformer")
    layer = transformer.get_submodule("transformer_blocks.0.attn.to_q")
    generator = torch.Generator().manual_seed(3)
    state = {
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(
            2, layer.in_features, generator=generator
        ),
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(
            layer.out_features, 2, generator=generator
        ),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))


def test_extension_in_sdnext_defaults_models_loras_progress_history_and_interrupts(
    fake_sdnext, tiny_model_dir, host_python
):
    root = fake_sdnext["root"]
    hub = root / "models" / "huggingface"
    hub_cache_with(tiny_model_dir, hub, "framepack-test/tiny")
    recipe = root / "tiny-from-hub.txt"
    recipe.write_text(
        "".join(f"{name}: framepack-test/tiny subfolder={name}\n"
                for name in ("vae", "tokenizer", "tokenizer_2", "feature_extractor"))
        + "".join(f"{name}: framepack-test/tiny subfolder={name} dtype=float32\n"
                  for name in ("transformer", "text_encoder", "text_encoder_2", "image_encoder"))
        + "self_test: true\n"
    )  # fmt: skip
    write_host_lora(tiny_model_dir, root / "models" / "Lora" / "host-style.safetensors")
    given = {
        "opts": {"offline_mode": True},
        "settings": {"framepack_default_model": "self-test"},
        "settings_later": {"framepack_default_model": str(recipe), "framepack_default_cache": "none"},
    }
    report = run_driver(host_python or sys.executable, root, fake_sdnext["home"], "routes", given)
    extension = root / "extensions" / EXTENSION_NAME
    assert report["problems"] == []
    assert Path(report["framepack_from"]) == extension
    assert (
        report["api_taken_by"]
        == report["api_still"]
        == str(root / "extensions" / "other-extension" / "api" / "__init__.py")
    )
    assert report["callbacks"] == [1, 1, 1] and report["manager_built_at_import"] is False
    assert report["settings"] == {
        "framepack_default_model": [
            "published",
            "Default model when a request names none: published, self-test (random weights: noise) or the "
            "path of a recipe file",
            "Dropdown", {"choices": ["published", "self-test"], "allow_custom_value": True}, ["framepack", "FramePack"],
        ],
        "framepack_default_cache": [
            "teacache", "Default cache when a request names none", "Radio",
            {"choices": ["none", "teacache", "magcache", "fbc"]}, ["framepack", "FramePack"],
        ],
        "framepack_default_offload": [
            "balanced", "Default offload when a request names none", "Radio",
            {"choices": ["none", "model", "balanced", "blocks"]}, ["framepack", "FramePack"],
        ],
        "framepack_keep_jobs": [
            0, "Ended jobs to keep in the queue's history (0 = all; older ones are deleted after each job)", "Number",
            {"precision": 0, "minimum": 0}, ["framepack", "FramePack"],
        ],
        "framepack_keep_days": [
            0, "Days to keep ended jobs in the queue's history (0 = forever)", "Number", {"minimum": 0},
            ["framepack", "FramePack"],
        ],
        "framepack_prune_outputs": [
            False, "Delete the videos of jobs removed from the history too (otherwise they are kept)", "Checkbox", {},
            ["framepack", "FramePack"],
        ],
        "framepack_gpus": [
            "", "GPUs that run FramePack jobs, one job each at a time: GPU numbers separated by commas (0,1); empty = "
            "SD.Next's GPU. Applies after a restart", "Textbox", {}, ["framepack", "FramePack"],
        ],
    }  # fmt: skip
    routes = {(path, method) for path, methods in report["routes"] for method in methods}
    assert {
        ("/sdapi/v1/framepack", "POST"),
        ("/sdapi/v1/framepack/jobs", "POST"),
        ("/sdapi/v1/framepack/jobs/{job_id}", "GET"),
    } <= routes

    # 1. no model in the request: the setting's self-test model, and the plan says so
    status, body = report["first"]
    assert status == 200, body
    job_id = body["id"]
    assert body["filename"] == "from-host.mp4" and "SELF-TEST model" in body["summary"]
    assert report["first_job"]["request"]["model"] == "tiny"
    assert report["lock_acquired_after_first"] >= 1
    assert report["state_calls"][:2] == [["begin", "FramePack", job_id], ["end", job_id]]
    # progress: steps, then the frames written, to the end (2 sections x 2 steps, then 9 + 12 frames)
    frames = body["plan"]["generated_frames"]
    steps = [entry[1:] for entry in report["progress_log"] if entry[0] == "step"]
    texts = [entry[1] for entry in report["progress_log"] if entry[0] == "text"]
    assert steps[-1] == [4 + frames, 4 + frames]
    assert [done for done, _total in steps] == sorted(done for done, _total in steps)  # never backwards
    assert len([done for done, _total in steps if 4 < done < 4 + frames]) >= 1  # moved during decode
    assert all(total == 4 + frames for _done, total in steps)
    assert any(text.startswith(f"FramePack {job_id}: sample, step ") for text in texts)
    assert any(text.startswith(f"FramePack {job_id}: decode, ") for text in texts)
    # history: the task under the job id lists every file the job wrote, as SD.Next records paths
    written = ["outputs/video/from-host.mp4", "outputs/video/from-host.json"]
    own = [(entry["op"], entry["job"], entry["outputs"]) for entry in report["history_of_job"]]
    assert own == [("begin", "framepack", []), ("output", "framepack", written), ("end", "framepack", [])]
    # create-video.py (the older extension's): progress has no id after the blocking POST, so it reads the last
    # history entry's outputs
    assert report["progress_after"]["id"] == ""
    assert report["history_all"][-1]["outputs"] == written
    assert (root / written[0]).is_file()

    # 2. an explicit model wins: the published model is not in SD.Next's Hugging Face cache (offline mode)
    status, body = report["explicit_default"]
    assert status == 503 and body["error"]["kind"] == "model_unavailable" and body["error"]["field"] == "model"
    assert f"in the Hugging Face cache {hub}" in body["error"]["message"]
    assert f"--cache-dir {hub}`" in body["error"]["message"]
    assert "The host's offline mode is on" in body["error"]["message"]

    # 3. the default model as a recipe over SD.Next's cache, a LoRA from SD.Next's LoRA folder, the cache setting
    status, body = report["recipe"]
    assert status == 200, body
    assert report["recipe_job"]["request"]["model"] == str(recipe)
    assert report["recipe_job"]["request"]["cache"] == "none"
    assert body["plan"]["loras"] == [["host-style", 0.7]] and "SELF-TEST model" in body["summary"]

    # 4. interrupts: while running, before the job began, 0-100 ms after submit; one press, one job
    assert report["interrupt_running"] == "cancelled"
    assert report["stale_flag_before_b"] is True
    state, progress = report["interrupt_before_begin"]
    assert state == "cancelled" and progress["done_steps"] == 0
    assert report["interrupt_after_submit"] == [[0.0, "cancelled"], [0.05, "cancelled"], [0.1, "cancelled"]]
    assert report["one_press"] == ["cancelled", "finished"]
    assert report["lock_held_after"] is False
    assert {"from-host.mp4", "recipe.mp4", "behind.mp4"} <= set(report["outdir_files"])
    assert "interrupted.mp4" not in report["outdir_files"]


def test_extension_tab_and_settings_under_the_hosts_gradio(fake_sdnext, host_python):
    if host_python is None:
        pytest.skip(
            "no host-like Python with Gradio 3.43.2 (create it with .ci/host-env.sh or set FRAMEPACK_HOST_PYTHON)"
        )
    given = {"settings": {"framepack_default_model": "self-test", "framepack_default_cache": "magcache"}}
    report = run_driver(host_python, fake_sdnext["root"], fake_sdnext["home"], "tabs", given)
    assert report["gradio"] == "3.43.2" and report["problems"] == []
    assert report["api_taken_by"] == report["api_still"]
    assert report["tabs"] == [[True, "FramePack", "framepack_studio_tab"]]
    assert (report["model_control"], report["cache_control"]) == ("tiny", "magcache")  # the settings' defaults
    assert report["settings_built"] == {  # as SD.Next's settings page builds them, with the values set
        "framepack_default_model": "self-test", "framepack_default_cache": "magcache",
        "framepack_default_offload": "balanced", "framepack_keep_jobs": 0, "framepack_keep_days": 0,
        "framepack_prune_outputs": False, "framepack_gpus": "",
    }  # fmt: skip


def test_extension_with_a_missing_requirement_shows_a_tab_and_routes_that_say_how_to_fix_it(
    tmp_path, tiny_model_dir, host_python
):
    root = tmp_path / "sdnext"
    make_host(root, "framepack-probe-missing>=1\n")
    home = tiny_home(tiny_model_dir, tmp_path / "framepack-home")
    python = host_python or sys.executable
    report = run_driver(python, root, home, "degraded")
    constraints = root / "constraints.txt"
    problem = (
        "FramePack requirement framepack-probe-missing>=1: not installed. "
        f"Fix: `{python} -m pip install 'framepack-probe-missing>=1' -c {constraints}`"
    )
    assert report["problems"] == [problem]
    assert report["tabs"] == [[True, "FramePack", "framepack_studio_tab"]]
    assert problem in report["unavailable_text"] and "restart SD.Next" in report["unavailable_text"]
    message = f"FramePack cannot start: {problem}; then restart SD.Next."
    expected = {"error": {"kind": "not_installed", "field": None, "message": message}}
    assert report["degraded_answers"] == [[503, expected], [503, expected]]
    assert report["settings"]  # the settings section is there too
