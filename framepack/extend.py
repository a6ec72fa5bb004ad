"""Continuations and re-rolls: a request that names a finished job (`continue_job`, `reroll_job`) becomes the
request and plan of a new job that reuses the parent's kept latents (`framepack.kept_latents`).

The new job's request is the parent's stored request with the fields the request set (pydantic's
`model_fields_set`) laid over it. Fields that shape the kept latents are locked: giving one with another value than
the parent's is refused, naming it (`LOCKED`). `duration` of a continuation is the length added. `keyframes` and
`enhanced_prompts` are merged into the parent's; a keyframe is accepted only for a section the new job samples.

- **Continue, F1**: the plan has the parent's N sections plus the M added ones; the N come back as restored sections
  (START too) and the added ones continue the parent's random stream from its kept state, so the frames are exactly
  those of one job of N+M sections with the same seed.
- **Continue, bidirectional**: bidirectional sampling runs from the end backwards, so the parent's sections cannot be
  the first sections of a longer plan. The new job continues the parent's video as a source video given as latents
  (`source_latents` of `generate()`, the mechanism of init_video): its kept latents in time order (START, then the
  sections) are the source, whose last latent frame the M added sections start from. The plan has the M sections
  and the source (`source_video`); the parent's start and end images, image strength and paddings do not apply
  (the start is the source's last frame). `keep_source` defaults to on, so the output is the whole video, as an F1
  continuation's is; with it off the output is the new part alone.
- **Re-roll section k**: the plan is the parent's; the sections generated before k (F1: 0..k-1; bidirectional:
  k+1..N-1) are restored, k and the ones generated after it are sampled from a new stream seeded with
  `reroll_seed`, k with `reroll_prompt` as its section line when one is given. A seamless loop's connecting section
  is generated last, so every re-roll samples it again (and it can be re-rolled alone); a loop has no end to
  continue from, so continuing one is refused (a continuation may itself be a loop).

Nothing here loads a model or imports torch; every refusal is a FieldError naming the field.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from framepack.directing import prompt_blends
from framepack.errors import FieldError
from framepack.models.lora import parse_lora_tags
from framepack.plan import (
    MAX_SECTIONS,
    VAE_TEMPORAL,
    ExtendPlan,
    Plan,
    SourceVideo,
    join_prompt,
    random_seed,
    section_count,
    section_ranges,
)
from framepack.request import EXTEND_FIELDS, MAX_DURATION_S, GenerateRequest

logger = logging.getLogger(__name__)

Kind = Literal["continue", "reroll"]
# Fields the new job must share with its parent: they shape the latents it restores (size, window, timing, the start
# latent) or the random stream it continues. Given with the parent's value they are accepted.
LOCKED = (
    "model", "variant", "resolution", "aspect_ratio", "latent_window_size", "fps", "interpolate", "init_image",
    "end_image", "init_strength", "latent_paddings", "seed",
)  # fmt: skip
# Fields of a bidirectional parent that a continuation of it leaves out: it starts from the parent's last frame.
SOURCE_REPLACES = {"init_image": None, "end_image": None, "init_strength": 1.0, "latent_paddings": ""}
# What a kept file's metadata names of its plan (`framepack.kept_latents`): a file is used only for that plan.
PLAN_KEYS = ("variant", "width", "height", "latent_window_size", "num_sections", "seed")
FINISHED = "finished"


def plan_metadata(plan: Plan) -> dict[str, str]:
    return {key: str(getattr(plan, key)) for key in PLAN_KEYS}


def kept_matches(metadata: dict[str, str], plan: Plan) -> bool:
    """Whether a kept file's metadata belongs to `plan`."""
    return all(metadata.get(key) == str(getattr(plan, key)) for key in PLAN_KEYS)


@dataclass(frozen=True)
class ParentJob:
    """What a continuation or re-roll needs to know of the job it names."""

    id: str
    state: str  # the job's state ("finished", ...)
    request: dict[str, Any]  # its stored request (images included, seed and filename fixed)
    plan: Plan | None
    image_digests: dict[str, str] | None = None  # sha256 of its image files at submit (None: not stored)
    kept: dict[str, str] | None = None  # the metadata of its kept latents file; None when it has none (any more)


ParentLookup = Callable[[str], ParentJob | None]  # a job id -> the parent, None when there is no such job


