"""The host adapter and the SD.Next extension, against a FAKE SD.Next.

The fake host is a temporary folder laid out like SD.Next: a `modules/` package (shared with opts/log/state/api,
script_callbacks, call_queue, devices), `installer.py` and `launch.py`, and a copy of this extension in
`extensions/framepack-studio-next/`. As SD.Next does, `install.py` runs as a subprocess with the host root on
PYTHONPATH, and the extension's script is imported from its file with the extension root first on sys.path.
The extension runs in a subprocess (clean sys.path and sys.modules) under a host-like Python: Gradio 3.43.2 with
FastAPI 0.124 (see `.ci/host-env.sh`; found through FRAMEPACK_HOST_PYTHON or `.venv-host/`). Without such an environment the tab test is skipped and the route test runs on this Python.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import host_like_python, tiny_home

ROOT = Path(__file__).resolve().parent.parent
EXTENSION_NAME = "framepack-studio-next"  # any name but the obsolete `sd-extension-framepack` the host disables

FAKE_MODULES = {
    "modules/__init__.py": "",
    "modules/shared.py": '''
        import logging, threading
        from types import SimpleNamespace
        from fastapi import FastAPI

        log = logging.getLogger("sd")
        opts = SimpleNamespace(outdir_video="", outdir_samples="outputs")

        class State:
            def __init__(self):
                self.interrupted = False
                self.skipped = False
                self.job = ""
                self.calls = []
            def begin(self, job="", api=None):
                self.calls.append(("begin", job))
                self.job, self.interrupted, self.skipped = job, False, False
            def end(self, api=None):
                self.calls.append(("end", self.job))
                self.job = ""
            def interrupt(self):
                self.interrupted = True

        state = State()

        class Api:
            """Like SD.Next's modules.api.api.Api: routes go on the app, with the host's auth dependency."""
            def __init__(self, app):
                self.app = app
                self.routes = []
            def add_api_route(self, path, endpoint, **kwargs):
                self.routes.append((path, tuple(kwargs.get("methods") or ())))
                return self.app.add_api_route(path, endpoint, **kwargs)

        app = FastAPI()
        api = Api(app)
        cmd_opts = SimpleNamespace(auth=None)
    ''',
    "modules/script_callbacks.py": """
        callbacks_ui_tabs = []
        callbacks_app_started = []
        def on_ui_tabs(fn):
            callbacks_ui_tabs.append(fn)
        def on_app_started(fn):
            callbacks_app_started.append(fn)
    """,
    "modules/call_queue.py": '''
        import threading

        class CountingLock:
            """threading.Lock that counts acquisitions (SD.Next: queue_lock = threading.Lock())."""
            def __init__(self):
                self._lock = threading.Lock()
                self.acquired = 0
            def acquire(self, *args, **kwargs):
                got = self._lock.acquire(*args, **kwargs)
                self.acquired += bool(got)
                return got
            def release(self):
                self._lock.release()
            def locked(self):
                return self._lock.locked()
            __enter__ = lambda self: self.acquire()
            def __exit__(self, *exc):
                self.release()

        queue_lock = CountingLock()
    ''',
    "modules/devices.py": """
        import torch
        device = torch.device("cpu")
        dtype = torch.float32
    """,
    "modules/paths.py": """
        import os
        data_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    """,
    "installer.py": """
        import os
        RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "installs.txt")
        def install(package, friendly=None, ignore=False, reinstall=False, no_deps=False, quiet=False, force=False):
            with open(RECORD, "a") as handle:
                handle.write(package + "\\n")
    """,
    "launch.py": """
        def run_pip(command, desc=None):
            raise AssertionError("installer.install is preferred over launch.run_pip")
    """,
}

DRIVER = """
import base64, importlib.util, io, json, os, sys, time
from pathlib import Path

host_root = Path.cwd()
extension_root = host_root / "extensions" / EXTENSION_NAME
mode = sys.argv[1]
report = {}

from modules import shared, script_callbacks, call_queue, devices
shared.opts.outdir_video = str(host_root / "outputs" / "video")

