"""Plan before you compute: a function from a request to what will run.

The plan fixes the bucket size, the sections, the exact frame counts, each section's prompt and keyframe, the
seed and the generation order. It needs no model and no GPU, the UI shows it before anything runs, and the section
loop executes exactly this plan, so the frame count it announces is the frame count the file has.

`make_plan` is pure but for one input: a request with seed -1 gets a seed from its `draw_seed` argument (by default
Python's `random` module), and the plan records that seed, so the plan, not the request, fixes the video.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, model_serializer

from framepack.directing import SingleFramePlan, prompt_blends, requested_paddings, single_frame_plan, vision_targets
from framepack.errors import PlanError
from framepack.models.lora import check_weights, merge_refs, parse_lora_tags
from framepack.request import SELF_TEST_ENHANCER, SELF_TEST_MODEL, GenerateRequest
from framepack.section_prompts import (
    Syntax,
    looks_like_section_prompts,
    parse_section_prompts,  # noqa: F401 - the planner's public name
    read_section_prompts,
)

# (height, width) buckets of the original FramePack at the trained 640 scale.
BUCKETS_640: tuple[tuple[int, int], ...] = (
    (416, 960), (448, 864), (480, 832), (512, 768), (544, 704), (576, 672), (608, 640),
    (640, 608), (672, 576), (704, 544), (768, 512), (832, 480), (864, 448), (960, 416),
)  # fmt: skip
VAE_TEMPORAL = 4  # pixel frames per latent frame (the first latent frame of a clip decodes to one)
SELF_TEST_LABEL = "SELF-TEST model (random weights: the video is noise)"
MAX_SECTIONS = 1000  # 600 s at 30 fps with the default window is 500; more is a mistake, not a video


def bucket_size(height: float, width: float, resolution: int) -> tuple[int, int]:
    """Nearest 640 bucket for an aspect ratio, scaled to `resolution` and rounded to multiples of 16.

    Nearest minimises |h*bw - w*bh| as the original does (the last of equal candidates wins, as there).
    """
    best, best_metric = BUCKETS_640[0], float("inf")
    for bucket_h, bucket_w in BUCKETS_640:
        metric = abs(height * bucket_w - width * bucket_h)
        if metric <= best_metric:
            best, best_metric = (bucket_h, bucket_w), metric
    scale = resolution / 640.0
    return max(16, round(best[0] * scale / 16) * 16), max(16, round(best[1] * scale / 16) * 16)


def section_count(duration: float, fps: int, interpolate: int, window: int) -> int:
    """Sections of `window` latent frames (4*window pixel frames) that cover `duration` at the generated fps."""
    generated_fps = fps / (interpolate + 1)
    return max(1, round(duration * generated_fps / (window * VAE_TEMPORAL)))


def generated_frame_count(sections: int, window: int) -> int:
    """Pixel frames the model produces: one start frame plus 4*window per section."""
    return VAE_TEMPORAL * window * sections + 1


def output_frame_count(generated: int, interpolate: int) -> int:
    """Frames after inserting `interpolate` frames between each generated pair."""
    return (generated - 1) * (interpolate + 1) + 1


def bidirectional_paddings(sections: int) -> list[int]:
    """Latent padding per generated section of the original inverted anti-drifting sampler (end first)."""
    if sections > 4:
        return [3] + [2] * (sections - 3) + [1, 0]
    return list(reversed(range(sections)))


def join_prompt(prompt: str, suffix: str) -> str:
    prompt, suffix = prompt.strip(), suffix.strip()
    if not prompt or not suffix:
        return prompt or suffix
    separator = " " if prompt[-1] in ".,;:!?" else ", "
    return f"{prompt}{separator}{suffix}"


class SectionPlan(BaseModel):
    index: int  # position in time, 0 = start of the video
    order: int  # position in generation, 0 = generated first
    prompt: str
    prompt_line: int | None  # section_prompts line used (0-based), None when there are none
    keyframe: int | None  # request.keyframes key conditioning this section, None = the start image
    latent_padding: int  # bidirectional padding (0 for F1)
    first_frame: int  # generated-frame range [first_frame, end_frame)
    end_frame: int
    start_time: float
    end_time: float
    blend_from: str | None = None  # prompt_blend_sections: the earlier prompt this section's is blended with
    blend_weight: float = 1.0  # share of `prompt` in the text conditioning (the rest is `blend_from`'s)
    vision_toward: str | None = None  # "end_image" or "keyframes.<index>": the image SigLIP moves toward
    vision_weight: float = 0.0  # share of `vision_toward` in the SigLIP conditioning
    connecting: bool = False  # loop: joins the video's end back to its start (see add_loop_sections)


class ExtendPlan(BaseModel):
    """What a continuation or re-roll takes from its parent job (`framepack.extend`)."""

    kind: Literal["continue", "reroll"]
    parent: str  # the parent job's id
    parent_sections: int  # sections of the parent's video
    restored: list[int]  # sections (time order) whose latents come from the parent's kept latents, not sampled
    reroll_section: int | None = None
    reroll_seed: int | None = None  # seeds the noise of the sections sampled again, from reroll_section on
    source_latents: bool = False  # bidirectional continuation: the parent's latents precede the new sections

    def summary(self) -> str:
        if self.kind == "reroll":
            return f"re-rolls section {self.reroll_section} of {self.parent[:8]} (seed {self.reroll_seed})"
        if self.source_latents:
            return f"continues {self.parent[:8]} ({self.parent_sections} sections) after its kept latents"
        return f"continues {self.parent[:8]} ({self.parent_sections} sections restored)"


class Plan(BaseModel):
    mode: Literal["t2v", "i2v", "flf2v"]
    variant: Literal["bidirectional", "f1"]
    width: int
    height: int
    fps: int
    generated_fps: float
    interpolate: int
    latent_window_size: int
    num_sections: int
    generated_frames: int
    output_frames: int
    duration: float  # of the output, output_frames / fps
    steps: int
    sampler: str
    seed: int
    start_frame_pass: bool  # T2V: the first frame is generated from the prompt before the sections
    model_calls: int
    generation_order: list[int]
    sections: list[SectionPlan]
    unused_prompt_lines: list[int]
    warnings: list[str]
    section_prompt_syntax: Syntax = "none"  # how section_prompts was read: none, lines, timestamps, studio, musubi
    loras: list[tuple[str, float]] = []  # `<lora:name:weight>` tags of the prompt and section prompts
    self_test_model: bool = False  # the request's model is the random-weight self-test model ('tiny')
    single_frame: SingleFramePlan | None = None  # single-frame inference: one image (PNG) instead of a video
    estimated_seconds: float | None = None  # from earlier jobs of its kind here (framepack.estimate); None: none yet
    loop_sections: int = 0  # loop: the last this-many sections connect the end back to the start (add_loop_sections)
    extend: ExtendPlan | None = None  # continue_job / reroll_job: what comes from the parent job

    @model_serializer(mode="wrap")
    def _leave_out_no_estimate(self, handler):
        """No estimate (or no parent job) is no key: plans and records written before estimates (or continuations)
        existed dump and print as they did."""
        data = handler(self)
        for optional in ("estimated_seconds", "extend"):
            if isinstance(data, dict) and data.get(optional) is None:
                data.pop(optional, None)
        return data

    @property
    def main_sections(self) -> int:
        """The sections of the video proper, before a loop's connecting section."""
        return self.num_sections - self.loop_sections

    @property
    def total_steps(self) -> int:
        """Denoising steps of the whole job: every section's, plus the T2V start frame's."""
        return self.steps * (self.num_sections + int(self.start_frame_pass))

    def estimate_summary(self) -> str:
        """The time estimate as the faces show it, one line."""
        if self.estimated_seconds is None:
            return "Time estimate: none yet (no job of this model, size and speed settings finished on this machine)"
        duration = format_duration(self.estimated_seconds)
        return f"Time estimate: about {duration} on this machine, from earlier jobs (model loading not included)"

    def summary(self) -> str:
        order = " -> ".join(str(index) for index in self.generation_order)
        if self.single_frame is not None:
            return f"1 image (single frame: {self.single_frame.summary()}), {self.width}x{self.height}, PNG" + (
                f", {SELF_TEST_LABEL}" if self.self_test_model else ""
            )
        return (
            f"{self.output_frames} frames ({self.duration:.2f} s at {self.fps} fps) in {self.num_sections} "
            f"section{'s' if self.num_sections != 1 else ''}, {self.width}x{self.height}, {self.mode.upper()} "
            f"{self.variant}, generation order {order}"
            + (f", loop: section {self.main_sections} connects the end back to the start" if self.loop_sections else "")
            + (f", {SELF_TEST_LABEL}" if self.self_test_model else "")
            + (f", {self.extend.summary()}" if self.extend is not None else "")
        )