@dataclass(frozen=True)
class Extension:
    """A resolved continuation or re-roll: the new job's request and how its plan follows from the parent's."""

    kind: Kind
    parent: ParentJob
    request: GenerateRequest
    added_sections: int = 0  # a continuation's new sections
    warnings: list[str] = field(default_factory=list)

    @property
    def field(self) -> str:
        return "continue_job" if self.kind == "continue" else "reroll_job"

    @property
    def parent_plan(self) -> Plan:
        assert self.parent.plan is not None  # resolve() refuses a parent without a plan
        return self.parent.plan

    @property
    def source_latents(self) -> bool:
        """A bidirectional continuation: the parent's latents precede the new sections (see the module docstring)."""
        return continues_as_source(self.kind, self.parent_plan)

    @property
    def source_video(self) -> SourceVideo | None:
        """What planning knows of the source a bidirectional continuation continues: the parent's kept latents,
        1 + sections * window latent frames (None for the other kinds)."""
        if not self.source_latents:
            return None
        parent = self.parent_plan
        latent_frames = 1 + parent.num_sections * parent.latent_window_size
        return SourceVideo(
            frames=VAE_TEMPORAL * (latent_frames - 1) + 1, width=parent.width, height=parent.height,
            fps=parent.generated_fps, latents=True,
        )  # fmt: skip

    def plan(self, plan: Plan) -> Plan:
        """The new job's plan from the plan of its `request`: checked against the parent's, the re-rolled section's
        prompt line applied, and `extend` (what comes from the parent) attached."""
        parent = self.parent_plan
        for name, label in (("variant", "variant"), ("latent_window_size", "latent_window_size")):
            if getattr(plan, name) != getattr(parent, name):
                raise FieldError(
                    label, f"must be job {self.parent.id}'s ({getattr(parent, name)}) to reuse its latents"
                )
        if (plan.width, plan.height) != (parent.width, parent.height):
            raise FieldError(
                "resolution",
                f"the size would be {plan.width}x{plan.height}; job {self.parent.id}'s latents are "
                f"{parent.width}x{parent.height} (leave resolution and aspect_ratio out)",
            )
        n = parent.num_sections
        if self.kind == "continue":
            expected = self.added_sections + (0 if self.source_latents else n) + plan.loop_sections
            if plan.num_sections != expected:  # never: the duration is computed to give this count
                raise RuntimeError(f"internal error: planned {plan.num_sections} sections, expected {expected}")
            restored = [] if self.source_latents else list(range(n))
            extend = ExtendPlan(kind="continue", parent=self.parent.id, parent_sections=n, restored=restored,
                                source_latents=self.source_latents)  # fmt: skip
        else:
            k = int(self.request.reroll_section or 0)
            restored = generated_before(parent, k)
            extend = ExtendPlan(kind="reroll", parent=self.parent.id, parent_sections=n, restored=restored,
                                reroll_section=k, reroll_seed=self.request.reroll_seed)  # fmt: skip
        plan = with_prompts(plan, parent, restored, self.request, extend.reroll_section)
        return plan.model_copy(update={"extend": extend, "warnings": [*plan.warnings, *self.warnings]})

    def check_images(self, digests: dict[str, str]) -> None:
        """The image files the new job reads are those the parent read (`digests`: the new job's, at submit)."""
        before = self.parent.image_digests or {}
        changed = sorted(name for name in digests.keys() & before.keys() if digests[name] != before[name])
        if changed:
            raise FieldError(
                changed[0],
                f"the file changed since job {self.parent.id} ran; its kept latents were made from the old one "
                "(give the old file back, or start a new job)",
            )


def continues_as_source(kind: Kind, parent: Plan) -> bool:
    """Whether a `kind` job of `parent` continues its kept latents as a source video (bidirectional continuation)."""
    return kind == "continue" and parent.variant == "bidirectional"


def generated_before(plan: Plan, section: int) -> list[int]:
    """The sections (time order) generated before `section`: what a re-roll of it restores (F1: the earlier ones;
    bidirectional: the later ones; a loop's connecting section is generated last, after every one)."""
    order = plan.generation_order
    return sorted(order[: order.index(section)])


def with_prompts(plan: Plan, parent: Plan, restored: list[int], request: GenerateRequest, reroll: int | None) -> Plan:
    """The plan with the prompts its sections are made with: a restored section's is the parent's (it is not sampled
    again), a re-rolled section's is joined with `reroll_prompt` when one is given (LoRA tags refused), and the prompt
    blends are computed again over them."""
    sections = [section.model_copy() for section in plan.sections]
    for index in restored:
        sections[index].prompt = parent.sections[index].prompt
        sections[index].prompt_line = parent.sections[index].prompt_line
    if reroll is not None and request.reroll_prompt.strip():
        line, loras = parse_lora_tags(request.reroll_prompt, [])
        if loras:
            raise FieldError("reroll_prompt", "has a <lora:name:weight> tag; LoRAs belong in prompt or section_prompts")
        sections[reroll].prompt = join_prompt(parse_lora_tags(request.prompt, [])[0], line)
    blends = prompt_blends([section.prompt for section in sections], request.prompt_blend_sections)
    for section, (blend_from, weight) in zip(sections, blends, strict=True):
        section.blend_from, section.blend_weight = blend_from, weight
    return plan.model_copy(update={"sections": sections})


