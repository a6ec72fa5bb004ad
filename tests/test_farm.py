"""Several workers on one queue: one per local device (`serve --gpus`; here two CPU workers), leases and attempts in
the job store, and the Ray render farm (`serve --executor ray`) on a loopback cluster, with the tiny self-test model.

The Ray tests are skipped when Ray is not installed (`pip install -r requirements-farm.txt`); they share one local
cluster of 2 CPUs, started once for this file."""

from __future__ import annotations

import base64
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, decode_video, pattern_image, read_raw_frames

from framepack.generate import START
from framepack.jobs.checkpoints import CheckpointStore
from framepack.jobs.events import SectionEvent, StageEvent
from framepack.jobs.executor import LocalExecutor, WorkerLost
from framepack.jobs.farm import FarmError, FarmSettings, parse_devices
from framepack.jobs.models import JobState, WorkerState
from framepack.jobs.store import JobStore
from framepack.planning import resolve_recipe
from framepack.request import GenerateRequest
from framepack.runner import Runner

LONG = {**FAST, "latent_window_size": 1, "duration": 0.4}  # 3 short sections (13 frames: a quick decode)
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
    base = {**LONG, **RAW, "seed": 3}  # two jobs of one request (named apart): one reference run for both
    reference = runner.run(GenerateRequest(**base, filename="reference"))
    other = second_runner(runner)
    reached = [threading.Event(), threading.Event()]
    hold_after_first_section(monkeypatch, runner, reached[0])
    hold_after_first_section(monkeypatch, other, reached[1])
    first = make_manager(start=False, executors=[LocalExecutor(runner), LocalExecutor(other)])
    jobs = [first.submit(GenerateRequest(**base)) for _ in range(2)]
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
    for job in resumed:
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
    assert wait_until(lambda: manager.workers() == [WorkerState(name="cpu", job=None, down=False, alive=True)])


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


# ---------------------------------------------------------------------------------------------- the Ray farm


@pytest.fixture(scope="module")
def ray_farm(tmp_path_factory, tiny_model_dir):
    """One loopback Ray cluster (2 CPUs) for this file, with two render workers (half a CPU each) whose outputs
    stream back to a head folder; yields (the farm, the head's runner). Skipped without Ray."""
    from helpers import tiny_home

    from framepack.jobs.ray_executor import RayFarm, WorkerConfig, import_ray, start_local_cluster

    try:
        ray = import_ray(local=True)  # before Ray's import: the cluster stays on 127.0.0.1
    except FarmError:
        pytest.skip("Ray is not installed (pip install -r requirements-farm.txt)")
    folder = tmp_path_factory.mktemp("farm")
    head = Runner(device="cpu", output_dir=folder / "out", home=tiny_home(tiny_model_dir, folder / "home"))
    start_local_cluster(ray, num_cpus=2)
    farm = RayFarm(FarmSettings(executor="ray", ray_address="local", ray_workers=2), WorkerConfig.of(head))
    try:
        farm.start()
        yield farm, head
    finally:
        farm.close()
        ray.shutdown()


@pytest.fixture
def farm_manager(ray_farm, tmp_path):
    """Job managers over the Ray farm's two workers (a data folder per test; the farm outlives them)."""
    from framepack.jobs.manager import JobManager

    farm, head = ray_farm
    managers = []

    def make(start: bool = True, **kwargs):
        manager = JobManager(tmp_path / "data", head, executors=farm.workers, **kwargs)
        managers.append(manager)
        if start:
            manager.start()
        return manager

    yield make
    for manager in managers:
        manager.close(timeout=60)


def test_two_ray_workers_keep_their_model_between_jobs_and_stream_the_outputs_back(ray_farm, farm_manager):
    farm, head = ray_farm
    manager = farm_manager(start=False)
    manager.unload_model()  # whatever an earlier test left loaded
    tiny = resolve_recipe("tiny", "bidirectional", head.home)
    assert not any(worker.holds(tiny) for worker in farm.workers)
    jobs = [manager.submit(request(prompt=f"kite {index}")) for index in range(4)]
    streams = subscribed(manager, [job.id for job in jobs])
    manager.start()
    ended = [manager.wait(job.id, WAIT_S) for job in jobs]
    assert [job.state for job in ended] == [JobState.FINISHED] * 4
    names = sorted(worker.name for worker in farm.workers)
    assert sorted({job.worker for job in ended}) == names and all(name.startswith("ray:") for name in names)
    loads = model_loads(streams)
    first_of_each = [next(job for job in ended if job.worker == name) for name in names]
    assert [loads[job.id] for job in first_of_each] == [1, 1]  # one load per worker...
    assert sum(loads.values()) == 2  # ...and never again
    out = Path(head.output_dir)
    for job in ended:
        stem = job.request["filename"]
        assert job.outputs == [f"{stem}.mp4", f"{stem}.json"]
        frames, width, height, _codec, _ = decode_video(out / job.outputs[0])
        assert (frames, width, height) == (job.plan["output_frames"], 128, 128)
        sidecar = (out / job.outputs[1]).read_text()
        assert str(out / job.outputs[0]) in sidecar and "framepack-worker-" not in sidecar  # where they are now
    assert not [path.name for path in out.iterdir() if path.name.startswith(".")]  # no partial copies


