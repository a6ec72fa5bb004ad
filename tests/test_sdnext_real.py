"""The extension inside a real SD.Next (opt-in): installed as a user installs it, started as a user starts SD.Next.

Skipped unless FRAMEPACK_SDNEXT_ROOT names an SD.Next checkout with a ready venv (`tests/sdnext/setup-sdnext.sh
ROOT` makes one on a CPU machine). The project (this checkout's working tree, or FRAMEPACK_SDNEXT_SOURCE's) is
copied into `ROOT/extensions/framepack-under-test` as a git checkout, SD.Next's own
`installer.run_extension_installer` installs it (a subprocess with cwd = the extension folder), and SD.Next starts
on the CPU on a free loopback port with `--auth`, FRAMEPACK_MODEL=tiny and its FramePack default-model setting on
the self-test model. Then: no extension error in its log, the FramePack tab in `/config`, a render through
`POST /sdapi/v1/framepack` landing in SD.Next's video folder and served by `/file=`, 401 without credentials,
progress showing the job title, Interrupt cancelling a running job, history listing the outputs, and the older
extension's unmodified `create-video.py` (FRAMEPACK_OLD_CREATE_VIDEO) completing without a model field. Teardown
stops the server, removes the extension copy and the files the test made, and restores `config.json`.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_live_server import free_port
from helpers import decode_video
from PIL import Image

from framepack.plan import make_plan
from framepack.request import GenerateRequest

SDNEXT_ROOT_ENV = "FRAMEPACK_SDNEXT_ROOT"
SOURCE_ENV = "FRAMEPACK_SDNEXT_SOURCE"  # the checkout to install (default: the one this test runs from)
OLD_CREATE_VIDEO_ENV = "FRAMEPACK_OLD_CREATE_VIDEO"  # create-video.py of vladmandic/sd-extension-framepack
EXTENSION_NAME = "framepack-under-test"  # not sd-extension-framepack, which SD.Next disables as obsolete
SETTING_MODEL_KEY = "framepack_default_model"  # SD.Next setting (config.json key): FramePack's default model
SETTING_MODEL_VALUE = "self-test"
MODEL_ENV = {"FRAMEPACK_MODEL": "tiny"}
USER, PASSWORD = "tester", "real-host-test"  # no "framepack" in the name: the log check looks for it
TAB_LABEL = "FramePack"
JOB_TITLE = "FramePack"
PREFIX = "/sdapi/v1/framepack"
START_TIMEOUT_S = 900  # a full SD.Next start on a loaded 2-core machine; the first one after an install is slower
RENDER_TIMEOUT_S = 900
RENDER_FIELDS = {"prompt": "a paper boat drifts across a pond", "duration": 1, "resolution": 128, "steps": 2}
LONG_FIELDS = {"prompt": "a paper boat drifts across a pond", "duration": 4, "resolution": 128, "steps": 25}
INIT_SIZE = (224, 160)
ROOT = Path(__file__).resolve().parents[1]

INSTALLER_DRIVER = """
import json, logging, sys
import installer
logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s %(message)s", stream=sys.stdout, force=True)
for name in ("sd", "sdnext.installer"):
    logging.getLogger(name).setLevel(logging.DEBUG)
installer.run_extension_installer(sys.argv[1])
print("INSTALLER_ERRORS=" + json.dumps(installer.errors))
"""
IMPORT_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import api.routes, framepack.host, framepack.runner, framepack.video.codecs, framepack.ui.tab
print("imports ok")
"""


def sdnext_root() -> Path | None:
    """FRAMEPACK_SDNEXT_ROOT when it is an SD.Next checkout whose venv has been through a first start."""
    value = os.environ.get(SDNEXT_ROOT_ENV)
    if not value:
        return None
    root = Path(value).expanduser().resolve()
    ready = (
        (root / "launch.py").is_file()
        and (root / "installer.py").is_file()
        and (root / ".git").exists()
        and (root / "venv" / "bin" / "python").is_file()
        and any((root / "venv" / "lib").glob("python3*/site-packages/gradio"))
    )
    return root if ready else None


SKIP_REASON = (
    f"set {SDNEXT_ROOT_ENV} to an SD.Next git checkout with a ready venv (made by tests/sdnext/setup-sdnext.sh ROOT: "
    "launch.py, venv/bin/python, gradio installed by a first start)"
)
pytestmark = pytest.mark.skipif(sdnext_root() is None, reason=SKIP_REASON)


