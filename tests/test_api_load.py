"""Load against a live server: 50 submissions from concurrent clients with a small queue, and 100 open event
streams.

Submissions: every answer is 202 or a documented refusal (429 with Retry-After, 503); every accepted job finishes,
none is lost (all listed, all finished) and none is duplicated (unique ids, distinct output files). Streams: with
100 open (30 on a running job, 70 on a queued one), status requests still answer and every stream gets its events
and its end.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from api_live_server import PREFIX, LiveServer, wait_for_job
from helpers import SMALLEST, tiny_home

REQUESTS, CLIENTS, MAX_QUEUED = 50, 10, 20
# One section of window 1, one step: 5 frames; about half a second a job on 2 CPU cores.


def test_fifty_concurrent_submissions(tiny_model_dir, tmp_path):
    server = LiveServer(
        tiny_home(tiny_model_dir, tmp_path / "home"),
        tmp_path / "data",
        tmp_path / "server.log",
        "--max-queued",
        str(MAX_QUEUED),
    ).start()
    local = threading.local()

    def submit(index: int) -> httpx.Response:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=server.url, timeout=60)
        return local.client.post(f"{PREFIX}/jobs", json={**SMALLEST, "prompt": f"a kite {index}"})

    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            responses = list(pool.map(submit, range(REQUESTS)))
        statuses = [response.status_code for response in responses]
        assert set(statuses) <= {202, 429, 503}, statuses
        for response in responses:
            if response.status_code != 202:
                assert response.json()["error"]["kind"] in ("queue_full", "model_unavailable")
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) > 0
        accepted = [response.json()["id"] for response in responses if response.status_code == 202]
        assert statuses.count(429) > 0, "the queue never filled; the test is not testing refusals"
        assert len(accepted) >= MAX_QUEUED
        assert len(set(accepted)) == len(accepted)

        with httpx.Client(base_url=server.url, timeout=60) as client:
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                jobs = {job["id"]: job for job in client.get(f"{PREFIX}/jobs").json()["jobs"]}
                if all(jobs.get(job_id, {}).get("state") in ("finished", "failed", "cancelled") for job_id in accepted):
                    break
                time.sleep(0.5)
            assert set(jobs) == set(accepted), "a refused request left a job, or an accepted one is missing"
            assert all(jobs[job_id]["state"] == "finished" for job_id in accepted), [
                job["state"] for job in jobs.values()
            ]
            videos = [jobs[job_id]["outputs"][0] for job_id in accepted]
            assert len(set(videos)) == len(videos)
            for job_id in accepted:
                prompt = jobs[job_id]["request"]["prompt"]
                assert jobs[job_id]["plan"]["sections"][0]["prompt"] == prompt  # each job ran its own request
            for video in videos:
                download = client.get(f"{PREFIX}/files/{video}")
                assert download.status_code == 200 and len(download.content) > 0
    finally:
        server.kill()


STREAMS = {"running": 30, "queued": 70}  # streams of a queued job are quiet: nothing but heartbeats
STATUS_TIMEOUT_S = 10.0  # generous: the answers take well under a second; a server out of threads takes 15 s and more
# Thirty sections of 100 steps: the job runs (and sends progress events) for minutes, until the test cancels it.
LONG = {**SMALLEST, "steps": 100, "duration": 4.0, "prompt": "a long kite"}


def read_until(connection: socket.socket, marker: bytes, deadline: float) -> bytes:
    received = b""
    while marker not in received:
        connection.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = connection.recv(65536)
        assert chunk, f"the stream closed before {marker!r}: {received[-300:]!r}"
        received += chunk
    return received


def test_a_hundred_open_event_streams_leave_the_api_answering(tiny_model_dir, tmp_path):
    """Some streams follow a running job (events all the time), most a queued one (quiet). Each quiet stream used
    to hold one of the server's 40 threadpool threads until its next heartbeat (15 s): past about 40 streams the
    API froze."""
    server = LiveServer(tiny_home(tiny_model_dir, tmp_path / "home"), tmp_path / "data", tmp_path / "server.log")
    server.start()
    streams: dict[str, list[socket.socket]] = {}
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            running = client.post(f"{PREFIX}/jobs", json=LONG).json()["id"]
            queued = client.post(f"{PREFIX}/jobs", json=LONG).json()["id"]
            wait_for_job(client, running, until=lambda job: job["progress"]["done_steps"] > 0)
            for job_id, count in ((running, STREAMS["running"]), (queued, STREAMS["queued"])):
                request = f"GET {PREFIX}/jobs/{job_id}/events HTTP/1.1\r\nHost: test\r\n\r\n".encode()
                streams[job_id] = []
                for _ in range(count):
                    streams[job_id].append(socket.create_connection(("127.0.0.1", server.port), timeout=60))
                    streams[job_id][-1].sendall(request)
            deadline = time.monotonic() + 60
            for connection in streams[running] + streams[queued]:
                read_until(connection, b"event: state", deadline)

            for _ in range(5):  # with every stream open, the other routes still answer
                assert client.get(f"{PREFIX}/jobs/{queued}", timeout=STATUS_TIMEOUT_S).json()["state"] == "queued"
                assert client.get(f"{PREFIX}/jobs/{running}", timeout=STATUS_TIMEOUT_S).json()["state"] == "running"
            listed = [job["id"] for job in client.get(f"{PREFIX}/jobs", timeout=STATUS_TIMEOUT_S).json()["jobs"]]
            assert {running, queued} <= set(listed)
            for connection in streams[running]:
                read_until(connection, b"event: progress", deadline)

            for job_id in (queued, running):  # every stream ends with its job's end
                assert client.post(f"{PREFIX}/jobs/{job_id}/cancel", timeout=30).status_code == 200
                deadline = time.monotonic() + 60
                for connection in streams[job_id]:
                    read_until(connection, b"event: end", deadline)
    finally:
        for connection in [connection for group in streams.values() for connection in group]:
            connection.close()
        server.kill()
