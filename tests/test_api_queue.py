"""The queue over the REST API: PATCH to move a job, pause and resume, DELETE of ended jobs with or without their
files, listing pages, batches (JSON and JSON lines) refused whole for one bad line, batch cancel and thumbnails;
every field hostile. A real JobManager and Runner on the tiny self-test model (FastAPI TestClient, no network)."""

from __future__ import annotations

import base64
import io
import json

import pytest
from api_live_server import wait_for_job
from fastapi.testclient import TestClient
from helpers import SMALLEST, decode_video, pattern_image, tiny_home
from PIL import Image

from api.routes import PREFIX
from api.server import create_app
from framepack.jobs.manager import JobManager
from framepack.runner import Runner


def assert_error(response, status: int, kind: str, field: str | None = "any") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["kind"] == kind, error
    if field != "any":
        assert error["field"] == field, error
    return error


@pytest.fixture
def api(tiny_model_dir, tmp_path):
    """A client of an app over a started manager (max 6 queued); `.manager` and `.out` for checks."""
    runner = Runner(device="cpu", output_dir=tmp_path / "out", home=tiny_home(tiny_model_dir, tmp_path / "home"))
    manager = JobManager(tmp_path / "data", runner, max_queued=6)
    with TestClient(create_app(manager, tmp_path / "out")) as client:
        client.manager, client.out = manager, tmp_path / "out"
        yield client


def queue_order(client) -> list[str]:
    jobs = client.get(f"{PREFIX}/jobs", params={"state": "queued"}).json()["jobs"]
    return [job["id"] for job in sorted(jobs, key=lambda job: job["queue_position"])]


def test_pause_move_and_resume_run_the_jobs_in_the_new_order(api):
    assert api.post(f"{PREFIX}/queue/pause").json() == {"paused": True, "queued": 0, "running": None}
    ids = [api.post(f"{PREFIX}/jobs", json={**SMALLEST, "prompt": name}).json()["id"] for name in "abc"]
    assert api.get(f"{PREFIX}/queue").json() == {"paused": True, "queued": 3, "running": None}
    moved = api.patch(f"{PREFIX}/jobs/{ids[2]}", json={"position": 0})
    assert moved.status_code == 200 and moved.json()["queue_position"] == 0
    assert queue_order(api) == [ids[2], ids[0], ids[1]]
    assert api.post(f"{PREFIX}/queue/resume").json()["paused"] is False
    jobs = [wait_for_job(api, job_id) for job_id in ids]
    assert [job["state"] for job in jobs] == ["finished"] * 3
    starts = {job["id"]: job["started_at"] for job in jobs}
    assert sorted(starts, key=starts.get) == [ids[2], ids[0], ids[1]]
    assert_error(api.patch(f"{PREFIX}/jobs/{ids[0]}", json={"position": 0}), 409, "conflict")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"position": -1}, "position"),
        ({"position": "1"}, "position"),
        ({"position": 1.5}, "position"),
        ({"position": True}, "position"),
        ({"position": 10**7}, "position"),
        ({"position": None}, "position"),
        ({}, "position"),
        ({"position": 0, "priority": 5}, "priority"),
        ([0], None),
    ],
)
def test_patch_refuses_every_bad_body_naming_the_field(api, body, field):
    api.post(f"{PREFIX}/queue/pause")
    job_id = api.post(f"{PREFIX}/jobs", json=SMALLEST).json()["id"]
    assert_error(api.patch(f"{PREFIX}/jobs/{job_id}", json=body), 422, "invalid", field)
    assert_error(api.patch(f"{PREFIX}/jobs/{job_id}", content=b"{nope"), 422, "invalid", "body")
    assert_error(api.patch(f"{PREFIX}/jobs/no-such-job", json={"position": 0}), 404, "not_found", "id")


