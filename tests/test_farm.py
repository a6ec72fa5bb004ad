"""Several workers on one queue: one per local device (`serve --gpus`; here two CPU workers), leases and attempts in
the job store, and the Ray render farm (`serve --executor ray`) on a loopback cluster, with the tiny self-test model.

The Ray tests are skipped when Ray is not installed (`pip install -r requirements-farm.txt`); they share one local
cluster of 2 CPUs, started once for this file."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, decode_video, read_raw_frames

from framepack.generate import START
from framepack.jobs.events import StageEvent
from framepack.jobs.executor import LocalExecutor, WorkerLost
from framepack.jobs.farm import FarmError, FarmSettings, parse_devices
from framepack.jobs.models import JobState, WorkerState
from framepack.jobs.store import JobStore
from framepack.request import GenerateRequest
from framepack.runner import Runner

LONG = {**FAST, "duration": 1.2}  # 3 sections
RAW = {"codec": "none", "save_raw": True}  # frames compared exactly
WAIT_S = 120


def request(**changes) -> GenerateRequest:
    return GenerateRequest(**{**FAST, **changes})


def wait_until(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def checkpoints(tmp_path: Path, job_id: str) -> list[str]:
    folder = tmp_path / "data" / "jobs" / job_id / "checkpoints"
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def subscribed(manager, job_ids: list[str]) -> dict:
    """Each job's event stream, subscribed now (before the jobs start, so no event is missed)."""
    streams = {job_id: manager.subscribe(job_id) for job_id in job_ids}
    for stream in streams.values():
        next(stream)  # the first StateEvent; the subscription is registered from here on
    return streams


def model_loads(streams: dict) -> dict[str, int]:
    """How many times each job's worker loaded the model during the job (its "load model" stages)."""
    return {
        job_id: sum(1 for event in stream if isinstance(event, StageEvent) and event.stage == "load model")
        for job_id, stream in streams.items()
    }


def second_runner(runner: Runner) -> Runner:
    """Another CPU runner beside the test's `runner` (same folders and self-test model): a second worker."""
    return Runner(device="cpu", output_dir=runner.output_dir, home=runner.home)


# ---------------------------------------------------------------------------------------------- local workers


def test_two_local_workers_run_two_jobs_at_once_and_each_keeps_its_model(make_manager, runner, tmp_path):
    workers = [LocalExecutor(runner), LocalExecutor(second_runner(runner))]
    manager = make_manager(start=False, executors=workers)
    jobs = [manager.submit(request(prompt=f"kite {index}")) for index in range(4)]
    streams = subscribed(manager, [job.id for job in jobs])
    manager.start()
    ended = [manager.wait(job.id, WAIT_S) for job in jobs]
    assert [job.state for job in ended] == [JobState.FINISHED] * 4
    first, second = ended[:2]
    assert {first.worker, second.worker} == {"cpu", "cpu#2"}  # the first free worker: one job each
    assert first.started_at < second.finished_at and second.started_at < first.finished_at  # at the same time
    assert [job.attempt for job in ended] == [1, 1, 1, 1] and {job.lease_expires_at for job in ended} == {None}
    loads = model_loads(streams)
    assert loads[first.id] == loads[second.id] == 1  # each worker loaded the model for its first job...
    assert [loads[job.id] for job in ended[2:]] == [0, 0]  # ...and kept it for the next ones
    for job in ended:
        frames, width, height, _codec, _ = decode_video(tmp_path / "out" / job.outputs[0])
        assert (frames, width, height) == (job.plan["output_frames"], 128, 128)
    assert manager.workers() == [
        WorkerState(name="cpu", job=None, down=False, alive=True),
        WorkerState(name="cpu#2", job=None, down=False, alive=True),
    ]


def hold_after_first_section(monkeypatch, runner: Runner, reached: threading.Event) -> None:
    """Make `runner` wait, after its first sampled section (checkpointed), until its job is cancelled."""
    original = runner.run

    def run(request, *, cancel, on_section_latents, **kwargs):
        def save(key, latents):
            on_section_latents(key, latents)
            if key != START:
                reached.set()
                assert wait_until(lambda: cancel.cancelled, WAIT_S)

        return original(request, cancel=cancel, on_section_latents=save, **kwargs)

    monkeypatch.setattr(runner, "run", run)


def test_a_cancel_reaches_its_worker_and_the_other_worker_finishes_its_job(make_manager, runner, monkeypatch):
    other = second_runner(runner)
    reached = threading.Event()
    hold_after_first_section(monkeypatch, other, reached)
    manager = make_manager(start=False, executors=[LocalExecutor(runner), LocalExecutor(other)])
    finishing, cancelled = manager.submit(GenerateRequest(**LONG)), manager.submit(GenerateRequest(**LONG))
    manager.start()
    assert reached.wait(WAIT_S)
    assert manager.get(cancelled.id).worker == "cpu#2"
    manager.cancel(cancelled.id)
    assert manager.wait(cancelled.id, WAIT_S).state == JobState.CANCELLED
    done = manager.wait(finishing.id, WAIT_S)
    assert (done.state, done.worker, done.progress.sections_done) == (JobState.FINISHED, "cpu", 3)