def resolve(request: GenerateRequest, lookup: ParentLookup) -> Extension | None:
    """The continuation or re-roll `request` asks for (None for a request that names no parent). Raises FieldError
    naming the field: an unknown or unfinished parent, one that kept no latents, a locked field given with another
    value, a keyframe for a section that is restored, a section the parent does not have, a duration out of bounds."""
    if request.continue_job is None and request.reroll_job is None:
        return None
    kind: Kind = "continue" if request.continue_job is not None else "reroll"
    name = "continue_job" if kind == "continue" else "reroll_job"
    parent = find_parent(str(request.continue_job or request.reroll_job), name, kind, lookup)
    plan = parent.plan
    assert plan is not None
    given = set(request.model_fields_set) - set(EXTEND_FIELDS)
    fields = {key: value for key, value in parent.request.items() if key in GenerateRequest.model_fields}
    for key in EXTEND_FIELDS:
        fields.pop(key, None)  # a parent that was itself a continuation or re-roll: its own parent is not ours
    fields["filename"] = None  # the parent's output name is taken; the new job gets its own (or the one given)
    for key in sorted(given):
        value = getattr(request, key)
        if key in LOCKED and value != parent.request.get(key):
            raise FieldError(key, f"must be job {parent.id}'s ({parent.request.get(key)!r}) to reuse its latents")
        fields[key] = value
    fields.update({key: getattr(request, key) for key in EXTEND_FIELDS})
    if kind == "reroll" and request.reroll_seed < 0:
        fields["reroll_seed"] = random_seed()  # fixed now, like a seed of -1: the record names the one used
    fields["enhanced_prompts"] = {**parent.request.get("enhanced_prompts", {}), **request.enhanced_prompts}
    as_source = continues_as_source(kind, plan)
    added = 0
    if kind == "continue":
        if plan.loop_sections:
            raise FieldError(
                name,
                f"job {parent.id} is a seamless loop: its last section joins its end to its start, so it has no end "
                "to continue from (continue a job made without loop, and give loop to the continuation)",
            )
        added = section_count(request.duration, plan.fps, plan.interpolate, plan.latent_window_size)
        total = added if plan.variant == "bidirectional" else plan.num_sections + added
        if total > MAX_SECTIONS:
            raise FieldError("duration", f"the continued video would have {total} sections; at most {MAX_SECTIONS}")
        seconds = total * plan.latent_window_size * VAE_TEMPORAL / plan.generated_fps
        if seconds > MAX_DURATION_S:
            raise FieldError("duration", f"the continued video would last {seconds:.1f} s; at most {MAX_DURATION_S:g}")
        fields["duration"] = seconds
        sampled = list(range(0 if plan.variant == "bidirectional" else plan.num_sections, total))
        if as_source:
            fields.update(SOURCE_REPLACES)
            fields["keep_source"] = request.keep_source if "keep_source" in given else True
    else:
        k = int(request.reroll_section or 0)
        if k >= plan.num_sections:
            raise FieldError(
                "reroll_section", f"job {parent.id} has {plan.num_sections} sections: 0 to {plan.num_sections - 1}"
            )
        for key in ("duration", "loop"):
            if key in given and getattr(request, key) != parent.request.get(key):
                raise FieldError(key, f"a re-roll keeps job {parent.id}'s {key}; leave {key} out")
        fields["duration"] = parent.request.get("duration")
        sampled = sorted(plan.generation_order[plan.generation_order.index(k) :])
    # a bidirectional continuation's sections are new ones: the parent's keyframes belong to the parent's sections
    inherited = {} if as_source else parent.request.get("keyframes") or {}
    fields["keyframes"] = merged_keyframes(inherited, parent.id, request, given, sampled)
    try:
        merged = GenerateRequest.model_validate(fields)
    except ValueError as error:  # the parent's stored request no longer validates (an older version wrote it)
        raise FieldError(name, f"job {parent.id}'s stored request cannot be used: {error}") from None
    return Extension(kind, parent, merged, added)


def find_parent(job_id: str, name: str, kind: Kind, lookup: ParentLookup) -> ParentJob:
    """The parent job, refused (naming `name`) unless it finished with a plan and kept latents that match it."""
    verb = "continued" if kind == "continue" else "re-rolled"
    parent = lookup(job_id)
    if parent is None:
        raise FieldError(name, f"no job with id {job_id!r}")
    if parent.state != FINISHED:
        raise FieldError(name, f"job {job_id} is {parent.state}; only finished jobs can be {verb}")
    if parent.plan is None or parent.plan.single_frame is not None:
        raise FieldError(
            name, f"job {job_id} made {'no plan' if parent.plan is None else 'one image'}; only videos can be {verb}"
        )
    if parent.kept is None:
        raise FieldError(
            name,
            f"job {job_id} has no kept latents (it ran with keep_latents off, or they were removed); "
            "run it again with keep_latents on",
        )
    if not kept_matches(parent.kept, parent.plan):
        raise FieldError(name, f"job {job_id}'s kept latents do not belong to its plan; run it again")
    return parent


def merged_keyframes(
    inherited: dict, parent_id: str, request: GenerateRequest, given: set[str], sampled: list[int]
) -> dict[int, str]:
    """The inherited keyframes with the request's over them; each given one must be for a section that is sampled."""
    keyframes = {int(index): source for index, source in inherited.items()}
    if "keyframes" not in given:
        return keyframes
    for index, source in request.keyframes.items():
        if index not in sampled:
            raise FieldError(
                "keyframes",
                f"section {index} is restored from job {parent_id}'s latents; a keyframe is accepted for the sections "
                f"this job samples ({section_ranges(sampled)})",
            )
        keyframes[index] = source
    return keyframes
