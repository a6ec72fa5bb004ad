"""What faces see of a job: its state, plan, progress, outputs and error (the REST API's response models)."""

from __future__ import annotations

from enum import Enum

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
