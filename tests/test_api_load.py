"""Load: 50 submissions from concurrent clients against a live server with a small queue.

Every answer is 202 or a documented refusal (429 with Retry-After, 503); every accepted job finishes, none is
lost (all listed, all finished) and none is duplicated (unique ids, distinct output files).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from api_live_server import PREFIX, LiveServer
from helpers import tiny_home

REQUESTS, CLIENTS, MAX_QUEUED = 50, 10, 20
# One section of window 1, one step: 5 frames; about half a second a job on 2 CPU cores.
TINY = {"model": "tiny", "resolution": 128, "latent_window_size": 1, "steps": 1, "duration": 0.1, "prompt": "a kite"}


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
        return local.client.post(f"{PREFIX}/jobs", json={**TINY, "prompt": f"a kite {index}"})

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