def test_both_running_jobs_outlast_a_restart_and_resume_with_identical_frames(
    make_manager, runner, tmp_path, monkeypatch
):
    """stop() leaves both workers' jobs RUNNING with their leases; the next manager requeues them (attempt 2) and
    its two workers resume them from their checkpoints into the frames uninterrupted runs give."""
    bases = [{**LONG, **RAW, "seed": seed} for seed in (3, 4)]
    references = [
        runner.run(GenerateRequest(**base, filename=f"reference-{index}")) for index, base in enumerate(bases)
    ]
    other = second_runner(runner)
    reached = [threading.Event(), threading.Event()]
    hold_after_first_section(monkeypatch, runner, reached[0])
    hold_after_first_section(monkeypatch, other, reached[1])
    first = make_manager(start=False, executors=[LocalExecutor(runner), LocalExecutor(other)])
    jobs = [first.submit(GenerateRequest(**base)) for base in bases]
    first.start()
    assert all(event.wait(WAIT_S) for event in reached)
    before_stop = time.time()
    assert first.stop(timeout=60)
    for job in jobs:
        left = first.get(job.id)
        assert (left.state, left.attempt) == (JobState.RUNNING, 1)
        assert left.worker in {"cpu", "cpu#2"} and left.lease_expires_at > before_stop
        assert checkpoints(tmp_path, job.id) == ["2.safetensors", "start.safetensors"]

    monkeypatch.undo()  # the runners run unhindered again
    second = make_manager(executors=[LocalExecutor(runner), LocalExecutor(other)])
    resumed = [second.wait(job.id, WAIT_S) for job in jobs]
    for job, reference in zip(resumed, references, strict=True):
        assert (job.state, job.attempt, job.resumed_sections) == (JobState.FINISHED, 2, 1)
        np.testing.assert_array_equal(
            read_raw_frames(tmp_path / "out" / job.outputs[0]), read_raw_frames(Path(reference.outputs[0]))
        )


def lose_worker(monkeypatch, runner: Runner, times: int) -> list[int]:
    """Make the worker of `runner` lost (WorkerLost, as a killed Ray actor) after the first sampled section of its
    first `times` runs; returns the list of the attempts' section counts it saw restored."""
    original = runner.run
    restored: list[int] = []

    def run(request, *, finished_sections, on_section_latents, **kwargs):
        restored.append(sum(1 for key in finished_sections if key != START))
        lost = len(restored) <= times

        def save(key, latents):
            on_section_latents(key, latents)
            if lost and key != START:
                raise WorkerLost("cpu", "its process was killed (SIGKILL)")

        return original(request, finished_sections=finished_sections, on_section_latents=save, **kwargs)

    monkeypatch.setattr(runner, "run", run)
    return restored


def test_a_lost_worker_s_job_is_attempted_again_from_its_checkpoints(make_manager, runner, tmp_path, monkeypatch):
    base = {**LONG, **RAW}
    reference = runner.run(GenerateRequest(**base, filename="reference"))
    restored = lose_worker(monkeypatch, runner, times=2)
    manager = make_manager(max_attempts=3)
    job = manager.wait(manager.submit(GenerateRequest(**base)).id, WAIT_S)
    assert (job.state, job.attempt, job.worker, job.error) == (JobState.FINISHED, 3, "cpu", None)
    assert restored == [0, 1, 2]  # each attempt went on from the sections the lost one had checkpointed
    assert job.resumed_sections == 2
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        f"{job.request['filename']}.json",
        f"{job.request['filename']}.safetensors",
        "reference.json",
        "reference.safetensors",
    ]  # one output, no partial left by the lost attempts
    np.testing.assert_array_equal(
        read_raw_frames(tmp_path / "out" / job.outputs[0]), read_raw_frames(Path(reference.outputs[0]))
    )


def test_a_job_whose_worker_is_lost_max_attempts_times_fails_with_the_reason(
    make_manager, runner, tmp_path, monkeypatch
):
    lose_worker(monkeypatch, runner, times=5)
    manager = make_manager(max_attempts=2)
    job = manager.wait(manager.submit(GenerateRequest(**LONG)).id, WAIT_S)
    assert (job.state, job.attempt, job.error.kind) == (JobState.FAILED, 2, "worker_lost")
    assert job.error.message == (
        "worker cpu was lost: its process was killed (SIGKILL); gave up after 2 attempts (the limit is 2)"
    )
    assert checkpoints(tmp_path, job.id) == []  # a failed job keeps nothing
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    assert manager.workers() == [WorkerState(name="cpu", job=None, down=False, alive=True)]  # it takes jobs again