def enhance_warnings(request: GenerateRequest, prompts: set[str]) -> list[str]:
    """What the plan says about the prompt enhancer: entries of enhanced_prompts no section uses, and a self-test
    enhancer. A LoRA tag in an enhanced text is refused (LoRAs come from the prompt and its section lines)."""
    warnings = []
    for text in request.enhanced_prompts.values():
        if parse_lora_tags(text, [])[1]:
            raise PlanError(
                "enhanced_prompts", "has a <lora:name:weight> tag; LoRAs belong in prompt or section_prompts"
            )
    unused = [prompt for prompt in request.enhanced_prompts if prompt not in prompts]
    if unused:
        warnings.append(
            f"enhanced_prompts: {len(unused)} of {len(request.enhanced_prompts)} entries match no section prompt "
            "(prompt + section line) and are not used"
        )
    pending = prompts - set(request.enhanced_prompts)
    if request.enhance != "off" and pending and request.enhancer == SELF_TEST_ENHANCER:
        warnings.append(f"enhancer '{SELF_TEST_ENHANCER}' is the SELF-TEST enhancer: its text is noise")
    return warnings


def section_ranges(indices: list[int]) -> str:
    """Section indices as ranges for people: [0, 1, 2, 5] -> '0-2, 5'."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def format_duration(seconds: float) -> str:
    """'0.4 s', '42 s', '3 min 20 s', '1 h 05 min'."""
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.1f} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def random_seed() -> int:
    """A seed for a request that asks for a random one (seed -1), from Python's `random` module."""
    return random.randrange(2**32)


