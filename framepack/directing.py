"""Per-section schedules of the plan (latent paddings, blended prompt changes, the SigLIP vision schedule) and the
layout of single-frame inference.

Pure functions over sections in time order (no torch); the plan stores what they return and the section loop
follows it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from framepack.errors import PlanError
from framepack.request import GenerateRequest, parse_paddings

END_IMAGE = "end_image"
VisionSchedule = Literal["constant", "linear"]


def keyframe_name(index: int) -> str:
    """How a plan names the keyframe of section `index` as a vision target (the request field's path)."""
    return f"keyframes.{index}"


def requested_paddings(text: str, sections: int, order: list[int]) -> list[int]:
    """The request's latent paddings (one for all, or one per section in time order) in generation order."""
    values = parse_paddings(text)
    if len(values) == 1:
        values = values * sections
    if len(values) != sections:
        raise PlanError(
            "latent_paddings",
            f"{len(values)} values for {sections} sections; give one number for every section, or {sections} "
            "numbers, one per section in time order",
        )
    return [values[index] for index in order]


def prompt_blends(prompts: list[str], blend_sections: int) -> list[tuple[str | None, float]]:
    """(prompt blended from, weight of the section's own prompt) per section in time order.

    After a change at section k, sections k .. k+N-1 move linearly from the previous section's prompt to the new
    one: section k+j has weight (j+1)/(N+1) of the new prompt; section k+N has the new prompt alone. A change that
    comes before the previous blend ended starts from the previous section's prompt (the one it was heading to).
    """
    blends: list[tuple[str | None, float]] = [(None, 1.0)] * len(prompts)
    if blend_sections <= 0:
        return blends
    for change in range(1, len(prompts)):
        if prompts[change] == prompts[change - 1]:
            continue
        for step in range(blend_sections):
            index = change + step
            if index >= len(prompts) or prompts[index] != prompts[change]:
                break
            blends[index] = (prompts[change - 1], (step + 1) / (blend_sections + 1))
    return blends


def vision_targets(
    schedule: VisionSchedule,
    keyframes: list[int | None],
    keyframe_keys: list[int],
    end_image: bool,
    end_vision_weight: float,
) -> list[tuple[str | None, float]]:
    """(image the SigLIP conditioning moves toward, its share) per section in time order; the section's own image
    is its keyframe, else the start image.

    constant: a section without a keyframe in FLF2V takes `end_vision_weight` of the end image; others their own image.
    linear: from the section's own image (keyframe at section a, or the start at 0) toward the next keyframe b, else the
    end image at the video's end (section count n): the share at a section's middle is (i + 0.5 - a) / (b - a); without
    a next image it stays the section's own.
    """
    sections = len(keyframes)
    targets: list[tuple[str | None, float]] = []
    for index, keyframe in enumerate(keyframes):
        if schedule == "constant":
            targets.append((END_IMAGE, end_vision_weight) if keyframe is None and end_image else (None, 0.0))
            continue
        anchor = keyframe if keyframe is not None else 0
        later = [key for key in keyframe_keys if key > index]
        if later:
            target, position = keyframe_name(later[0]), later[0]
        elif end_image:
            target, position = END_IMAGE, sections
        else:
            targets.append((None, 0.0))
            continue
        targets.append((target, (index + 0.5 - anchor) / (position - anchor)))
    return targets


class SingleFramePlan(BaseModel):
    """Single-frame inference: one latent frame at `target_index` beside clean control latents at their indices, as
    musubi-tuner's one-frame inference lays them out (the 2x and 4x history slots hold zeros)."""

    target_index: int
    controls: list[tuple[str, int]]  # (image field, clean-latent index): init_image at 0, reference_image at its index
    post_index: int | None  # the zero clean frame right after the window (1 + window); None: left out

    def summary(self) -> str:
        controls = ", ".join(f"{name} at {index}" for name, index in self.controls)
        post = f"zero frame at {self.post_index}" if self.post_index is not None else "no zero frame after the window"
        return f"target index {self.target_index}, {controls}, {post}"


def single_frame_plan(request: GenerateRequest) -> SingleFramePlan:
    controls = [("init_image", 0)]
    if request.reference_image:
        controls.append(("reference_image", request.reference_index))
    return SingleFramePlan(
        target_index=request.target_index,
        controls=controls,
        post_index=1 + request.latent_window_size if request.single_frame_post else None,
    )
