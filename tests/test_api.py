"""REST API over a real JobManager and Runner on the tiny self-test model (FastAPI TestClient, no network).

Covers the blocking and queued routes, SD.Next's field names, text-to-video, every route's errors in the one JSON
shape, the body limit, auth, the download route's traversal refusals and the image kinds clients send.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from api_live_server import wait_for_job
from fastapi.testclient import TestClient
from helpers import FAST, decode_video, pattern_image, tiny_home
from PIL import Image

from api.aliases import translate
from api.auth import Credentials
from api.errors import ApiError
from api.intake import api_request
from api.routes import PREFIX, resolve_output_file
from api.server import create_app
from framepack.errors import FieldError, UserError
from framepack.jobs.events import EVENT_MODELS, EndEvent, ProgressEvent, parse_event
from framepack.jobs.manager import JobManager
from framepack.jobs.models import JobState
from framepack.runner import Runner


def b64_image(image: Image.Image, fmt: str = "PNG", prefix: bool = False, **save) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"data:image/{fmt.lower()};base64,{encoded}" if prefix else encoded


def assert_error(response, status: int, kind: str, field: str | None = "any") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["kind"] == kind, error
    assert error["message"]
    if field != "any":
        assert error["field"] == field, error
    return error


class Server:
    """A started app over a real manager whose runner uses the tiny model."""

    def __init__(
        self,
        root: Path,
        tiny_model_dir: Path,
        runner_class: type[Runner] = Runner,
        max_queued: int = 20,
        start: bool = True,
        **app_options,
    ):
        self.output_dir = root / "out"
        self.runner = runner_class(
            device="cpu", output_dir=self.output_dir, home=tiny_home(tiny_model_dir, root / "home")
        )
        self.manager = JobManager(root / "data", self.runner, max_queued=max_queued)
        self.app = create_app(self.manager, self.output_dir, manage_lifecycle=start, **app_options)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("api"), tiny_model_dir)
    with TestClient(server.app) as client:
        server.client = client
        yield server


@pytest.fixture(scope="module")
def idle(tiny_model_dir, tmp_path_factory):
    """An app whose manager is never started: jobs stay queued, nothing generates (max 2 queued)."""
    server = Server(tmp_path_factory.mktemp("idle"), tiny_model_dir, max_queued=2, start=False)
    with TestClient(server.app) as client:
        server.client = client
        yield server


# ------------------------------------------------------------------------------------------------ generation


def test_blocking_route_t2v_returns_a_downloadable_video_with_the_planned_frames(server, tmp_path):
    response = server.client.post(PREFIX, json=FAST)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "finished" and body["error"] is None
    assert body["plan"]["mode"] == "t2v"
    assert re.fullmatch(rf"framepack-\d{{8}}-\d{{6}}-{body['plan']['seed']}-{body['id'][:8]}\.mp4", body["filename"])
    assert body["url"] == f"{PREFIX}/files/{body['filename']}"
    assert body["message"].startswith("finished in") and body["timings"]["total"] > 0
    download = server.client.get(body["url"])
    assert download.status_code == 200 and download.headers["content-type"] == "video/mp4"
    video = tmp_path / "t2v.mp4"
    video.write_bytes(download.content)
    frames, width, height, codec, _ = decode_video(video)
    assert (frames, width, height, codec) == (
        body["plan"]["output_frames"],
        body["plan"]["width"],
        body["plan"]["height"],
        "h264",
    )
    job = server.client.get(f"{PREFIX}/jobs/{body['id']}").json()
    assert job["state"] == "finished" and job["outputs"] == body["outputs"]


def test_queued_route_answers_202_with_location_then_the_job_finishes(server, tmp_path):
    response = server.client.post(f"{PREFIX}/jobs", json={**FAST, "save_raw": True})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] in ("queued", "running") and job["id"]
    location = response.headers["location"]
    assert location == f"{PREFIX}/jobs/{job['id']}"
    job = wait_for_job(server.client, job["id"], timeout=60)
    assert job["state"] == "finished", job
    assert sorted(Path(output).suffix for output in job["outputs"]) == [".json", ".mp4", ".safetensors"]
    stem = job["request"]["filename"]
    sidecar = server.client.get(f"{PREFIX}/files/{stem}.json").json()
    assert sidecar["plan"] == job["summary"]
    video = tmp_path / "queued.mp4"
    video.write_bytes(server.client.get(f"{PREFIX}/files/{stem}.mp4").content)
    assert decode_video(video)[0] == job["plan"]["output_frames"]
    listed = server.client.get(f"{PREFIX}/jobs").json()["jobs"]
    assert job["id"] in [item["id"] for item in listed]
    events = server.client.get(f"{location}/events")  # an ended job: state then end, at once
    assert events.headers["content-type"].startswith("text/event-stream")
    names = [line.split(": ", 1)[1] for line in events.text.splitlines() if line.startswith("event:")]
    assert names == ["state", "end"]
    assert_error(server.client.get(f"{location}/preview"), 404, "not_found")  # previews go when the job ends


def test_sdnext_payload_with_peer_field_names_and_rgba_data_url(server, tmp_path):
    rgba = Image.open(pattern_image(tmp_path / "p.png", 160, 120)).convert("RGBA")
    rgba.putalpha(128)
    payload = {
        "prompt": "a kite",
        "init_image": b64_image(rgba, prefix=True),
        "end_image": None,
        "variant": "forward-only",
        "start_weight": 0.9,
        "vision_weight": 1.5,
        "section_prompt": "flying\nlanding",
        "latent_ws": 3,
        "cfg_distilled": 8.0,
        "mp4_fps": 15,
        "mp4_opt": "crf:20",
        "mp4_ext": "mkv",
        "mp4_sf": True,
        "mp4_frames": False,
        "mp4_interpolate": 0,
        "vlm_enhance": False,
        "use_teacache": None,
        "negative_prompt": None,
        "seed": 7,
        "resolution": 128,
        "duration": 0.8,
        "steps": 2,
        "model": "tiny",
    }
    response = server.client.post(PREFIX, json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    job = server.client.get(f"{PREFIX}/jobs/{body['id']}").json()
    request = job["request"]
    assert (request["variant"], request["init_strength"], request["vision_strength"]) == ("f1", 0.9, 1.5)
    assert (request["fps"], request["codec_options"], request["container"], request["save_raw"]) == (
        15,
        "crf:20",
        "mkv",
        True,
    )
    assert (request["section_prompts"], request["latent_window_size"], request["guidance"]) == (
        "flying\nlanding",
        3,
        8.0,
    )
    assert request["init_image"].startswith("<image:")  # responses do not echo megabytes of base64
    assert body["plan"]["mode"] == "i2v" and body["plan"]["variant"] == "f1"
    assert body["filename"].endswith(".mkv")
    assert any(output.endswith(".safetensors") for output in body["outputs"])
    video = tmp_path / "peer.mkv"
    video.write_bytes(server.client.get(body["url"]).content)
    assert decode_video(video)[0] == body["plan"]["output_frames"]


def test_blocking_route_reports_a_failed_job_with_its_status_never_200(tiny_model_dir, tmp_path):
    class Failing(Runner):
        def run(self, request, **_kwargs):
            if request.prompt == "bug":
                raise RuntimeError("boom")
            raise UserError("the engine refused")

    failing = Server(tmp_path, tiny_model_dir, runner_class=Failing)
    with TestClient(failing.app) as client:
        response = client.post(PREFIX, json={**FAST, "prompt": "bug"})
        assert_error(response, 500, "internal")
        assert response.json()["id"]
        assert client.get(f"{PREFIX}/jobs/{response.json()['id']}").json()["state"] == "failed"
        response = client.post(PREFIX, json=FAST)
        assert_error(response, 422, "invalid")
        assert "the engine refused" in response.json()["error"]["message"]


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"resolution": 64}, "resolution"),
        ({"variant": "sideways"}, "variant"),
        ({"duration": "long"}, "duration"),
        ({"foo": 1}, "foo"),
        ({"mp4_fps": 30, "fps": 24}, "fps"),
        ({"use_teacache": "yes"}, "use_teacache"),
        ({"attention": "warp-speed"}, "attention"),
        ({"output_dir": "/tmp"}, "output_dir"),
        ({"model": "/etc/passwd"}, "model"),
        ({"init_image": "not an image"}, "init_image"),
        ({"init_image": base64.b64encode(b"no image at all").decode()}, "init_image"),
        ({"keyframes": {"0": base64.b64encode(b"junk").decode()}}, "keyframes.0"),
        ({"codec": "no-such-codec"}, "codec"),
        ({"filename": "../escape"}, "filename"),
    ],
)
def test_bad_input_is_422_naming_the_field(idle, payload, field):
    for route in (f"{PREFIX}/jobs", f"{PREFIX}/plan", PREFIX):
        assert_error(idle.client.post(route, json={**FAST, **payload}), 422, "invalid", field)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(idle, constant):
    body = f'{{"model": "tiny", "guidance": {constant}}}'.encode()
    for route in (f"{PREFIX}/jobs", PREFIX, f"{PREFIX}/plan"):
        error = assert_error(
            idle.client.post(route, content=body, headers={"content-type": "application/json"}), 422, "invalid", "body"
        )
        assert constant.lstrip("-") in error["message"]


def test_nan_is_refused_by_the_request_model_too():
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(Exception) as caught:
            api_request({"guidance": value})
        assert "guidance" in str(caught.value)


@pytest.mark.parametrize("body", [b"", b"[1, 2]", b'"text"', b"{not json", b"\xff\xfe"])
def test_bodies_that_are_not_a_json_object_are_422(idle, body):
    assert_error(idle.client.post(f"{PREFIX}/jobs", content=body), 422, "invalid", "body")


def test_server_file_paths_are_refused_as_images(idle, tmp_path):
    picture = pattern_image(tmp_path / "on-server.png", 64, 64)
    for payload, field in [
        ({"init_image": str(picture)}, "init_image"),
        ({"init_image": b64_image(Image.open(picture)), "end_image": str(picture)}, "end_image"),
        ({"keyframes": {"0": str(picture)}}, "keyframes.0"),
        ({"init_image": "/etc/passwd"}, "init_image"),
        ({"init_image": "."}, "init_image"),
    ]:
        error = assert_error(idle.client.post(f"{PREFIX}/jobs", json={**FAST, **payload}), 422, "invalid", field)
        assert "base64" in error["message"]


def test_messages_are_plain_sentences_without_library_prefixes(idle):
    error = assert_error(idle.client.post(f"{PREFIX}/jobs", json={**FAST, "aspect_ratio": "7"}), 422, "invalid")
    assert error["message"] == "aspect_ratio: aspect_ratio must be 'auto' or W:H with positive numbers, e.g. 16:9"
    text = base64.b64encode(b"plain text, not a picture").decode()
    error = assert_error(idle.client.post(f"{PREFIX}/jobs", json={**FAST, "init_image": text}), 422, "invalid")
    assert error["message"] == "init_image: not a readable image (PNG, JPEG, WebP, ...)"


def test_unknown_jobs_and_routes_are_404_json(idle):
    client = idle.client
    assert_error(client.get(f"{PREFIX}/jobs/nope"), 404, "not_found", "id")
    assert_error(client.delete(f"{PREFIX}/jobs/nope"), 404, "not_found", "id")
    assert_error(client.post(f"{PREFIX}/jobs/nope/cancel"), 404, "not_found", "id")
    assert_error(client.get(f"{PREFIX}/jobs/nope/events"), 404, "not_found", "id")
    assert_error(client.get(f"{PREFIX}/jobs/nope/preview"), 404, "not_found", "id")
    assert_error(client.get(f"{PREFIX}/files/nope.mp4"), 404, "not_found", "path")
    assert_error(client.get("/no/such/route"), 404, "not_found")
    assert_error(client.put(PREFIX), 405, "method_not_allowed")
    assert_error(client.post(f"{PREFIX}/jobs/nope/cancel?keep_partial=maybe"), 422, "invalid", "keep_partial")


def test_queue_full_is_429_with_retry_after_and_cancel_conflicts_are_409(idle):
    client = idle.client
    for job in client.get(f"{PREFIX}/jobs").json()["jobs"]:  # start from an empty queue
        if job["state"] == "queued":
            client.delete(f"{PREFIX}/jobs/{job['id']}")
    first = client.post(f"{PREFIX}/jobs", json=FAST)
    second = client.post(f"{PREFIX}/jobs", json=FAST)
    assert (first.status_code, second.status_code) == (202, 202)
    assert (first.json()["queue_position"], second.json()["queue_position"]) == (0, 1)
    full = client.post(f"{PREFIX}/jobs", json=FAST)
    assert_error(full, 429, "queue_full")
    assert int(full.headers["retry-after"]) > 0
    cancelled = client.delete(f"{PREFIX}/jobs/{first.json()['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert_error(client.delete(f"{PREFIX}/jobs/{first.json()['id']}"), 409, "conflict")
    assert client.post(f"{PREFIX}/jobs/{second.json()['id']}/cancel?keep_partial=true").json()["state"] == "cancelled"
    assert_error(client.post(f"{PREFIX}/jobs/{second.json()['id']}/cancel"), 409, "conflict")


def test_cancel_of_a_finished_job_is_409_and_so_is_reusing_an_output_name(server):
    body = server.client.post(PREFIX, json={**FAST, "duration": 0.1, "filename": "mine"}).json()
    assert body["filename"] == "mine.mp4"
    assert_error(server.client.delete(f"{PREFIX}/jobs/{body['id']}"), 409, "conflict")
    for route in (PREFIX, f"{PREFIX}/jobs"):
        assert_error(server.client.post(route, json={**FAST, "filename": "mine"}), 409, "conflict", "filename")


def test_a_bug_is_a_500_json_error_without_details(tmp_path, caplog):
    class Broken:
        def list_jobs(self):
            raise RuntimeError("secret internals")

    with TestClient(create_app(Broken(), tmp_path, manage_lifecycle=False)) as client:
        error = assert_error(client.get(f"{PREFIX}/jobs"), 500, "internal")
    assert "secret" not in error["message"] and "RuntimeError" in error["message"]
    assert "secret internals" in caplog.text  # the details go to the server log


def test_model_not_available_is_503_naming_the_model(idle, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    for route in (f"{PREFIX}/jobs", PREFIX):
        error = assert_error(
            idle.client.post(route, json={**FAST, "model": "default"}), 503, "model_unavailable", "model"
        )
        assert "not available" in error["message"]


def test_body_over_the_limit_is_413(tiny_model_dir, tmp_path):
    small = Server(tmp_path, tiny_model_dir, start=False, max_body_bytes=4096)
    with TestClient(small.app) as client:
        big = {**FAST, "prompt": "x" * 5000}
        assert_error(client.post(f"{PREFIX}/jobs", json=big), 413, "too_large")
        assert_error(client.post(PREFIX, json=big), 413, "too_large")

        def chunks():  # no Content-Length: counted while streaming
            yield b'{"prompt": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}'

        assert_error(client.post(f"{PREFIX}/jobs", content=chunks()), 413, "too_large")
        assert client.post(f"{PREFIX}/plan", json=FAST).status_code == 200


def test_auth_protects_every_route(tiny_model_dir, tmp_path):
    guarded = Server(tmp_path, tiny_model_dir, start=False, auth=Credentials(basic=("ann", "s3cret"), token="tok-123"))
    with TestClient(guarded.app) as client:
        for method, path in [
            ("GET", f"{PREFIX}/jobs"),
            ("POST", f"{PREFIX}/jobs"),
            ("POST", PREFIX),
            ("GET", f"{PREFIX}/codecs"),
            ("GET", f"{PREFIX}/files/x.mp4"),
            ("GET", "/openapi.json"),
            ("GET", "/docs"),
        ]:
            response = client.request(method, path, json=FAST)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Basic")
        assert_error(client.get(f"{PREFIX}/jobs", auth=("ann", "wrong")), 401, "unauthorized")
        assert_error(client.get(f"{PREFIX}/jobs", headers={"Authorization": "Bearer nope"}), 401, "unauthorized")
        assert_error(client.get(f"{PREFIX}/jobs", headers={"Authorization": "Basic !!!"}), 401, "unauthorized")
        assert client.get(f"{PREFIX}/jobs", auth=("ann", "s3cret")).status_code == 200
        assert client.get(f"{PREFIX}/jobs", headers={"Authorization": "Bearer tok-123"}).status_code == 200
        assert client.get("/openapi.json", auth=("ann", "s3cret")).status_code == 200
    with pytest.raises(ValueError):
        Credentials.from_options("no-colon")
    assert Credentials.from_options(None, None) is None


# ------------------------------------------------------------------------------------------------ downloads


def test_downloads_cannot_leave_the_output_folder(idle, tmp_path):
    out = idle.output_dir
    (out / "sub").mkdir(parents=True, exist_ok=True)
    (out / "sub" / "ok.txt").write_text("inside")
    (out / ".hidden.partial.mp4").write_text("partial")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    for name, target in [("link-out.txt", secret), ("link-dir", tmp_path), ("link-in.txt", out / "sub" / "ok.txt")]:
        if not (out / name).is_symlink():
            os.symlink(target, out / name)
    client = idle.client
    assert client.get(f"{PREFIX}/files/sub/ok.txt").text == "inside"
    assert client.get(f"{PREFIX}/files/link-in.txt").text == "inside"  # a link that stays inside is fine
    relative_secret = os.path.relpath(secret, out)
    attempts = [
        f"../{relative_secret}",
        f"..%2f{relative_secret}",
        f"%2e%2e/{relative_secret}",
        f"%2e%2e%2f{relative_secret}",
        f"sub/..%2f..%2f{relative_secret}",
        "/etc/passwd",
        "%2fetc%2fpasswd",
        "%2Fetc/passwd",
        "..%5c..%5cetc%5cpasswd",
        "sub%5c..%5cok.txt",
        "sub/ok.txt%00.mp4",
        "link-out.txt",
        "link-dir/secret.txt",
        "sub",
        "sub/",
        ".hidden.partial.mp4",
        "",
    ]
    for attempt in attempts:
        response = client.get(f"{PREFIX}/files/{attempt}")
        assert response.status_code in (404, 405), (attempt, response.status_code)
        assert response.headers["content-type"].startswith("application/json"), attempt
        assert "outside" not in response.text and "root:" not in response.text


@pytest.mark.parametrize(
    ("relative", "raw"),
    [
        ("../secret.txt", b""),
        ("a/../../secret.txt", b""),
        ("/etc/passwd", b""),
        ("..\\secret.txt", b""),
        ("ok.txt\x00", b""),
        ("ok.txt", b"/sdapi/v1/framepack/files/%2e%2e/ok.txt"),
        ("ok.txt", b"/sdapi/v1/framepack/files/x%2Fok.txt"),
        ("ok.txt", b"/sdapi/v1/framepack/files/x%5cok.txt"),
        ("ok.txt", b"/sdapi/v1/framepack/files/ok.txt%00"),
    ],
)
def test_resolve_output_file_refusals(tmp_path, relative, raw):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ok.txt").write_text("ok")
    (tmp_path / "secret.txt").write_text("secret")
    with pytest.raises(ApiError) as caught:
        resolve_output_file(tmp_path / "out", relative, raw)
    assert caught.value.status == 404
    assert resolve_output_file(tmp_path / "out", "ok.txt", b"/sdapi/v1/framepack/files/ok.txt").name == "ok.txt"


# ------------------------------------------------------------------------------------------------ images


def image_kinds(tmp_path: Path) -> dict[str, tuple[str, tuple[int, int]]]:
    """Base64 images of the modes clients send -> (base64, upright (width, height))."""
    base = Image.open(pattern_image(tmp_path / "base.png", 200, 120)).convert("RGB")
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    sixteen = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257).convert("I;16")
    rotated = base.copy()
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view -> upright it is 120x200
    return {
        "rgba": (b64_image(rgba), (200, 120)),
        "grayscale": (b64_image(base.convert("L")), (200, 120)),
        "palette": (b64_image(base.convert("P")), (200, 120)),
        "16-bit": (b64_image(sixteen), (200, 120)),
        "cmyk": (b64_image(base.convert("CMYK"), "JPEG"), (200, 120)),
        "exif-rotated": (b64_image(rotated, "JPEG", prefix=True, exif=exif), (120, 200)),
        "webp": (b64_image(base, "WEBP", prefix=True), (200, 120)),
    }


def test_image_modes_are_accepted_and_exif_orientation_is_honoured(idle, tmp_path):
    for name, (encoded, (width, height)) in image_kinds(tmp_path).items():
        plan = idle.client.post(f"{PREFIX}/plan", json={**FAST, "init_image": encoded, "resolution": 640})
        assert plan.status_code == 200, (name, plan.text)
        planned = plan.json()["plan"]
        assert planned["mode"] == "i2v"
        assert (planned["width"] > planned["height"]) == (width > height), (name, planned["width"], planned["height"])
    encoded = image_kinds(tmp_path)["cmyk"][0]
    accepted = idle.client.post(f"{PREFIX}/jobs", json={**FAST, "init_image": encoded, "end_image": encoded})
    assert accepted.status_code in (202, 429), accepted.text  # validated like any submit (queue may be full)


# ------------------------------------------------------------------------------------------------ the rest


def test_codecs_and_openapi(idle):
    codecs = idle.client.get(f"{PREFIX}/codecs").json()["codecs"]
    libx264 = next(codec for codec in codecs if codec["name"] == "libx264")
    assert libx264["pixel_format"] == "yuv420p" and "mp4" in libx264["containers"]
    schema = idle.client.get("/openapi.json").json()
    body = schema["paths"][f"{PREFIX}/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["steps"]["maximum"] == 100 and body["additionalProperties"] is False
    assert "429" in schema["paths"][f"{PREFIX}/jobs"]["post"]["responses"]
    assert schema["paths"][f"{PREFIX}/jobs"]["post"]["responses"]["422"]["content"]["application/json"]["schema"][
        "$ref"
    ].endswith("ErrorResponse")


def sse_pairs(response) -> list[tuple[str, dict]]:
    """(event, decoded data) of a text/event-stream response, read until it ends."""
    pairs, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: ") and name is not None:
            pairs.append((name, json.loads(line[len("data: ") :])))
            name = None
    return pairs


def test_the_event_models_are_in_openapi_and_every_streamed_event_parses_into_its_model(server):
    schema = server.client.get("/openapi.json").json()
    stream = schema["paths"][f"{PREFIX}/jobs/{{job_id}}/events"]["get"]["responses"]["200"]["content"]
    item = stream["text/event-stream"]["itemSchema"]
    models = [ref["$ref"].removeprefix("#/components/schemas/") for ref in item["properties"]["data"]["anyOf"]]
    assert models == [
        "StateEvent", "StageEvent", "ProgressEvent", "SectionEvent", "FramesEvent", "EnhanceEvent", "EndEvent",
    ]  # fmt: skip
    assert item["properties"]["event"]["enum"] == ["state", "stage", "progress", "section", "frames", "enhance", "end"]
    components = schema["components"]["schemas"]
    assert {"done_steps", "total_steps", "step", "steps", "section", "order", "eta"} <= set(
        components["ProgressEvent"]["required"]
    )
    assert "pixels" not in components["SectionEvent"]["properties"]  # the preview travels by its own route
    assert {"id", "state", "progress"} <= set(components["EndEvent"]["properties"])

    # the job enhances its prompt (the self-test enhancer), so that every kind of event is sent
    job = server.client.post(f"{PREFIX}/jobs", json={**FAST, "enhance": "on", "enhancer": "tiny"}).json()
    with server.client.stream("GET", f"{PREFIX}/jobs/{job['id']}/events") as response:
        pairs = sse_pairs(response)
    events = [parse_event(name, data) for name, data in pairs]
    assert len(events) == len(pairs) > 6 and None not in events  # every data fits the model of its name
    assert [event.event for event in events] == [name for name, _ in pairs]
    assert {type(event) for event in events} == set(EVENT_MODELS.values())
    assert isinstance(events[-1], EndEvent) and events[-1].state == JobState.FINISHED
    progress = [event for event in events if isinstance(event, ProgressEvent)]
    assert progress[-1].done_steps == progress[-1].total_steps == events[-1].progress.total_steps


def test_plan_route_matches_the_generated_frame_count(server, tmp_path):
    request = {**FAST, "duration": 0.8, "fps": 30}
    # the README's formula: sections = max(1, round(duration * fps / (4 * window))), frames = 4 * window * sections + 1
    sections = max(1, round(0.8 * 30 / (4 * 3)))
    expected = 4 * 3 * sections + 1
    assert (sections, expected) == (2, 25)
    plan = server.client.post(f"{PREFIX}/plan", json=request).json()
    assert plan["plan"]["num_sections"] == sections and plan["plan"]["output_frames"] == expected
    assert plan["summary"].startswith(f"{expected} frames")
    body = server.client.post(PREFIX, json=request).json()
    assert body["state"] == "finished", body
    video = tmp_path / "planned.mp4"
    video.write_bytes(server.client.get(body["url"]).content)
    assert decode_video(video)[0] == expected


def test_plan_route_estimates_seconds_from_the_jobs_of_its_kind_that_finished(tiny_model_dir, tmp_path):
    server = Server(tmp_path, tiny_model_dir)
    with TestClient(server.app) as client:
        first = client.post(f"{PREFIX}/plan", json=FAST).json()
        assert first["estimated_seconds"] is None and "estimated_seconds" not in first["plan"]  # none ran yet
        body = client.post(PREFIX, json=FAST).json()
        assert body["state"] == "finished", body
        timings = body["timings"]
        planned = client.post(f"{PREFIX}/plan", json={**FAST, "steps": 6}).json()
    plan = planned["plan"]
    assert planned["estimated_seconds"] == plan["estimated_seconds"]
    steps = 6 * (plan["num_sections"] + 1)  # T2V: the start frame's steps too
    decode, sampling = timings["decode"], timings["sampling"]
    expected = (
        sampling / timings["sampled_steps"] * steps
        + decode / plan["generated_frames"] * plan["generated_frames"]
        + (timings["total"] - sampling - decode)
    )
    assert planned["estimated_seconds"] == pytest.approx(expected, abs=0.051)  # rounded to 0.1 s


def test_alias_translation():
    assert translate(
        {
            "mp4_fps": 24,
            "latent_ws": 5,
            "variant": "Bi-Directional",
            "mp4_frames": True,
            "mp4_video": False,
            "seed": None,
        }
    ) == {
        "fps": 24,
        "latent_window_size": 5,
        "variant": "bidirectional",
        "save_frames": "jpeg",
        "codec": "none",
        "seed": -1,
    }
    assert translate({"mp4_video": True, "styles": [], "attention": "Default", "prompt": None}) == {"attention": "sdpa"}
    assert translate({"use_teacache": False, "attention": "Sage Attention"}) == {"cache": "none", "attention": "sage"}
    assert translate({"use_teacache": True}) == {"cache": "teacache"}
    assert translate({"mp4_codec": "libx265", "mp4_video": False, "mp4_sf": True}) == {
        "codec": "none",
        "save_raw": True,
    }
    for payload, field in [
        ({"cfg_distilled": 5, "guidance": 6}, "guidance"),
        ({"use_cfgzero": True}, "use_cfgzero"),
        ({"variant": "up"}, "variant"),
        ({"mp4_frames": "yes"}, "mp4_frames"),
    ]:
        with pytest.raises(FieldError) as caught:
            translate(payload)
        assert caught.value.field == field
    assert json.loads(json.dumps(translate({"section_prompt": "a\nb"}))) == {"section_prompts": "a\nb"}