# SD.Next's script loading: the extension root first on sys.path while the module is imported, then restored
saved_path = list(sys.path)
sys.path.insert(0, str(extension_root))
try:
    path = extension_root / "scripts" / "framepack_extension.py"
    spec = importlib.util.spec_from_file_location("framepack_extension", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
finally:
    sys.path = saved_path

import framepack
from framepack.host import SDNextHost, detect_host
report["framepack_from"] = str(Path(framepack.__file__).resolve().parent.parent)
report["host"] = type(detect_host()).__name__
report["ui_tab_callbacks"] = len(script_callbacks.callbacks_ui_tabs)
report["app_started_callbacks"] = len(script_callbacks.callbacks_app_started)
report["manager_built_at_import"] = module.extension._manager is not None

if mode == "tabs":
    import gradio as gr
    report["gradio"] = gr.__version__
    tabs = [tab for fn in script_callbacks.callbacks_ui_tabs for tab in fn()]
    report["tabs"] = [[type(blocks).__name__, isinstance(blocks, gr.Blocks), title, elem_id] for blocks, title, elem_id in tabs]
    print("REPORT " + json.dumps(report))
    sys.exit(0)

for fn in script_callbacks.callbacks_app_started:
    fn(None, shared.app)
report["routes"] = [[path, list(methods)] for path, methods in shared.api.routes]

from fastapi.testclient import TestClient
from PIL import Image

buffer = io.BytesIO()
Image.new("RGB", (96, 80), (200, 120, 40)).save(buffer, format="PNG")
image = base64.b64encode(buffer.getvalue()).decode()
fast = dict(resolution=128, latent_window_size=3, steps=2, duration=0.8, prompt="a kite", model="tiny", init_image=image, filename="from-host")
client = TestClient(shared.app)
response = client.post("/sdapi/v1/framepack", json=fast)
report["status"] = response.status_code
report["body"] = response.json()
report["lock_acquired_after_first"] = call_queue.queue_lock.acquired
report["state_calls"] = list(shared.state.calls)
report["sampling"] = [getattr(shared.state, "sampling_step", None), getattr(shared.state, "sampling_steps", None)]
if response.status_code == 200:
    download = client.get(response.json()["url"])
    report["download"] = [download.status_code, len(download.content)]

# SD.Next's Interrupt button cancels the running FramePack job
long = dict(fast, steps=50, duration=8.0, cache="none", filename="interrupted")  # seconds of work, whatever the cache
job = client.post("/sdapi/v1/framepack/jobs", json=long).json()
deadline = time.time() + 120
while time.time() < deadline and client.get(f"/sdapi/v1/framepack/jobs/{job['id']}").json()["state"] != "running":
    time.sleep(0.1)
time.sleep(1.0)
shared.state.interrupt()
final = None
while time.time() < deadline:
    final = client.get(f"/sdapi/v1/framepack/jobs/{job['id']}").json()
    if final["state"] in ("finished", "failed", "cancelled"):
        break
    time.sleep(0.2)
report["interrupted_state"] = final and final["state"]
report["lock_held_after"] = call_queue.queue_lock.locked()
report["outdir_files"] = sorted(p.name for p in (host_root / "outputs" / "video").iterdir())
module.extension.manager().stop(10)
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def host_python() -> str | None:
    return host_like_python()


@pytest.fixture
def fake_sdnext(tmp_path: Path, tiny_model_dir: Path) -> dict:
    root = tmp_path / "sdnext"
    for relative, text in FAKE_MODULES.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text).lstrip())
    extension = root / "extensions" / EXTENSION_NAME
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("framepack", "api", "scripts"):  # a copy, so the import really comes from the extension folder
        shutil.copytree(ROOT / folder, extension / folder, ignore=ignore)
    for name in ("install.py", "requirements.txt"):
        shutil.copy(ROOT / name, extension / name)
    home = tiny_home(tiny_model_dir, tmp_path / "framepack-home")
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "FRAMEPACK_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return {"root": root, "home": home, "env": env}


