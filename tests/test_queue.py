"""Steering the job queue: moving queued jobs, pausing and resuming, deleting ended jobs (optionally with their
files), listing pages without images, retention, and batches, with the tiny self-test model on the CPU."""

from __future__ import annotations

import base64
import os
import threading
import time

import av
import numpy as np
import pytest
from helpers import SMALLEST, decode_video, pattern_image

from framepack.jobs.models import BatchLineError, Job, JobConflict, JobNotFound, JobState, QueueFull, Retention
from framepack.jobs.store import JobStore
from framepack.jobs.thumbnails import fit
from framepack.request import GenerateRequest

WAIT_S = 120


def request(**changes) -> GenerateRequest:
    return GenerateRequest(**{**SMALLEST, **changes})


def wait_until(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Gate:
    """Holds every run of the runner at its start until `open()`; `started` lists the jobs as they start (by the id
    their output name ends with: `framepack-<date>-<time>-<seed>-<id8>`)."""

    def __init__(self, runner, monkeypatch):
        self.started: list[str] = []
        self._open = threading.Event()
        original = runner.run

        def run(request, **kwargs):
            self.started.append(request.filename.rsplit("-", 1)[-1])
            assert self._open.wait(WAIT_S)
            return original(request, **kwargs)

        monkeypatch.setattr(runner, "run", run)

    def open(self) -> None:
        self._open.set()


def queued_ids(manager) -> list[str]:
    jobs = manager.list_jobs(states=(JobState.QUEUED,))
    return [job.id for job in sorted(jobs, key=lambda job: job.queue_position)]


# ---------------------------------------------------------------------------------------------- order


def test_moved_jobs_run_in_the_new_order_which_survives_a_restart(make_manager):
    first = make_manager(start=False)
    a, b, c = (first.submit(request(prompt=name)) for name in "abc")
    assert first.move(c.id, 0).queue_position == 0
    assert queued_ids(first) == [c.id, a.id, b.id]
    assert first.move(a.id, 99).queue_position == 2  # past the end: last
    assert queued_ids(first) == [c.id, b.id, a.id]
    with pytest.raises(JobNotFound):
        first.move("no-such-job", 0)
    first.close()

    second = make_manager(start=False)  # a restarted process reads the order back
    assert queued_ids(second) == [c.id, b.id, a.id]
    d = second.submit(request(prompt="d"))  # a new job goes last, after the reordered ones
    assert queued_ids(second) == [c.id, b.id, a.id, d.id]
    second.start()
    ended = [second.wait(job.id, WAIT_S) for job in (c, b, a, d)]
    assert [job.state for job in ended] == [JobState.FINISHED] * 4
    assert [job.started_at for job in ended] == sorted(job.started_at for job in ended)
    with pytest.raises(JobConflict, match="only queued jobs can be moved"):
        second.move(c.id, 0)


# ---------------------------------------------------------------------------------------------- pause


def test_pause_lets_the_running_job_finish_starts_no_other_and_outlasts_a_restart(make_manager, runner, monkeypatch):
    gate = Gate(runner, monkeypatch)
    first = make_manager()
    running, waiting = first.submit(request()), first.submit(request())
    assert wait_until(lambda: gate.started == [running.id[:8]])
    state = first.pause()
    assert (state.paused, state.queued, state.running) == (True, 1, running.id)
    gate.open()
    assert first.wait(running.id, WAIT_S).state == JobState.FINISHED  # the running job finishes
    time.sleep(1.0)
    assert first.get(waiting.id).state == JobState.QUEUED and gate.started == [running.id[:8]]
    assert first.queue_state().running is None
    first.close()

    second = make_manager()  # started, but still paused
    time.sleep(1.0)
    assert second.queue_state().paused and second.get(waiting.id).state == JobState.QUEUED
    assert second.resume().paused is False
    assert second.wait(waiting.id, WAIT_S).state == JobState.FINISHED
    assert gate.started == [running.id[:8], waiting.id[:8]]


# ---------------------------------------------------------------------------------------------- delete


def test_delete_removes_the_record_and_only_the_files_the_job_wrote(make_manager, tmp_path):
    manager = make_manager()
    kept_files = manager.wait(manager.submit(request(save_raw=True)).id, WAIT_S)
    with_files = manager.wait(manager.submit(request(save_frames="png")).id, WAIT_S)
    all_files = manager.wait(manager.submit(request(save_frames="png")).id, WAIT_S)
    out, kept, frames, whole = (
        tmp_path / "out",
        *(job.request["filename"] for job in (kept_files, with_files, all_files)),
    )
    assert kept_files.outputs == [f"{kept}.mp4", f"{kept}.safetensors", f"{kept}.json"]
    assert sorted(with_files.outputs) == sorted([f"{frames}.mp4", frames, f"{frames}.json"])
    assert len(list((out / frames).iterdir())) == with_files.plan["output_frames"]
    (out / frames / "mine.txt").write_text("a file of the user's in the frames folder")

    deleted = manager.delete(kept_files.id)
    assert (deleted.removed_files, deleted.kept_files) == ([], kept_files.outputs)
    assert all((out / name).is_file() for name in kept_files.outputs)
    with pytest.raises(JobNotFound):
        manager.get(kept_files.id)
    with pytest.raises(JobNotFound):
        manager.delete(kept_files.id)

    deleted = manager.delete(with_files.id, files=True)
    assert sorted(deleted.removed_files) == [f"{frames}.json", f"{frames}.mp4"]
    assert deleted.kept_files == [frames]  # the folder keeps the user's file
    assert not (out / f"{frames}.mp4").exists() and not (out / f"{frames}.json").exists()
    assert [path.name for path in (out / frames).iterdir()] == ["mine.txt"]
    deleted = manager.delete(all_files.id, files=True)
    assert (sorted(deleted.removed_files), deleted.kept_files) == (sorted(all_files.outputs), [])
    assert not any(path.name.startswith(whole) for path in out.iterdir())

    manager.pause()
    queued = manager.submit(request())
    with pytest.raises(JobConflict, match="cancel it first"):
        manager.delete(queued.id)


def test_delete_with_files_never_leaves_the_output_folder_nor_removes_a_later_file(make_manager, tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    now = time.time()
    victims = {name: outside / name for name in ("abs.mp4", "up.mp4", "linked.mp4")}
    for path in victims.values():
        path.write_text("not the job's")
    os.symlink(victims["linked.mp4"], out / "link.mp4")
    (out / ".hidden.mp4").write_text("hidden")
    (out / "later.mp4").write_text("written after the job ended")
    os.utime(out / "later.mp4", (now, now))
    (out / "mine.mp4").write_text("the job's")
    os.utime(out / "mine.mp4", (now - 100, now - 100))
    store = JobStore(tmp_path / "data" / "jobs.db")
    job = Job(
        id="old",
        state=JobState.FINISHED,
        request={"filename": "mine"},
        outputs=[str(victims["abs.mp4"]), "../outside/up.mp4", "link.mp4", ".hidden.mp4", "later.mp4", "mine.mp4"],
        created_at=now - 200,
        started_at=now - 150,
        finished_at=now - 90,
    )
    store.insert(job)
    store.close()

    deleted = make_manager(start=False).delete("old", files=True)
    assert deleted.removed_files == ["mine.mp4"]
    assert deleted.kept_files == job.outputs[:-1]
    assert all(path.read_text() == "not the job's" for path in victims.values())
    assert (out / "link.mp4").is_symlink() and (out / ".hidden.mp4").exists() and (out / "later.mp4").exists()
    assert not (out / "mine.mp4").exists()


# ---------------------------------------------------------------------------------------------- listing


def test_listing_pages_leave_the_images_out(make_manager, tmp_path):
    manager = make_manager(start=False)
    picture = pattern_image(tmp_path / "start.png", 96, 64)
    embedded = "data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode()
    jobs = [manager.submit(request(init_image=embedded, prompt=f"kite {index}")) for index in range(5)]
    manager.cancel(jobs[1].id)

    listed = manager.list_jobs()
    assert [job.id for job in listed] == [job.id for job in jobs]
    assert {job.request["init_image"] for job in listed} == {f"<image: {len(embedded)} characters of base64>"}
    assert [job.request["prompt"] for job in listed] == [f"kite {index}" for index in range(5)]
    assert manager.get(jobs[0].id).request["init_image"] == embedded  # one job is read whole
    assert [job.queue_position for job in listed] == [0, None, 1, 2, 3]

    assert [job.id for job in manager.list_jobs(limit=2, offset=1)] == [jobs[1].id, jobs[2].id]
    assert [job.id for job in manager.list_jobs(limit=2, newest_first=True)] == [jobs[4].id, jobs[3].id]
    assert [job.id for job in manager.list_jobs(states=(JobState.CANCELLED,))] == [jobs[1].id]
    assert manager.list_jobs(states=()) == []
    assert manager.count_jobs() == 5 and manager.count_jobs((JobState.QUEUED,)) == 4


def test_a_database_from_before_briefs_gets_them_once(make_manager, tmp_path):
    import sqlite3

    manager = make_manager(start=False)
    embedded = (
        "data:image/png;base64," + base64.b64encode(pattern_image(tmp_path / "start.png", 96, 64).read_bytes()).decode()
    )
    job = manager.submit(request(init_image=embedded))
    manager.close()
    with sqlite3.connect(tmp_path / "data" / "jobs.db") as db:  # the table as it was before briefs were kept
        db.execute("DROP INDEX jobs_by_batch")
        for column in ("request_brief_json", "batch_id", "queue_rank"):
            db.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    store = JobStore(tmp_path / "data" / "jobs.db")
    assert store.page()[0].request["init_image"].startswith("<image: ")
    assert store.get(job.id).request["init_image"] == embedded
    store.close()


# ---------------------------------------------------------------------------------------------- retention


def test_retention_keeps_the_newest_jobs_and_their_outputs_unless_asked(make_manager, tmp_path):
    manager = make_manager(retention=lambda: Retention(keep_jobs=1))
    ids = [manager.submit(request()).id for _ in range(3)]
    for job_id in ids:
        manager.wait(job_id, WAIT_S)
    assert wait_until(lambda: manager.count_jobs() == 1)
    assert [job.id for job in manager.list_jobs()] == [ids[2]]
    names = [manager.get(ids[2]).request["filename"]] + [f"-{job_id[:8]}.mp4" for job_id in ids[:2]]
    assert (tmp_path / "out" / f"{names[0]}.mp4").is_file()  # outputs kept, also of the jobs no longer listed
    assert all(any(path.name.endswith(end) for path in (tmp_path / "out").iterdir()) for end in names[1:])


def test_retention_by_age_deletes_old_jobs_with_their_outputs_at_start(make_manager, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    store = JobStore(tmp_path / "data" / "jobs.db")
    now = time.time()
    for name, age_days in (("old", 3), ("recent", 0.5)):
        ended = now - age_days * 86400
        (out / f"{name}.mp4").write_text("video")
        os.utime(out / f"{name}.mp4", (ended - 10, ended - 10))
        store.insert(
            Job(
                id=name,
                state=JobState.FINISHED,
                request={"filename": name},
                outputs=[f"{name}.mp4"],
                created_at=ended - 60,
                started_at=ended - 30,
                finished_at=ended,
            )
        )
    store.close()
    manager = make_manager(retention=lambda: Retention(keep_days=1, remove_outputs=True))
    assert [job.id for job in manager.list_jobs()] == ["recent"]
    assert not (out / "old.mp4").exists() and (out / "recent.mp4").exists()


# ---------------------------------------------------------------------------------------------- batches


def test_a_batch_is_checked_whole_before_any_job_is_queued(make_manager, tmp_path):
    manager = make_manager(start=False, max_queued=4)
    good = [request(prompt="one"), request(prompt="two")]
    with pytest.raises(BatchLineError) as bad_image:
        manager.submit_batch([good[0], request(init_image=str(tmp_path / "missing.png")), good[1]])
    assert (bad_image.value.line, bad_image.value.field, bad_image.value.kind) == (
        2,
        "requests.2.init_image",
        "invalid",
    )
    assert str(bad_image.value).startswith("line 2: init_image: ")
    with pytest.raises(BatchLineError) as same_name:
        manager.submit_batch([request(filename="clip"), request(), request(filename="clip")])
    assert (same_name.value.line, same_name.value.field, same_name.value.kind) == (3, "requests.3.filename", "conflict")
    with pytest.raises(QueueFull, match="a batch of 5 does not fit"):
        manager.submit_batch([request()] * 5)
    assert manager.count_jobs() == 0  # nothing of the refused batches was queued

    batch = manager.submit_batch([*good, request(prompt="three")])
    assert [job.queue_position for job in batch.jobs] == [0, 1, 2]
    assert {job.batch_id for job in manager.list_jobs()} == {batch.batch_id}
    cancelled = manager.cancel_batch(batch.batch_id)
    assert [job.state for job in cancelled] == [JobState.CANCELLED] * 3
    with pytest.raises(JobNotFound):
        manager.cancel_batch("no-such-batch")


def test_a_batch_runs_each_request_into_its_own_video(make_manager, tmp_path):
    manager = make_manager()
    batch = manager.submit_batch([request(duration=duration) for duration in (0.1, 0.3)])
    for job in batch.jobs:
        ended = manager.wait(job.id, WAIT_S)
        assert ended.state == JobState.FINISHED
        frames = decode_video(tmp_path / "out" / ended.outputs[0])[0]
        assert frames == ended.plan["output_frames"]
    assert manager.thumbnail(batch.jobs[0].id).shape == (128, 128, 3)


def test_thumbnails_of_queued_and_finished_jobs(make_manager, tmp_path):
    manager = make_manager(start=False)
    picture = pattern_image(tmp_path / "start.png", 320, 160)
    job = manager.submit(request(init_image=str(picture)))
    thumbnail = manager.thumbnail(job.id)
    assert thumbnail.shape == (80, 160, 3)  # the start image, longer side 160
    assert manager.thumbnail(manager.submit(request()).id) is None  # text-to-video: nothing to show yet
    manager.start()
    finished = manager.wait(job.id, WAIT_S)
    with av.open(str(tmp_path / "out" / finished.outputs[0])) as video:
        first_frame = next(video.decode(video=0)).to_ndarray(format="rgb24")
    assert np.array_equal(manager.thumbnail(finished.id), fit(first_frame))  # the video's first frame, fitted
    assert max(manager.thumbnail(finished.id).shape) <= 160


# ---------------------------------------------------------------------------------------------- settings


def test_sdnext_history_settings_become_the_retention(monkeypatch):
    import sys
    import types

    from framepack.host import SDNextHost

    opts = types.SimpleNamespace(framepack_keep_jobs=20, framepack_keep_days="2.5", framepack_prune_outputs=True)
    shared = types.SimpleNamespace(opts=opts)
    package = types.ModuleType("modules")
    package.shared = shared
    monkeypatch.setitem(sys.modules, "modules", package)
    monkeypatch.setitem(sys.modules, "modules.shared", shared)
    assert SDNextHost().retention() == Retention(keep_jobs=20, keep_days=2.5, remove_outputs=True)
    opts.framepack_keep_jobs, opts.framepack_keep_days, opts.framepack_prune_outputs = 0, "many", False
    assert SDNextHost().retention() == Retention()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--keep-jobs", "-1"], "--keep-jobs -1: must be 0 (keep all) or more"),
        (["--keep-days", "nan"], "--keep-days nan: must be 0 (forever) or a positive number of days"),
        (["--prune-outputs"], "--prune-outputs needs --keep-jobs or --keep-days"),
    ],
)
def test_serve_refuses_bad_retention_flags_with_one_line(framepack_cli, tmp_path, flags, message):
    result = framepack_cli("serve", "--data-dir", str(tmp_path / "data"), *flags, home=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
