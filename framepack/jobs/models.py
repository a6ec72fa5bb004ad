"""What faces see of a job: its state, plan, progress, outputs and error (the REST API's response models), and the
brief form of a request that listings show (`brief_request`: a request can hold megabytes of base64 images; the
job store keeps the brief form beside it, so a listing never reads the images)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field

from framepack.errors import UserError


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED)


class JobProgress(BaseModel):
    stage: str = "queued"
    done_steps: int = 0
    total_steps: int = 0
    section: int | None = None  # section index (time order) being sampled; -1 = the T2V start frame
    sections_done: int = 0
    sections: int = 0
    frames_written: int = 0
    eta_seconds: float | None = None
    enhanced_prompts: dict[str, str] = Field(
        default_factory=dict, description="section prompt -> the enhanced text it encodes (after the enhance stage)"
    )
    warnings: list[str] = Field(default_factory=list, description="what the run said, e.g. the enhancer is missing")


class JobErrorInfo(BaseModel):
    kind: str = Field(
        description="invalid | conflict | model_unavailable | out_of_memory | disk_full | cancelled | worker_lost | "
        "internal"
    )
    field: str | None = None
    message: str


class Job(BaseModel):
    id: str
    state: JobState
    request: dict
    plan: dict | None = None
    summary: str | None = None
    progress: JobProgress = Field(default_factory=JobProgress)
    outputs: list[str] = Field(default_factory=list, description="paths relative to the output folder")
    timings: dict[str, float] = Field(default_factory=dict)
    error: JobErrorInfo | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    queue_position: int | None = None  # 0 = next to run; None once started
    resumed_sections: int = 0  # sections restored from checkpoints after a restart
    batch_id: str | None = Field(None, description="the batch the job was queued with (None for a single job)")
    worker: str | None = Field(None, description="the worker that runs it, or ran it last (e.g. cuda:1)")
    attempt: int = Field(0, description="how many times a worker took it (more than 1 after a worker was lost)")
    lease_expires_at: float | None = Field(
        None, description="while it runs: when its worker's lease ends unless renewed (the queue renews it)"
    )
    parent: str | None = Field(None, description="the job this one continues or re-rolls (continue_job, reroll_job)")
    parent_kind: Literal["continue", "reroll"] | None = Field(None, description="how it derives from its parent")
    latents_kept: bool = Field(
        False, description="its latents are kept (keep_latents): it can be continued or a section re-rolled"
    )


def parent_of(request: dict[str, Any]) -> tuple[str | None, Literal["continue", "reroll"] | None]:
    """(parent job id, kind) a stored request names; (None, None) for a job of its own."""
    if request.get("continue_job"):
        return str(request["continue_job"]), "continue"
    if request.get("reroll_job"):
        return str(request["reroll_job"]), "reroll"
    return None, None


ENDED_STATES = (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED)
LIVE_STATES = (JobState.QUEUED, JobState.RUNNING)


class QueueState(BaseModel):
    """The queue as a whole: whether it is paused, how many jobs wait and which one runs."""

    paused: bool = Field(description="a paused queue lets the running job finish and starts no other")
    queued: int = Field(description="jobs waiting")
    running: str | None = Field(None, description="the id of the job running now")


class WorkerState(BaseModel):
    """One worker of the queue (one GPU, or one Ray actor)."""

    name: str = Field(description="e.g. cpu, cuda:1, ray:<actor id>")
    job: str | None = Field(None, description="the id of the job it runs now")
    down: bool = Field(False, description="it was lost and has not answered again yet")
    alive: bool = Field(False, description="its thread in the queue runs (the queue was started)")


class DeletedJob(BaseModel):
    """What deleting an ended job removed."""

    job: Job = Field(description="the job as it was")
    removed_files: list[str] = Field(default_factory=list, description="outputs removed, relative to the output folder")
    kept_files: list[str] = Field(
        default_factory=list,
        description="outputs left in place (not asked to remove, outside the output folder, or "
        "no longer what the job wrote)",
    )


class Batch(BaseModel):
    """Jobs queued together: all checked before any was queued; cancellable as a whole by `batch_id`."""

    batch_id: str
    jobs: list[Job]


@dataclass(frozen=True)
class Retention:
    """How many ended jobs the store keeps: the newest `keep_jobs` (None: all) and those that ended within
    `keep_days` days (None: any age); a job beyond either limit is deleted. Its output files are deleted with it
    only when `remove_outputs`."""

    keep_jobs: int | None = None
    keep_days: float | None = None
    remove_outputs: bool = False

    @property
    def active(self) -> bool:
        return self.keep_jobs is not None or self.keep_days is not None


class EnhancedPrompt(BaseModel):
    """One distinct section prompt and the text it encodes."""

    sections: list[int] = Field(description="the sections (time order) whose prompt it is")
    prompt: str = Field(description="the section prompt: the prompt joined with the section line, LoRA tags removed")
    enhanced: str | None = Field(description="the text encoded instead; null: the prompt itself is encoded")
    by: Literal["enhancer", "request", "original"] = Field(
        description="enhancer: written now; request: given in enhanced_prompts; original: not enhanced"
    )


class EnhanceResult(BaseModel):
    """What the enhancer made of a request's prompts (the enhance route, and a job's enhance event)."""

    prompts: list[EnhancedPrompt] = Field(description="each distinct section prompt, in time order")
    sections: list[str] = Field(description="the text each section encodes, in time order")
    enhanced_prompts: dict[str, str] = Field(
        description="section prompt -> enhanced text: the request field that makes a job encode these texts"
    )
    enhancer: str | None = Field(description="the model that wrote texts now; null when none ran")
    self_test: bool = Field(description="that model is the random-weight SELF-TEST enhancer: its text is noise")
    seed: int | None = Field(description="the seed it sampled with")
    seconds: float
    warnings: list[str] = Field(default_factory=list)
    weight_bytes: int = Field(0, description="the enhancer's weights, as loaded")
    peak_bytes: int | None = Field(None, description="peak GPU memory allocated while it ran (null on a CPU)")


class QueueFull(UserError):
    """Too many jobs waiting; try again later (HTTP 429)."""


class JobNotFound(UserError):
    """No job with that id (HTTP 404)."""


class JobConflict(UserError):
    """The job is in a state that does not allow this (HTTP 409), e.g. cancelling a finished job, or a request's
    output name is taken (`field` "filename")."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class BatchLineError(UserError):
    """One request of a batch is refused, so the whole batch is: `line` is its number (1 = the first line or
    element), `field` is `requests.<line>.<field>`, and `kind` is the kind the request alone would get."""

    def __init__(self, line: int, kind: str, field: str | None, message: str):
        prefix = f"line {line}: "
        super().__init__(message if message.startswith(prefix) else prefix + message)
        self.line, self.kind = line, kind
        self.field = f"requests.{line}.{field}" if field else f"requests.{line}"


# ------------------------------------------------------------------------------------------ brief requests

PATH_LIMIT = 256  # a longer value is no file path a user typed: it is shown as a note


def image_note(value: str) -> str:
    """`<image: N characters of base64>` for an embedded image; a file path as it is."""
    if value.startswith("data:") or len(value) > PATH_LIMIT:
        return f"<image: {len(value)} characters of base64>"
    return value


def brief_request(fields: dict[str, Any]) -> dict[str, Any]:
    """The request dict with embedded images (`IMAGE_FIELDS` and keyframes) replaced by `image_note`s (idempotent)."""
    from framepack.request import IMAGE_FIELDS

    shown = dict(fields)
    for name in IMAGE_FIELDS:
        if isinstance(shown.get(name), str):
            shown[name] = image_note(shown[name])
    if isinstance(shown.get("keyframes"), dict):
        shown["keyframes"] = {
            key: image_note(value) if isinstance(value, str) else value for key, value in shown["keyframes"].items()
        }
    return shown