def test_a_sigkilled_worker_s_job_resumes_on_the_other_worker_with_identical_frames(
    ray_farm, farm_manager, tmp_path, monkeypatch
):
    farm, head = ray_farm
    base = {**LONG, **RAW, "seed": 11, "steps": 10}  # long enough to be killed in the middle
    reference = head.run(GenerateRequest(**base, filename="sigkill-reference"))
    saved = []  # every checkpoint the head writes, in order
    original_save = CheckpointStore.save

    def save(store, job_id, key, latents):
        saved.append(key)
        original_save(store, job_id, key, latents)

    monkeypatch.setattr(CheckpointStore, "save", save)
    manager = farm_manager(start=False)
    job = manager.submit(GenerateRequest(**base))
    (stream,) = subscribed(manager, [job.id]).values()
    manager.start()
    assert wait_until(lambda: len(checkpoints(tmp_path, job.id)) >= 2, WAIT_S)  # the start frame and a section
    running = manager.get(job.id)
    killed = next(worker for worker in farm.workers if worker.name == running.worker)
    pid = killed.info["pid"]
    os.kill(pid, signal.SIGKILL)
    ended = manager.wait(job.id, WAIT_S)
    assert (ended.state, ended.attempt) == (JobState.FINISHED, 2)
    assert ended.worker != killed.name  # the other worker took it while the killed one restarted
    assert ended.resumed_sections >= 1
    assert sorted(saved, key=str) == [0, 1, 2, START]  # each section's latents came to the head once
    sections = [event for event in stream if isinstance(event, SectionEvent) and event.section >= 0]
    assert [event.section for event in sections[-3:]] == [2, 1, 0]  # the resumed run's, in generation order
    assert sum(1 for event in sections[-3:] if event.model_calls == 0) == ended.resumed_sections  # restored
    assert manager.count_jobs() == 1
    out = Path(head.output_dir)
    stem = ended.request["filename"]
    assert ended.outputs == [f"{stem}.safetensors", f"{stem}.json"]
    assert sorted(path.name for path in out.iterdir() if path.name.startswith((stem, f".{stem}"))) == sorted(
        ended.outputs
    )  # one output, no partial
    np.testing.assert_array_equal(read_raw_frames(out / ended.outputs[0]), read_raw_frames(Path(reference.outputs[0])))
    assert checkpoints(tmp_path, job.id) == []
    assert wait_until(lambda: not any(state.down for state in manager.workers()), WAIT_S)  # the killed one is back
    assert killed.info["pid"] != pid  # restarted by Ray: another process


def test_a_cancel_reaches_a_remote_job_within_one_step(farm_manager, caplog):
    manager = farm_manager()
    job = manager.submit(GenerateRequest(**{**LONG, "steps": 50}))  # 200 steps: sampling outlasts many polls
    assert wait_until(lambda: manager.get(job.id).progress.done_steps >= 2, WAIT_S)
    with caplog.at_level(logging.INFO, logger="framepack.jobs.ray_executor"):
        manager.cancel(job.id)
        ended = manager.wait(job.id, WAIT_S)
    assert (
        ended.state == JobState.CANCELLED and ended.error.message == "cancelled by request; no partial output was kept"
    )
    reached = [record.getMessage() for record in caplog.records if "the cancel reached worker" in record.getMessage()]
    assert len(reached) == 1
    steps_at_cancel = int(reached[0].rsplit(" ", 1)[1])
    assert steps_at_cancel < ended.progress.total_steps
    assert ended.progress.done_steps <= steps_at_cancel + 1  # the step under way when the cancel came, no other


def test_leased_jobs_are_requeued_after_a_head_restart(farm_manager, tmp_path):
    first = farm_manager()
    job = first.submit(GenerateRequest(**{**LONG, "steps": 10}))  # long enough to be stopped in the middle
    assert wait_until(lambda: len(checkpoints(tmp_path, job.id)) >= 2, WAIT_S)
    assert first.stop(timeout=60)  # the head goes down: the job stays RUNNING under its lease
    left = first.get(job.id)
    assert (left.state, left.attempt) == (JobState.RUNNING, 1)
    assert left.worker.startswith("ray:") and left.lease_expires_at is not None
    second = farm_manager()  # the restarted head
    ended = second.wait(job.id, WAIT_S)
    assert (ended.state, ended.attempt, ended.lease_expires_at) == (JobState.FINISHED, 2, None)
    assert ended.resumed_sections >= 1


