"""Uploads over the REST API (`POST .../uploads`, `upload:<id>` in requests) on a real JobManager and Runner with the
tiny self-test model (FastAPI TestClient, no network).

Covers what an upload is checked for (a real image or video, bytes, pixels, seconds), the 413 as soon as a stream
passes the limit, that refusals leave nothing on disk, `upload:<id>` in every image field and in video fields,
malformed and unknown ids, expiry with an injected clock, and a queued job keeping its upload past the expiry.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import time
from pathlib import Path

import av
import numpy as np
import pytest
from api_live_server import wait_for_job
from fastapi.testclient import TestClient
from helpers import FAST, SMALLEST, decode_video, read_raw_frames, tiny_home
from PIL import Image

from api.auth import Credentials
from api.intake import VIDEO_FIELDS, api_media
from api.routes import PREFIX
from api.server import create_app
from framepack.errors import FieldError
from framepack.jobs.manager import JobManager
from framepack.request import IMAGE_FIELDS, GenerateRequest
from framepack.runner import Runner
from framepack.serve import ServeSettings
from framepack.uploads import REMOVAL_GRACE_SECONDS, STALE_PART_SECONDS, UploadLimits, UploadStore, uploads_folder

UPLOADS = f"{PREFIX}/uploads"
KiB = 1024
LIMITS = UploadLimits(
    max_bytes=256 * KiB,
    max_image_bytes=64 * KiB,
    max_image_pixels=300 * 300,
    max_video_pixels=128 * 128,
    max_video_seconds=3.0,
    expire_seconds=3600.0,
)
START = 1_900_000_000.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = START):
        self.now = now

    def __call__(self) -> float:
        return self.now


def video_bytes(frames: int = 8, width: int = 64, height: int = 48, fps: int = 8, container: str = "mp4") -> bytes:
    """A small real video made with PyAV: H.264 in MP4/Matroska, VP9 in WebM; frames of rising grey levels."""
    codec = "libvpx-vp9" if container == "webm" else "libx264"
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            pixels = np.full((height, width, 3), (index * 29) % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def audio_only_mp4() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), np.float32)
        for index in range(8):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def image_bytes(width: int = 96, height: int = 64, fmt: str = "PNG", noise: bool = False, seed: int = 0) -> bytes:
    if noise:
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        y, x = np.mgrid[0:height, 0:width]
        pixels = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def assert_error(response, status: int, kind: str, field: str | None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["kind"], error["field"]) == (kind, field), error
    return error["message"]


def upload(client: TestClient, data: bytes, filename: str = "clip.mp4", content_type: str = "video/mp4") -> dict:
    response = client.post(UPLOADS, files={"file": (filename, data, content_type)})
    assert response.status_code == 201, response.text
    return response.json()


def folder_names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


class Server:
    """A started app over a real manager whose runner uses the tiny model, its uploads timed by `clock`."""

    def __init__(self, root: Path, tiny_model_dir: Path, limits: UploadLimits = LIMITS, start: bool = True, **app):
        self.root = root
        self.clock = Clock()
        runner = Runner(device="cpu", output_dir=root / "out", home=tiny_home(tiny_model_dir, root / "home"))
        self.manager = JobManager(root / "data", runner)
        self.folder = uploads_folder(root / "data")
        self.store = UploadStore(self.folder, limits, clock=self.clock)
        self.app = create_app(self.manager, root / "out", manage_lifecycle=start, uploads=self.store, **app)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("uploads"), tiny_model_dir)
    with TestClient(server.app) as client:
        server.client = client
        yield server


@pytest.fixture
def fresh(tiny_model_dir, tmp_path):
    """An app of its own whose manager is never started (jobs stay queued), for tests that move the clock."""
    server = Server(tmp_path, tiny_model_dir, start=False)
    with TestClient(server.app) as client:
        server.client = client
        yield server


# ------------------------------------------------------------------------------------------------ receiving


def test_a_video_upload_answers_its_metadata_and_is_stored_under_its_id_only(fresh):
    data = video_bytes(frames=8, width=64, height=48, fps=8)
    response = fresh.client.post(UPLOADS, files={"file": ("../../my holiday.mp4", data, "video/mp4")})
    assert response.status_code == 201, response.text
    info = response.json()
    assert re.fullmatch(r"[0-9a-f]{32}", info["id"])
    assert response.headers["location"] == f"{UPLOADS}/{info['id']}"
    assert {key: info[key] for key in ("kind", "format", "bytes", "width", "height", "frames", "duration")} == {
        "kind": "video",
        "format": "mp4",
        "bytes": len(data),
        "width": 64,
        "height": 48,
        "frames": 8,
        "duration": 1.0,
    }
    assert info["expires_at"] == START + LIMITS.expire_seconds
    assert folder_names(fresh.folder) == [f"{info['id']}.json", f"{info['id']}.mp4"]
    assert (fresh.folder / f"{info['id']}.mp4").read_bytes() == data
    assert fresh.client.get(f"{UPLOADS}/{info['id']}").json() == info


def test_a_webm_upload_counts_its_frames_though_its_header_has_none(fresh):
    data = video_bytes(frames=5, width=64, height=64, fps=10, container="webm")
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].frames == 0  # what the header says
    info = upload(fresh.client, data, "clip.webm", "video/webm")
    assert (info["kind"], info["format"], info["frames"], info["duration"]) == ("video", "mkv", 5, 0.5)


def test_a_raw_body_image_upload_answers_an_image_without_video_fields(fresh):
    data = image_bytes(96, 64, "JPEG")
    response = fresh.client.post(UPLOADS, content=data, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 201, response.text
    info = response.json()
    assert {key: info[key] for key in ("kind", "format", "bytes", "width", "height")} == {
        "kind": "image",
        "format": "jpg",
        "bytes": len(data),
        "width": 96,
        "height": 64,
    }
    assert "frames" not in info and "duration" not in info
    assert folder_names(fresh.folder) == [f"{info['id']}.jpg", f"{info['id']}.json"]


# ------------------------------------------------------------------------------------------------ refusals


def test_past_the_byte_limit_is_413_naming_it_and_leaves_nothing(fresh):
    too_big = b"\0" * (LIMITS.max_bytes + 1)
    raw = fresh.client.post(UPLOADS, content=too_big, headers={"Content-Type": "video/mp4"})
    message = assert_error(raw, 413, "too_large", "file")
    assert message == f"file: an upload may be at most {LIMITS.max_bytes} bytes"
    form = fresh.client.post(UPLOADS, files={"file": ("clip.mp4", too_big, "video/mp4")})
    assert str(LIMITS.max_bytes) in assert_error(form, 413, "too_large", "file")
    chunked = fresh.client.post(UPLOADS, content=iter([b"\0" * 64 * KiB] * 5), headers={"Content-Type": "video/mp4"})
    assert "content-length" not in chunked.request.headers
    assert str(LIMITS.max_bytes) in assert_error(chunked, 413, "too_large", "file")
    image = image_bytes(200, 200, noise=True)  # about 120 KiB: under the upload limit, over the image limit
    assert LIMITS.max_image_bytes < len(image) < LIMITS.max_bytes
    message = assert_error(upload_response(fresh, image, "big.png"), 413, "too_large", "file")
    assert message == f"file: an image may be at most {LIMITS.max_image_bytes} bytes"
    assert folder_names(fresh.folder) == []


def upload_response(server: Server, data: bytes, filename: str, content_type: str = "application/octet-stream"):
    return server.client.post(UPLOADS, files={"file": (filename, data, content_type)})


def asgi_upload(app, messages: list[dict]) -> tuple[int, list[dict]]:
    """POST `messages` (ASGI receive messages, in order) to the upload route; (messages taken, messages sent)."""
    taken, sent = 0, []

    async def receive():
        nonlocal taken
        taken += 1
        return messages[taken - 1]

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": UPLOADS,
        "raw_path": UPLOADS.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"video/mp4"), (b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "state": {},
    }
    asyncio.run(app(scope, receive, send))
    return taken, sent


def test_the_stream_is_refused_as_soon_as_it_passes_the_limit(fresh):
    """At the ASGI level: the route stops reading at the chunk that passes the limit, not at the body's end."""
    chunk, chunks = 32 * KiB, 100  # 3.2 MiB offered, 256 KiB allowed
    body = [{"type": "http.request", "body": b"\0" * chunk, "more_body": index < chunks - 1} for index in range(chunks)]
    taken, sent = asgi_upload(fresh.app, body)
    assert sent[0]["status"] == 413
    assert taken == LIMITS.max_bytes // chunk + 1
    assert json.loads(sent[1]["body"])["error"]["field"] == "file"
    assert folder_names(fresh.folder) == []


