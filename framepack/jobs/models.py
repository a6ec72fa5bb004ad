"""What faces see of a job: its state, plan, progress, outputs and error (the REST API's response models)."""

from __future__ import annotations

from enum import Enum
from typing import Literal

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
        description="invalid | conflict | model_unavailable | out_of_memory | disk_full | cancelled | internal"
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