def test_delete_cancels_live_jobs_and_removes_ended_ones_with_their_files_when_asked(api):
    finished = wait_for_job(api, api.post(f"{PREFIX}/jobs", json=SMALLEST).json()["id"])
    video = api.out / finished["outputs"][0]
    assert video.is_file()
    api.post(f"{PREFIX}/queue/pause")
    queued = api.post(f"{PREFIX}/jobs", json=SMALLEST).json()["id"]

    assert_error(api.delete(f"{PREFIX}/jobs/{finished['id']}"), 409, "conflict")  # DELETE alone cancels
    assert_error(api.delete(f"{PREFIX}/jobs/{queued}", params={"remove": "true"}), 409, "conflict")
    assert_error(api.delete(f"{PREFIX}/jobs/{finished['id']}", params={"files": "true"}), 422, "invalid", "files")
    assert_error(
        api.delete(f"{PREFIX}/jobs/{finished['id']}", params={"remove": "true", "keep_partial": "true"}),
        422,
        "invalid",
        "keep_partial",
    )
    assert_error(
        api.delete(f"{PREFIX}/jobs/{finished['id']}", params={"remove": "yes please"}), 422, "invalid", "remove"
    )

    deleted = api.delete(f"{PREFIX}/jobs/{finished['id']}", params={"remove": "true", "files": "true"})
    assert deleted.status_code == 200, deleted.text
    body = deleted.json()
    assert body["job"]["id"] == finished["id"] and sorted(body["removed_files"]) == sorted(finished["outputs"])
    assert body["kept_files"] == [] and not video.exists()
    assert_error(api.get(f"{PREFIX}/jobs/{finished['id']}"), 404, "not_found", "id")
    assert_error(api.get(f"{PREFIX}/files/{finished['outputs'][0]}"), 404, "not_found")

    assert api.delete(f"{PREFIX}/jobs/{queued}").json()["state"] == "cancelled"  # unchanged: cancel
    kept = api.delete(f"{PREFIX}/jobs/{queued}", params={"remove": "true"}).json()
    assert (kept["removed_files"], kept["kept_files"]) == ([], [])
    assert api.get(f"{PREFIX}/jobs").json() == {"jobs": []}


def test_listing_pages_filters_and_leaves_images_out(api):
    api.post(f"{PREFIX}/queue/pause")
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 40, 40)).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    ids = [api.post(f"{PREFIX}/jobs", json={**SMALLEST, "init_image": image}).json()["id"] for _ in range(4)]
    api.post(f"{PREFIX}/jobs/{ids[0]}/cancel")

    page = api.get(f"{PREFIX}/jobs", params={"limit": 2, "offset": 1}).json()
    assert [job["id"] for job in page["jobs"]] == ids[1:3]
    assert (page["total"], page["offset"], page["limit"]) == (4, 1, 2)
    assert page["jobs"][0]["request"]["init_image"].startswith("<image: ")
    newest = api.get(f"{PREFIX}/jobs", params={"order": "newest", "state": "queued,cancelled", "limit": 1}).json()
    assert [job["id"] for job in newest["jobs"]] == [ids[3]] and newest["total"] == 4
    cancelled = api.get(f"{PREFIX}/jobs", params={"state": "cancelled"}).json()
    assert [job["id"] for job in cancelled["jobs"]] == [ids[0]] and cancelled["total"] == 1
    for params, field in [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"offset": -1}, "offset"),
        ({"order": "sideways"}, "order"),
        ({"state": "queued,bogus"}, "state"),
        ({"state": ""}, "state"),
        ({"batch_id": "x" * 65}, "batch_id"),
    ]:
        assert_error(api.get(f"{PREFIX}/jobs", params=params), 422, "invalid", field)