LOOP_SECTIONS = 1  # connecting sections of a loop (add_loop_sections says why one)


def loop_output_frame_count(generated: int, interpolate: int) -> int:
    """A loop's frames after interpolation: the in-betweens of every generated pair, plus those from its last frame
    back to its first (played on repeat, that pair is as close as any other)."""
    return generated * (interpolate + 1)


def add_loop_sections(plan: Plan) -> Plan:
    """`loop`: the plan with one connecting section after the main ones, and the counts that follow from it. It is
    generated last, when its future (the video's start, which bi-directional generates last) exists.

    FramePackLoop's approach: the same image at both ends (FLF2V with end = start) snaps at the join, so instead a
    section is sampled whose context holds the video's last latent frame as its past and the start latent plus the
    first sections' latents as its future (`framepack.sampling.context.loop_context`). One section, because one is
    the join: it sits right between its past (the layout's prefix slot, padding 0) and its future (the 1x, 2x and 4x
    history slots), the place of the first section beside the start image. A second one generated first would have
    to be placed a window away from the past frame, as the original places its early sections, and only loosely
    follow the video's end.

    The file holds the start frame, the main sections and the connecting section, in time order and joined with the
    overlap blend: 4 * window * (main + 1) + 1 frames. Its last frame leads into its first (the start frame, which the
    connecting section was sampled to precede), so played on repeat there is no seam and no frame twice. The section
    takes section 0's prompt, keyframe and vision target: it leads into that section.
    """
    main, window = plan.num_sections, plan.latent_window_size
    sections = main + LOOP_SECTIONS
    if sections > MAX_SECTIONS:
        raise PlanError(
            "duration", f"{main} sections and the loop's connecting section exceed the limit of {MAX_SECTIONS} sections"
        )
    first, end = VAE_TEMPORAL * window * main + 1, VAE_TEMPORAL * window * sections + 1
    connecting = plan.sections[0].model_copy(
        update={
            "index": main,
            "order": main,
            "latent_padding": 0,
            "first_frame": first,
            "end_frame": end,
            "start_time": round(first / plan.generated_fps, 4),
            "end_time": round(end / plan.generated_fps, 4),
            "connecting": True,
        }
    )
    generated = generated_frame_count(sections, window)
    output = loop_output_frame_count(generated, plan.interpolate)
    calls_per_section = plan.model_calls // (main + int(plan.start_frame_pass))
    return plan.model_copy(
        update={
            "num_sections": sections,
            "loop_sections": LOOP_SECTIONS,
            "generated_frames": generated,
            "output_frames": output,
            "duration": round(output / plan.fps, 4),
            "model_calls": plan.model_calls + calls_per_section * LOOP_SECTIONS,
            "generation_order": [*plan.generation_order, main],
            "sections": [*plan.sections, connecting],
        }
    )