def test_a_client_that_goes_away_mid_upload_leaves_nothing(fresh):
    part = {"type": "http.request", "body": b"\0" * KiB, "more_body": True}
    taken, sent = asgi_upload(fresh.app, [part, part, {"type": "http.disconnect"}])
    assert taken == 3 and sent[0]["status"] == 422
    assert json.loads(sent[1]["body"])["error"] == {
        "kind": "invalid",
        "field": "file",
        "message": "the upload was cut off before its end; nothing was kept",
    }
    assert folder_names(fresh.folder) == []


def test_what_is_no_image_or_video_is_415_listing_what_is_allowed_and_leaves_nothing(fresh):
    text = b"this is not a video, whatever its name says\n" * 20
    message = assert_error(upload_response(fresh, text, "clip.mp4", "video/mp4"), 415, "unsupported_type", "file")
    assert message == (
        "file: not an image nor a video that can be opened; allowed: images (PNG, JPEG, WebP, GIF, BMP, TIFF) "
        "and videos (MP4/MOV, WebM/MKV, AVI)"
    )
    audio = assert_error(upload_response(fresh, audio_only_mp4(), "song.mp4"), 415, "unsupported_type", "file")
    assert audio.startswith("file: a file without a video stream; allowed:")
    damaged = image_bytes(64, 64, noise=True)[:2000]
    assert "damaged" in assert_error(upload_response(fresh, damaged, "cut.png"), 422, "invalid", "file")
    empty = fresh.client.post(UPLOADS, content=b"", headers={"Content-Type": "image/png"})
    assert assert_error(empty, 422, "invalid", "file") == "file: the upload is empty; send the file's bytes"
    assert folder_names(fresh.folder) == []
    assert sorted(path.name for path in (fresh.root / "data").iterdir() if not path.name.startswith("jobs.db")) == [
        "uploads"
    ]


