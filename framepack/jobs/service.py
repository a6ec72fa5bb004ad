"""`JobService`: what every face (the tab, the REST routes, SD.Next's entry) asks of FramePack, and nothing more.

Faces hold a `JobService` and never reach the runner, the model loader or the job database; the composition
roots (`framepack.compose`, used by `framepack.serve` and `scripts/`) build the one implementation,
`framepack.jobs.manager.JobManager`. Importing this module imports neither torch nor the engine.

Errors are the engine's: FieldError (bad input, naming the field), ModelUnavailableError, EnhancerUnavailableError,
JobNotFound, JobConflict, QueueFull, ...; `framepack.jobs.errors.classify` tells their kind and HTTP status.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from framepack.jobs.events import Heartbeat, JobEvent
from framepack.jobs.models import Batch, DeletedJob, EnhanceResult, Job, JobState, QueueState
from framepack.plan import Plan
from framepack.request import GenerateRequest

if TYPE_CHECKING:
    import numpy as np

    from framepack.video.codecs import EncoderInfo


@dataclass(frozen=True)
class MissingComponent:
    """A model component that is not on this machine; `message` says where it was looked for and how to get it."""

    component: str
    message: str


class EventSubscription(Protocol):
    """A job's events for an asyncio reader; `close()` unsubscribes at once (idempotent)."""

    closed: bool

    def __aiter__(self) -> AsyncIterator[JobEvent | Heartbeat]: ...

    async def __anext__(self) -> JobEvent | Heartbeat: ...

    def close(self) -> None: ...


class JobService(Protocol):
    """The job queue and what faces ask before and around it."""

    @property
    def output_dir(self) -> Path:
        """The folder jobs write to unless their request names another; job outputs are relative to it."""

    @property
    def jobs_dir(self) -> Path:
        """The folder of the job database and checkpoints (the API keeps its uploads beside them)."""

    # -------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Resume jobs a stopped process left running and start the worker (idempotent)."""

    def stop(self, timeout: float | None = 30.0, cancel_running: bool = False) -> bool:
        """Stop the worker; the running job stays running to be resumed (or ends cancelled with `cancel_running`).
        Returns whether the worker stopped within `timeout`."""

    def close(self, timeout: float | None = 30.0) -> bool:
        """Stop for good and close the job database."""

    # -------------------------------------------------------------------------------------------- jobs

    def submit(self, request: GenerateRequest) -> Job:
        """Check the request once (plan, images, encoder, LoRAs, model files; no model loads), fix its seed and
        output name, and queue it."""

    def submit_batch(self, requests: list[GenerateRequest]) -> Batch:
        """Check every request as `submit` does, then queue them all under one batch id; one refused request
        refuses the batch (BatchLineError naming its line, 1 = the first, and field)."""

    def get(self, job_id: str) -> Job: ...

    def list_jobs(
        self,
        states: tuple[JobState, ...] | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
        batch_id: str | None = None,
    ) -> list[Job]:
        """Jobs in `states` (all when None) of `batch_id` (any when None), oldest first (or newest first), `offset`
        skipped, at most `limit`; queued jobs carry their queue_position (0 = next). Requests come in brief form:
        embedded images replaced by a note (a listing never reads them)."""

    def count_jobs(self, states: tuple[JobState, ...] | None = None, batch_id: str | None = None) -> int:
        """How many jobs `list_jobs` with these filters lists without a limit."""

    def thumbnail(self, job_id: str, size: int = 160) -> np.ndarray | None:
        """A small picture of the job (uint8 [H, W, 3]): its latest preview while it runs, the first frame of its
        video once finished, else its start image; None when it has none."""

    def cancel(self, job_id: str, keep_partial: bool = False) -> Job:
        """Cancel a queued or running job (JobConflict once it ended)."""

    def cancel_batch(self, batch_id: str, keep_partial: bool = False) -> list[Job]:
        """Cancel every queued or running job of a batch; its jobs afterwards (JobNotFound for an unknown id)."""

    def move(self, job_id: str, position: int) -> Job:
        """Move a queued job to `position` (0 = next; past the end = last); JobConflict when it is not queued."""

    def pause(self) -> QueueState:
        """Start no further job (the running one finishes); the pause outlasts a restart."""

    def resume(self) -> QueueState:
        """Start queued jobs again."""

    def queue_state(self) -> QueueState: ...

    def delete(self, job_id: str, files: bool = False) -> DeletedJob:
        """Delete an ended job (JobConflict while queued or running); with `files` also the outputs it wrote
        inside the output folder."""

    def cancel_running(self, keep_partial: bool = False) -> Job | None:
        """Cancel whatever job runs now (a host's Interrupt); None when none runs."""

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once it ended, or as it is after `timeout` seconds."""

    def subscribe(self, job_id: str, heartbeat: float | None = None) -> Iterator[JobEvent | Heartbeat]:
        """The job's events (see `framepack.jobs.events`) until its end; JobNotFound at once."""

    def subscribe_async(
        self, job_id: str, loop: asyncio.AbstractEventLoop, heartbeat: float | None = None
    ) -> EventSubscription:
        """The same events for a reader on asyncio `loop`, with no thread waiting on them."""

    def preview(self, job_id: str, section: int | None = None) -> np.ndarray | None:
        """A running job's preview (uint8 [H, W, 3]) of `section` or of its latest finished section."""

    # -------------------------------------------------------------------------------------------- requests

    def complete(self, request: GenerateRequest) -> GenerateRequest:
        """The request with this face's defaults for the fields it left out (model, cache, offload)."""

    def plan(self, request: GenerateRequest, check_encoder: bool = False) -> Plan:
        """The plan of the completed request without running it (images read for their size); `check_encoder`
        also opens the encoder settings as a submit would."""

    def missing_components(self, request: GenerateRequest) -> list[MissingComponent]:
        """The components of the request's model that are not on this machine, each with how to get it (and the
        enhancer, component "enhancer", when the request would use it)."""

    def enhance(self, request: GenerateRequest) -> EnhanceResult:
        """The completed request's distinct section prompts, each enhanced anew (whatever `enhance` and
        `enhanced_prompts` say), without making a video; waits while a job runs. FieldError for bad input,
        EnhancerUnavailableError (model_unavailable) when the enhancer is not on this machine."""

    def recipe_text(self, model: str, variant: str) -> str:
        """The model recipe of `model` ('default', 'tiny' or a recipe file) for `variant`, as text lines."""

    def check_recipe(self, text: str, variant: str) -> None:
        """Raise the parser's error when an edited recipe text is not valid."""

    def codecs(self) -> list[EncoderInfo]:
        """The video encoders that really open on this machine (probed now; hardware first)."""

    def read_record(self, path: Path) -> dict[str, Any]:
        """The generation record of an output (video, raw frames file or sidecar)."""

    # -------------------------------------------------------------------------------------------- model

    def load_model(self, request: GenerateRequest) -> bool:
        """Load the request's model now (after any running job); True for the self-test model."""

    def unload_model(self) -> None: ...
