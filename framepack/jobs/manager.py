"""The job manager: the one owner of job state. A single worker thread runs jobs one at a time, FIFO.

Faces submit requests, read jobs, cancel them and subscribe to their events; they never touch the worker.

Life of a job::

    submit() --validate (no model load)--> QUEUED --worker--> RUNNING --> FINISHED | FAILED | CANCELLED

Persistence and resume. Every job is a row in `data_dir/jobs.db` (SQLite). While a job runs, the latents of each
sampled section are saved to `data_dir/jobs/<id>/checkpoints/<key>.safetensors` (key = section index, or
"start" for the T2V start frame). If the process dies (kill -9, power loss) the row stays RUNNING; the next
`start()` puts such jobs back at the front of the queue, removes their half-written hidden outputs and runs them
again with the saved sections restored, so only the missing sections are sampled and the video is the same one
an uninterrupted run gives (the seed and output file name were fixed at submit time). The checkpoint folder is
deleted when the job ends, unless a cancel asked to keep it.

Shutdown. `stop()` interrupts the running job at its next denoising step and stops the worker. By default
(`cancel_running=False`) that job is *not* cancelled: it stays RUNNING in the database with its checkpoints, and
the next `start()` resumes it, exactly as after a crash. `stop(cancel_running=True)` ends it CANCELLED instead.
`close()` stops for good and checkpoints and closes the database, so that `jobs.db` alone holds every job.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from framepack.defaults import apply_defaults
from framepack.errors import FieldError, UserError
from framepack.events import (
    Cancelled,
    CancelToken,
    Event,
    FileWritten,
    FramesWritten,
    SectionFinished,
    StageStarted,
    StepProgress,
)
from framepack.generate import START
from framepack.jobs.hooks import JobHooks
from framepack.jobs.models import Job, JobConflict, JobErrorInfo, JobNotFound, JobProgress, JobState, QueueFull
from framepack.jobs.store import STORE_FILE, JobStore
from framepack.models.loader import ModelUnavailableError, check_available
from framepack.outputs import DiskFull, OutputExists, existing_names, output_names
from framepack.plan import Plan
from framepack.request import GenerateRequest
from framepack.runner import Runner, plan_request, resolve_recipe

logger = logging.getLogger(__name__)

OUT_OF_MEMORY_ERRORS = (torch.OutOfMemoryError, torch.cuda.OutOfMemoryError, MemoryError)
OUT_OF_MEMORY_ADVICE = (
    "Try a lower resolution, a shorter duration or a smaller latent_window_size, or enable model offload, "
    "then submit the job again."
)
PERSIST_INTERVAL_S = 0.5  # progress is written to SQLite at most this often (and at every stage and section)
DROPPABLE = ("progress", "frames")  # events a full subscriber queue drops first, oldest first
_CLOSED = object()  # tells a subscriber stream to end: the manager stopped


PREVIEWS_KEPT = 16  # section previews a face can still fetch after their event (one frame each)

class PlanChanged(UserError):
    """The stored request no longer plans to the plan made at submit time (an image file changed)."""


class _Subscriber:
    """A bounded event queue of one subscriber. When full, the oldest progress/frames event is dropped (then the
    oldest other event); "end" and the close marker are never dropped, so a slow reader always sees the end.

    `wake` (optional) is called after each put, outside the queue's lock: an asyncio reader's way to be woken
    from the worker thread (see `AsyncSubscription`)."""

    def __init__(self, maxsize: int, wake: Callable[[], None] | None = None):
        self.maxsize = max(1, maxsize)
        self.dropped = 0
        self._items: deque = deque()
        self._ready = threading.Condition()
        self._wake = wake

    def put(self, item: Any) -> None:
        with self._ready:
            if len(self._items) >= self.maxsize and item is not _CLOSED and item["event"] != "end":
                self._drop_one()
            self._items.append(item)
            self._ready.notify()
        if self._wake is not None:
            self._wake()

    def _drop_one(self) -> None:
        for kinds in (DROPPABLE, None):
            for index, queued in enumerate(self._items):
                if queued is not _CLOSED and queued["event"] != "end" and (kinds is None or queued["event"] in kinds):
                    del self._items[index]
                    self.dropped += 1
                    return

    def get(self, timeout: float | None) -> Any:
        """The next item, or None when `timeout` passed without one."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._items, timeout):
                return None
            return self._items.popleft()

    def get_nowait(self) -> Any:
        """The next item, or None when there is none."""
        with self._ready:
            return self._items.popleft() if self._items else None


