"""Typed events a running generation emits, and the cancel command sent back to it.

The CLI renders them as they come (`framepack.progress`); the job service turns them into the job events the
tab, the API and SD.Next subscribe to (`framepack.jobs.events`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Cancelled(Exception):
    """Raised inside the engine when a cancel was requested; the job ends cleanly between two steps."""


class CancelToken:
    """Thread-safe cancel flag checked between denoising steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by request")


@dataclass
class StageStarted:
    stage: str  # "enhance", "load model", "encode prompts", "encode images", "start frame", "sample", "decode", ...
    detail: str = ""


@dataclass
class StepProgress:
    section: int  # section index in time order; -1 for the T2V start-frame pass
    order: int  # how many sections were generated before this one
    step: int  # 1-based step within the section
    steps: int
    done_steps: int  # over the whole job
    total_steps: int
    elapsed: float  # seconds since sampling began
    eta: float  # estimated seconds left for sampling


@dataclass
class SectionFinished:
    section: int
    order: int
    seconds: float
    preview: np.ndarray | None = field(default=None, repr=False)  # uint8 [H, W, 3]
    model_calls: int = 0  # transformer calls of this section
    skipped_calls: int = 0  # of those, answered by the cache without running the blocks


@dataclass
class FramesWritten:
    frames: int  # total frames handed to the sinks so far
    total: int
    window: int = -1  # the overlap window decoded last (time order, 0-based; one per section); -1 before the first
    windows: int = 0  # overlap windows of the job
    window_seconds: float = 0.0  # decode time of that window
    tiled: bool = False  # whether that window was decoded in spatial tiles


@dataclass
class EnhancedPrompt:
    """One distinct section prompt after the enhance stage."""

    sections: list[int]  # the sections (time order) whose prompt it is
    prompt: str  # the plan's section prompt: the prompt joined with the section line, LoRA tags removed
    enhanced: str | None  # the text encoded instead; None: the prompt itself is encoded
    by: str  # "enhancer" (written now), "request" (given in enhanced_prompts) or "original" (not enhanced)


@dataclass
class PromptsEnhanced:
    """The enhance stage ended: the text each section encodes, and what made it."""

    prompts: list[EnhancedPrompt]
    enhancer: str | None  # the model that wrote prompts now; None when none ran
    self_test: bool  # that model is the random-weight self-test enhancer (its text is noise)
    seed: int | None  # the seed it sampled with
    seconds: float
    warnings: list[str] = field(default_factory=list)  # e.g. the model is missing and the originals are used
    weight_bytes: int = 0  # of the enhancer's weights, as loaded
    peak_bytes: int | None = None  # peak GPU memory allocated during the stage (None on a CPU)

    def enhanced_prompts(self) -> dict[str, str]:
        """Section prompt -> encoded text, for the prompts that are enhanced."""
        return {item.prompt: item.enhanced for item in self.prompts if item.enhanced is not None}


Event = StageStarted | StepProgress | SectionFinished | FramesWritten | PromptsEnhanced
EventCallback = Callable[[Event], Any]


def ignore_events(_event: Event) -> None:
    """Default subscriber."""
