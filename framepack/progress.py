"""Console rendering of generation events: a step progress bar with stage and section lines."""

from __future__ import annotations

from tqdm import tqdm

from framepack.events import Event, FramesWritten, PromptsEnhanced, SectionFinished, StageStarted, StepProgress
from framepack.plan import Plan


class ConsoleProgress:
    """Event subscriber that draws one tqdm bar over all denoising steps of the job."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.bar: tqdm | None = None
        self.windows_reported = 0

    def __enter__(self) -> ConsoleProgress:
        self.bar = tqdm(total=self.plan.total_steps, unit="step", dynamic_ncols=True, desc="starting")
        return self

    def __exit__(self, *_exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, event: Event) -> None:
        if self.bar is None:
            return
        if isinstance(event, StageStarted):
            self.bar.set_description(event.stage)
        elif isinstance(event, StepProgress):
            where = (
                "start frame"
                if event.section < 0
                else f"section {event.section} ({event.order + 1}/{self.plan.num_sections})"
            )
            self.bar.set_description(where)
            self.bar.update(event.done_steps - self.bar.n)
        elif isinstance(event, PromptsEnhanced):
            for item in event.prompts:
                if item.enhanced is not None:
                    sections = ", ".join(str(index) for index in item.sections)
                    self.bar.write(f"prompt of section {sections} ({item.by}): {item.enhanced}")
            for warning in event.warnings:
                self.bar.write(f"warning: {warning}")
        elif isinstance(event, SectionFinished) and event.section >= 0:
            skipped = (
                f", cache skipped {event.skipped_calls}/{event.model_calls} model calls" if event.skipped_calls else ""
            )
            self.bar.write(f"section {event.section} done in {event.seconds:.2f} s{skipped}")
        elif isinstance(event, FramesWritten) and event.window >= self.windows_reported:
            self.windows_reported = event.window + 1
            tiled = ", tiled" if event.tiled else ""
            self.bar.write(
                f"window {event.window + 1}/{event.windows} decoded in {event.window_seconds:.2f} s{tiled}: "
                f"{event.frames}/{event.total} frames written"
            )
