"""The API as users run it: `python -m framepack serve` on 127.0.0.1, driven over HTTP with httpx.

Includes the crash test: kill -9 the server in the middle of a multi-section job, restart it on the same data
folder, and check the resumed job's frames equal an uninterrupted run of the same request.
"""

from __future__ import annotations

import io
import json
import socket

import av
import httpx
import numpy as np
import pytest
from api_live_server import PREFIX, LiveServer, wait_for_job
from helpers import FAST, read_raw_frames, tiny_home
from PIL import Image

# Six sections of window 1 (25 frames); enough steps that the job is still sampling when two sections are done.
CRASH = {**FAST, "latent_window_size": 1, "steps": 16, "duration": 0.8, "seed": 1234, "save_raw": True}


@pytest.fixture
def home(tiny_model_dir, tmp_path):
    return tiny_home(tiny_model_dir, tmp_path / "home")


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event, data) pairs of a text/event-stream response, read until it ends."""
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: ") and name is not None:
            events.append((name, json.loads(line[len("data: ") :])))
            name = None
    return events


def video_frames(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def raw_frames(data: bytes, folder, name: str) -> np.ndarray:
    path = folder / name
    path.write_bytes(data)
    return read_raw_frames(path)


def without_estimate(plan: dict) -> dict:
    """A plan without its time estimate, which depends on the jobs that ran before it."""
    return {key: value for key, value in plan.items() if key != "estimated_seconds"}


def test_live_submit_poll_stream_download(home, tmp_path):
    server = LiveServer(home, tmp_path / "data", tmp_path / "server.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            blocking = client.post(PREFIX, json=FAST)
            assert blocking.status_code == 200, blocking.text
            video = client.get(blocking.json()["url"])
            assert (
                video.status_code == 200
                and len(video_frames(video.content)) == blocking.json()["plan"]["output_frames"]
            )

            submitted = client.post(f"{PREFIX}/jobs", json={**FAST, "steps": 4, "duration": 0.8})
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["id"]
            assert submitted.headers["location"] == f"{PREFIX}/jobs/{job_id}"
            with client.stream("GET", f"{PREFIX}/jobs/{job_id}/events") as stream:
                assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
                events = sse_events(stream)
            names = [name for name, _ in events]
            assert names[0] == "state" and names[-1] == "end" and "progress" in names and "section" in names, names
            progress = [data for name, data in events if name == "progress"]
            assert progress[-1]["done_steps"] == progress[-1]["total_steps"]
            final = events[-1][1]
            assert final["state"] == "finished" and final["id"] == job_id
            job = client.get(f"{PREFIX}/jobs/{job_id}").json()
            assert job["state"] == "finished"
            download = client.get(f"{PREFIX}/files/{job['outputs'][0]}")
            assert len(video_frames(download.content)) == job["plan"]["output_frames"]

            # A literal "../" (httpx would normalise it away, so send the request line by hand)
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
                raw.sendall(
                    f"GET {PREFIX}/files/../../../../../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: "
                    f"close\r\n\r\n".encode()
                )
                reply = b""
                while chunk := raw.recv(65536):
                    reply += chunk
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 404") and b"application/json" in head and b"root:" not in body
        assert server.stop() == 0
    finally:
        server.kill()


def test_live_auth_token(home, tmp_path):
    server = LiveServer(home, tmp_path / "data", tmp_path / "server.log", "--token", "s3cret-token").start()
    try:
        unauthorised = httpx.get(f"{server.url}{PREFIX}/jobs")
        assert unauthorised.status_code == 401 and unauthorised.json()["error"]["kind"] == "unauthorized"
        assert unauthorised.headers["www-authenticate"].startswith("Bearer")
        assert (
            httpx.get(f"{server.url}{PREFIX}/jobs", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        )
    finally:
        server.kill()


def test_crash_kill_9_mid_job_then_restart_resumes_to_the_same_frames(home, tmp_path):
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    first = LiveServer(home, data_dir, log).start()
    try:
        with httpx.Client(base_url=first.url, timeout=60) as client:
            submitted = client.post(f"{PREFIX}/jobs", json={**CRASH, "filename": "crashed"})
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["id"]
            assert submitted.json()["plan"]["num_sections"] == 6
            job = wait_for_job(
                client,
                job_id,
                until=lambda job: (
                    job["progress"]["sections_done"] >= 2 or job["state"] != "queued" and job["state"] != "running"
                ),
            )
            assert job["state"] == "running", f"the job ended before the crash; make CRASH slower: {job}"
            preview = client.get(f"{PREFIX}/jobs/{job_id}/preview")
            assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(preview.content)).size == (job["plan"]["width"], job["plan"]["height"])
    finally:
        first.kill()  # kill -9 in the middle of the job
    sections_before_kill = job["progress"]["sections_done"]
    outputs = first.data_dir / "outputs"
    assert not (outputs / "crashed.mp4").exists()

    second = LiveServer(home, data_dir, log).start()
    try:
        with httpx.Client(base_url=second.url, timeout=60) as client:
            resumed = wait_for_job(client, job_id)
            assert resumed["state"] == "finished", resumed
            assert resumed["resumed_sections"] >= 2 and resumed["resumed_sections"] >= sections_before_kill - 1
            clean = client.post(PREFIX, json={**CRASH, "filename": "uninterrupted"})
            assert clean.status_code == 200, clean.text
            assert clean.json()["resumed_sections"] == 0
            # the same plan; the clean job's may carry a time estimate learnt from the resumed job that just ran
            assert without_estimate(clean.json()["plan"]) == without_estimate(resumed["plan"])

            resumed_video = video_frames(client.get(f"{PREFIX}/files/crashed.mp4").content)
            clean_video = video_frames(client.get(f"{PREFIX}/files/uninterrupted.mp4").content)
            assert len(resumed_video) == len(clean_video) == resumed["plan"]["output_frames"]
            resumed_raw = raw_frames(
                client.get(f"{PREFIX}/files/crashed.safetensors").content, tmp_path, "a.safetensors"
            )
            clean_raw = raw_frames(
                client.get(f"{PREFIX}/files/uninterrupted.safetensors").content, tmp_path, "b.safetensors"
            )
            assert resumed_raw.shape == (resumed["plan"]["output_frames"], 128, 128, 3)
            np.testing.assert_array_equal(resumed_raw, clean_raw)
            np.testing.assert_array_equal(resumed_video, clean_video)
        assert second.stop() == 0
    finally:
        second.kill()
