"""create-video.py, the REST client: flags from the request model, base64 images, events/polling, downloads,
exit codes; end to end against a live `python -m framepack serve` with the tiny self-test model."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_live_server import LiveServer, free_port, wait_for_job
from helpers import decode_video, pattern_image, tiny_home

from api.routes import PREFIX
from framepack.plan import make_plan
from framepack.request import GenerateRequest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "create-video.py"
TINY_ARGS = ["--model", "tiny", "--resolution", "128", "--latent-window-size", "3", "--steps", "2", "--duration", "0.8"]
QUICK_ARGS = [
    "--model",
    "tiny",
    "--resolution",
    "128",
    "--latent-window-size",
    "1",
    "--steps",
    "1",
    "--duration",
    "0.1",
]


def load_script():
    spec = importlib.util.spec_from_file_location("create_video", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["create_video"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


cv = load_script()


# --- no server -------------------------------------------------------------------------------------------------


def test_every_request_field_is_a_flag_with_the_models_help_and_no_default_of_its_own():
    parser = cv.build_parser()
    help_text = parser.format_help()
    for name, info in GenerateRequest.model_fields.items():
        if name == "output_dir":  # the server chooses its folder; --output-dir is the local download folder
            continue
        flag = "--keyframe" if name == "keyframes" else "--" + name.replace("_", "-")
        assert flag in help_text, flag
        if name != "keyframes":
            assert info.description.split()[0] in help_text
    args = parser.parse_args([])
    assert all(getattr(args, name) is None for name in GenerateRequest.model_fields if name != "keyframes")
    assert args.download_dir == Path("outputs") and args.server == os.environ.get(
        "FRAMEPACK_SERVER", "http://127.0.0.1:7860"
    )


def test_body_has_the_given_fields_and_images_as_data_urls(tmp_path):
    image = pattern_image(tmp_path / "start.png", 40, 30)
    key = tmp_path / "key.jpg"
    from PIL import Image

    Image.open(image).convert("RGB").save(key)
    request_file = tmp_path / "request.json"
    request_file.write_text(
        json.dumps({"request": {"prompt": "from file", "seed": 5, "output_dir": "/srv", "keyframes": {"1": str(key)}}})
    )
    args = cv.build_parser().parse_args(
        ["--request-file", str(request_file), "--init-image", str(image), "--keyframe", f"0={key}", "--steps", "3",
         "--no-preview",
         "--output-dir", str(tmp_path / "dl")]
    )  # fmt: skip
    body = cv.build_request_body(args)
    assert body["prompt"] == "from file" and body["seed"] == 5 and body["steps"] == 3 and body["preview"] is False
    assert "output_dir" not in body and "duration" not in body  # unset fields are left to the server's model
    header, _, data = body["init_image"].partition(",")
    assert header == "data:image/png;base64" and base64.b64decode(data) == image.read_bytes()
    assert set(body["keyframes"]) == {"0", "1"} and all(
        v.startswith("data:image/jpeg;base64,") for v in body["keyframes"].values()
    )
    GenerateRequest(**body)  # still a valid request for the server
    raw = base64.b64encode(image.read_bytes()).decode()
    assert cv.image_payload(raw, "init_image") == raw  # base64 passes through


def run_client(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("FRAMEPACK_SERVER", "FRAMEPACK_AUTH", "FRAMEPACK_TOKEN")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--no-progress", *args],
        check=False,
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--steps", "0"], "steps: Input should be greater than or equal to 1"),
        (["--init-image", "missing.png"], "init_image: 'missing.png' is not an existing file"),
        (["--keyframe", "x=a.png"], "keyframes"),
        (["--end-image", "b.png"], "end_image needs init_image"),
        (["--user", "nocolon", "--prompt", "p"], "user: credentials must be USER:PASS"),
    ],
)
def test_bad_local_input_exits_2_before_contacting_the_server(tmp_path, args, message):
    result = run_client("--server", "http://127.0.0.1:9", *args, cwd=tmp_path)  # nothing listens on port 9
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr


def mock_server(
    events: str | None, job_states: list[dict], files: dict[str, bytes]
) -> tuple[httpx.MockTransport, list[str]]:
    """A scripted server: SSE text (None = events route fails), the job records GET returns in turn, files."""
    calls: list[str] = []
    states = iter(job_states)

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        if request.url.path.endswith("/events"):
            if events is None:
                return httpx.Response(404, json={"detail": "Not Found"})
            return httpx.Response(200, text=events, headers={"content-type": "text/event-stream"})
        if request.url.path.startswith(f"{PREFIX}/files/"):
            return httpx.Response(200, content=files[request.url.path.removeprefix(f"{PREFIX}/files/")])
        return httpx.Response(200, json=next(states))

    return httpx.MockTransport(handler), calls


def job(state: str, done: int, outputs: list[str] | None = None) -> dict:
    progress = {
        "stage": "sample",
        "done_steps": done,
        "total_steps": 4,
        "section": 0,
        "sections_done": done // 2,
        "sections": 2,
    }
    return {"id": "j1", "state": state, "progress": progress, "outputs": outputs or [], "error": None}


def test_follow_reads_the_event_stream_and_falls_back_to_polling(tmp_path, monkeypatch):
    monkeypatch.setattr(cv, "POLL_INTERVAL_S", 0.0)
    events = (
        ": keep-alive\n\n"
        f"event: progress\ndata: {json.dumps(job('running', 2)['progress'])}\n\n"
        'event: stage\ndata: {"stage": "decode"}\n\n'
        f"event: state\ndata: {json.dumps(job('finished', 4, ['v.mp4']))}\n\n"
        "event: end\ndata: {}\n\n"
    )
    transport, calls = mock_server(events, [job("finished", 4, ["v.mp4", "v_frames/00000.png"])], {})
    bar = cv.ProgressBar(enabled=False)
    with cv.FramePackClient("http://test", transport=transport) as client:
        final = cv.follow(client, job("queued", 0), bar)
    assert final["state"] == "finished" and calls == [f"GET {PREFIX}/jobs/j1/events", f"GET {PREFIX}/jobs/j1"]
    assert bar.progress.stage == "sample" and bar.bar.n == 4 and bar.bar.total == 4

    transport, calls = mock_server(None, [job("running", 1), job("running", 3), job("failed", 3)], {})
    with cv.FramePackClient("http://test", transport=transport) as client:
        final = cv.follow(client, job("queued", 0), cv.ProgressBar(enabled=False))
    assert final["state"] == "failed" and calls.count(f"GET {PREFIX}/jobs/j1") == 3  # polled once the stream failed

    files = {"v.mp4": b"video", "v_frames/00000.png": b"png"}
    transport, _ = mock_server(None, [], files)
    with cv.FramePackClient("http://test", transport=transport) as client:
        paths = [client.download(name, tmp_path) for name in files]
    assert [p.read_bytes() for p in paths] == [b"video", b"png"] and paths[1] == tmp_path / "v_frames" / "00000.png"
    assert not list(tmp_path.rglob("*.part"))


def test_the_frames_folder_output_expands_to_its_images_and_credentials_are_sent():
    job = {"outputs": ["a.b.mp4", "a.b", "a.b.json"], "request": {"save_frames": "jpeg"}, "plan": {"output_frames": 3}}
    assert cv.output_files(job) == [
        ("a.b.mp4", ["a.b.mp4"]),
        ("a.b", ["a.b/a.b-00000.jpg", "a.b/a.b-00001.jpg", "a.b/a.b-00002.jpg"]),
        ("a.b.json", ["a.b.json"]),
    ]
    assert cv.local_path(Path("dl"), "../x/./y.mp4") == Path("dl/x/y.mp4")
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(202, json={"id": "j"})

    for options, expected in (
        ({"token": "t0k"}, "Bearer t0k"),
        ({"auth": ("u", "p")}, "Basic " + base64.b64encode(b"u:p").decode()),
    ):
        with cv.FramePackClient("http://test", transport=httpx.MockTransport(handler), **options) as client:
            client.submit({})
        assert seen[-1] == expected


def test_server_error_lines_come_from_the_json_error():
    response = httpx.Response(
        422, json={"error": {"kind": "invalid", "field": "codec_options", "message": "unknown option 'bogus'"}}
    )
    assert cv.server_error(response).line() == "codec_options: unknown option 'bogus' (HTTP 422)"
    assert (
        cv.server_error(httpx.Response(401, json={"detail": "Not authenticated"})).line()
        == "Not authenticated (HTTP 401)"
    )


# --- live server -----------------------------------------------------------------------------------------------


def start_server(tmp: Path, tiny_model_dir: Path, *extra: str) -> Iterator[str]:
    """A live `python -m framepack serve` whose tiny model is the session's; yields its URL."""
    server = LiveServer(tiny_home(tiny_model_dir, tmp / "home"), tmp / "data", tmp / "server.log", *extra).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir) -> Iterator[str]:
    yield from start_server(tmp_path_factory.mktemp("server"), tiny_model_dir)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, tiny_model_dir) -> Iterator[str]:
    yield from start_server(tmp_path_factory.mktemp("auth-server"), tiny_model_dir, "--auth", "alice:s3cret")


