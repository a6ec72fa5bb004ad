"""Response models of the API (the request model is the engine's `GenerateRequest`; jobs are `Job`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from framepack.jobs.models import Job, JobErrorInfo, JobState
from framepack.plan import Plan


class GenerateResponse(BaseModel):
    """What the blocking route answers once the video exists. `id`, `filename` and `message` are the fields
    SD.Next's FramePack API answers; the rest is the job's own record."""

    id: str = Field(description="job id; GET /sdapi/v1/framepack/jobs/{id} shows the job")
    filename: str | None = Field(
        description="main output (the video, else the first file), relative to the output folder"
    )
    url: str | None = Field(description="download path of `filename` on this server")
    message: str = Field(description="one line: what was made")
    state: JobState
    summary: str | None = Field(None, description="the plan in one line")
    plan: dict | None = None
    outputs: list[str] = Field(default_factory=list, description="every output, relative to the output folder")
    urls: list[str] = Field(default_factory=list, description="download paths of the outputs that are files")
    timings: dict[str, float] = Field(default_factory=dict)
    resumed_sections: int = 0
    error: JobErrorInfo | None = None


class JobList(BaseModel):
    jobs: list[Job] = Field(
        description="the jobs asked for (all by default), oldest first unless order=newest; queued ones carry "
        "queue_position; requests with embedded images replaced by a note"
    )
    total: int | None = Field(None, description="how many jobs match the filters, whatever the limit")
    offset: int = Field(0, description="jobs skipped before the first listed")
    limit: int | None = Field(None, description="the most jobs listed (None: no limit)")


MAX_POSITION = 1_000_000


class JobPatch(BaseModel):
    """A change to a queued job: where it stands in the queue."""

    model_config = ConfigDict(extra="forbid")

    position: StrictInt = Field(
        ge=0, le=MAX_POSITION, description="0 = run next; a position past the end of the queue moves the job last"
    )


class BatchResponse(BaseModel):
    batch_id: str = Field(description="cancel the whole batch with POST .../batches/{batch_id}/cancel")
    ids: list[str] = Field(description="the job ids, in the order of the requests")
    jobs: list[Job]


class PlanResponse(BaseModel):
    summary: str
    plan: Plan
    estimated_seconds: float | None = Field(
        None,
        description="seconds the job should take here once the model is loaded, from earlier jobs of its model, "
        "size and speed settings (also plan.estimated_seconds); null before any finished",
    )


class CodecInfo(BaseModel):
    name: str
    description: str
    hardware: bool
    pixel_format: str
    containers: list[str]


class CodecList(BaseModel):
    codecs: list[CodecInfo] = Field(description="encoders that really open on this machine, hardware first")
