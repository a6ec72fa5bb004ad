"""Where a prepared job runs: the executor seam of the job queue.

The queue's worker hands each `PreparedJob` to an `Executor` together with a `RunSink`, the head side of the run:
the sink receives the engine's events and each sampled section's latents (checkpoints), holds the cancel token,
and is told the outputs. An executor is one worker: it runs one job at a time. The queue runs one thread per
executor (`JobManager(executors=[...])`: one per local GPU).

`LocalExecutor` runs jobs in this process on its runner's device, under the host's GPU lock. The Ray executor
(`framepack.jobs.ray_executor`, imported only when chosen) runs them in a Ray actor and sends events and latents
back to the sink on the head, where the database and the event bus live; when its actor dies it raises
`WorkerLost`, and the queue leases the job again.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from dataclasses import dataclass, field
from typing import Protocol

import torch

from framepack.events import CancelToken, Event, PromptsEnhanced
from framepack.generate import KeptLatents
from framepack.jobs.checkpoints import SectionKey
from framepack.jobs.prepare import PreparedJob
from framepack.models.recipe import Recipe
from framepack.plan import Plan
from framepack.planning import resolve_recipe
from framepack.request import GenerateRequest
from framepack.runner import Runner

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run wrote (paths as written), how long its parts took, and with keep_latents what it keeps."""

    outputs: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    kept: KeptLatents | None = None


class WorkerLost(Exception):
    """The worker running a job died or stopped answering (a killed process, a lost machine): the job did not fail,
    its worker did, so the queue leases it again (resumed from its checkpoints) up to its attempt limit."""

    def __init__(self, worker: str, reason: str):
        super().__init__(f"worker {worker} was lost: {reason}")
        self.worker, self.reason = worker, reason


class RunSink(Protocol):
    """The head side of one running job."""

    cancel: CancelToken  # checked between denoising steps; set by a cancel or a shutdown

    def running(self) -> contextlib.AbstractContextManager:
        """Entered once the job holds its device (the host shows it as its task), left when it ends."""

    def event(self, event: Event) -> None:
        """An engine event of the run."""

    def section_latents(self, key: SectionKey, latents: torch.Tensor) -> None:
        """A section was sampled: its latents, to checkpoint."""

    def outputs(self, paths: list[str]) -> None:
        """The run wrote these files (inside `running`, after a successful run)."""


class Executor(Protocol):
    """One worker: runs prepared jobs one at a time and owns its loaded model."""

    name: str  # the worker's name in the job record ("cpu", "cuda:1", "ray:<actor id>")

    def run(self, job: PreparedJob, restored: dict[SectionKey, torch.Tensor], sink: RunSink) -> RunResult:
        """Run `job` with the sections in `restored` already sampled (and, for a continuation or re-roll, its
        parent's latents; see `framepack.generate.generate`); raises what the engine raises (Cancelled when
        `sink.cancel` was set)."""

    def load_model(self, request: GenerateRequest) -> bool:
        """Load the request's model before its first job (waits while a job runs); True for the self-test model."""

    def enhance(self, request: GenerateRequest, plan: Plan) -> PromptsEnhanced:
        """Enhance every distinct section prompt of the planned request anew, without making a video (waits while
        a job runs); raises EnhancerUnavailableError when the enhancer is not there."""

    def unload_model(self) -> None:
        """Free the loaded model (waits while a job runs)."""

    def free_memory(self) -> None:
        """After an out-of-memory error: drop the model and cached memory so the next job has room."""

    def holds(self, recipe: Recipe) -> bool:
        """Whether the model of `recipe` is loaded now (the queue gives a job to a free worker that holds its model
        rather than to one that would load it)."""

    def recover(self) -> None:
        """After `run` raised WorkerLost: return once the worker can take a job again; raise WorkerLost when it
        cannot (the queue tries again later)."""


class LocalExecutor:
    """Runs jobs in this process with `runner`. `gpu_lock` (optional, reusable) is held while a job runs or a
    model loads, so that a host (SD.Next) can share the GPU with its own work. `name` defaults to the device."""

    def __init__(
        self, runner: Runner, gpu_lock: contextlib.AbstractContextManager | None = None, name: str | None = None
    ):
        self.runner = runner
        self.name = name or str(runner.device)
        self._gpu_lock = gpu_lock if gpu_lock is not None else contextlib.nullcontext()
        self._model_lock = threading.Lock()  # around a job's run and a face's load/unload

    def run(self, job: PreparedJob, restored: dict[SectionKey, torch.Tensor], sink: RunSink) -> RunResult:
        with self._model_lock, self._gpu_lock, sink.running():
            sink.cancel.check()
            result = self.runner.run(
                job.request,
                on_event=sink.event,
                cancel=sink.cancel,
                plan=job.plan,
                recipe=job.recipe,
                checked=True,
                finished_sections=restored,
                on_section_latents=sink.section_latents,
            )
            sink.outputs(list(result.outputs))
        return RunResult(list(result.outputs), dict(result.timings), result.kept)

    def load_model(self, request: GenerateRequest) -> bool:
        recipe = resolve_recipe(request.model, request.variant, self.runner.home)
        with self._model_lock, self._gpu_lock:
            return self.runner.components_for(request, recipe).self_test

    def enhance(self, request: GenerateRequest, plan: Plan) -> PromptsEnhanced:
        with self._model_lock, self._gpu_lock:
            _request, event = self.runner.enhance(request, plan, everything=True)
        if event is None:  # never: with everything=True the stage writes every prompt or raises
            raise RuntimeError("the enhance stage wrote nothing")
        return event

    def unload_model(self) -> None:
        with self._model_lock:
            self.runner.unload()

    def free_memory(self) -> None:
        try:
            self.runner.unload()
        except Exception:
            logger.exception("unloading the model after an out-of-memory error failed")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def holds(self, recipe: Recipe) -> bool:
        return self.runner.loaded_recipe == recipe

    def recover(self) -> None:
        """Nothing to do: a local worker is this process, which cannot be lost without the queue."""