def test_a_worker_ray_cannot_place_is_a_clear_error_within_the_timeout(ray_farm):
    from framepack.jobs.ray_executor import RayFarm, WorkerConfig

    _farm, head = ray_farm
    settings = FarmSettings(executor="ray", ray_address="local", ray_worker_gpus=1, placement_timeout=3)
    started = time.monotonic()
    with pytest.raises(FarmError) as refused:
        RayFarm(settings, WorkerConfig.of(head)).start()
    assert time.monotonic() - started < 3 + 10
    assert str(refused.value).startswith(
        "1 of 1 Ray render workers could not be placed within 3 s (--placement-timeout): each needs 1 GPU, 1 CPU; "
        "the cluster has 0 GPU, 2 CPU in all"
    )


def test_with_shared_outputs_a_worker_writes_into_the_output_folder_itself(ray_farm, tmp_path, caplog):
    from framepack.jobs.manager import JobManager
    from framepack.jobs.ray_executor import RayFarm, WorkerConfig

    _farm, head = ray_farm
    shared = Runner(device="cpu", output_dir=tmp_path / "shared", home=head.home)
    farm = RayFarm(
        FarmSettings(executor="ray", ray_address="local", ray_workers=1, shared_outputs=True), WorkerConfig.of(shared)
    )
    manager = JobManager(tmp_path / "data", shared, executors=farm.start(), on_close=farm.close)
    try:
        manager.start()
        with caplog.at_level(logging.INFO, logger="framepack.jobs.ray_executor"):
            job = manager.wait(manager.submit(request()).id, WAIT_S)
    finally:
        manager.close(timeout=60)
    assert job.state == JobState.FINISHED
    frames, *_ = decode_video(tmp_path / "shared" / job.outputs[0])
    assert frames == job.plan["output_frames"]
    assert str(tmp_path / "shared" / job.outputs[0]) in (tmp_path / "shared" / job.outputs[1]).read_text()
    assert not [record for record in caplog.records if "streamed back" in record.getMessage()]  # written in place
    assert farm.workers == []  # closing the manager ended the farm's workers


def test_a_continuation_on_ray_workers_gets_the_parent_s_kept_latents_and_equals_one_longer_job(
    ray_farm, farm_manager, tmp_path
):
    """keep_latents over Ray: each worker sends its job's kept latents back to the head, which keeps them; a
    continuation's worker gets them from the head with the job (continue_job, issue 16)."""
    _farm, head = ray_farm
    section_s = 4 / 30  # one window-1 section at 30 fps
    image = str(pattern_image(tmp_path / "start.png", 160, 128))
    fields = {**FAST, **RAW, "latent_window_size": 1, "steps": 1, "fps": 30, "variant": "f1", "init_image": image}
    whole = head.run(GenerateRequest(**{**fields, "duration": 4 * section_s, "filename": "continue-reference"}))
    manager = farm_manager()
    parent = manager.wait(manager.submit(GenerateRequest(**{**fields, "duration": 3 * section_s})).id, WAIT_S)
    assert parent.state == JobState.FINISHED, parent.error
    assert parent.latents_kept and parent.worker.startswith("ray:")
    continued = manager.wait(manager.submit(GenerateRequest(continue_job=parent.id, duration=section_s)).id, WAIT_S)
    assert continued.state == JobState.FINISHED, continued.error
    assert (continued.parent, continued.parent_kind, continued.plan["extend"]["restored"]) == (
        parent.id,
        "continue",
        [0, 1, 2],
    )
    assert continued.timings["sampled_steps"] == 1  # the added section only: the rest came from the parent
    continued_frames = read_raw_frames(Path(head.output_dir) / continued.outputs[0])
    assert continued_frames.shape[0] == 17  # 4 sections of 4 frames and the start
    np.testing.assert_array_equal(continued_frames, read_raw_frames(Path(whole.outputs[0])))


def test_images_named_by_path_travel_inside_the_request(tmp_path):
    from framepack.jobs.ray_executor import embedded_images

    start, pose = pattern_image(tmp_path / "start.png", 64, 48), pattern_image(tmp_path / "pose.png", 64, 48, seed=1)
    sent = embedded_images(request(init_image=str(start), keyframes={1: str(pose)}))
    prefix = "data:application/octet-stream;base64,"
    assert sent.init_image == prefix + base64.b64encode(start.read_bytes()).decode()
    assert sent.keyframes == {1: prefix + base64.b64encode(pose.read_bytes()).decode()}
    assert embedded_images(sent) == sent  # nothing left to embed