# --- the host --------------------------------------------------------------------------------------------------


@dataclass
class Host:
    root: Path
    extension: Path
    url: str
    log_file: Path
    console_file: Path
    installer_result: subprocess.CompletedProcess
    import_probe: subprocess.CompletedProcess
    log_start_lines: int = 0
    made: list[Path] = field(default_factory=list)  # files the test made under the root (removed at teardown)

    @property
    def python(self) -> str:
        return str(self.root / "venv" / "bin" / "python")

    def client(self, auth: bool = True, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=(USER, PASSWORD) if auth else None, timeout=timeout)

    @contextlib.contextmanager
    def gradio_session(self) -> Iterator[httpx.Client]:
        """A client logged in to the Gradio app (its /config and /file= routes take the login cookie, not Basic)."""
        with httpx.Client(base_url=self.url, timeout=120.0) as client:
            login = client.post("/login", data={"username": USER, "password": PASSWORD})
            assert login.status_code == 200, f"Gradio login: {login.status_code} {login.text[:300]}"
            yield client

    def log_lines(self) -> list[str]:
        """SD.Next's log lines of this run (its own --log file) and its console output (tracebacks go there)."""
        lines = self.log_file.read_text(errors="replace").splitlines() if self.log_file.is_file() else []
        console = self.console_file.read_text(errors="replace").splitlines() if self.console_file.is_file() else []
        return lines + console

    def video_dir(self) -> Path:
        """SD.Next's video folder: config.json's outdir_video, else outputs/video, relative to the root."""
        config = json.loads((self.root / "config.json").read_text()) if (self.root / "config.json").is_file() else {}
        folder = Path(config.get("outdir_video") or "outputs/video")
        return folder if folder.is_absolute() else self.root / folder

    def resolve(self, recorded: str) -> Path:
        """A path as SD.Next records it (absolute, or relative to its root, where it runs)."""
        path = Path(recorded)
        return (path if path.is_absolute() else self.root / path).resolve()


