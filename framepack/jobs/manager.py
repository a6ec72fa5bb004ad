"""The job manager: the `JobService` every face uses, over one FIFO queue and its workers.

Life of a job::

    submit() --prepared once (no model load)--> QUEUED --worker--> RUNNING --> FINISHED | FAILED | CANCELLED
                                                   ^------ worker lost ------'

The manager owns the queue, the workers and the jobs' state; the rest is done by its collaborators:
`Preparer` (checks a request once and makes the `PreparedJob` a worker runs), `JobStore` (SQLite),
`CheckpointStore` (section latents), `EventBus` (typed events to subscribers), its `Executor`s (where jobs run:
`LocalExecutor`, in this process; the Ray executor, in a render farm) and the host's `JobHooks` (its task state).

Workers. Each executor is one worker (one GPU) with a thread of its own that runs one job at a time. A free worker
takes the job at the head of the queue; when several are free, one that holds the job's model already takes it
(`Executor.holds`), so each worker keeps its model loaded between jobs. The queue order is kept: no job overtakes
the head of the queue.

Leases. A running job's row names its worker, its attempt (1 for its first run) and a lease expiry that the
manager renews while the job runs (`LEASE_SECONDS`). When a worker is lost (`WorkerLost`: a Ray actor killed, a
machine gone) its job goes back to the front of the queue and the next free worker resumes it from its
checkpoints, as attempt + 1; after `max_attempts` attempts it fails (kind "worker_lost") with the reason. The lost
worker takes no job until it answers again (`Executor.recover`).

Persistence and resume. Every job is a row in `jobs_dir/jobs.db` (SQLite). While a job runs, the latents of each
sampled section are saved to `jobs_dir/jobs/<id>/checkpoints/<key>.safetensors` (key = section index, or
"start" for the T2V start frame). If the process dies (kill -9, power loss) the row stays RUNNING; the next
`start()` puts such jobs back at the front of the queue (whatever their lease says: only one started manager runs
over a data folder, so a running row's lease belongs to a process that is gone), removes their half-written hidden
outputs and runs them again from their stored request and plan with the saved sections restored, so only the
missing sections are sampled and the video is the same one an uninterrupted run gives (the seed and output file name
were fixed at submit time). The checkpoint folder is deleted when the job ends, unless a cancel asked to keep it.

Shutdown. `stop()` interrupts the running jobs at their next denoising step and stops the workers. By default
(`cancel_running=False`) those jobs are *not* cancelled: they stay RUNNING in the database with their checkpoints,
and the next `start()` resumes them, exactly as after a crash. `stop(cancel_running=True)` ends them CANCELLED
instead.
`close()` stops for good and checkpoints and closes the database, so that `jobs.db` alone holds every job.

Steering. Queued jobs can be moved (`move`), the queue paused (`pause`: running jobs finish, no other starts;
kept in the database, so a restarted process stays paused) and resumed, ended jobs deleted (`delete`, optionally
with the files they wrote), and a batch of requests queued together (`submit_batch`: every request checked before
any is queued) and cancelled together (`cancel_batch`). With a `retention`, ended jobs past its limits are deleted
after every job and at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from framepack.errors import FieldError
from framepack.events import Cancelled, CancelToken, Event
from framepack.extend import ParentJob, resolve
from framepack.generate import SOURCE, START, STREAM, KeptLatents
from framepack.jobs.bus import AsyncSubscription, EventBus, Subscriber, loop_waker
from framepack.jobs.checkpoints import CheckpointStore, SectionKey
from framepack.jobs.cleanup import remove_outputs
from framepack.jobs.errors import classify, internal_error
from framepack.jobs.events import (
    EndEvent,
    EnhanceEvent,
    Heartbeat,
    JobEvent,
    SectionEvent,
    StageEvent,
    StateEvent,
    enhance_result,
    from_engine,
)
from framepack.jobs.executor import Executor, LocalExecutor, WorkerLost
from framepack.jobs.hooks import JobHooks
from framepack.jobs.models import (
    Batch,
    BatchLineError,
    DeletedJob,
    EnhanceResult,
    Job,
    JobConflict,
    JobErrorInfo,
    JobNotFound,
    JobProgress,
    JobState,
    QueueFull,
    QueueState,
    Retention,
    WorkerState,
    parent_of,
)
from framepack.jobs.names import check_output_name, remove_partial_outputs
from framepack.jobs.prepare import PreparedJob, Preparer
from framepack.jobs.service import MissingComponent
from framepack.jobs.store import STORE_FILE, FolderLock, JobStore
from framepack.jobs.thumbnails import THUMBNAIL_SIZE, fit, image_thumbnail, video_thumbnail
from framepack.kept_latents import KeptLatentsError, KeptStore, read_metadata
from framepack.outputs import VIDEO_SUFFIXES
from framepack.plan import Plan
from framepack.record import read_record
from framepack.request import GenerateRequest
from framepack.runner import Runner
from framepack.video.codecs import EncoderInfo, list_video_encoders

logger = logging.getLogger(__name__)

PERSIST_INTERVAL_S = 0.5  # progress is written to SQLite at most this often (and at every stage and section)
PREVIEWS_KEPT = 16  # section previews a face can still fetch after their event (one frame each)
THUMBNAILS_KEPT = 256  # job thumbnails kept (a few tens of KB each), so a listing decodes each video once
PAUSED_SETTING = "queue_paused"  # the store's setting that keeps the pause across restarts
LEASE_SECONDS = 60.0  # a running job's lease lasts this long; the manager renews it every third of that
MAX_ATTEMPTS = 3  # runs of a job whose worker is lost before it fails (kind "worker_lost")
RECOVER_RETRY_SECONDS = 10.0  # a lost worker that does not come back is asked again after this


@dataclass
class _Worker:
    """One worker of the queue: its executor, its thread and the job it runs (all under the manager's lock)."""

    name: str
    executor: Executor
    thread: threading.Thread | None = None
    job: str | None = None  # the id of the job it runs
    token: CancelToken | None = None  # that job's cancel token
    cancel_requested: bool = False  # the job was cancelled by request (not by a shutdown)
    keep_partial: bool = False
    down: bool = False  # lost; waiting for the executor to answer again


def worker_names(executors: Sequence[Executor]) -> list[str]:
    """The executors' names, made unique with "#2", "#3"... where several share one (two CPU workers)."""
    names = []
    for executor in executors:
        count = sum(1 for other in executors[: len(names)] if other.name == executor.name)
        names.append(executor.name if count == 0 else f"{executor.name}#{count + 1}")
    return names


class JobManager:
    """Queue, worker, persistence and events of FramePack jobs; see the module docstring.

    `runner` is this machine's runner: requests are checked with it (device, encoder prober, LoRA folders, model
    cache) and jobs run on it, by a `LocalExecutor` holding `gpu_lock` (optional: a host's lock, so that SD.Next
    shares the GPU with its own work) while a job runs; `executor` puts jobs elsewhere instead, and `executors`
    runs one worker per executor (one per GPU; then `gpu_lock` is the executors' business). A job whose worker is
    lost runs at most `max_attempts` times; `on_close` is called once by `close()` after the workers stopped (a
    render farm's shutdown). `host_hooks` show the jobs to the host (its progress, history and
    Interrupt);
    `request_defaults` returns the values a submitted request takes for the fields it left out (`framepack.defaults`:
    model, cache, offload), read at every submit so that a changed setting applies at once. `retention` returns how
    many ended jobs to keep (`Retention`), read whenever ended jobs are pruned. Each subscriber's
    queue holds at most `event_queue_size` events. Only one started manager may use a `jobs_dir` at a time
    (start() refuses a second one where the OS has flock), so running the API with several worker processes over
    one data folder fails loudly.
    """

    def __init__(
        self,
        jobs_dir: Path,
        runner: Runner,
        *,
        max_queued: int = 100,
        gpu_lock: contextlib.AbstractContextManager | None = None,
        executor: Executor | None = None,
        executors: Sequence[Executor] | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        on_close: Callable[[], None] | None = None,
        host_hooks: JobHooks | None = None,
        request_defaults: Callable[[], Mapping[str, Any]] | None = None,
        event_queue_size: int = 1000,
        retention: Callable[[], Retention] | None = None,
    ):
        if executor is not None and executors is not None:
            raise ValueError("give either executor or executors, not both")
        if (executor is not None or executors is not None) and gpu_lock is not None:
            raise ValueError("gpu_lock is for the local executor; give it to your executor instead")
        if executors is not None and not executors:
            raise ValueError("executors is empty: the queue needs at least one worker")
        if max_attempts < 1:
            raise ValueError(f"max_attempts is {max_attempts}: a job needs at least one attempt")
        self.jobs_dir = Path(jobs_dir)
        self.max_queued = max_queued
        self.max_attempts = max_attempts
        self._runner = runner
        self._preparer = Preparer(runner, request_defaults)
        chosen = list(executors) if executors is not None else [executor or LocalExecutor(runner, gpu_lock)]
        self._workers = [_Worker(name, one) for name, one in zip(worker_names(chosen), chosen, strict=True)]
        self._hooks = host_hooks
        self._store = JobStore(self.jobs_dir / STORE_FILE)  # CorruptStore: one line, what to do
        self._checkpoints = CheckpointStore(self.jobs_dir / "jobs")
        self._kept = KeptStore(self.jobs_dir / "latents")  # finished jobs' latents (keep_latents)
        self._bus = EventBus(event_queue_size)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        # Queued and running jobs live here (the store holds the same, persisted); ended jobs only in the store.
        self._jobs: dict[str, Job] = {}
        self._prepared: dict[str, PreparedJob] = {}  # jobs submitted by this manager, as checked at submit
        self._queue: list[str] = []
        self._stopping = False
        self._lease_keeper: threading.Thread | None = None
        self._folder_lock = FolderLock(self.jobs_dir, "job manager")  # held while the workers run
        self._persisted: dict[str, float] = {}  # running job -> when its progress was last written
        self._previews: dict[str, dict[int, np.ndarray]] = {}  # job -> the last PREVIEWS_KEPT section previews
        self._thumbnails: dict[tuple[str, str], np.ndarray] = {}  # (job, state) -> picture, oldest first
        self._retention = retention
        self._on_close = on_close
        self._paused = self._store.setting(PAUSED_SETTING) == "1"
        for job in self._store.queued():
            self._jobs[job.id] = job
            self._queue.append(job.id)

    @property
    def output_dir(self) -> Path:
        return self._runner.output_dir

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Recover jobs a killed process left RUNNING (back to the front of the queue, checkpoints kept, stale
        hidden partial outputs removed) and start the workers' threads. Does nothing if the workers run."""
        with self._lock:
            if self._threads_alive():
                if self._stopping:
                    raise RuntimeError("the workers are still finishing a stop(); call stop() again before start()")
                return
            self._folder_lock.acquire()
            self._stopping = False
            recovered = self._store.running()
            for worker in self._workers:
                worker.job, worker.token, worker.down = None, None, False
            now = time.time()
            for job in recovered:
                checkpoints = len(self._checkpoints.files(job.id))
                expired = job.lease_expires_at is None or job.lease_expires_at <= now
                logger.info(
                    "job %s was left running by a stopped process (worker %s, attempt %d, lease %s); resuming it "
                    "(%d checkpoints)",
                    job.id,
                    job.worker,
                    job.attempt,
                    "expired"
                    if expired
                    else f"until {time.strftime('%H:%M:%S', time.localtime(job.lease_expires_at))}",
                    checkpoints,
                )
                self._requeued(job)
                remove_partial_outputs(job.request, self.output_dir)
                self._jobs[job.id] = job
            recovered_ids = [job.id for job in recovered]
            self._queue = recovered_ids + [job_id for job_id in self._queue if job_id not in recovered_ids]
            if self._paused and self._queue:
                logger.warning("the queue is paused: %d jobs wait until it is resumed", len(self._queue))
            for worker in self._workers:
                worker.thread = threading.Thread(
                    target=self._work, args=(worker,), name=f"framepack-jobs-{worker.name}", daemon=True
                )
                worker.thread.start()
            self._lease_keeper = threading.Thread(target=self._keep_leases, name="framepack-leases", daemon=True)
            self._lease_keeper.start()
        try:
            self.prune()
        except Exception:  # noqa: BLE001 - a failed clean-up must not keep the queue from starting
            logger.exception("pruning ended jobs failed")

    def stop(self, timeout: float | None = 30.0, cancel_running: bool = False) -> bool:
        """Stop the workers; running jobs are interrupted at their next denoising step.

        cancel_running=False (a normal shutdown): the interrupted jobs stay RUNNING in the database with their
        checkpoints and the next `start()` resumes them. cancel_running=True: they end CANCELLED. Queued jobs stay
        queued. Subscribers' streams end (without an end event) for jobs that did not end. Returns whether the
        workers stopped within `timeout` (model loading cannot be interrupted).
        """
        with self._lock:
            self._stopping = True
            for worker in self._workers:
                if worker.token is not None:
                    if cancel_running:
                        worker.cancel_requested = True
                    worker.token.cancel()
            self._changed.notify_all()
            threads = [thread for thread in (*self._worker_threads(), self._lease_keeper) if thread is not None]
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        stopped = not any(thread.is_alive() for thread in threads)
        if stopped:
            with self._lock:
                self._folder_lock.release()
                self._bus.close_all()
        return stopped

    def close(self, timeout: float | None = 30.0) -> bool:
        """Stop the workers for good (see `stop`), call `on_close`, and close the database, its write-ahead log
        checkpointed, so that `jobs.db` alone then holds every job. A worker that does not stop within `timeout` (a
        model still loading) keeps the database open, checkpointed all the same. Returns whether the workers
        stopped."""
        stopped = self.stop(timeout)
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            try:
                on_close()
            except Exception:  # noqa: BLE001 - the database is closed all the same
                logger.exception("closing the workers failed")
        if stopped:
            self._store.close()
        else:
            logger.warning("a job worker did not stop within %s s; %s stays open for it", timeout, self._store.path)
            self._store.checkpoint()
        return stopped

    # ------------------------------------------------------------------------------------------- commands

    def submit(self, request: GenerateRequest) -> Job:
        """Prepare the request once (`Preparer.prepare`: defaults, plan, every check, no model load; seed and
        output name fixed), persist and enqueue it.

        Raises FieldError (a bad field or image; EncoderError for output settings that do not open; a LoRA tag
        whose weight, file or header is wrong), ModelUnavailableError (a component is not on this machine),
        JobConflict naming "filename" (a queued or running job will write that output name, or an output with
        it exists) or QueueFull. Jobs without a filename are named by time, seed and id: those never clash.
        """
        self._check_room()
        prepared = self._prepare(request, uuid.uuid4().hex)
        job = _queued_job(prepared)
        with self._lock:
            self._check_room()
            if request.filename:  # under the lock: two submits cannot both take a name
                check_output_name(job.request, self._live_jobs(), self.output_dir)
            self._store.insert(job, prepared.image_digests)
            self._enqueue(job, prepared)
            logger.info("queued job %s: %s", job.id, job.summary)
            return self._public(job)

    def submit_batch(self, requests: list[GenerateRequest]) -> Batch:
        """Queue several requests as one batch: every request is prepared as `submit` does before any is queued,
        so one bad request refuses the whole batch with a BatchLineError naming its line (1 = the first) and
        field; the jobs are stored in one transaction and share a `batch_id` (`cancel_batch`). QueueFull when the
        queue has no room for all of them."""
        if not requests:
            raise FieldError("requests", "a batch needs at least one request")
        self._check_room(len(requests))
        batch_id = uuid.uuid4().hex
        prepared_jobs = []
        for line, request in enumerate(requests, 1):
            try:
                prepared_jobs.append(self._prepare(request, uuid.uuid4().hex))
            except Exception as error:
                failure = classify(error)
                if failure is None:
                    raise
                raise BatchLineError(line, failure.kind, failure.field, failure.message) from None
        jobs = [_queued_job(prepared, batch_id) for prepared in prepared_jobs]
        with self._lock:
            self._check_room(len(requests))
            live = self._live_jobs()
            for line, (request, job) in enumerate(zip(requests, jobs, strict=True), 1):
                if request.filename:
                    try:
                        check_output_name(job.request, live, self.output_dir)
                    except JobConflict as error:
                        raise BatchLineError(line, "conflict", "filename", str(error)) from None
                live.append(job)
            self._store.insert_many([(job, prepared.image_digests) for job, prepared in zip(jobs, prepared_jobs)])
            for job, prepared in zip(jobs, prepared_jobs, strict=True):
                self._enqueue(job, prepared)
            logger.info("queued batch %s: %d jobs", batch_id, len(jobs))
            return Batch(batch_id=batch_id, jobs=[self._public(job) for job in jobs])

    def _enqueue(self, job: Job, prepared: PreparedJob) -> None:
        """Put a stored job at the end of the queue (under the lock)."""
        self._jobs[job.id] = job
        self._prepared[job.id] = prepared
        self._hook("submitted", job)  # before the worker can see it
        self._queue.append(job.id)
        self._changed.notify_all()

    def _live_jobs(self) -> list[Job]:
        """Queued and running jobs, also those a stopped process left running (under the lock)."""
        return list(self._jobs.values()) + [job for job in self._store.running() if job.id not in self._jobs]

    def cancel(self, job_id: str, keep_partial: bool = False) -> Job:
        """Cancel a job. Queued: CANCELLED now. Running: the engine stops within one denoising step (on a remote
        worker too) and the job becomes CANCELLED when its worker notices (a job already past sampling may still
        finish). Ended:
        JobConflict. keep_partial=True keeps the finished sections' latents in
        `jobs_dir/jobs/<id>/checkpoints/` (named in the job's error message); otherwise nothing is kept."""
        with self._lock:
            job = self._lookup(job_id)
            if job.state.ended:
                raise JobConflict(
                    f"job {job_id} is already {job.state.value}; only queued or running jobs can be cancelled"
                )
            worker = self._worker_of(job_id)
            if worker is not None and worker.token is not None and self._alive(worker):
                worker.cancel_requested, worker.keep_partial = True, keep_partial
                worker.token.cancel()
                logger.info("cancel requested for running job %s (worker %s)", job_id, worker.name)
                return self._public(job)
            if job_id in self._queue:
                self._queue.remove(job_id)
        # Queued, or left RUNNING by a process that is gone: nothing runs it, so it ends here.
        self._end(
            job, JobState.CANCELLED, error=self._cancel_error(job_id, keep_partial), keep_checkpoints=keep_partial
        )
        return self.get(job_id)

    def cancel_running(self, keep_partial: bool = False) -> Job | None:
        """Cancel the jobs that run now, as `cancel` does (a host's Interrupt); the one that started first, None
        when no job runs."""
        with self._lock:
            cancelled = [self.cancel(job_id, keep_partial) for job_id in self._running_ids()]
            return cancelled[0] if cancelled else None

    def cancel_batch(self, batch_id: str, keep_partial: bool = False) -> list[Job]:
        """Cancel every queued or running job of a batch (as `cancel` does); its jobs afterwards, in brief form.
        JobNotFound (field "batch_id") when no job has that batch id."""
        members = self._store.page(batch_id=batch_id)
        if not members:
            raise JobNotFound(f"no batch with id {batch_id!r}")
        for member in members:
            if not member.state.ended:
                with contextlib.suppress(JobConflict):  # it may have ended meanwhile
                    self.cancel(member.id, keep_partial)
        return self.list_jobs(batch_id=batch_id)

    def move(self, job_id: str, position: int) -> Job:
        """Move a queued job to `position` in the queue (0 = next; past the end = last). JobConflict when the job
        is not queued."""
        with self._lock:
            job = self._lookup(job_id)
            if job_id not in self._queue:
                raise JobConflict(f"job {job_id} is {job.state.value}; only queued jobs can be moved")
            self._queue.remove(job_id)
            self._queue.insert(min(max(0, position), len(self._queue)), job_id)
            self._store.set_queue_order(self._queue)
            self._changed.notify_all()
            logger.info("job %s moved to queue position %d", job_id, self._queue.index(job_id))
            return self._public(job)

    def pause(self) -> QueueState:
        """Start no further job (running ones finish); kept across restarts until `resume`."""
        return self._set_paused(True)

    def resume(self) -> QueueState:
        """Start queued jobs again."""
        return self._set_paused(False)

    def _set_paused(self, paused: bool) -> QueueState:
        with self._lock:
            if paused != self._paused:
                self._store.set_setting(PAUSED_SETTING, "1" if paused else "0")
                self._paused = paused
                logger.info("queue %s", "paused" if paused else "resumed")
                self._changed.notify_all()
            return self.queue_state()

    def queue_state(self) -> QueueState:
        with self._lock:
            running = self._running_ids()
            return QueueState(paused=self._paused, queued=len(self._queue), running=running[0] if running else None)

    def workers(self) -> list[WorkerState]:
        """Each worker: its name, the job it runs, whether it is lost and whether its thread runs."""
        with self._lock:
            return [
                WorkerState(name=worker.name, job=worker.job, down=worker.down, alive=self._alive(worker))
                for worker in self._workers
            ]

    def delete(self, job_id: str, files: bool = False) -> DeletedJob:
        """Delete an ended job from the store, with its kept checkpoints; with `files` also the outputs it wrote
        inside the output folder (`framepack.jobs.cleanup`). JobConflict for a queued or running job."""
        with self._lock:
            job = self._lookup(job_id)
            if not job.state.ended:
                raise JobConflict(f"job {job_id} is {job.state.value}; cancel it first, then delete it")
            self._store.delete(job_id)
            for key in [key for key in self._thumbnails if key[0] == job_id]:
                del self._thumbnails[key]
        self._checkpoints.remove(job_id)
        self._kept.remove(job_id)
        removed, kept = remove_outputs(job, self.output_dir) if files else ([], list(job.outputs))
        logger.info("deleted job %s (%d outputs removed, %d kept)", job_id, len(removed), len(kept))
        return DeletedJob(job=job, removed_files=removed, kept_files=kept)

    def prune(self) -> list[DeletedJob]:
        """Delete the ended jobs past the retention limits (outputs too when it says so); what was deleted."""
        retention = self._retention() if self._retention is not None else None
        if retention is None or not retention.active:
            return []
        before = time.time() - retention.keep_days * 86400 if retention.keep_days is not None else None
        deleted = []
        for job in self._store.expired(retention.keep_jobs, before):
            with contextlib.suppress(JobNotFound, JobConflict):  # deleted meanwhile
                deleted.append(self.delete(job.id, files=retention.remove_outputs))
        if deleted:
            logger.info("retention: deleted %d ended jobs", len(deleted))
        return deleted

    # ------------------------------------------------------------------------------------------- requests

    def complete(self, request: GenerateRequest) -> GenerateRequest:
        """The request with this manager's defaults for the fields it left out (see `framepack.defaults`)."""
        return self._preparer.complete(request)

    def plan(self, request: GenerateRequest, check_encoder: bool = False) -> Plan:
        """The plan of the completed request; a continuation's or re-roll's (`framepack.extend`) against its parent."""
        extension = resolve(request, self._parent)
        if extension is None:
            return self._preparer.plan(request, check_encoder)
        return extension.plan(self._preparer.plan(extension.request, check_encoder, extension.source_video))

    def missing_components(self, request: GenerateRequest) -> list[MissingComponent]:
        extension = resolve(request, self._parent)
        if extension is None:
            return self._preparer.missing(request)
        return self._preparer.missing(extension.request, extension.source_video)

    def enhance(self, request: GenerateRequest) -> EnhanceResult:
        """Every distinct section prompt enhanced anew, no video made (checked as a submit would: plan, images, the
        enhancer's files); runs on the job device after any running job."""
        extension = resolve(request, self._parent)  # a continuation's or re-roll's prompts are its parent's
        request = self._preparer.complete(extension.request if extension is not None else request)
        plan = self._preparer.plan(request, source=extension.source_video if extension is not None else None)
        self._preparer.check_enhancer(request, plan, everything=True)
        return enhance_result(self._free_executor().enhance(request, plan), plan.num_sections)

    def recipe_text(self, model: str, variant: str) -> str:
        return self._preparer.recipe_text(model, variant)

    def check_recipe(self, text: str, variant: str) -> None:
        self._preparer.check_recipe(text, variant)

    def codecs(self) -> list[EncoderInfo]:
        return list_video_encoders()

    def read_record(self, path: Path) -> dict[str, Any]:
        return read_record(Path(path))

    def load_model(self, request: GenerateRequest) -> bool:
        """Load the request's model now on every worker instead of with its first job (each waits while its job
        runs); True when it is the self-test model."""
        return self._on_every_worker(lambda executor: executor.load_model(request))[0]

    def unload_model(self) -> None:
        """Free every worker's loaded model (each waits while its job runs, which keeps using it until it ends)."""
        self._on_every_worker(lambda executor: executor.unload_model())

    def _on_every_worker(self, call: Callable[[Executor], Any]) -> list[Any]:
        """`call` on every worker's executor, at the same time; the results in worker order (the first error
        raised once all are done)."""
        executors = [worker.executor for worker in self._workers]
        if len(executors) == 1:
            return [call(executors[0])]
        with ThreadPoolExecutor(len(executors), thread_name_prefix="framepack-model") as pool:
            futures = [pool.submit(call, executor) for executor in executors]
        return [future.result() for future in futures]

    def _free_executor(self) -> Executor:
        """The executor of the first worker that runs no job (else the first worker's: the call waits)."""
        with self._lock:
            free = [worker for worker in self._workers if worker.job is None and not worker.down]
            return (free or self._workers)[0].executor

    # ------------------------------------------------------------------------------------------- queries

    def get(self, job_id: str) -> Job:
        with self._lock:
            return self._public(self._lookup(job_id))

    def list_jobs(
        self,
        states: tuple[JobState, ...] | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
        batch_id: str | None = None,
    ) -> list[Job]:
        """Jobs in `states` (all when None) of `batch_id` (any when None) in insertion order (newest first when
        asked), `offset` skipped, at most `limit`; queued jobs carry their queue_position (0 = next). Requests
        come in brief form (`framepack.jobs.models.brief_request`): a listing never reads the images."""
        with self._lock:
            listed = []
            for stored in self._store.page(states, limit, offset, newest_first, batch_id):
                live = self._jobs.get(stored.id)
                job = live.model_copy(update={"request": stored.request}) if live is not None else stored
                listed.append(self._public(job))
            return listed

    def count_jobs(self, states: tuple[JobState, ...] | None = None, batch_id: str | None = None) -> int:
        """How many jobs `list_jobs` with the same filters lists without a limit."""
        return self._store.count(states, batch_id)

    def thumbnail(self, job_id: str, size: int = THUMBNAIL_SIZE) -> np.ndarray | None:
        """A small picture of the job (uint8 [H, W, 3], longer side `size`): its latest section preview while it
        runs, the first frame of its video once finished, else its start image; None when it has none."""
        with self._lock:
            job = self._lookup(job_id)
            previews = self._previews.get(job_id)
            if job.state == JobState.RUNNING and previews:
                return fit(next(reversed(previews.values())), size)
            key = (job_id, job.state.value)
            if key in self._thumbnails:
                return self._thumbnails[key]
        picture = None
        video = next((path for path in job.outputs if Path(path).suffix in VIDEO_SUFFIXES), None)
        if video is not None:
            picture = video_thumbnail(self._absolute(video), size)
        if picture is None:
            full = job if job_id in self._jobs else self._store.get(job_id)
            source = full.request.get("init_image") if full is not None else None
            picture = image_thumbnail(source, size) if source else None
        if picture is not None:
            with self._lock:
                self._thumbnails[key] = picture
                while len(self._thumbnails) > THUMBNAILS_KEPT:
                    del self._thumbnails[next(iter(self._thumbnails))]
        return picture

    def preview(self, job_id: str, section: int | None = None) -> np.ndarray | None:
        """A running job's preview (uint8 [H, W, 3]) of `section` (one of the last few finished), or of the latest
        finished section; None if there is none (yet)."""
        with self._lock:
            self._lookup(job_id)
            previews = self._previews.get(job_id, {})
            if section is None:
                return next(reversed(previews.values()), None)
            return previews.get(section)

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job ended and return it; after `timeout` seconds return it as it is."""
        with self._changed:  # wait_for evaluates the predicate first: JobNotFound before any waiting
            self._changed.wait_for(lambda: self._lookup(job_id).state.ended, timeout)
            return self._public(self._lookup(job_id))

    def subscribe(self, job_id: str, heartbeat: float | None = None) -> Iterator[JobEvent | Heartbeat]:
        """The job's events (`framepack.jobs.events`): `StateEvent` first, then the engine's (stage, progress,
        section, frames, and state when it starts running) and finally `EndEvent`, at once if the job already
        ended. With `heartbeat`, a `Heartbeat` comes after that many quiet seconds (lets a server notice a gone
        client). A slow reader never blocks the job: its queue is bounded and drops the oldest progress events,
        never the end. Raises JobNotFound now; subscribes at the first `next()`; closing the generator
        unsubscribes."""
        self.get(job_id)
        return self._stream(job_id, heartbeat)

    def _stream(self, job_id: str, heartbeat: float | None) -> Iterator[JobEvent | Heartbeat]:
        first, subscriber = self._open_subscription(job_id)
        yield from self._bus.stream(job_id, first, subscriber, heartbeat)

    def subscribe_async(
        self, job_id: str, loop: asyncio.AbstractEventLoop, heartbeat: float | None = None
    ) -> AsyncSubscription:
        """The events `subscribe` yields, for a reader on asyncio `loop` (callable from any thread): no thread
        waits on them. Raises JobNotFound now; `close()` on the result unsubscribes at once."""
        ready = asyncio.Event()
        first, subscriber = self._open_subscription(job_id, loop_waker(loop, ready))
        if subscriber is None:
            return AsyncSubscription(first, None, ready, lambda: None, heartbeat)
        return AsyncSubscription(first, subscriber, ready, lambda: self._bus.remove(job_id, subscriber), heartbeat)

    def subscriber_count(self, job_id: str | None = None) -> int:
        """Open subscriptions to `job_id`'s events (to every job's when None)."""
        return self._bus.count(job_id)

    def _open_subscription(
        self, job_id: str, wake: Callable[[], None] | None = None
    ) -> tuple[list[JobEvent], Subscriber | None]:
        """The job's first events (its state; and its end when it has ended) and, unless it has ended, a subscriber
        registered for its next events (both under _lock, so no event falls between the two)."""
        with self._lock:
            job = self._public(self._lookup(job_id))
            if job.state.ended:
                return [_event(StateEvent, job), _event(EndEvent, job)], None
            return [_event(StateEvent, job)], self._bus.add(job_id, wake)

    # ------------------------------------------------------------------------------------------- worker

    def _work(self, worker: _Worker) -> None:
        while True:
            with self._lock:
                self._changed.wait_for(lambda: self._stopping or self._next_for(worker) is not None)
                if self._stopping:
                    return
                job_id = self._next_for(worker)
                self._queue.remove(job_id)
                job = self._jobs[job_id]
                token = CancelToken()
                worker.job, worker.token = job.id, token
                worker.cancel_requested = worker.keep_partial = False
                job.state, job.started_at = JobState.RUNNING, time.time()
                job.worker, job.attempt = worker.name, job.attempt + 1
                job.lease_expires_at = time.time() + LEASE_SECONDS
                job.progress = JobProgress(
                    stage="starting",
                    sections=job.progress.sections,
                    total_steps=job.progress.total_steps,
                    enhanced_prompts=job.progress.enhanced_prompts,
                )
                self._store.update(job)
                self._persisted[job.id] = time.monotonic()
                self._bus.publish(job.id, _event(StateEvent, self._public(job)))
                self._changed.notify_all()  # a worker that left the head job to this one may take the next job
            logger.info("running job %s on worker %s (attempt %d)", job.id, worker.name, job.attempt)
            outcome = self._execute(worker, job, token)
            if outcome == "stop":
                return
            if outcome == "lost" and not self._recover(worker):
                return
            try:
                self.prune()
            except Exception:  # noqa: BLE001 - a failed clean-up must not stop the worker
                logger.exception("pruning ended jobs failed")

    def _next_for(self, worker: _Worker) -> str | None:
        """The job `worker` should take now (under the lock): the head of the queue, unless the queue is paused,
        the worker is lost, or another free worker holds the job's model while this one does not."""
        if self._paused or not self._queue or worker.down or worker.job is not None:
            return None
        head = self._queue[0]
        prepared = self._prepared.get(head)
        if prepared is None or worker.executor.holds(prepared.recipe):
            return head
        others = [other for other in self._workers if other is not worker and other.job is None and not other.down]
        if any(other.executor.holds(prepared.recipe) for other in others if self._alive(other)):
            return None
        return head

    def _recover(self, worker: _Worker) -> bool:
        """After a lost worker's job was dealt with: wait until the worker answers again (asking every
        RECOVER_RETRY_SECONDS); False when the manager stops meanwhile."""
        with self._lock:
            worker.down = True
        while True:
            try:
                worker.executor.recover()
                break
            except WorkerLost as error:
                logger.error("%s; asking again in %g s", error, RECOVER_RETRY_SECONDS)
            except Exception:  # noqa: BLE001 - whatever a lost worker raises, the others keep working
                logger.exception(
                    "worker %s: recovering failed; asking again in %g s", worker.name, RECOVER_RETRY_SECONDS
                )
            with self._lock:
                if self._changed.wait_for(lambda: self._stopping, RECOVER_RETRY_SECONDS):
                    return False
        with self._lock:
            worker.down = False
            logger.info("worker %s is back", worker.name)
            self._changed.notify_all()
            return not self._stopping

    def _keep_leases(self) -> None:
        """Renew the leases of the running jobs every third of LEASE_SECONDS while the manager runs."""
        while True:
            with self._lock:
                if self._changed.wait_for(lambda: self._stopping, LEASE_SECONDS / 3):
                    return
                for job_id in self._running_ids():
                    job = self._jobs[job_id]
                    job.lease_expires_at = time.time() + LEASE_SECONDS
                    self._store.update(job)

    def _requeued(self, job: Job) -> None:
        """A job that ran becomes queued again (under the lock; the caller puts it into the queue): its progress
        restarts, its lease ends; its worker, attempt and checkpoints stay."""
        job.state, job.started_at, job.queue_position, job.lease_expires_at = JobState.QUEUED, None, None, None
        job.progress = JobProgress(
            stage="queued",
            sections=job.progress.sections,
            total_steps=job.progress.total_steps,
            enhanced_prompts=job.progress.enhanced_prompts,  # its sections so far encoded these
        )
        self._store.update(job)

    def _execute(self, worker: _Worker, job: Job, token: CancelToken) -> str:
        """Run one job on `worker` until it ended or left the worker: "done" (it ended), "lost" (its worker was
        lost: the job is queued again or failed) or "stop" (the worker must stop; the job stays RUNNING, to be
        resumed)."""
        try:
            prepared = with_enhanced_prompts(self._prepared.get(job.id) or self._restore(job), job.progress)
            self._preparer.check_unchanged(prepared)
            restored = self._checkpoints.load(job.id, prepared.plan)
            with self._lock:
                job.resumed_sections = sum(1 for key in restored if key != START)
                self._store.update(job)
            if restored:
                logger.info("job %s: resuming with %d sections restored from checkpoints", job.id, job.resumed_sections)
            restored = {**self._parent_latents(prepared.plan), **restored}
            result = worker.executor.run(prepared, restored, _JobSink(self, job, token))
        except Cancelled:
            with self._lock:
                by_user, keep, stopping = worker.cancel_requested, worker.keep_partial, self._stopping
            if by_user or not stopping:
                logger.info("job %s cancelled", job.id)
                self._end(job, JobState.CANCELLED, error=self._cancel_error(job.id, keep), keep_checkpoints=keep)
                return "done"
            logger.info("job %s interrupted by shutdown; it stays running and resumes on the next start", job.id)
            self._leave_running(job)
            return "stop"
        except WorkerLost as lost:
            return self._lost(worker, job, lost)
        except Exception as error:
            failure = classify(error)
            if failure is None:
                logger.exception("job %s failed with an internal error", job.id)
                failure = internal_error(error)
        except BaseException:
            # SystemExit, KeyboardInterrupt and the like: the process is going down. Like after a kill, the job
            # stays RUNNING with its checkpoints and the next start() resumes it.
            logger.critical("job %s interrupted by a process exit; the workers stop", job.id, exc_info=True)
            self._leave_running(job)
            return "stop"
        else:
            if result.kept is not None:
                self._keep(job, prepared.plan, result.kept)
            outputs = [self._relative(path) for path in result.outputs]
            self._end(job, JobState.FINISHED, outputs=outputs, timings=result.timings)
            logger.info("job %s finished: %s", job.id, ", ".join(outputs))
            return "done"
        if failure.kind == "out_of_memory":
            worker.executor.free_memory()  # before the next job starts; the exception and its frames are released
        logger.warning("job %s failed (%s): %s", job.id, failure.kind, failure.message)
        self._end(job, JobState.FAILED, error=failure)
        return "done"

    def _lost(self, worker: _Worker, job: Job, lost: WorkerLost) -> str:
        """The worker running `job` was lost: a cancelled job ends cancelled, a job interrupted by a shutdown stays
        RUNNING, a job with attempts left goes back to the front of the queue (its hidden partial outputs removed,
        its checkpoints kept) and one without fails with the reason. "lost", or "stop" for the shutdown."""
        with self._lock:
            by_user, keep, stopping = worker.cancel_requested, worker.keep_partial, self._stopping
        if by_user:
            logger.info("job %s cancelled (and its worker was lost: %s)", job.id, lost.reason)
            self._end(job, JobState.CANCELLED, error=self._cancel_error(job.id, keep), keep_checkpoints=keep)
            return "lost"
        if stopping:
            logger.info("job %s: %s during a shutdown; it resumes on the next start", job.id, lost)
            self._leave_running(job)
            return "stop"
        with self._lock:
            worker.down = True
        if job.attempt >= self.max_attempts:
            message = f"{lost}; gave up after {job.attempt} attempts (the limit is {self.max_attempts})"
            logger.error("job %s failed: %s", job.id, message)
            self._end(job, JobState.FAILED, error=JobErrorInfo(kind="worker_lost", message=message))
            return "lost"
        logger.warning("job %s: %s; queued again for attempt %d", job.id, lost, job.attempt + 1)
        remove_partial_outputs(job.request, self.output_dir)
        with self._lock:
            self._requeued(job)
            worker.job, worker.token, worker.down = None, None, True  # no job for it until it answers again
            self._persisted.pop(job.id, None)
            self._queue.insert(0, job.id)
            self._bus.publish(job.id, _event(StateEvent, self._public(job)))
            self._changed.notify_all()
        return "lost"

    def _prepare(self, request: GenerateRequest, job_id: str) -> PreparedJob:
        """`Preparer.prepare`; a continuation or re-roll is first resolved against its parent (`framepack.extend`:
        every refusal names its field, before any model loads) and its plan says what comes from the parent."""
        extension = resolve(request, self._parent)
        if extension is None:
            return self._preparer.prepare(request, job_id)
        prepared = self._preparer.prepare(extension.request, job_id, extension.source_video)
        extension.check_images(prepared.image_digests)
        return dataclasses.replace(prepared, plan=extension.plan(prepared.plan))

    def _parent(self, job_id: str) -> ParentJob | None:
        """A job as a continuation or re-roll sees its parent (None when there is no such job)."""
        with self._lock:
            job = self._jobs.get(job_id) or self._store.get(job_id)
        if job is None:
            return None
        kept = None
        if job.state == JobState.FINISHED and self._kept.exists(job_id):
            try:
                kept = read_metadata(self._kept.path(job_id))
            except KeptLatentsError as error:
                logger.warning("job %s: %s", job_id, error)
        plan = Plan.model_validate(job.plan) if job.plan is not None else None
        return ParentJob(job.id, job.state.value, job.request, plan, self._store.image_digests(job_id), kept)

    def _parent_latents(self, plan: Plan) -> dict[SectionKey, torch.Tensor]:
        """What a continuation or re-roll restores from its parent's kept latents: START, the sections it reuses
        and, for a continuation, the parent's random-stream state (STREAM); for a bidirectional continuation all of
        them in time order as its source video (SOURCE). FieldError naming continue_job or reroll_job when the parent
        or its latents went away after the job was queued."""
        extend = plan.extend
        if extend is None:
            return {}
        field = "continue_job" if extend.kind == "continue" else "reroll_job"
        parent = self._store.get(extend.parent)
        if parent is None or parent.plan is None:
            raise FieldError(field, f"job {extend.parent} was deleted after this job was queued, with its latents")
        keys = list(range(extend.parent_sections)) if extend.source_latents else extend.restored
        try:
            kept = self._kept.load(extend.parent, Plan.model_validate(parent.plan), [START, *keys])
        except KeptLatentsError as error:
            raise FieldError(field, f"job {extend.parent}'s kept latents are gone or unreadable ({error})") from None
        if extend.source_latents:  # sections are numbered in time order, START before them
            return {SOURCE: torch.cat([kept.latents[key] for key in [START, *keys]], dim=2)}
        restored: dict[SectionKey, torch.Tensor] = dict(kept.latents)
        if extend.kind == "continue":
            restored[STREAM] = kept.stream_state
        return restored

    def _keep(self, job: Job, plan: Plan, kept: KeptLatents) -> None:
        """Keep a finished job's latents (`keep_latents`); a failure (disk full) costs them, never the video."""
        try:
            size = self._kept.save(job.id, kept, plan)
        except OSError as error:
            logger.warning("job %s: its latents were not kept: %s", job.id, error)
            with self._lock:
                job.progress.warnings.append(f"the latents were not kept, so it cannot be continued: {error}")
            return
        logger.info("job %s: kept its latents (%.1f MB)", job.id, size / 1e6)

    def _restore(self, job: Job) -> PreparedJob:
        """A job this manager did not submit (queued or left running by an earlier process), from its row."""
        digests = self._store.image_digests(job.id)
        return self._preparer.restore(job, digests)

    def _on_event(self, job: Job, event: Event) -> None:
        """Engine event -> job progress (persisted at stage changes, sections and at most every 0.5 s), a job event
        for the subscribers, the section's preview kept for `preview`, and the host's progress. Called in the
        worker thread."""
        now = time.monotonic()
        with self._lock:
            if job.state != JobState.RUNNING:  # a late event of a run that ended or was requeued
                return
            published = from_engine(event, job.progress)
            if published is None:
                return
            if isinstance(published, SectionEvent) and published.pixels is not None:
                previews = self._previews.setdefault(job.id, {})
                previews[published.section] = published.pixels
                while len(previews) > PREVIEWS_KEPT:
                    del previews[next(iter(previews))]
            self._bus.publish(job.id, published)
            if (
                isinstance(published, (StageEvent, SectionEvent, EnhanceEvent))
                or now - self._persisted.get(job.id, 0.0) >= PERSIST_INTERVAL_S
            ):
                self._store.update(job)
                self._persisted[job.id] = now
            if not isinstance(published, SectionEvent):
                self._hook("progress", job)

    def _hook(self, name: str, *args: Any) -> None:
        """Call a host hook; a failing hook is logged and never fails the job."""
        if self._hooks is None:
            return
        try:
            getattr(self._hooks, name)(*args)
        except Exception:  # noqa: BLE001 - a host display must never fail the job
            logger.exception("the host's %s hook failed", name)

    # ------------------------------------------------------------------------------------------- endings

    def _end(
        self,
        job: Job,
        state: JobState,
        error: JobErrorInfo | None = None,
        outputs: list[str] | None = None,
        timings: dict[str, float] | None = None,
        keep_checkpoints: bool = False,
    ) -> None:
        """The one way a job ends: checkpoints removed (unless kept), row written, waiters and subscribers told."""
        if not keep_checkpoints:
            self._checkpoints.remove(job.id)
        with self._lock:
            job.state, job.finished_at, job.error = state, time.time(), error
            job.outputs, job.timings = outputs or [], timings or {}
            job.queue_position, job.lease_expires_at = None, None
            job.progress.stage, job.progress.eta_seconds = state.value, None
            self._store.update(job)
            self._jobs.pop(job.id, None)
            self._prepared.pop(job.id, None)
            self._previews.pop(job.id, None)
            self._persisted.pop(job.id, None)
            worker = self._worker_of(job.id)
            if worker is not None:
                worker.job, worker.token = None, None
            self._bus.publish(job.id, _event(EndEvent, self._public(job)))
            self._changed.notify_all()

    def _leave_running(self, job: Job) -> None:
        """Keep the job RUNNING in the database (with its checkpoints) for the next start() to resume."""
        with self._lock:
            self._store.update(job)
            self._stopping = True
            self._changed.notify_all()

    def _cancel_error(self, job_id: str, keep_partial: bool) -> JobErrorInfo:
        if keep_partial and self._checkpoints.files(job_id):
            message = (
                f"cancelled by request; the finished sections' latents were kept in {self._checkpoints.folder(job_id)}"
            )
        else:
            message = "cancelled by request; no partial output was kept"
        return JobErrorInfo(kind="cancelled", message=message)

    # ------------------------------------------------------------------------------------------- helpers

    def _worker_of(self, job_id: str) -> _Worker | None:
        """The worker running `job_id` (under the lock)."""
        return next((worker for worker in self._workers if worker.job == job_id), None)

    def _running_ids(self) -> list[str]:
        """The running jobs, the one that started first first (under the lock)."""
        running = [self._jobs[worker.job] for worker in self._workers if worker.job is not None]
        return [job.id for job in sorted(running, key=lambda job: job.started_at or 0.0)]

    def _worker_threads(self) -> list[threading.Thread]:
        return [worker.thread for worker in self._workers if worker.thread is not None]

    def _threads_alive(self) -> bool:
        return any(thread.is_alive() for thread in self._worker_threads())

    @staticmethod
    def _alive(worker: _Worker) -> bool:
        return worker.thread is not None and worker.thread.is_alive()

    def _check_room(self, jobs: int = 1) -> None:
        with self._lock:
            if len(self._queue) + jobs > self.max_queued:
                more = "" if jobs == 1 else f"; a batch of {jobs} does not fit"
                raise QueueFull(
                    f"{len(self._queue)} jobs are waiting, the limit is {self.max_queued}{more}; try again later"
                )

    def _lookup(self, job_id: str) -> Job:
        """The live job (queued/running) or the stored one; JobNotFound if there is none."""
        job = self._jobs.get(job_id) or self._store.get(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return job

    def _public(self, job: Job) -> Job:
        """A copy for faces, with queue_position, the parent link and whether its latents are kept filled in."""
        copy = job.model_copy(deep=True)
        copy.queue_position = self._queue.index(job.id) if job.id in self._queue else None
        copy.parent, copy.parent_kind = parent_of(job.request)
        copy.latents_kept = job.state == JobState.FINISHED and self._kept.exists(job.id)
        return copy

    def _absolute(self, path: str) -> Path:
        """An output path as the job lists it (relative to the output folder, or absolute)."""
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.output_dir / candidate

    def _relative(self, path: str) -> str:
        """Output paths relative to the output folder (absolute when written elsewhere)."""
        resolved = Path(path).resolve()
        try:
            return resolved.relative_to(self.output_dir.resolve()).as_posix()
        except ValueError:
            return str(resolved)


class _JobSink:
    """The head side of one running job, for the executor (`framepack.jobs.executor.RunSink`)."""

    def __init__(self, manager: JobManager, job: Job, cancel: CancelToken):
        self._manager, self._job, self.cancel = manager, job, cancel

    def running(self) -> contextlib.AbstractContextManager:
        hooks = self._manager._hooks
        return hooks.running(self._job) if hooks is not None else contextlib.nullcontext()

    def event(self, event: Event) -> None:
        self._manager._on_event(self._job, event)

    def section_latents(self, key: SectionKey, latents: torch.Tensor) -> None:
        self._manager._checkpoints.save(self._job.id, key, latents)

    def outputs(self, paths: list[str]) -> None:
        self._manager._hook("outputs", self._job, paths)


def with_enhanced_prompts(prepared: PreparedJob, progress: JobProgress) -> PreparedJob:
    """A job resumed after a restart encodes the texts its enhance stage wrote before (kept in its progress), so its
    remaining sections match the restored ones and the enhancer does not run again."""
    if not progress.enhanced_prompts:
        return prepared
    enhanced = {**progress.enhanced_prompts, **prepared.request.enhanced_prompts}
    return dataclasses.replace(prepared, request=prepared.request.model_copy(update={"enhanced_prompts": enhanced}))


def _queued_job(prepared: PreparedJob, batch_id: str | None = None) -> Job:
    """The new, queued job of a prepared request."""
    plan = prepared.plan
    return Job(
        id=prepared.id,
        state=JobState.QUEUED,
        request=prepared.request.model_dump(mode="json"),
        plan=plan.model_dump(mode="json"),
        summary=plan.summary(),
        progress=JobProgress(stage="queued", sections=plan.num_sections, total_steps=plan.total_steps),
        created_at=time.time(),
        batch_id=batch_id,
    )


def _event(kind: type[StateEvent] | type[EndEvent], job: Job) -> StateEvent | EndEvent:
    """A state or end event of `job`, which must be a copy (`_public`): the event shares its parts."""
    return kind(**dict(job))