def outputs_of(result: subprocess.CompletedProcess) -> list[Path]:
    return [Path(line.removeprefix("output: ")) for line in result.stdout.splitlines() if line.startswith("output: ")]


def job_id_of(result: subprocess.CompletedProcess) -> str:
    return next(line.removeprefix("job: ") for line in result.stdout.splitlines() if line.startswith("job: "))


def test_image_to_video_downloads_the_planned_video(server, tmp_path):
    image = pattern_image(tmp_path / "start.png", 200, 150)
    result = run_client("--server", server, "--prompt", "a boat", "--init-image", str(image), *TINY_ARGS,
                        "--filename", "boat",
                        "--output-dir", str(tmp_path / "dl"), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    paths = outputs_of(result)
    recorded = httpx.get(f"{server}{PREFIX}/jobs/{job_id_of(result)}", timeout=10).json()
    assert recorded["state"] == "finished" and len(paths) == len(recorded["outputs"]) >= 1
    assert all(path.is_file() and path.is_relative_to(tmp_path / "dl") for path in paths)
    video = next(path for path in paths if path.suffix == ".mp4")
    assert video.name == "boat.mp4"
    request = GenerateRequest(init_image=str(image), resolution=128, latent_window_size=3, steps=2, duration=0.8)
    planned = make_plan(request, image_size=(200, 150)).output_frames
    frames, width, height, codec, _ = decode_video(video)
    assert frames == planned == recorded["plan"]["output_frames"] == 25 and (width, height, codec) == (144, 112, "h264")


def test_text_to_video_downloads_video_raw_sidecar_and_frames_to_the_default_folder(server, tmp_path):
    result = run_client(
        "--server", server, "--prompt", "a city at night", *TINY_ARGS, "--save-raw", "--save-frames", "png",
        "--filename", "city",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    paths = outputs_of(result)
    assert all(path.parts[0] == "outputs" and (tmp_path / path).exists() for path in paths)
    assert {path.name for path in paths} == {"city.mp4", "city.safetensors", "city.json", "city"}
    assert decode_video(tmp_path / "outputs" / "city.mp4")[0] == 25
    frames = sorted((tmp_path / "outputs" / "city").iterdir())
    assert [f.name for f in frames] == [f"city-{i:05d}.png" for i in range(25)]
    assert json.loads((tmp_path / "outputs" / "city.json").read_text())["request"]["prompt"] == "a city at night"


def test_the_jobs_enhanced_prompts_and_warnings_are_printed(server, tmp_path):
    enhanced = run_client("--server", server, "--prompt", "a kite", *QUICK_ARGS, "--enhance", "on", "--enhancer",
                          "tiny", "--enhance-max-tokens", "16", "--filename", "kite", cwd=tmp_path)  # fmt: skip
    assert enhanced.returncode == 0, enhanced.stderr
    (line,) = [line for line in enhanced.stdout.splitlines() if line.startswith("prompt of sections")]
    text = json.loads((tmp_path / "outputs" / "kite.json").read_text())["request"]["enhanced_prompts"]["a kite"]
    assert line == f"prompt of sections 0 (by tiny (SELF-TEST: noise)): {text}"
    missing = run_client("--server", server, "--prompt", "a kite", *QUICK_ARGS, "--enhance", "on", "--enhancer",
                         "nobody/missing-vlm", cwd=tmp_path)  # fmt: skip
    assert missing.returncode == 0, missing.stderr
    assert "warning: enhance: enhancer nobody/missing-vlm is not available" in missing.stdout


def test_no_wait_prints_only_the_job_id(server, tmp_path):
    result = run_client("--server", server, "--prompt", "x", *QUICK_ARGS, "--no-wait", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert httpx.get(f"{server}{PREFIX}/jobs/{job_id}", timeout=10).json()["id"] == job_id
    assert not (tmp_path / "outputs").exists()


def test_server_side_refusal_exits_2_with_the_field(server, tmp_path):
    result = run_client("--server", server, "--prompt", "x", *QUICK_ARGS, "--codec-options", "bogus=1", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = result.stderr.strip()
    assert line.startswith("error: ") and "codec_options" in line and len(line.splitlines()) == 1


def test_ctrl_c_cancels_the_job_on_the_server(server, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("FRAMEPACK_AUTH", "FRAMEPACK_TOKEN")}
    command = [sys.executable, str(SCRIPT), "--no-progress", "--server", server, "--prompt", "long", "--model", "tiny",
               "--resolution", "128", "--latent-window-size", "3", "--steps", "50", "--duration", "20"]  # fmt: skip
    client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        job_id = client.stdout.readline().strip().removeprefix("job: ")
        time.sleep(1.0)
        client.send_signal(signal.SIGINT)
        _, stderr = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 130, stderr
    assert f"cancelled job {job_id}" in stderr
    with httpx.Client(base_url=server, timeout=10) as client:
        assert wait_for_job(client, job_id, timeout=30)["state"] == "cancelled"


@pytest.mark.parametrize("credentials", [None, "alice:wrong"])
def test_missing_or_wrong_credentials_exit_2_with_the_401_reason(auth_server, tmp_path, credentials):
    extra = ["--user", credentials] if credentials else []
    result = run_client("--server", auth_server, "--prompt", "x", *QUICK_ARGS, *extra, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = result.stderr.strip()
    assert line.startswith("error: ") and "401" in line and len(line.splitlines()) == 1


def test_right_credentials_from_the_environment(auth_server, tmp_path):
    result = run_client(
        "--prompt",
        "x",
        *QUICK_ARGS,
        env={"FRAMEPACK_SERVER": auth_server, "FRAMEPACK_AUTH": "alice:s3cret"},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    videos = [path for path in outputs_of(result) if path.suffix == ".mp4"]
    assert videos and decode_video(tmp_path / videos[0])[0] == 5  # one section of 4 frames + the start frame


def test_unreachable_server_exits_3_with_one_line(tmp_path):
    result = run_client("--server", f"http://127.0.0.1:{free_port()}", "--prompt", "x", cwd=tmp_path)
    assert result.returncode == 3
    line = result.stderr.strip()
    assert line.startswith("error: ") and "cannot reach" in line and len(line.splitlines()) == 1