class AsyncSubscription:
    """A job's events for an asyncio reader (the API's event streams), as `JobManager.subscribe` yields them, with
    no thread waiting while the job is quiet: the worker's publish wakes the reader's event loop through
    `loop.call_soon_threadsafe`. `close()` unsubscribes at once (idempotent); a reader whose client went away
    must call it. Iterate it with `async for`; it ends after "end", or when the manager stops."""

    def __init__(
        self,
        first: list[dict],
        subscriber: _Subscriber | None,
        ready: asyncio.Event,
        unsubscribe: Callable[[], None],
        heartbeat: float | None,
    ):
        self._first = deque(first)
        self._subscriber = subscriber
        self._ready = ready
        self._unsubscribe = unsubscribe
        self._heartbeat = heartbeat
        self.closed = subscriber is None

    def __aiter__(self) -> AsyncIterator[dict]:
        return self

    async def __anext__(self) -> dict:
        if self._first:
            return self._first.popleft()
        while not self.closed:
            assert self._subscriber is not None
            item = self._subscriber.get_nowait()
            if item is None:
                self._ready.clear()  # cleared before the second look: a put after it sets the event again
                item = self._subscriber.get_nowait()
            if item is None:
                try:
                    await asyncio.wait_for(self._ready.wait(), self._heartbeat)
                except asyncio.TimeoutError:
                    return {"event": "ping", "data": {}}
                continue
            if item is _CLOSED or item["event"] == "end":
                self.close()
            if item is _CLOSED:
                break
            return item
        raise StopAsyncIteration

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._unsubscribe()