def make_plan(
    request: GenerateRequest, image_size: tuple[int, int] | None = None, draw_seed: Callable[[], int] = random_seed
) -> Plan:
    """Plan a request. `image_size` is the init image's (width, height); needed for I2V/FLF2V with an
    'auto' aspect ratio, ignored otherwise. `draw_seed` is called for seed -1 only."""
    explicit = request.aspect()
    if explicit is not None:
        aspect_w, aspect_h = explicit
    elif request.init_image:
        if image_size is None:
            raise PlanError("init_image", "the image size is needed to choose the bucket")
        aspect_w, aspect_h = image_size
    else:
        aspect_w, aspect_h = 1.0, 1.0
    height, width = bucket_size(aspect_h, aspect_w, request.resolution)

    window = request.latent_window_size
    sections = section_count(request.duration, request.fps, request.interpolate, window)
    if sections > MAX_SECTIONS:
        raise PlanError(
            "duration",
            f"{sections} sections exceed the limit of {MAX_SECTIONS}; shorten the video, lower fps, "
            "raise interpolate or latent_window_size",
        )
    generated = generated_frame_count(sections, window)
    output = output_frame_count(generated, request.interpolate)
    if request.single_frame:  # one section that generates one frame
        sections, generated, output = 1, 1, 1
    generated_fps = request.fps / (request.interpolate + 1)

    for index in request.keyframes:
        if index >= sections:
            raise PlanError("keyframes", f"section {index} does not exist; allowed 0..{sections - 1}")

    bidirectional = request.variant == "bidirectional"
    order = list(reversed(range(sections))) if bidirectional else list(range(sections))
    paddings = bidirectional_paddings(sections) if bidirectional else [0] * sections
    if request.latent_paddings.strip():
        paddings = requested_paddings(request.latent_paddings, sections, order)

    spans = [
        (0 if i == 0 else VAE_TEMPORAL * window * i + 1, VAE_TEMPORAL * window * (i + 1) + 1) for i in range(sections)
    ]
    if request.single_frame:
        spans = [(0, 1)]
    midpoints = [(first + end) / 2 / generated_fps for first, end in spans]
    lora_warnings: list[str] = []
    prompt, prompt_loras = parse_lora_tags(request.prompt, lora_warnings)
    section_text, section_loras = parse_lora_tags(request.section_prompts, lora_warnings)
    check_weights(prompt_loras, "prompt")
    check_weights(section_loras, "section_prompts")
    loras = merge_refs([prompt_loras, section_loras], lora_warnings)
    if parse_lora_tags(request.negative_prompt, [])[1]:
        raise PlanError(
            "negative_prompt",
            "has a <lora:name:weight> tag; a LoRA changes the model for both CFG branches, so put it in the prompt",
        )
    boundaries = [first / generated_fps for first, _end in spans] + [generated / generated_fps]
    read = read_section_prompts(section_text, boundaries, midpoints)
    chosen, unused = read.chosen, read.unused

    keyframe_sources = sorted(request.keyframes)
    sections_plan = []
    for index, (first, end) in enumerate(spans):
        line = chosen[index]
        suffix = read.lines[line] if line is not None else ""
        active = [key for key in keyframe_sources if key <= index]
        sections_plan.append(
            SectionPlan(
                index=index,
                order=order.index(index),
                prompt=join_prompt(prompt, suffix),
                prompt_line=line,
                keyframe=active[-1] if active else None,
                latent_padding=paddings[order.index(index)],
                first_frame=first,
                end_frame=end,
                start_time=round(first / generated_fps, 4),
                end_time=round(end / generated_fps, 4),
            )
        )

    blends = prompt_blends([section.prompt for section in sections_plan], request.prompt_blend_sections)
    keyframes = [section.keyframe for section in sections_plan]
    visions = vision_targets(
        request.vision_schedule, keyframes, keyframe_sources, bool(request.end_image), request.end_vision_weight
    )
    for section, (blend_from, blend_weight), (toward, share) in zip(sections_plan, blends, visions):
        section.blend_from, section.blend_weight = blend_from, blend_weight
        section.vision_toward, section.vision_weight = toward, share

    warnings = list(dict.fromkeys(lora_warnings)) + enhance_warnings(
        request, {section.prompt for section in sections_plan}
    )
    if read.unused_warning(sections):
        warnings.append(read.unused_warning(sections))
    if request.negative_prompt and request.cfg_scale <= 1.0:
        warnings.append("negative_prompt is ignored while cfg_scale is 1")
    if read.lines and not prompt.strip():
        warnings.append("prompt is empty; sections use their section prompt alone")
    if request.prompt_blend_sections and not any(section.blend_from for section in sections_plan):
        warnings.append("prompt_blend_sections: no section prompt changes, so there is nothing to blend")
    if request.vision_schedule == "linear" and not any(section.vision_toward for section in sections_plan):
        warnings.append("vision_schedule linear: no end_image or later keyframe to move toward; it stays constant")
    if looks_like_section_prompts(prompt):
        warnings.append("prompt holds what reads as section prompts ([2s: text] or ';;;'); put them in section_prompts")

    seed = request.seed if request.seed >= 0 else draw_seed()
    start_frame_pass = request.mode == "t2v"
    calls_per_step = 2 if request.cfg_scale > 1.0 else 1
    model_calls = request.steps * calls_per_step * (sections + (1 if start_frame_pass else 0))
    plan = Plan(
        mode=request.mode,
        variant=request.variant,
        width=width,
        height=height,
        fps=request.fps,
        generated_fps=generated_fps,
        interpolate=request.interpolate,
        latent_window_size=window,
        num_sections=sections,
        generated_frames=generated,
        output_frames=output,
        duration=round(output / request.fps, 4),
        steps=request.steps,
        sampler=request.sampler,
        seed=seed,
        start_frame_pass=start_frame_pass,
        model_calls=model_calls,
        generation_order=order,
        sections=sections_plan,
        unused_prompt_lines=unused,
        section_prompt_syntax=read.syntax,
        warnings=warnings,
        loras=[(ref.name, ref.weight) for ref in loras],
        self_test_model=request.model == SELF_TEST_MODEL,
        single_frame=single_frame_plan(request) if request.single_frame else None,
    )
    return add_loop_sections(plan) if request.loop else plan