# ---------------------------------------------------------------------------------------------- leases in the store


def test_a_database_from_before_leases_gets_the_columns_and_its_jobs_run(make_manager, tmp_path):
    before = make_manager(start=False)
    job = before.submit(request())
    before.close()
    with sqlite3.connect(tmp_path / "data" / "jobs.db") as db:  # the table as it was before leases
        for column in ("worker", "lease_expires_at", "attempt"):
            db.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    store = JobStore(tmp_path / "data" / "jobs.db")
    stored = store.get(job.id)
    assert (stored.state, stored.worker, stored.attempt, stored.lease_expires_at) == (JobState.QUEUED, None, 0, None)
    store.close()
    ran = make_manager().wait(job.id, WAIT_S)
    assert (ran.state, ran.worker, ran.attempt) == (JobState.FINISHED, "cpu", 1)
    with sqlite3.connect(tmp_path / "data" / "jobs.db") as db:
        assert db.execute("SELECT worker, attempt FROM jobs WHERE id = ?", (job.id,)).fetchone() == ("cpu", 1)


# ---------------------------------------------------------------------------------------------- settings


def test_gpu_lists_become_devices_and_bad_ones_name_the_flag():
    assert parse_devices("0, 1", "--gpus") == ("cuda:0", "cuda:1")
    assert parse_devices("cpu,cpu", "--gpus") == ("cpu", "cpu")
    assert parse_devices("cuda,cuda:3,mps", "--gpus") == ("cuda:0", "cuda:3", "mps")
    assert parse_devices(" ", "--gpus") is None
    with pytest.raises(FarmError, match=r"^--gpus is 'gpu0': 'gpu0' is no device; allowed: GPU numbers \(0,1\)"):
        parse_devices("gpu0", "--gpus")
    with pytest.raises(FarmError, match=r"^--gpus is '0,cuda:0': cuda:0 is named twice \(one worker per GPU\)"):
        parse_devices("0,cuda:0", "--gpus")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gpus", "0,x"], "--gpus is '0,x': 'x' is no device"),
        (["--gpus", "7"], "--gpus: cuda:7 not on this machine"),
        (["--gpus", "cpu,cpu", "--device", "cpu"], "give --device (one worker) or --gpus"),
        (["--executor", "ray"], "--executor ray needs --ray-address: 'local' or the address"),
        (["--ray-address", "local"], "--ray-address need --executor ray"),
        (["--executor", "ray", "--ray-address", "local", "--gpus", "0"], "--gpus is for local workers"),
        (["--max-attempts", "0"], "--max-attempts is 0: a job needs at least 1 attempt"),
        (["--executor", "ray", "--ray-address", "local", "--ray-workers", "0"], "--ray-workers is 0: at least 1"),
    ],
)
def test_serve_refuses_bad_worker_flags_with_one_line(framepack_cli, tmp_path, flags, message):
    result = framepack_cli(
        "serve", "--data-dir", str(tmp_path / "data"), *flags, home=tmp_path, env={"RAY_ADDRESS": None}
    )
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_the_service_runs_one_worker_per_listed_device(tmp_path):
    from framepack.compose import build_job_service
    from framepack.host import StandaloneHost

    host = StandaloneHost(output_dir=tmp_path / "out", data_dir=tmp_path / "home")
    service = build_job_service(host, tmp_path / "data", farm=FarmSettings(devices=("cpu", "cpu", "cpu")))
    assert [worker.name for worker in service.workers()] == ["cpu", "cpu#2", "cpu#3"]
    service.close()
    single = build_job_service(host, tmp_path / "data2", farm=FarmSettings())
    assert [worker.name for worker in single.workers()] == ["cpu"]
    single.close()


def test_sdnext_gpu_setting_gives_the_workers_devices(monkeypatch):
    from framepack.host import SDNextHost

    opts = types.SimpleNamespace(framepack_gpus="0,1")
    shared = types.SimpleNamespace(opts=opts)
    package = types.ModuleType("modules")
    package.shared = shared
    monkeypatch.setitem(sys.modules, "modules", package)
    monkeypatch.setitem(sys.modules, "modules.shared", shared)
    assert SDNextHost().devices() == ["cuda:0", "cuda:1"]
    opts.framepack_gpus = ""
    assert SDNextHost().devices() == [None]  # SD.Next's own device (None here: no modules.devices)
    opts.framepack_gpus = "0,zero"
    with pytest.raises(FarmError, match=r"^SD.Next's setting FramePack -> GPUs \(framepack_gpus\) is '0,zero'"):
        SDNextHost().devices()