def test_pixel_and_duration_limits_are_422_naming_the_file(fresh):
    wide = upload_response(fresh, video_bytes(frames=4, width=160, height=128), "wide.mp4")
    assert assert_error(wide, 422, "invalid", "file") == "file: video of 160x128 exceeds 16384 pixels a frame"
    long = upload_response(fresh, video_bytes(frames=8, fps=2), "long.mp4")  # 4 s
    assert assert_error(long, 422, "invalid", "file") == "file: video of 4.0 s exceeds 3 s"
    image = upload_response(fresh, image_bytes(320, 300), "large.png")
    assert assert_error(image, 422, "invalid", "file") == "file: image of 320x300 exceeds 90000 pixels"
    assert folder_names(fresh.folder) == []
    inside = upload(fresh.client, video_bytes(frames=6, width=128, height=128, fps=2), "ok.mp4")  # 3 s, 128x128
    assert (inside["frames"], inside["duration"], inside["width"]) == (6, 3.0, 128)


def test_a_form_must_hold_exactly_one_file_field(fresh):
    data = image_bytes()
    other = fresh.client.post(UPLOADS, files={"image": ("a.png", data, "image/png")})
    assert "form field 'image' is not taken" in assert_error(other, 422, "invalid", "file")
    two = fresh.client.post(
        UPLOADS, files=[("file", ("a.png", data, "image/png")), ("file", ("b.png", data, "image/png"))]
    )
    assert "one file per upload" in assert_error(two, 422, "invalid", "file")
    no_boundary = fresh.client.post(UPLOADS, content=data, headers={"Content-Type": "multipart/form-data"})
    assert "boundary" in assert_error(no_boundary, 422, "invalid", "body")
    cut = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + data
    unfinished = fresh.client.post(UPLOADS, content=cut, headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert "no complete field 'file'" in assert_error(unfinished, 422, "invalid", "file")
    assert folder_names(fresh.folder) == []


def test_uploads_are_not_bound_by_the_json_body_limit_and_need_the_credentials(tiny_model_dir, tmp_path):
    server = Server(tmp_path, tiny_model_dir, start=False, max_body_bytes=4 * KiB, auth=Credentials(token="secret"))
    data = video_bytes()
    with TestClient(server.app) as client:
        refused = client.post(UPLOADS, files={"file": ("clip.mp4", data, "video/mp4")})
        assert_error(refused, 401, "unauthorized", None)
        assert folder_names(server.folder) == []
        headers = {"Authorization": "Bearer secret"}
        big = image_bytes(200, 100, noise=True)  # over the 4 KiB JSON limit
        response = client.post(UPLOADS, files={"file": ("a.png", big, "image/png")}, headers=headers)
        assert response.status_code == 201, response.text
        assert client.get(f"{UPLOADS}/{response.json()['id']}").status_code == 401
        plan = client.post(f"{PREFIX}/plan", json={**FAST, "prompt": "x" * 5000}, headers=headers)
        assert_error(plan, 413, "too_large", None)


# ------------------------------------------------------------------------------------------------ naming uploads


def test_an_image_upload_makes_the_same_video_as_the_same_image_in_base64(server):
    data = image_bytes(160, 96)
    info = upload(server.client, data, "start.png", "image/png")
    request = {**FAST, "seed": 7, "save_raw": True}
    by_upload = server.client.post(f"{PREFIX}/jobs", json={**request, "init_image": f"upload:{info['id']}"})
    assert by_upload.status_code == 202, by_upload.text
    inline = server.client.post(f"{PREFIX}/jobs", json={**request, "init_image": base64.b64encode(data).decode()})
    assert inline.status_code == 202, inline.text
    jobs = [wait_for_job(server.client, response.json()["id"]) for response in (by_upload, inline)]
    assert [job["state"] for job in jobs] == ["finished", "finished"], jobs
    assert jobs[0]["plan"]["mode"] == "i2v" and jobs[0]["plan"] == jobs[1]["plan"]
    assert jobs[0]["request"]["init_image"] == str(server.folder / f"{info['id']}.png")
    video = server.root / "out" / next(name for name in jobs[0]["outputs"] if name.endswith(".mp4"))
    assert decode_video(video)[:3] == (jobs[0]["plan"]["output_frames"], 160, 96)
    raw = [
        read_raw_frames(server.root / "out" / next(n for n in job["outputs"] if n.endswith(".safetensors")))
        for job in jobs
    ]
    assert raw[0].shape == (jobs[0]["plan"]["output_frames"], 96, 160, 3)
    np.testing.assert_array_equal(raw[0], raw[1])  # the MP4s may differ: x264's threads


def test_every_image_field_and_keyframes_take_an_upload(server):
    image = upload(server.client, image_bytes(128, 128), "a.png", "image/png")["id"]
    path = str(server.folder / f"{image}.png")
    plan = server.client.post(
        f"{PREFIX}/plan",
        json={**FAST, "duration": 2, "init_image": f"upload:{image}", "end_image": f"upload:{image}",
              "keyframes": {"1": f"upload:{image}"}},
    )  # fmt: skip
    assert plan.status_code == 200, plan.text
    assert plan.json()["plan"]["mode"] == "flf2v" and len(plan.json()["plan"]["sections"]) >= 2
    single = {**FAST, "single_frame": True, "variant": "bidirectional"}
    single.update({name: f"upload:{image}" for name in ("init_image", *IMAGE_FIELDS) if name != "end_image"})
    assert server.client.post(f"{PREFIX}/plan", json=single).status_code == 200
    from api.intake import api_request

    resolved = api_request(single, server.store)
    assert {name: getattr(resolved, name) for name in IMAGE_FIELDS if name != "end_image"} == {
        name: path for name in IMAGE_FIELDS if name != "end_image"
    }


BAD_IDS = [
    ("upload:../../etc/passwd", "is no upload id"),
    ("upload:" + "a" * 31, "is no upload id"),
    ("upload:" + "a" * 33, "is no upload id"),
    ("upload:" + "A" * 32, "is no upload id"),
    ("upload:" + "a" * 31 + "/", "is no upload id"),
    ("upload:", "is no upload id"),
    ("upload:" + "0" * 32, "no upload 00000000000000000000000000000000: unknown, deleted or expired"),
]


@pytest.mark.parametrize(("value", "message"), BAD_IDS)
def test_a_bad_upload_id_is_422_naming_the_field(server, value, message):
    before = folder_names(server.folder)
    for field, request in [
        ("init_image", {**FAST, "init_image": value}),
        ("end_image", {**FAST, "end_image": value}),
        ("keyframes.2", {**FAST, "duration": 3, "keyframes": {"2": value}}),
    ]:
        for route in (f"{PREFIX}/jobs", f"{PREFIX}/plan"):
            error = assert_error(server.client.post(route, json=request), 422, "invalid", field)
            assert message in error and error.startswith(f"{field}: ")
    batch = server.client.post(f"{PREFIX}/jobs/batch", json={"requests": [FAST, {**FAST, "init_image": value}]})
    assert message in assert_error(batch, 422, "invalid", "requests.2.init_image")
    assert folder_names(server.folder) == before


def test_an_upload_of_the_other_kind_is_refused_naming_the_field(server):
    video = upload(server.client, video_bytes())["id"]
    error = assert_error(server.client.post(f"{PREFIX}/plan", json={**FAST, "init_image": f"upload:{video}"}), 422,
                         "invalid", "init_image")  # fmt: skip
    assert error == f"init_image: upload {video} is a video; init_image takes an image"


def test_video_fields_take_only_uploads_of_videos(server):
    assert VIDEO_FIELDS == tuple(name for name in ("init_video",) if name in GenerateRequest.model_fields)
    video = upload(server.client, video_bytes())["id"]
    image = upload(server.client, image_bytes(), "a.png", "image/png")["id"]
    assert api_media(f"upload:{video}", "init_video", "video", server.store) == str(server.folder / f"{video}.mp4")
    with pytest.raises(FieldError, match=f"^init_video: upload {image} is an image; init_video takes a video$"):
        api_media(f"upload:{image}", "init_video", "video", server.store)
    with pytest.raises(FieldError, match="^init_video: over the API a video must be uploaded: send .upload:<id>."):
        api_media(str(server.folder / f"{video}.mp4"), "init_video", "video", server.store)
    assert api_media("", "init_video", "video", server.store) is None
    response = server.client.post(f"{PREFIX}/plan", json={**FAST, "init_video": f"upload:{video}"})
    if VIDEO_FIELDS:  # the request model has init_video: the upload is the plan's source video
        assert response.status_code == 200, response.text
    else:  # before it has, the field is unknown over the API too
        assert_error(response, 422, "invalid", "init_video")


def test_a_path_never_comes_through_an_image_field(server):
    video = upload(server.client, video_bytes())["id"]
    stored = str(server.folder / f"{video}.mp4")
    error = assert_error(server.client.post(f"{PREFIX}/plan", json={**FAST, "init_image": stored}), 422, "invalid",
                         "init_image")  # fmt: skip
    assert "not as a path on the server" in error
    for name in (f"{video}.json", f"{video}.mp4", video.upper(), f"{video[:-1]}%00"):
        assert_error(server.client.get(f"{UPLOADS}/{name}"), 404, "not_found", "id")
    for name in (f"..%2F{video}", "..%2F..%2Fetc%2Fpasswd", "%2E%2E"):  # routed elsewhere or nowhere
        assert server.client.get(f"{UPLOADS}/{name}").status_code == 404


# ------------------------------------------------------------------------------------------------ expiry


def test_an_expired_upload_is_refused_at_once_and_removed_after_the_grace(fresh):
    kept = upload(fresh.client, image_bytes(), "a.png", "image/png")["id"]
    fresh.clock.now += LIMITS.expire_seconds
    assert_error(fresh.client.get(f"{UPLOADS}/{kept}"), 404, "not_found", "id")
    error = assert_error(fresh.client.post(f"{PREFIX}/jobs", json={**FAST, "init_image": f"upload:{kept}"}), 422,
                         "invalid", "init_image")  # fmt: skip
    assert error == f"init_image: no upload {kept}: unknown, deleted or expired (uploads are kept 1 h); upload again"
    other = upload(fresh.client, image_bytes(seed=1), "b.png", "image/png")["id"]  # a sweep, within the grace
    assert folder_names(fresh.folder) == sorted([f"{kept}.json", f"{kept}.png", f"{other}.json", f"{other}.png"])
    fresh.clock.now += REMOVAL_GRACE_SECONDS
    third = upload(fresh.client, image_bytes(seed=2), "c.png", "image/png")["id"]
    assert folder_names(fresh.folder) == sorted([f"{other}.json", f"{other}.png", f"{third}.json", f"{third}.png"])


def test_a_start_removes_expired_uploads_stale_temporary_files_and_files_without_a_record(fresh, tiny_model_dir):
    old = upload(fresh.client, image_bytes(), "a.png", "image/png")["id"]
    young = upload(fresh.client, video_bytes())["id"]
    record = json.loads((fresh.folder / f"{old}.json").read_text())
    expired = START - REMOVAL_GRACE_SECONDS - 1  # expired for longer than the grace at START
    (fresh.folder / f"{old}.json").write_text(json.dumps({**record, "expires_at": expired}))
    stale, live = fresh.folder / ".0123456789abcdef.part", fresh.folder / ".fedcba9876543210.part"
    stale.write_bytes(b"half an upload")
    live.write_bytes(b"an upload arriving now")
    os.utime(stale, (time.time() - STALE_PART_SECONDS - 60,) * 2)
    (fresh.folder / f"{'b' * 32}.mp4").write_bytes(b"a file without its record")
    (fresh.folder / "notes.txt").write_text("not an upload's")
    Server(fresh.root, tiny_model_dir, start=False)  # a restart over the same folder: its routes sweep once
    assert folder_names(fresh.folder) == sorted([live.name, "notes.txt", f"{young}.json", f"{young}.mp4"])


def test_a_job_keeps_its_upload_past_the_expiry_until_it_ends(tiny_model_dir, tmp_path):
    server = Server(tmp_path, tiny_model_dir)
    with TestClient(server.app) as client:
        assert client.post(f"{PREFIX}/queue/pause").status_code == 200
        video_id = upload(client, video_bytes())["id"]  # named by no job: goes at the sweep
        image = upload(client, image_bytes(128, 128), "a.png", "image/png")["id"]
        submitted = client.post(f"{PREFIX}/jobs", json={**SMALLEST, "init_image": f"upload:{image}"})
        assert submitted.status_code == 202, submitted.text
        batch = client.post(f"{PREFIX}/jobs/batch", json={"requests": [{**SMALLEST, "init_image": f"upload:{image}"}]})
        assert batch.status_code == 202, batch.text
        server.clock.now += LIMITS.expire_seconds + REMOVAL_GRACE_SECONDS
        assert_error(client.get(f"{UPLOADS}/{image}"), 404, "not_found", "id")
        assert client.delete(f"{UPLOADS}/{image}").status_code == 404
        upload(client, image_bytes(seed=3), "b.png", "image/png")  # sweeps
        assert (server.folder / f"{image}.png").is_file() and not (server.folder / f"{video_id}.mp4").exists()
        client.post(f"{PREFIX}/queue/resume")
        jobs = [wait_for_job(client, job_id) for job_id in (submitted.json()["id"], *batch.json()["ids"])]
        assert [(job["state"], job["plan"]["mode"]) for job in jobs] == [("finished", "i2v")] * 2, jobs
        upload(client, image_bytes(seed=4), "c.png", "image/png")  # sweeps again: no job names it now
        assert not (server.folder / f"{image}.png").exists() and not (server.folder / f"{image}.json").exists()


def test_delete_ends_an_upload_and_keeps_the_file_while_a_queued_job_names_it(fresh):
    free = upload(fresh.client, image_bytes(), "a.png", "image/png")["id"]
    named = upload(fresh.client, image_bytes(seed=5), "b.png", "image/png")["id"]
    queued = fresh.client.post(f"{PREFIX}/jobs", json={**SMALLEST, "init_image": f"upload:{named}"})
    assert queued.status_code == 202, queued.text
    for upload_id in (free, named):
        response = fresh.client.delete(f"{UPLOADS}/{upload_id}")
        assert response.status_code == 204 and response.content == b""
        assert_error(fresh.client.get(f"{UPLOADS}/{upload_id}"), 404, "not_found", "id")
        assert_error(fresh.client.delete(f"{UPLOADS}/{upload_id}"), 404, "not_found", "id")
    assert folder_names(fresh.folder) == [f"{named}.json", f"{named}.png"]
    assert fresh.client.delete(f"{PREFIX}/jobs/{queued.json()['id']}").json()["state"] == "cancelled"
    fresh.clock.now += REMOVAL_GRACE_SECONDS
    upload(fresh.client, image_bytes(seed=6), "c.png", "image/png")
    assert f"{named}.png" not in folder_names(fresh.folder)


# ------------------------------------------------------------------------------------------------ settings


def test_serve_takes_the_upload_limits_from_its_flags():
    from framepack.cli import build_parser

    args = build_parser().parse_args(["serve", "--upload-max-mb", "100", "--upload-hours", "2"])
    limits = ServeSettings(upload_max_mb=args.upload_max_mb, upload_hours=args.upload_hours).upload_limits()
    assert (limits.max_bytes, limits.max_image_bytes, limits.expire_seconds) == (100 * 2**20, 32 * 2**20, 7200.0)
    small = ServeSettings(upload_max_mb=1).upload_limits()
    assert small.max_image_bytes == small.max_bytes == 2**20
    assert ServeSettings().upload_limits() == UploadLimits()
    with pytest.raises(ValueError, match=r"^--upload-max-mb 0: must be a positive number of MiB$"):
        ServeSettings(upload_max_mb=0).upload_limits()
    with pytest.raises(ValueError, match=r"^--upload-hours nan: must be a positive number of hours$"):
        ServeSettings(upload_hours=float("nan")).upload_limits()