def test_a_batch_is_queued_whole_or_refused_naming_the_line_and_field(api, tmp_path):
    api.post(f"{PREFIX}/queue/pause")
    lines = [{"prompt": "one"}, {"prompt": "two", "duration": 0}, {"prompt": "three"}]
    refused = api.post(f"{PREFIX}/jobs/batch", json={"defaults": SMALLEST, "requests": lines})
    error = assert_error(refused, 422, "invalid", "requests.2.duration")
    assert error["message"].startswith("line 2: duration: ")
    jsonl = "\n".join(json.dumps({**SMALLEST, **line}) for line in [lines[0], {}, lines[2]]) + "\n{broken\n"
    refused = api.post(f"{PREFIX}/jobs/batch", content=jsonl, headers={"content-type": "application/x-ndjson"})
    assert assert_error(refused, 422, "invalid", "requests.4")["message"].startswith(
        "line 4: the line is not valid JSON"
    )
    path_line = json.dumps({**SMALLEST, "init_image": str(pattern_image(tmp_path / "on-server.png", 64, 64))})
    refused = api.post(f"{PREFIX}/jobs/batch", content=path_line, headers={"content-type": "application/x-ndjson"})
    assert_error(refused, 422, "invalid", "requests.1.init_image")
    for body, field in [
        ({"requests": []}, "requests"),
        ({"requests": {}}, "requests"),
        ({"requests": [SMALLEST], "extra": 1}, "extra"),
        ({"requests": [SMALLEST], "defaults": {"steps": 0}}, "defaults.steps"),
        ({"requests": [SMALLEST, 7]}, "requests.2"),
        ([SMALLEST], "body"),
    ]:
        assert_error(api.post(f"{PREFIX}/jobs/batch", json=body), 422, "invalid", field)
    assert_error(api.post(f"{PREFIX}/jobs/batch", json={"requests": [SMALLEST] * 7}), 429, "queue_full")
    assert api.get(f"{PREFIX}/jobs").json() == {"jobs": []}  # no refused batch queued anything

    accepted = api.post(
        f"{PREFIX}/jobs/batch",
        json={
            "defaults": SMALLEST,
            "requests": [{"prompt": f"kite {n}", "duration": d} for n, d in enumerate((0.1, 0.5))],
        },
    )
    assert accepted.status_code == 202, accepted.text
    batch = accepted.json()
    assert [job["id"] for job in batch["jobs"]] == batch["ids"] and len(batch["ids"]) == 2
    assert {job["batch_id"] for job in batch["jobs"]} == {batch["batch_id"]}
    api.post(f"{PREFIX}/queue/resume")
    for job_id in batch["ids"]:
        job = wait_for_job(api, job_id)
        assert job["state"] == "finished"
        assert decode_video(api.out / job["outputs"][0])[0] == job["plan"]["output_frames"]
    listed = api.get(f"{PREFIX}/jobs", params={"batch_id": batch["batch_id"]}).json()
    assert [job["id"] for job in listed["jobs"]] == batch["ids"]
    thumbnail = api.get(f"{PREFIX}/jobs/{batch['ids'][0]}/thumbnail")
    assert thumbnail.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumbnail.content)).size == (128, 128)


def test_a_batch_is_cancelled_as_a_whole(api):
    api.post(f"{PREFIX}/queue/pause")
    single = api.post(f"{PREFIX}/jobs", json=SMALLEST).json()["id"]
    lines = "\n".join(json.dumps({**SMALLEST, "seed": seed}) for seed in (1, 2, 3))
    batch = api.post(f"{PREFIX}/jobs/batch", content=lines, headers={"content-type": "application/x-ndjson"}).json()
    assert [job["request"]["seed"] for job in batch["jobs"]] == [1, 2, 3]
    cancelled = api.post(f"{PREFIX}/batches/{batch['batch_id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert [(job["id"], job["state"]) for job in cancelled.json()["jobs"]] == [
        (job_id, "cancelled") for job_id in batch["ids"]
    ]
    assert api.get(f"{PREFIX}/jobs/{single}").json()["state"] == "queued"  # not in the batch
    assert_error(api.post(f"{PREFIX}/batches/no-such-batch/cancel"), 404, "not_found")
    assert_error(api.get(f"{PREFIX}/jobs/{single}/thumbnail"), 404, "not_found", "id")  # text-to-video, queued
