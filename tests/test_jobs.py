"""The job queue: FIFO worker, submit-time validation, SQLite persistence, crash resume, cancel, failure
isolation and event subscriptions, with the tiny self-test model on the CPU."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from helpers import FAST, TransformerCalls, decode_video, pattern_image, read_raw_frames

from framepack.errors import FieldError
from framepack.events import SectionFinished, StepProgress
from framepack.generate import START
from framepack.images import ImageInputError
from framepack.jobs.models import Job, JobConflict, JobNotFound, JobProgress, JobState, QueueFull
from framepack.jobs.store import JobStore
from framepack.models.loader import ModelUnavailableError
from framepack.request import GenerateRequest

LONG = {**FAST, "duration": 1.2}  # FAST makes 1 section, LONG 3
WAIT_S = 120


def request(**changes) -> GenerateRequest:
    return GenerateRequest(**{**FAST, **changes})


def checkpoints(tmp_path: Path, job_id: str) -> list[str]:
    folder = tmp_path / "data" / "jobs" / job_id / "checkpoints"
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def wait_until(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ---------------------------------------------------------------------------------------------- store


def test_store_round_trips_jobs_in_insertion_order(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    jobs = [
        Job(
            id=f"job{index}",
            state=JobState.QUEUED,
            request={"prompt": str(index), "keyframes": {}},
            created_at=100.0 - index,
        )
        for index in range(3)
    ]
    for job in jobs:
        store.insert(job)
    jobs[1].state, jobs[1].started_at = JobState.RUNNING, 5.0
    jobs[1].progress = JobProgress(stage="sample", done_steps=3, total_steps=10, section=2)
    store.update(jobs[1])
    assert [job.id for job in store.list()] == ["job0", "job1", "job2"]  # by seq, not by created_at
    assert [job.id for job in store.queued()] == ["job0", "job2"]
    assert [job.id for job in store.running()] == ["job1"]
    assert store.get("job1") == jobs[1] and store.get("nope") is None
    store.close()
    reopened = JobStore(tmp_path / "jobs.db")
    assert reopened.get("job1").progress.done_steps == 3
    assert reopened.get("job0") == jobs[0]
    reopened.close()


def test_a_database_from_before_image_digests_gets_the_column_and_its_jobs_run(make_manager, tmp_path):
    import sqlite3

    before = make_manager(start=False)
    job = before.submit(request(init_image=str(pattern_image(tmp_path / "start.png", 96, 64))))
    before.close()
    with sqlite3.connect(tmp_path / "data" / "jobs.db") as db:  # the table as the first release made it
        db.execute("ALTER TABLE jobs DROP COLUMN image_digests_json")
    store = JobStore(tmp_path / "data" / "jobs.db")
    assert store.image_digests(job.id) is None and store.get(job.id).state == JobState.QUEUED
    store.close()
    assert make_manager().wait(job.id, WAIT_S).state == JobState.FINISHED


# ---------------------------------------------------------------------------------------------- running


def test_jobs_run_in_fifo_order_and_write_playable_videos(make_manager, tmp_path):
    manager = make_manager(start=False)
    submitted = [manager.submit(request(prompt=f"kite {index}", seed=-1 if index == 0 else 7)) for index in range(3)]
    assert [job.queue_position for job in manager.list_jobs()] == [0, 1, 2]
    assert all(job.state == JobState.QUEUED and job.summary for job in submitted)
    # the seed and the output name are fixed at submit time, so a resumed job writes the same video
    assert 0 <= submitted[0].request["seed"] == submitted[0].plan["seed"]
    for job in submitted:  # the one naming rule: framepack-<date>-<time>-<seed>-<first 8 of the id>
        stamps = {time.strftime("%Y%m%d-%H%M%S", time.localtime(job.created_at + shift)) for shift in (-1, 0, 1)}
        assert job.request["filename"] in {f"framepack-{stamp}-{job.request['seed']}-{job.id[:8]}" for stamp in stamps}

    manager.start()
    jobs = [manager.wait(job.id, WAIT_S) for job in submitted]
    assert [job.state for job in jobs] == [JobState.FINISHED] * 3
    for earlier, later in itertools.pairwise(jobs):
        assert earlier.started_at < earlier.finished_at <= later.started_at  # one at a time, in order
    for job in jobs:
        stem = job.request["filename"]
        assert job.outputs == [f"{stem}.mp4", f"{stem}.json"]
        frames, width, height, codec, _ = decode_video(tmp_path / "out" / job.outputs[0])
        assert (frames, width, height, codec) == (job.plan["output_frames"], 128, 128, "h264")
        assert json.loads((tmp_path / "out" / job.outputs[1]).read_text())["request"]["seed"] == job.request["seed"]
        progress = job.progress
        assert (progress.stage, progress.sections_done, progress.sections) == ("finished", 1, 1)
        assert progress.done_steps == progress.total_steps == 2 * 2  # start frame + 1 section
        assert progress.frames_written == job.plan["generated_frames"] and job.queue_position is None
        assert job.timings["total"] > 0 and job.error is None and job.resumed_sections == 0
        assert not (tmp_path / "data" / "jobs" / job.id).exists()  # checkpoints removed at the end
        assert manager.preview(job.id) is None  # previews are kept only while a job runs
    assert not [path.name for path in (tmp_path / "out").iterdir() if path.name.startswith(".")]  # no partials

    with pytest.raises(JobConflict, match="finished"):
        manager.cancel(jobs[0].id)
    assert [job.state for job in manager.list_jobs()] == [JobState.FINISHED] * 3
    if os.name == "posix":  # one running manager per data folder: a second one would run the same jobs
        with pytest.raises(RuntimeError, match="only one may run jobs"):
            make_manager()


def test_submit_validates_before_queueing(make_manager, runner, tmp_path, monkeypatch):
    manager = make_manager(start=False)
    with pytest.raises(FieldError) as missing:
        manager.submit(request(init_image=str(tmp_path / "missing.png")))
    assert missing.value.field == "init_image"
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageInputError) as broken:
        manager.submit(request(init_image=str(tmp_path / "broken.png")))
    assert broken.value.field == "init_image"
    with pytest.raises(FieldError) as codec:
        manager.submit(request(codec_options="bogus=1"))
    assert codec.value.field == "codec_options"

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    with pytest.raises(ModelUnavailableError) as unavailable:
        manager.submit(request(model="default"))
    assert "not available" in str(unavailable.value) and str(tmp_path / "empty-hf-cache") in str(unavailable.value)

    assert manager.list_jobs() == [] and JobStore(tmp_path / "data" / "jobs.db").list() == []
    assert runner._components is None  # nothing was loaded to find this out


class CallCounts:
    """Counts, per job, the plans made (`make_plan` runs), the runner's preflights, the encoder probes and the
    image decodes (`PIL.Image.open`)."""

    def __init__(self, runner, monkeypatch):
        import PIL.Image

        import framepack.plan

        self.counts = {"plans": 0, "preflights": 0, "probes": 0, "decodes": 0}
        for owner, name, key in [
            (framepack.plan, "section_count", "plans"),  # called once by every make_plan
            (runner, "preflight", "preflights"),
            (runner.encoder_prober, "probe", "probes"),
            (PIL.Image, "open", "decodes"),
        ]:
            monkeypatch.setattr(owner, name, self._counting(getattr(owner, name), key))

    def _counting(self, function, key):
        def counted(*args, **kwargs):
            self.counts[key] += 1
            return function(*args, **kwargs)

        return counted


def test_a_job_is_planned_and_checked_once_and_its_image_decoded_twice(make_manager, runner, tmp_path, monkeypatch):
    """Validation once: submit plans (decoding the image for its size), preflights (probing the encoder) and
    checks the model; the worker runs that prepared job as it is, and only the engine decodes the image again
    (to condition on it). Before this, a job was planned twice, preflighted and probed twice and its images
    decoded three times."""
    image = pattern_image(tmp_path / "start.png", 96, 64)
    manager = make_manager(start=False)
    calls = CallCounts(runner, monkeypatch)
    job = manager.submit(request(init_image=str(image)))
    assert calls.counts == {"plans": 1, "preflights": 1, "probes": 1, "decodes": 1}
    manager.start()
    assert manager.wait(job.id, WAIT_S).state == JobState.FINISHED
    assert calls.counts == {"plans": 1, "preflights": 1, "probes": 1, "decodes": 2}


def test_a_job_whose_image_file_changed_is_refused_before_it_runs(make_manager, runner, tmp_path, monkeypatch):
    """The digests of the image files a job names are taken at submit and stored; a job whose image changed
    meanwhile fails (nothing is run), whether this manager submitted it or a restarted one reads it back."""
    image = pattern_image(tmp_path / "start.png", 96, 64)
    first = make_manager(start=False)
    earlier = [first.submit(request(init_image=str(image))) for _ in range(2)]
    first.close()
    after_restart = make_manager(start=False)
    submitted_here = after_restart.submit(request(init_image=str(image)))
    pattern_image(image, 96, 64, seed=1)  # the same size, other pixels: the same plan, another video
    runs = []
    original = runner.run
    monkeypatch.setattr(runner, "run", lambda *args, **kwargs: runs.append(args) or original(*args, **kwargs))
    after_restart.start()
    for job in [*earlier, submitted_here]:
        ended = after_restart.wait(job.id, WAIT_S)
        assert (ended.state, ended.error.kind) == (JobState.FAILED, "invalid")
        assert ended.error.message == "the job's images changed since it was queued (init_image); submit it again"
    assert runs == []
    fresh = after_restart.wait(after_restart.submit(request(init_image=str(image))).id, WAIT_S)
    assert fresh.state == JobState.FINISHED and len(runs) == 1


def test_queue_full_refuses_until_room_is_made(make_manager):
    manager = make_manager(start=False, max_queued=2)
    first = manager.submit(request())
    manager.submit(request())
    with pytest.raises(QueueFull, match="limit is 2"):
        manager.submit(request())
    manager.cancel(first.id)
    assert manager.submit(request()).queue_position == 1


# ---------------------------------------------------------------------------------------------- persistence


def test_queued_jobs_survive_a_new_manager(make_manager):
    before = make_manager(start=False)
    submitted = [before.submit(request(prompt=f"kite {index}")) for index in range(2)]
    before.close()
    after = make_manager(start=False)  # (that they then run is shown by the shutdown test below)
    assert [(job.id, job.state, job.queue_position) for job in after.list_jobs()] == [
        (submitted[0].id, JobState.QUEUED, 0),
        (submitted[1].id, JobState.QUEUED, 1),
    ]
    assert after.get(submitted[1].id).request == submitted[1].request


def test_shutdown_leaves_the_running_job_to_resume(make_manager, runner, tmp_path, monkeypatch):
    """stop() interrupts the running job within a step; it stays RUNNING with its checkpoints and the next
    manager resumes it before the jobs that were queued behind it."""
    reached = threading.Event()
    original = runner.run

    def run_until_stopped(request, *, on_event, cancel, plan, finished_sections, on_section_latents, **prepared):
        def save(key, latents):
            on_section_latents(key, latents)
            if key != START:
                reached.set()
                assert wait_until(lambda: cancel.cancelled)  # stop() arrives while the section loop runs

        return original(
            request,
            on_event=on_event,
            cancel=cancel,
            plan=plan,
            finished_sections=finished_sections,
            on_section_latents=save,
            **prepared,
        )

    monkeypatch.setattr(runner, "run", run_until_stopped)
    first = make_manager()
    interrupted = first.submit(GenerateRequest(**LONG))
    queued = first.submit(request())
    assert reached.wait(WAIT_S)
    assert first.stop(timeout=30)
    assert first.get(interrupted.id).state == JobState.RUNNING  # left for the next start, not cancelled
    assert first.get(queued.id).state == JobState.QUEUED
    assert checkpoints(tmp_path, interrupted.id) == ["2.safetensors", "start.safetensors"]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())

    monkeypatch.setattr(runner, "run", original)
    second = make_manager()
    resumed, after = second.wait(interrupted.id, WAIT_S), second.wait(queued.id, WAIT_S)
    assert (resumed.state, after.state) == (JobState.FINISHED, JobState.FINISHED)
    assert resumed.resumed_sections == 1 and resumed.progress.sections_done == 3
    assert resumed.started_at < after.started_at


class ProcessKilled(BaseException):
    """Models kill -9 in a test: not an Exception, so nothing records a failure or cleans up checkpoints."""


def test_a_killed_job_resumes_from_its_checkpoints_with_identical_frames(make_manager, runner, tmp_path, monkeypatch):
    base = {**LONG, "codec": "none", "save_raw": True}
    reference = runner.run(GenerateRequest(**base, filename="reference"))
    assert reference.plan.num_sections == 3
    original = runner.run
    killed = threading.Event()

    def run_and_die(request, *, on_section_latents, **kwargs):
        sampled = []

        def save(key, latents):
            on_section_latents(key, latents)
            sampled.append(key)
            if len([key for key in sampled if key != START]) == 2:
                killed.set()
                raise ProcessKilled()

        return original(request, on_section_latents=save, **kwargs)

    monkeypatch.setattr(runner, "run", run_and_die)
    first = make_manager()
    job = first.submit(GenerateRequest(**base))
    assert killed.wait(WAIT_S) and first.stop(timeout=30)
    assert first.get(job.id).state == JobState.RUNNING
    assert checkpoints(tmp_path, job.id) == ["1.safetensors", "2.safetensors", "start.safetensors"]
    # what a killed process leaves behind: hidden partial outputs (another job's partial must stay)
    out = tmp_path / "out"
    stem = job.request["filename"]
    (out / f".{stem}.partial.safetensors").write_bytes(b"half")
    (out / f".{stem}.partial").mkdir()
    (out / ".someone-else.partial.mp4").write_bytes(b"other")

    monkeypatch.setattr(runner, "run", original)
    with TransformerCalls(runner._components.transformer) as calls:
        second = make_manager()
        resumed = second.wait(job.id, WAIT_S)
    assert resumed.state == JobState.FINISHED and resumed.resumed_sections == 2
    assert len(calls.calls) == 2  # only the missing section was sampled (2 steps, one call each)
    assert resumed.outputs == [f"{stem}.safetensors", f"{stem}.json"]
    np.testing.assert_array_equal(
        read_raw_frames(out / resumed.outputs[0]), read_raw_frames(out / "reference.safetensors")
    )
    assert sorted(path.name for path in out.iterdir() if path.name.startswith(".")) == [".someone-else.partial.mp4"]
    assert checkpoints(tmp_path, job.id) == []


# ---------------------------------------------------------------------------------------------- cancel


def test_cancel_queued_running_and_ended_jobs(make_manager, runner, tmp_path, monkeypatch):
    manager = make_manager(start=False)
    running, kept, queued = (manager.submit(GenerateRequest(**LONG)) for _ in range(3))

    cancelled = manager.cancel(queued.id)
    assert cancelled.state == JobState.CANCELLED and cancelled.error.kind == "cancelled"
    assert [job.queue_position for job in manager.list_jobs()] == [0, 1, None]
    with pytest.raises(JobConflict, match="cancelled"):
        manager.cancel(queued.id)
    for call in (manager.get, manager.cancel, manager.wait, manager.subscribe, manager.preview):
        with pytest.raises(JobNotFound):
            call("no-such-job")
    assert manager.cancel_running() is None  # nothing runs: queued jobs are left alone
    assert [job.state for job in manager.list_jobs()][:2] == [JobState.QUEUED, JobState.QUEUED]

    steps_after_cancel = {running.id: 0, kept.id: 0}
    original = runner.run

    job_of_name = {job.request["filename"]: job.id for job in (running, kept)}

    def run_and_cancel(request, *, on_event, **kwargs):
        job_id = job_of_name[request.filename]
        state = {"sections": 0, "cancelled": False}

        def events(event):
            on_event(event)
            if isinstance(event, SectionFinished) and event.section >= 0:
                state["sections"] += 1
            if isinstance(event, StepProgress):
                if state["cancelled"]:
                    steps_after_cancel[job_id] += 1
                elif state["sections"] == 1:  # a section checkpoint exists: cancel mid-section
                    if job_id == kept.id:  # the host's Interrupt: whatever runs now
                        assert manager.cancel_running(keep_partial=True).id == kept.id
                    else:
                        manager.cancel(job_id)
                    state["cancelled"] = True

        return original(request, on_event=events, **kwargs)

    monkeypatch.setattr(runner, "run", run_and_cancel)
    manager.start()
    first, second = manager.wait(running.id, WAIT_S), manager.wait(kept.id, WAIT_S)
    assert first.state == second.state == JobState.CANCELLED
    assert steps_after_cancel == {running.id: 0, kept.id: 0}  # stopped at the step that saw the cancel
    assert first.error.message == "cancelled by request; no partial output was kept"
    assert checkpoints(tmp_path, running.id) == []
    assert checkpoints(tmp_path, kept.id) == ["2.safetensors", "start.safetensors"]
    assert str(tmp_path / "data" / "jobs" / kept.id / "checkpoints") in second.error.message
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())  # nothing half-written
    assert first.outputs == [] and first.finished_at is not None


# ---------------------------------------------------------------------------------------------- failures


def test_a_failing_job_does_not_stop_the_worker(make_manager, runner, monkeypatch):
    original = runner.run
    failures = [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("boom"),
        FieldError("steps", "too many for this host"),
    ]
    unloads, unloads_seen = [], []
    monkeypatch.setattr(runner, "unload", lambda: unloads.append(True))

    def run_or_fail(request, **kwargs):
        unloads_seen.append(len(unloads))
        if failures:
            raise failures.pop(0)
        return original(request, **kwargs)

    monkeypatch.setattr(runner, "run", run_or_fail)
    manager = make_manager(start=False)
    ids = [manager.submit(request()).id for _ in range(4)]
    manager.start()
    oom, internal, invalid, fine = (manager.wait(job_id, WAIT_S) for job_id in ids)
    assert oom.state == JobState.FAILED and oom.error.kind == "out_of_memory"
    assert "20.00 GiB" in oom.error.message and "resolution" in oom.error.message and "offload" in oom.error.message
    assert unloads_seen[:2] == [0, 1]  # the model was dropped before the next job started
    assert (internal.error.kind, internal.error.message) == ("internal", "internal error: RuntimeError: boom")
    assert (invalid.error.kind, invalid.error.field) == ("invalid", "steps")
    assert fine.state == JobState.FINISHED and fine.outputs


# ---------------------------------------------------------------------------------------------- events


def test_subscribers_get_state_progress_and_end_without_blocking_the_job(make_manager, runner, monkeypatch):
    manager = make_manager(start=False, event_queue_size=4)
    job = manager.submit(request())
    previews = []
    original = runner.run

    def run_watching_previews(request, *, on_event, **kwargs):
        def events(event):
            on_event(event)
            if isinstance(event, SectionFinished):
                previews.append(manager.preview(job.id))

        return original(request, on_event=events, **kwargs)

    monkeypatch.setattr(runner, "run", run_watching_previews)
    stream = manager.subscribe(job.id)
    never_read = manager.subscribe(job.id)
    assert next(never_read).event == "state"  # subscribed, then never read while the job runs
    first = next(stream)
    assert first.event == "state" and first.state == "queued" and first.queue_position == 0

    manager.start()
    received = [first]
    reader = threading.Thread(target=lambda: received.extend(stream))
    reader.start()
    assert manager.wait(job.id, WAIT_S).state == JobState.FINISHED  # the stuck subscriber did not block it
    reader.join(WAIT_S)
    assert not reader.is_alive()

    kinds = [item.event for item in received]
    assert kinds[-1] == "end" and received[-1].state == "finished"
    assert {"state", "stage", "progress", "section", "frames", "end"} <= set(kinds)
    json.dumps([item.model_dump(mode="json") for item in received])  # everything is JSON-able: no numpy
    steps = [item.done_steps for item in received if item.event == "progress"]
    assert steps == sorted(steps) and steps[-1] == 4
    assert [item.section for item in received if item.event == "section"] == [-1, 0]
    assert len(previews) == 2 and all(p.shape == (128, 128, 3) and p.dtype == np.uint8 for p in previews)

    late = list(never_read)  # the slow reader's bounded queue dropped progress events but kept the end
    assert late[-1].event == "end" and len(late) <= 4 + 1
    assert [item.event for item in manager.subscribe(job.id)] == ["state", "end"]  # an ended job