def run_driver(python: str, fake: dict, mode: str) -> dict:
    script = fake["root"] / "driver.py"
    script.write_text(f"EXTENSION_NAME = {EXTENSION_NAME!r}\n" + DRIVER)
    result = subprocess.run(
        [python, str(script), mode],
        cwd=fake["root"],
        env=fake["env"],
        capture_output=True,
        text=True,
        check=False,
        timeout=540,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, f"rc={result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return json.loads(lines[-1][len("REPORT ") :])


# ----------------------------------------------------------------------------------------------- the adapter


def test_importing_the_host_module_imports_nothing_of_sdnext():
    code = "import sys, framepack.host as h; print(type(h.detect_host()).__name__, any(m == 'modules' or m.startswith('modules.') for m in sys.modules))"
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


def test_standalone_host_scope_locks_and_watches_nothing(tmp_path):
    from framepack.host import StandaloneHost

    host = StandaloneHost(output_dir=tmp_path / "out", data_dir=tmp_path / "data")
    assert (host.output_dir(), host.data_dir(), host.name) == (tmp_path / "out", tmp_path / "data", "standalone")
    scope = host.job_scope()
    for _ in range(2):  # reusable, one job after another
        with scope:
            assert host.gpu_lock().locked()
        assert not host.gpu_lock().locked()


def test_job_scope_calls_back_once_on_a_host_interrupt_and_always_releases(tmp_path):
    import threading

    from framepack.host import StandaloneHost

    class Interruptible(StandaloneHost):
        flag = False
        calls: list  # set per instance

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.calls = []

        def begin(self, title="FramePack"):
            self.calls.append("begin")

        def end(self):
            self.calls.append("end")

        def interrupted(self):
            return self.flag

    host = Interruptible(data_dir=tmp_path)
    fired = threading.Event()
    scope = host.job_scope(on_interrupt=fired.set)
    with pytest.raises(RuntimeError), scope:
        host.flag = True
        assert fired.wait(5)
        raise RuntimeError("the job failed")
    assert host.calls == ["begin", "end"] and not host.gpu_lock().locked()


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


# ------------------------------------------------------------------------------------------ the fake SD.Next


def test_install_py_uses_the_host_installer_for_what_is_missing(fake_sdnext, host_python):
    python = host_python or sys.executable
    extension = fake_sdnext["root"] / "extensions" / EXTENSION_NAME
    result = subprocess.run(
        [python, str(extension / "install.py")], cwd=fake_sdnext["root"], env=fake_sdnext["env"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    announced = re.findall(r"^FramePack: installing (\S+)$", result.stdout, re.MULTILINE)
    record = fake_sdnext["root"] / "installs.txt"
    recorded = record.read_text().split() if record.exists() else []
    assert announced == recorded  # every install went through installer.install (launch.run_pip would raise)
    assert not any(re.match(r"(torch|gradio|fastapi)\b", package) for package in recorded)
    assert set(result.stdout.splitlines()) <= {f"FramePack: installing {package}" for package in recorded}  # quiet


def test_extension_registers_routes_that_generate_into_the_host_folder_under_its_gpu_lock(fake_sdnext, host_python):
    report = run_driver(host_python or sys.executable, fake_sdnext, "routes")
    assert Path(report["framepack_from"]) == fake_sdnext["root"] / "extensions" / EXTENSION_NAME
    assert report["host"] == "SDNextHost"
    assert (report["ui_tab_callbacks"], report["app_started_callbacks"]) == (1, 1)
    assert report["manager_built_at_import"] is False  # import only registers callbacks
    routes = {(path, method) for path, methods in report["routes"] for method in methods}
    assert {
        ("/sdapi/v1/framepack", "POST"),
        ("/sdapi/v1/framepack/jobs", "POST"),
        ("/sdapi/v1/framepack/jobs/{job_id}", "GET"),
    } <= routes
    assert report["status"] == 200, report["body"]
    assert report["body"]["filename"] == "from-host.mp4"
    assert report["download"][0] == 200 and report["download"][1] > 0
    assert report["lock_acquired_after_first"] >= 1  # the host's queue_lock was held for the job
    assert report["state_calls"][:2] == [["begin", "FramePack"], ["end", "FramePack"]]
    assert report["sampling"] == [4, 4]  # the host's progress bar saw every step: 2 sections x 2 steps
    assert report["interrupted_state"] == "cancelled"  # SD.Next's Interrupt cancels the FramePack job
    assert report["lock_held_after"] is False
    assert "from-host.mp4" in report["outdir_files"] and "interrupted.mp4" not in report["outdir_files"]


def test_extension_tab_builds_under_the_hosts_gradio(fake_sdnext, host_python):
    if host_python is None:
        pytest.skip(
            "no host-like Python with Gradio 3.43.2 (create it with .ci/host-env.sh or set FRAMEPACK_HOST_PYTHON)"
        )
    if not (ROOT / "framepack" / "ui" / "tab.py").is_file():
        pytest.skip("framepack/ui/tab.py does not exist yet")
    report = run_driver(host_python, fake_sdnext, "tabs")
    assert report["gradio"] == "3.43.2"
    assert [tab[1:] for tab in report["tabs"]] == [[True, "FramePack", "framepack_studio_tab"]]


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