class JobManager:
    """Queue, worker, persistence and events of FramePack jobs; see the module docstring.

    `gpu_lock` (optional) is held while a job runs, so a host (SD.Next) can share the GPU with other work;
    `hooks` (optional, `framepack.jobs.hooks.JobHooks`) show the jobs to the host (its progress, history and
    Interrupt); `defaults` (optional) returns the values a submitted request takes for the fields it left out
    (`framepack.defaults`: model, cache, offload), read at every submit so a changed setting applies at once.
    Only one started manager may use a `data_dir` at a time (start() refuses a second one where the OS has
    flock), so running the API with several worker processes over one data folder fails loudly.
    """

    def __init__(
        self,
        data_dir: Path,
        runner: Runner,
        max_queued: int = 100,
        gpu_lock: contextlib.AbstractContextManager | None = None,
        subscriber_queue_size: int = 1000,
        hooks: JobHooks | None = None,
        defaults: Callable[[], Mapping[str, Any]] | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.runner = runner
        self.max_queued = max_queued
        self._gpu_lock = gpu_lock
        self._hooks = hooks
        self._defaults = defaults
        self._model_lock = threading.Lock()  # held around a job's run and around load/unload from a face
        self._subscriber_queue_size = subscriber_queue_size
        self._store = JobStore(self.data_dir / STORE_FILE)  # CorruptStore: one line, what to do
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        # Queued and running jobs live here (the store holds the same, persisted); ended jobs only in the store.
        self._jobs: dict[str, Job] = {}
        self._queue: list[str] = []
        self._running: str | None = None
        self._token: CancelToken | None = None
        self._cancel_requested = False
        self._keep_partial = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._data_dir_lock: Any = None  # open lock file while the worker owns data_dir (POSIX)
        self._last_persist = 0.0
        self._previews: dict[str, dict[int, np.ndarray]] = {}  # job -> the last PREVIEWS_KEPT section previews
        self._subscribers: dict[str, list[_Subscriber]] = {}
        # Guards _subscribers alone, so an event loop can unsubscribe without waiting for the worker's _lock.
        self._subscribers_lock = threading.Lock()
        for job in self._store.queued():
            self._jobs[job.id] = job
            self._queue.append(job.id)

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Recover jobs a killed process left RUNNING (back to the front of the queue, checkpoints kept, stale
        hidden partial outputs removed) and start the worker thread. Does nothing if the worker runs."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                if self._stopping:
                    raise RuntimeError("the worker is still finishing a stop(); call stop() again before start()")
                return
            self._claim_data_dir()
            self._stopping = False
            recovered = self._store.running()
            self._running, self._token = None, None
            for job in recovered:
                checkpoints = len(self._checkpoint_files(job.id))
                logger.info(
                    "job %s was left running by a stopped process; resuming it (%d checkpoints)", job.id, checkpoints
                )
                job.state, job.started_at, job.queue_position = JobState.QUEUED, None, None
                job.progress = JobProgress(
                    stage="queued", sections=job.progress.sections, total_steps=job.progress.total_steps
                )
                self._store.update(job)
                self._remove_partial_outputs(job)
                self._jobs[job.id] = job
            recovered_ids = [job.id for job in recovered]
            self._queue = recovered_ids + [job_id for job_id in self._queue if job_id not in recovered_ids]
            self._thread = threading.Thread(target=self._work, name="framepack-jobs", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 30.0, cancel_running: bool = False) -> bool:
        """Stop the worker; the running job is interrupted at its next denoising step.

        cancel_running=False (a normal shutdown): the interrupted job stays RUNNING in the database with its
        checkpoints and the next `start()` resumes it. cancel_running=True: it ends CANCELLED. Queued jobs stay
        queued. Subscribers' streams end (without "end") for jobs that did not end. Returns whether the worker
        stopped within `timeout` (model loading cannot be interrupted).
        """
        with self._lock:
            self._stopping = True
            if self._token is not None:
                if cancel_running:
                    self._cancel_requested = True
                self._token.cancel()
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        stopped = thread is None or not thread.is_alive()
        if stopped:
            with self._lock:
                self._release_data_dir()
                with self._subscribers_lock:
                    subscribers = [item for items in self._subscribers.values() for item in items]
                    self._subscribers.clear()
                for subscriber in subscribers:
                    subscriber.put(_CLOSED)
        return stopped

    def close(self, timeout: float | None = 30.0) -> bool:
        """Stop the worker for good (see `stop`) and close the database, its write-ahead log checkpointed, so that
        `jobs.db` alone then holds every job. A worker that does not stop within `timeout` (a model still loading)
        keeps the database open, checkpointed all the same. Returns whether the worker stopped."""
        stopped = self.stop(timeout)
        if stopped:
            self._store.close()
        else:
            logger.warning("the job worker did not stop within %s s; %s stays open for it", timeout, self._store.path)
            self._store.checkpoint()
        return stopped

    def _claim_data_dir(self) -> None:
        """One running manager per data_dir: two would both resume (and run) the same jobs. Enforced with an
        exclusive lock on `data_dir/manager.lock` where the OS has flock (POSIX); documented elsewhere."""
        try:
            import fcntl
        except ImportError:  # Windows: not enforced
            return
        if self._data_dir_lock is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.data_dir / "manager.lock", "a+")  # noqa: SIM115 (held open while the worker runs)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise RuntimeError(
                f"another job manager (this or another process) is running over {self.data_dir}; "
                "only one may run jobs from a data folder"
            ) from None
        self._data_dir_lock = handle

    def _release_data_dir(self) -> None:
        if self._data_dir_lock is not None:
            self._data_dir_lock.close()  # closing the file releases the flock
            self._data_dir_lock = None

    # ------------------------------------------------------------------------------------------- commands

    def submit(self, request: GenerateRequest) -> Job:
        """Validate without loading a model, fix the seed and output name, persist and enqueue.

        Raises FieldError (a bad field or image; EncoderError for output settings that do not open; a LoRA tag
        whose weight, file or header is wrong), ModelUnavailableError (a component is not on this machine),
        JobConflict naming "filename" (a queued or running job will write that output name, or an output with
        it exists) or QueueFull. Jobs without a filename get their id as the name: those never clash.
        """
        self._check_room()
        request = self.complete(request)
        plan = plan_request(request)
        self.runner.preflight(request, plan)
        recipe = resolve_recipe(request.model, request.variant, self.runner.home)
        missing = check_available(recipe, self.runner.hub)
        if missing:
            raise missing[0]
        job_id = uuid.uuid4().hex
        fixed = GenerateRequest.model_validate(
            {**request.model_dump(), "seed": plan.seed, "filename": request.filename or job_id}
        )
        job = Job(
            id=job_id,
            state=JobState.QUEUED,
            request=fixed.model_dump(mode="json"),
            plan=plan.model_dump(mode="json"),
            summary=plan.summary(),
            progress=JobProgress(stage="queued", sections=plan.num_sections, total_steps=_total_steps(plan)),
            created_at=time.time(),
        )
        with self._lock:
            self._check_room()
            if request.filename:
                self._check_output_name(job.request)  # under the lock: two submits cannot both take a name
            self._store.insert(job)
            self._jobs[job_id] = job
            self._hook("submitted", job)  # before the worker can see it
            self._queue.append(job_id)
            self._changed.notify_all()
            logger.info("queued job %s: %s", job_id, job.summary)
            return self._public(job)

    def cancel(self, job_id: str, keep_partial: bool = False) -> Job:
        """Cancel a job. Queued: CANCELLED now. Running: the engine stops within one denoising step and the job
        becomes CANCELLED when the worker notices (a job already past sampling may still finish). Ended:
        JobConflict. keep_partial=True keeps the finished sections' latents in
        `data_dir/jobs/<id>/checkpoints/` (named in the job's error message); otherwise nothing is kept."""
        with self._lock:
            job = self._lookup(job_id)
            if job.state.ended:
                raise JobConflict(
                    f"job {job_id} is already {job.state.value}; only queued or running jobs can be cancelled"
                )
            worker_alive = self._thread is not None and self._thread.is_alive()
            if job_id == self._running and self._token is not None and worker_alive:
                self._cancel_requested, self._keep_partial = True, keep_partial
                self._token.cancel()
                logger.info("cancel requested for running job %s", job_id)
                return self._public(job)
            if job_id in self._queue:
                self._queue.remove(job_id)
        # Queued, or left RUNNING by a process that is gone: nothing runs it, so it ends here.
        self._end(
            job, JobState.CANCELLED, error=self._cancel_error(job_id, keep_partial), keep_checkpoints=keep_partial
        )
        return self.get(job_id)

    def complete(self, request: GenerateRequest) -> GenerateRequest:
        """The request with this manager's defaults for the fields it left out (see `framepack.defaults`)."""
        return apply_defaults(request, self._defaults()) if self._defaults is not None else request

    def cancel_running(self, keep_partial: bool = False) -> Job | None:
        """Cancel the job that runs now, as `cancel` does (a host's Interrupt); None when no job runs."""
        with self._lock:
            if self._running is None:
                return None
            return self.cancel(self._running, keep_partial)

    # ------------------------------------------------------------------------------------------- queries

    def load_model(self, request: GenerateRequest) -> bool:
        """Load the request's model now instead of with its first job (waits while a job runs); True when it is
        the self-test model."""
        recipe = resolve_recipe(request.model, request.variant, self.runner.home)
        with self._model_lock, self._gpu_lock if self._gpu_lock is not None else contextlib.nullcontext():
            return self.runner.components_for(request, recipe).self_test

    def unload_model(self) -> None:
        """Free the loaded model (waits while a job runs, which keeps using it until it ends)."""
        with self._model_lock:
            self.runner.unload()

    def get(self, job_id: str) -> Job:
        with self._lock:
            return self._public(self._lookup(job_id))

    def list_jobs(self) -> list[Job]:
        """Every job, oldest first; queued jobs carry their queue_position (0 = next)."""
        with self._lock:
            return [self._public(self._jobs.get(job.id, job)) for job in self._store.list()]

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

    def subscribe(self, job_id: str, heartbeat: float | None = None) -> Iterator[dict]:
        """Server-sent events of a job: {"event": "state", "data": job} first, then the engine's events
        ("stage", "progress", "section", "frames", "file", and "state" when it starts running) and finally
        {"event": "end", "data": job}, at once if the job already ended. With `heartbeat`, {"event": "ping"} is
        yielded after that many quiet seconds (lets a server notice a gone client). A slow reader never blocks
        the job: its queue is bounded and drops the oldest progress events, never "end". Raises JobNotFound now;
        closing the generator unsubscribes."""
        self.get(job_id)
        return self._stream(job_id, heartbeat)

    def subscribe_async(
        self, job_id: str, loop: asyncio.AbstractEventLoop, heartbeat: float | None = None
    ) -> AsyncSubscription:
        """The events `subscribe` yields, for a reader on asyncio `loop` (callable from any thread): no thread
        waits on them. Raises JobNotFound now; `close()` on the result unsubscribes at once."""
        ready = asyncio.Event()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # the loop is closed, so nobody reads this any more; the job's end removes it
                pass

        job, subscriber = self._open_subscription(job_id, wake)
        first = [{"event": "state", "data": job.model_dump(mode="json")}]
        if subscriber is None:
            first.append({"event": "end", "data": job.model_dump(mode="json")})
            return AsyncSubscription(first, None, ready, lambda: None, heartbeat)
        return AsyncSubscription(first, subscriber, ready, lambda: self._unsubscribe(job_id, subscriber), heartbeat)

    def subscriber_count(self, job_id: str | None = None) -> int:
        """Open subscriptions to `job_id`'s events (to every job's when None)."""
        with self._subscribers_lock:
            if job_id is not None:
                return len(self._subscribers.get(job_id, ()))
            return sum(len(items) for items in self._subscribers.values())

    def _open_subscription(
        self, job_id: str, wake: Callable[[], None] | None = None
    ) -> tuple[Job, _Subscriber | None]:
        """The job as it is now and, unless it has ended, a subscriber registered for its next events (both
        under _lock, so no event falls between the two)."""
        with self._lock:
            job = self._public(self._lookup(job_id))
            if job.state.ended:
                return job, None
            subscriber = _Subscriber(self._subscriber_queue_size, wake)
            with self._subscribers_lock:
                self._subscribers.setdefault(job_id, []).append(subscriber)
            return job, subscriber

    def _unsubscribe(self, job_id: str, subscriber: _Subscriber) -> None:
        with self._subscribers_lock:
            subscribers = self._subscribers.get(job_id, [])
            if subscriber in subscribers:
                subscribers.remove(subscriber)
            if not subscribers:
                self._subscribers.pop(job_id, None)

    def _stream(self, job_id: str, heartbeat: float | None) -> Iterator[dict]:
        job, subscriber = self._open_subscription(job_id)
        try:
            yield {"event": "state", "data": job.model_dump(mode="json")}
            if subscriber is None:
                yield {"event": "end", "data": job.model_dump(mode="json")}
                return
            while True:
                item = subscriber.get(heartbeat)
                if item is _CLOSED:
                    return
                if item is None:
                    yield {"event": "ping", "data": {}}
                    continue
                yield item
                if item["event"] == "end":
                    return
        finally:
            if subscriber is not None:
                self._unsubscribe(job_id, subscriber)

    # ------------------------------------------------------------------------------------------- worker

    def _work(self) -> None:
        while True:
            with self._lock:
                self._changed.wait_for(lambda: self._stopping or self._queue)
                if self._stopping:
                    return
                job = self._jobs[self._queue.pop(0)]
                token = CancelToken()
                self._running, self._token = job.id, token
                self._cancel_requested = self._keep_partial = False
                job.state, job.started_at = JobState.RUNNING, time.time()
                job.progress = JobProgress(
                    stage="starting", sections=job.progress.sections, total_steps=job.progress.total_steps
                )
                self._store.update(job)
                self._last_persist = time.monotonic()
                self._publish(job.id, "state", job.model_dump(mode="json"))
            logger.info("running job %s", job.id)
            if not self._execute(job, token):
                return

    def _execute(self, job: Job, token: CancelToken) -> bool:
        """Run one job to its end; False when the worker must stop (the job stays RUNNING, to be resumed)."""
        failure: tuple[str, str, str | None] | None = None  # (kind, message, field)
        try:
            request = GenerateRequest.model_validate(job.request)
            plan = plan_request(request)
            if job.plan is not None and plan != Plan.model_validate(job.plan):
                raise PlanChanged("the job's images changed since it was queued (the plan differs); submit it again")
            restored = self._load_checkpoints(job.id, plan)
            with self._lock:
                job.resumed_sections = sum(1 for key in restored if key != START)
                self._store.update(job)
            if restored:
                logger.info("job %s: resuming with %d sections restored from checkpoints", job.id, job.resumed_sections)
            with (
                self._model_lock,
                self._gpu_lock if self._gpu_lock is not None else contextlib.nullcontext(),
                self._hooks.running(job) if self._hooks is not None else contextlib.nullcontext(),
            ):
                token.check()
                result = self.runner.run(
                    request,
                    on_event=lambda event: self._on_event(job, event),
                    cancel=token,
                    plan=plan,
                    finished_sections=restored,
                    on_section_latents=lambda key, latents: self._save_checkpoint(job.id, key, latents),
                )
                self._hook("outputs", job, list(result.outputs))
        except Cancelled:
            with self._lock:
                by_user, keep, stopping = self._cancel_requested, self._keep_partial, self._stopping
            if by_user or not stopping:
                logger.info("job %s cancelled", job.id)
                self._end(job, JobState.CANCELLED, error=self._cancel_error(job.id, keep), keep_checkpoints=keep)
                return True
            logger.info("job %s interrupted by shutdown; it stays running and resumes on the next start", job.id)
            self._leave_running(job)
            return False
        except ModelUnavailableError as error:
            failure = ("model_unavailable", str(error), None)
        except OutputExists as error:
            failure = ("conflict", str(error), "filename")
        except DiskFull as error:
            failure = ("disk_full", str(error), None)
        except FieldError as error:
            failure = ("invalid", str(error), error.field)
        except UserError as error:
            failure = ("invalid", str(error), None)
        except OUT_OF_MEMORY_ERRORS as error:
            detail = " ".join(str(error).split())[:500] or type(error).__name__
            failure = ("out_of_memory", f"out of memory ({detail}). {OUT_OF_MEMORY_ADVICE}", None)
        except Exception as error:
            logger.exception("job %s failed with an internal error", job.id)
            failure = ("internal", f"internal error: {type(error).__name__}: {error}", None)
        except BaseException:
            # SystemExit, KeyboardInterrupt and the like: the process is going down. Like after a kill, the job
            # stays RUNNING with its checkpoints and the next start() resumes it.
            logger.critical("job %s interrupted by a process exit; the worker stops", job.id, exc_info=True)
            self._leave_running(job)
            return False
        if failure is None:
            outputs = [self._relative(path) for path in result.outputs]
            self._end(job, JobState.FINISHED, outputs=outputs, timings=dict(result.timings))
            logger.info("job %s finished: %s", job.id, ", ".join(outputs))
            return True
        kind, message, field = failure
        if kind == "out_of_memory":
            self._free_memory()  # before the next job starts; the exception and its frames are released by now
        logger.warning("job %s failed (%s): %s", job.id, kind, message)
        self._end(job, JobState.FAILED, error=JobErrorInfo(kind=kind, field=field, message=message))
        return True

    def _on_event(self, job: Job, event: Event) -> None:
        """Engine event -> job progress (persisted at stage changes, sections and at most every 0.5 s) and
        subscriber events. Called in the worker thread."""
        now = time.monotonic()
        with self._lock:
            progress = job.progress
            persist = False
            if isinstance(event, StageStarted):
                progress.stage = event.stage
                persist = True
                self._publish(job.id, "stage", {"stage": event.stage, "detail": event.detail})
            elif isinstance(event, StepProgress):
                progress.done_steps, progress.total_steps = event.done_steps, event.total_steps
                progress.section, progress.eta_seconds = event.section, round(event.eta, 3)
                self._publish(job.id, "progress", asdict(event))
            elif isinstance(event, SectionFinished):
                if event.section >= 0:
                    progress.sections_done += 1
                if event.preview is not None:
                    previews = self._previews.setdefault(job.id, {})
                    previews[event.section] = event.preview
                    while len(previews) > PREVIEWS_KEPT:
                        del previews[next(iter(previews))]
                persist = True
                self._publish(
                    job.id,
                    "section",
                    {
                        "section": event.section,
                        "order": event.order,
                        "seconds": event.seconds,
                        "sections_done": progress.sections_done,
                        "sections": progress.sections,
                        "preview": event.preview is not None,
                        "model_calls": event.model_calls,
                        "skipped_calls": event.skipped_calls,
                    },
                )
            elif isinstance(event, FramesWritten):
                progress.frames_written = event.frames
                self._publish(job.id, "frames", asdict(event))
            elif isinstance(event, FileWritten):
                self._publish(job.id, "file", asdict(event))
            if persist or now - self._last_persist >= PERSIST_INTERVAL_S:
                self._store.update(job)
                self._last_persist = now
            if isinstance(event, (StageStarted, StepProgress, FramesWritten)):
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
            shutil.rmtree(self._job_dir(job.id), ignore_errors=True)
        with self._lock:
            job.state, job.finished_at, job.error = state, time.time(), error
            job.outputs, job.timings = outputs or [], timings or {}
            job.queue_position = None
            job.progress.stage, job.progress.eta_seconds = state.value, None
            self._store.update(job)
            self._jobs.pop(job.id, None)
            self._previews.pop(job.id, None)
            if self._running == job.id:
                self._running, self._token = None, None
            self._publish(job.id, "end", job.model_dump(mode="json"))
            with self._subscribers_lock:
                self._subscribers.pop(job.id, None)
            self._changed.notify_all()

    def _leave_running(self, job: Job) -> None:
        """Keep the job RUNNING in the database (with its checkpoints) for the next start() to resume."""
        with self._lock:
            self._store.update(job)
            self._stopping = True
            self._changed.notify_all()

    def _cancel_error(self, job_id: str, keep_partial: bool) -> JobErrorInfo:
        if keep_partial and self._checkpoint_files(job_id):
            message = (
                f"cancelled by request; the finished sections' latents were kept in {self._checkpoint_dir(job_id)}"
            )
        else:
            message = "cancelled by request; no partial output was kept"
        return JobErrorInfo(kind="cancelled", message=message)

    def _free_memory(self) -> None:
        """After an out-of-memory error: drop the loaded model and cached memory so the next job has room."""
        try:
            self.runner.unload()
        except Exception:
            logger.exception("unloading the model after an out-of-memory error failed")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------------------------------- checkpoints

    def _job_dir(self, job_id: str) -> Path:
        return self.data_dir / "jobs" / job_id

    def _checkpoint_dir(self, job_id: str) -> Path:
        return self._job_dir(job_id) / "checkpoints"

    def _checkpoint_files(self, job_id: str) -> list[Path]:
        folder = self._checkpoint_dir(job_id)
        if not folder.is_dir():
            return []
        return sorted(path for path in folder.glob("*.safetensors") if not path.name.startswith("."))

    def _save_checkpoint(self, job_id: str, key: int | str, latents: torch.Tensor) -> None:
        """Latents of a sampled section, written atomically (temporary name, then rename)."""
        folder = self._checkpoint_dir(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{key}.safetensors"
        temporary = folder / f".{key}.partial.safetensors"
        data = save({"latents": latents.detach().to("cpu", torch.float32).contiguous()})
        try:
            with open(temporary, "wb") as handle:  # a Python write, so a full disk is an OSError naming the file
                handle.write(data)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise OSError(error.errno, error.strerror, str(temporary)) from error
        os.replace(temporary, target)
        logger.debug("job %s: checkpoint %s saved", job_id, key)

    def _load_checkpoints(self, job_id: str, plan: Plan) -> dict:
        """Saved section latents that belong to `plan` (unreadable or foreign files are skipped: resampled)."""
        restored: dict = {}
        for path in self._checkpoint_files(job_id):
            key: int | str
            if path.stem == START and plan.start_frame_pass:
                key = START
            elif path.stem.isdigit() and int(path.stem) < plan.num_sections:
                key = int(path.stem)
            else:
                logger.warning("job %s: ignoring unexpected checkpoint %s", job_id, path)
                continue
            try:
                restored[key] = load_file(str(path))["latents"]
            except (OSError, SafetensorError, KeyError) as error:
                logger.warning(
                    "job %s: checkpoint %s is unreadable (%s); that section is sampled again", job_id, path, error
                )
        return restored

    # ------------------------------------------------------------------------------------------- helpers

    def _check_room(self) -> None:
        with self._lock:
            if len(self._queue) >= self.max_queued:
                raise QueueFull(f"{len(self._queue)} jobs are waiting, the limit is {self.max_queued}; try again later")

    def _lookup(self, job_id: str) -> Job:
        """The live job (queued/running) or the stored one; JobNotFound if there is none."""
        job = self._jobs.get(job_id) or self._store.get(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return job

    def _public(self, job: Job) -> Job:
        """A copy for faces, with queue_position filled in."""
        copy = job.model_copy(deep=True)
        copy.queue_position = self._queue.index(job.id) if job.id in self._queue else None
        return copy

    def _publish(self, job_id: str, kind: str, data: dict) -> None:
        with self._subscribers_lock:
            subscribers = list(self._subscribers.get(job_id, ()))
        for subscriber in subscribers:
            subscriber.put({"event": kind, "data": data})

    def _relative(self, path: str) -> str:
        """Output paths relative to the runner's output folder (absolute when written elsewhere)."""
        resolved = Path(path).resolve()
        try:
            return resolved.relative_to(self.runner.output_dir.resolve()).as_posix()
        except ValueError:
            return str(resolved)

    def _output_folder(self, request: dict) -> Path:
        """The folder a job's outputs go to (its request's output_dir, else the runner's)."""
        return Path(request["output_dir"]) if request.get("output_dir") else self.runner.output_dir

    def _check_output_name(self, request: dict) -> None:
        """JobConflict naming "filename" when a queued or running job will write the request's output name in the
        same folder, or a file or folder of that name (any output: video, raw, sidecar, frames) exists there."""
        stem, folder = request["filename"], self._output_folder(request)
        key = _name_key(folder, stem)
        live = list(self._jobs.values()) + [job for job in self._store.running() if job.id not in self._jobs]
        for job in live:
            other = job.request.get("filename")
            if other and _name_key(self._output_folder(job.request), other) == key:
                raise JobConflict(
                    f"filename: {stem!r} is taken by job {job.id} ({job.state.value}), which will write it; choose "
                    "another filename or leave it out",
                    field="filename",
                )
        taken = existing_names(folder, output_names(stem))
        if taken:
            raise JobConflict(
                f"filename: an output named {taken[0]!r} exists already; choose another filename or leave it out",
                field="filename",
            )

    def _remove_partial_outputs(self, job: Job) -> None:
        """Hidden partial outputs (".<stem>.partial*") a killed process left in the job's output folder."""
        request = job.request
        stem = request.get("filename")
        folder = self._output_folder(request)
        if not stem or not folder.is_dir():
            return
        for path in folder.iterdir():
            if path.name.startswith(f".{stem}.partial"):
                logger.info("removing stale partial output %s", path)
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def _name_key(folder: Path, stem: str) -> tuple[str, str]:
    """What makes two output names the same: the real folder and the stem (case-folded where the OS folds)."""
    return os.path.normcase(os.path.realpath(folder)), os.path.normcase(stem)


def _total_steps(plan: Plan) -> int:
    return plan.steps * (plan.num_sections + int(plan.start_frame_pass))