def copy_project(source: Path, target: Path) -> None:
    """The working tree's files (tracked and untracked, not ignored) as a fresh git checkout, like a user's clone."""
    listing = subprocess.run(
        ["git", "-C", str(source), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    )  # fmt: skip
    target.mkdir(parents=True)
    for name in filter(None, listing.stdout.decode().split("\0")):
        origin = source / name
        if not origin.is_file():  # deleted in the working tree
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, target / name)
    git = ["git", "-C", str(target), "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "FramePack under test"], check=True)


def host_env(root: Path) -> dict[str, str]:
    """The environment SD.Next runs with: the user's, the setup's torch pin, the default model, a wide console."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTHONPATH")}
    constraint = root / "venv" / "framepack-pip-constraint.txt"
    if constraint.is_file():
        env["PIP_CONSTRAINT"] = str(constraint)
    env.update(MODEL_ENV)
    env["COLUMNS"] = "300"
    return env


def set_config(root: Path) -> bytes | None:
    """Put the FramePack default-model setting (and no checkpoint autoload: there is none) into config.json;
    returns the original bytes (None when there was no file)."""
    path = root / "config.json"
    original = path.read_bytes() if path.is_file() else None
    config = json.loads(original) if original else {}
    config.update({SETTING_MODEL_KEY: SETTING_MODEL_VALUE, "sd_checkpoint_autoload": False})
    path.write_text(json.dumps(config, indent=2))
    return original


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to SD.Next's process group, SIGKILL after 30 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


def wait_started(process: subprocess.Popen, log_file: Path, console_file: Path, url: str) -> None:
    """Until SD.Next logs its startup time and answers its API; fails with the log's tail when it exits first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = console_file.read_text(errors="replace")[-4000:]
            pytest.fail(f"SD.Next exited with {process.returncode} before it started:\n{tail}")
        started = log_file.is_file() and "Startup time:" in log_file.read_text(errors="replace")
        if started:
            try:
                if httpx.get(f"{url}/sdapi/v1/version", auth=(USER, PASSWORD), timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(2)
    pytest.fail(f"SD.Next did not start in {START_TIMEOUT_S} s; log: {log_file}")


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    root = sdnext_root()
    assert root is not None
    source = Path(os.environ.get(SOURCE_ENV) or ROOT).resolve()
    extension = root / "extensions" / EXTENSION_NAME
    if extension.exists():
        shutil.rmtree(extension)  # left by an interrupted run
    work = tmp_path_factory.mktemp("sdnext")
    env = host_env(root)
    video_before: set[Path] = set()
    original_config = set_config(root)
    data_dir = root / "data" / "framepack"
    data_existed = data_dir.exists()
    process = None
    try:
        copy_project(source, extension)
        installer_result = subprocess.run(
            [str(root / "venv" / "bin" / "python"), "-c", INSTALLER_DRIVER, str(extension)],
            cwd=root, env={**env, "SD_INSTALL_DEBUG": "1"}, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        import_probe = subprocess.run(
            [str(root / "venv" / "bin" / "python"), "-c", IMPORT_PROBE, str(extension)],
            cwd=root, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_file, console_file = work / "sdnext.log", work / "console.log"
        handle = Host(root, extension, url, log_file, console_file, installer_result, import_probe)
        video_before = set(handle.video_dir().glob("*")) if handle.video_dir().is_dir() else set()
        command = [
            handle.python, "launch.py", "--experimental", "--skip-torch", "--use-cpu", "all",
            "--server-name", "127.0.0.1", "--port", str(port), "--auth", f"{USER}:{PASSWORD}", "--log", str(log_file),
        ]  # fmt: skip
        with console_file.open("wb") as console:
            process = subprocess.Popen(
                command, cwd=root, env=env, stdout=console, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_started(process, log_file, console_file, url)
        yield handle
    finally:
        if process is not None:
            stop(process)
        shutil.rmtree(extension, ignore_errors=True)
        if original_config is None:
            (root / "config.json").unlink(missing_ok=True)
        else:
            (root / "config.json").write_bytes(original_config)
        video_dir = root / "outputs" / "video"
        for path in set(video_dir.glob("*")) - video_before if video_dir.is_dir() else ():
            if path.is_file():
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)
        if not data_existed:
            shutil.rmtree(data_dir, ignore_errors=True)


def init_image_b64() -> str:
    width, height = INIT_SIZE
    image = Image.new("RGB", INIT_SIZE)
    image.putdata([((x * 7) % 256, (y * 5) % 256, ((x + y) * 3) % 256) for y in range(height) for x in range(width)])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def planned(fields: dict[str, Any]):
    return make_plan(GenerateRequest(**fields, init_image="x.png"), image_size=INIT_SIZE)


# --- a render, with progress sampled while it runs ---------------------------------------------------------------


@dataclass
class Render:
    response: httpx.Response
    seconds: float
    progress: list[dict] = field(default_factory=list)  # /sdapi/v1/progress answers while it ran


def post_with_progress(host: Host, body: dict, on_sample=None) -> Render:
    """POST /sdapi/v1/framepack (it answers when the video exists), sampling SD.Next's progress meanwhile."""
    samples: list[dict] = []
    done = threading.Event()

    def sample() -> None:
        with host.client(timeout=10) as client:
            while not done.is_set():
                try:
                    answer = client.get("/sdapi/v1/progress", params={"skip_current_image": "true"})
                    if answer.status_code == 200:
                        samples.append(answer.json())
                        if on_sample is not None:
                            on_sample(answer.json(), client)
                except httpx.HTTPError:
                    pass
                done.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        with host.client(timeout=RENDER_TIMEOUT_S) as client:
            response = client.post(PREFIX, json=body)
    finally:
        done.set()
        sampler.join(15)
    return Render(response, time.monotonic() - started, samples)


@pytest.fixture(scope="module")
def render(host: Host) -> Render:
    result = post_with_progress(host, {**RENDER_FIELDS, "init_image": init_image_b64()})
    if result.response.status_code != 200:
        pytest.fail(f"POST {PREFIX}: {result.response.status_code} {result.response.text[:2000]}")
    return result


def extension_errors(lines: list[str]) -> list[str]:
    """Error lines about this extension: installer errors and failures, script load errors, FramePack errors."""
    bad = []
    for line in lines:
        lowered = line.lower()
        about_us = EXTENSION_NAME in lowered or "framepack" in lowered
        if re.search(r"\b(ERROR|CRITICAL)\b", line) and about_us:
            bad.append(line)
        elif "Extension installer error" in line or "Extension installer exception" in line:
            bad.append(line)
        elif "Setup complete with errors" in line and "ext:" in line:
            bad.append(line)
        elif about_us and ("Traceback" in line or "ModuleNotFoundError" in line or "No module named" in line):
            bad.append(line)
    return bad


# --- install and start ---------------------------------------------------------------------------------------------


def test_sdnext_runs_the_installer_which_succeeds_and_leaves_every_import_working(host: Host):
    result = host.installer_result
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, output
    errors = re.search(r"INSTALLER_ERRORS=(.*)", result.stdout)
    assert errors is not None, output
    assert json.loads(errors.group(1)) == [], output
    probe = host.import_probe
    assert probe.returncode == 0 and "imports ok" in probe.stdout, f"{probe.stdout}\n{probe.stderr}\n--\n{output}"


def test_no_extension_error_in_the_host_log_at_start(host: Host):
    lines = host.log_lines()
    assert any("Startup time:" in line for line in lines)
    bad = extension_errors(lines)
    assert bad == [], "\n".join(bad)
    loaded = [line for line in lines if "FramePack: REST routes registered" in line]
    assert loaded, "the extension never logged its route registration"


def test_the_framepack_tab_is_in_the_ui_config(host: Host):
    with host.gradio_session() as session:
        config = session.get("/config")
    assert config.status_code == 200
    assert TAB_LABEL in top_level_tabs(config.json())


def top_level_tabs(config: dict) -> list[str]:
    """Labels of the tabs in SD.Next's top tab bar (`gr.Tabs(elem_id="tabs")`; the built-in FramePack is a sub-tab
    of its Video tab, so a label anywhere in the page proves nothing)."""
    components = {c["id"]: c for c in config["components"]}
    bar = [c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "tabs"]
    assert len(bar) == 1, bar

    def find(node: dict) -> dict | None:
        if node["id"] == bar[0]:
            return node
        return next(filter(None, (find(child) for child in node.get("children", []))), None)

    node = find(config["layout"])
    assert node is not None
    return [components[child["id"]]["props"].get("label") for child in node.get("children", [])]


def test_the_host_api_auth_applies_to_the_routes_and_file_downloads(host: Host):
    with host.client(auth=False) as anonymous:
        assert anonymous.post(PREFIX, json=RENDER_FIELDS).status_code == 401
        assert anonymous.get(f"{PREFIX}/jobs").status_code == 401
        assert anonymous.get("/sdapi/v1/progress").status_code == 401
        assert anonymous.get("/file=README.md").status_code == 401
    with httpx.Client(base_url=host.url, auth=(USER, "wrong"), timeout=30) as wrong:
        assert wrong.get(f"{PREFIX}/jobs").status_code == 401
    with host.client() as client:
        assert client.get(f"{PREFIX}/jobs").status_code == 200


# --- a render --------------------------------------------------------------------------------------------------------


def test_a_render_without_model_uses_the_self_test_default_and_lands_in_the_video_folder(host: Host, render: Render):
    body = render.response.json()
    video = host.video_dir() / body["filename"]
    assert video.is_file(), (video, body)
    plan = planned(RENDER_FIELDS)
    frames, width, height, codec, _ = decode_video(video)
    assert (frames, width, height, codec) == (plan.output_frames, plan.width, plan.height, "h264")
    with host.client() as client:
        job = client.get(f"{PREFIX}/jobs/{body['id']}").json()
    assert job["state"] == "finished"
    assert job["request"]["model"] == "tiny", job["request"]


def test_file_download_serves_the_video(host: Host, render: Render):
    video = host.video_dir() / render.response.json()["filename"]
    with host.gradio_session() as session:
        served = session.get(f"/file={video}")
    assert served.status_code == 200
    assert served.content == video.read_bytes()


def test_progress_shows_the_job_title_while_it_runs(host: Host, render: Render):
    titles = [sample["state"]["job"] for sample in render.progress]
    assert any(JOB_TITLE.lower() in title.lower() for title in titles), sorted(set(titles))
    running = [s for s in render.progress if JOB_TITLE.lower() in s["state"]["job"].lower()]
    assert any(0 < s["progress"] < 1 for s in running), [(s["state"], s["progress"]) for s in running]


def test_history_lists_the_outputs_of_the_job(host: Host, render: Render):
    video = (host.video_dir() / render.response.json()["filename"]).resolve()
    with host.client() as client:
        history = client.get("/sdapi/v1/history").json()
    ours = [event for event in history if JOB_TITLE.lower() in event["job"].lower()]
    assert ours, history[-10:]
    listed = {host.resolve(path) for event in ours for path in event["outputs"]}
    assert video in listed, (video, ours)
    task_ids = {event["id"] for event in ours if video in {host.resolve(p) for p in event["outputs"]}}
    job_id = render.response.json()["id"]
    assert job_id in task_ids, (job_id, ours)  # SD.Next's task id is the FramePack job id
    with host.client() as client:
        by_id = client.get("/sdapi/v1/history", params={"id": job_id}).json()
    assert {event["op"] for event in by_id} >= {"begin", "output", "end"}, by_id


# --- interrupt -------------------------------------------------------------------------------------------------------


def test_interrupt_cancels_a_running_job(host: Host):
    interrupted_at: list[float] = []

    def interrupt_once_running(sample: dict, client: httpx.Client) -> None:
        if interrupted_at:
            return
        jobs = client.get(f"{PREFIX}/jobs").json()["jobs"]
        running = [job for job in jobs if job["state"] == "running" and job["progress"]["done_steps"] > 0]
        if running:
            assert client.post("/sdapi/v1/interrupt").status_code == 204
            interrupted_at.append(time.monotonic())

    before = set(host.video_dir().glob("*"))
    result = post_with_progress(host, {**LONG_FIELDS, "init_image": init_image_b64()}, interrupt_once_running)
    assert interrupted_at, f"the job was never seen running: {result.response.status_code} {result.response.text[:500]}"
    assert result.response.status_code == 409, result.response.text[:1000]
    body = result.response.json()
    with host.client() as client:
        job = client.get(f"{PREFIX}/jobs/{body['id']}").json()
    assert job["state"] == "cancelled", job
    new_videos = [p for p in set(host.video_dir().glob("*")) - before if p.suffix in (".mp4", ".webm", ".mkv", ".mov")]
    assert new_videos == []


# --- the older extension's REST client ----------------------------------------------------------------------------


def logged_dicts(output: str, label: str) -> list[Any]:
    """The Python literals create-video.py logged as `<label>: {...}`."""
    values = []
    for match in re.finditer(rf"INFO: {label}: (.*)", output):
        try:
            values.append(ast.literal_eval(match.group(1)))
        except (ValueError, SyntaxError):
            values.append(match.group(1))
    return values


def test_the_old_extensions_create_video_completes_without_a_model_field(host: Host, tmp_path: Path):
    script = os.environ.get(OLD_CREATE_VIDEO_ENV)
    if not script or not Path(script).is_file():
        pytest.skip(f"set {OLD_CREATE_VIDEO_ENV} to create-video.py of github.com/vladmandic/sd-extension-framepack")
    init = tmp_path / "init.png"
    init.write_bytes(base64.b64decode(init_image_b64()))
    env = {**host_env(host.root), "SDAPI_URL": host.url, "SDAPI_USR": USER, "SDAPI_PWD": PASSWORD}
    command = [host.python, script, "--init", str(init), "--prompt", "a paper boat", "--duration", "1",
               "--resolution", "128", "--steps", "2"]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    responses = logged_dicts(output, "response")
    # its post() answers {"error": status, "reason": ..., "url": ...} for anything but 200
    assert len(responses) == 1 and isinstance(responses[0], dict) and responses[0].get("error") is None, output
    video = (host.video_dir() / responses[0]["filename"]).resolve()
    assert video.is_file(), output
    frames, *_ = decode_video(video)
    assert frames == planned({"duration": 1, "resolution": 128, "fps": 30}).output_frames
    events = [event for event in logged_dicts(output, "history") if isinstance(event, dict)]
    listed = [event for event in events if video in {host.resolve(path) for path in event.get("outputs", [])}]
    assert listed and all(JOB_TITLE.lower() in event["job"].lower() for event in listed if event["id"]), output
    # what it reports to its user at the end ("you can download output files using /file={filename}")
    found = logged_dicts(output, "outputs")
    assert len(found) == 1 and isinstance(found[0], list), output
    recorded = [path for path in found[0] if host.resolve(path) == video]
    assert recorded, output[-3000:]
    with host.gradio_session() as session:
        served = session.get(f"/file={recorded[0]}")
    assert served.status_code == 200 and served.content == video.read_bytes()


def test_no_extension_error_in_the_host_log_after_the_jobs(host: Host):
    bad = extension_errors(host.log_lines())
    assert bad == [], "\n".join(bad)
