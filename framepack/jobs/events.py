"""The events of a job, one pydantic model per kind, as every face receives them.

A subscription (`JobService.subscribe`) yields `StateEvent` first (the job as it is), then while the job runs
`StageEvent`, `EnhanceEvent`, `ProgressEvent`, `SectionEvent` and `FramesEvent` (and `StateEvent` again when it
starts running), and finally `EndEvent` (the ended job). With a heartbeat, `Heartbeat` comes after that many quiet
seconds.

Each model's `event` (a class attribute) is its name on the wire: the API's server-sent events are
`event: <name>` / `data: <the model as JSON>` (`Heartbeat` is the comment `: ping`), so `parse_event(name, data)`
turns them back into these models (create-video.py does). `StateEvent` and `EndEvent` are the whole `Job`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema

from framepack.events import Event, FramesWritten, PromptsEnhanced, SectionFinished, StageStarted, StepProgress
from framepack.jobs.models import EnhancedPrompt, EnhanceResult, Job, JobProgress


class StateEvent(Job):
    """`event: state`: the whole job; sent first on every subscription and when the job starts running."""

    event: ClassVar[str] = "state"


class StageEvent(BaseModel):
    """`event: stage`: the job entered a stage (load model, encode prompts, sample, decode, finish, ...)."""

    event: ClassVar[str] = "stage"
    stage: str
    detail: str = ""


class ProgressEvent(BaseModel):
    """`event: progress`: a denoising step finished."""

    event: ClassVar[str] = "progress"
    section: int = Field(description="section index in time order; -1 for the text-to-video start frame")
    order: int = Field(description="how many sections were generated before this one")
    step: int = Field(description="1-based step within the section")
    steps: int
    done_steps: int = Field(description="steps done over the whole job")
    total_steps: int
    elapsed: float = Field(description="seconds since sampling began")
    eta: float | None = Field(description="estimated seconds of sampling left")


class SectionEvent(BaseModel):
    """`event: section`: a section was sampled (its preview, when previews are on, is the job's latest)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    event: ClassVar[str] = "section"
    section: int = Field(description="section index in time order; -1 for the text-to-video start frame")
    order: int
    seconds: float = Field(description="sampling time of this section")
    sections_done: int
    sections: int
    preview: bool = Field(description="whether a preview of this section exists (GET .../jobs/{id}/preview)")
    model_calls: int = Field(0, description="transformer calls of this section")
    skipped_calls: int = Field(0, description="of those, answered by the cache")
    # The preview itself (uint8 [H, W, 3]) for in-process faces (the tab); never serialized.
    pixels: SkipJsonSchema[np.ndarray | None] = Field(None, exclude=True, repr=False)


class FramesEvent(BaseModel):
    """`event: frames`: frames handed to the outputs so far; sent after each overlap window is decoded."""

    event: ClassVar[str] = "frames"
    frames: int
    total: int
    window: int = Field(-1, description="the overlap window decoded last (time order, 0-based); -1 before the first")
    windows: int = Field(0, description="overlap windows of the job (one per section)")
    window_seconds: float = Field(0.0, description="decode time of that window")
    tiled: bool = Field(False, description="whether that window was decoded in spatial tiles (vae_tiling)")


class EnhanceEvent(EnhanceResult):
    """`event: enhance`: after the enhance stage, the text each section encodes (enhanced, given with the request,
    or the original prompt) and what wrote it; sent when the job enhances or was given enhanced prompts."""

    event: ClassVar[str] = "enhance"


class EndEvent(Job):
    """`event: end`: the ended job (finished, failed or cancelled); the last event of a stream."""

    event: ClassVar[str] = "end"


class Heartbeat(BaseModel):
    """Nothing happened for the subscription's heartbeat seconds (the API sends the comment `: ping`)."""

    event: ClassVar[str] = "ping"


JobEvent = StateEvent | StageEvent | ProgressEvent | SectionEvent | FramesEvent | EnhanceEvent | EndEvent
EVENT_MODELS: dict[str, type[BaseModel]] = {
    model.event: model
    for model in (StateEvent, StageEvent, ProgressEvent, SectionEvent, FramesEvent, EnhanceEvent, EndEvent)
}


def from_engine(event: Event, progress: JobProgress) -> JobEvent | None:
    """The job event of an engine event, with `progress` (the running job's) brought up to date; None for an
    engine event faces do not see."""
    if isinstance(event, StageStarted):
        progress.stage = event.stage
        return StageEvent(stage=event.stage, detail=event.detail)
    if isinstance(event, StepProgress):
        progress.done_steps, progress.total_steps = event.done_steps, event.total_steps
        progress.section, progress.eta_seconds = event.section, round(event.eta, 3)
        return ProgressEvent(**vars(event))  # the same fields, with their schema for the wire
    if isinstance(event, SectionFinished):
        if event.section >= 0:
            progress.sections_done += 1
        return SectionEvent(
            section=event.section,
            order=event.order,
            seconds=event.seconds,
            sections_done=progress.sections_done,
            sections=progress.sections,
            preview=event.preview is not None,
            model_calls=event.model_calls,
            skipped_calls=event.skipped_calls,
            pixels=event.preview,
        )
    if isinstance(event, FramesWritten):
        progress.frames_written = event.frames
        return FramesEvent(**vars(event))  # the same fields, with their schema for the wire
    if isinstance(event, PromptsEnhanced):
        progress.enhanced_prompts = event.enhanced_prompts()
        progress.warnings = [*progress.warnings, *event.warnings]
        return EnhanceEvent(**dict(enhance_result(event, progress.sections)))
    return None


def enhance_result(event: PromptsEnhanced, sections: int) -> EnhanceResult:
    """The faces' view of the enhance stage's event of a plan with `sections` sections."""
    texts = [""] * sections
    for item in event.prompts:
        for index in item.sections:
            if index < sections:
                texts[index] = item.enhanced if item.enhanced is not None else item.prompt
    return EnhanceResult(
        prompts=[EnhancedPrompt(**vars(item)) for item in event.prompts],
        sections=texts,
        enhanced_prompts=event.enhanced_prompts(),
        enhancer=event.enhancer,
        self_test=event.self_test,
        seed=event.seed,
        seconds=event.seconds,
        warnings=list(event.warnings),
        weight_bytes=event.weight_bytes,
        peak_bytes=event.peak_bytes,
    )


def parse_event(name: str, data: Any) -> JobEvent | None:
    """The event model of a server-sent event `name` with decoded JSON `data`; None for an unknown name or data
    that does not fit the model (a newer or older server)."""
    model = EVENT_MODELS.get(name)
    if model is None or not isinstance(data, dict):
        return None
    try:
        return model.model_validate(data)  # type: ignore[return-value]
    except ValidationError:
        return None
