"""Requests become prepared jobs once: defaults applied, planned, checked on this machine, seed and name fixed.

`Preparer.prepare` runs every check a request needs before it may be queued (images decoded for the plan, encoder
settings probed, attention kernel, LoRA files, the model's files, the enhancer's name and, with enhance 'require',
its files) and returns the `PreparedJob` the worker runs
as it is: nothing is planned or checked a second time. A job read back from the database (after a restart) is
prepared again from what was stored (`Preparer.restore`); before a job runs, `check_unchanged` compares the
digests of the image files it names with those taken at submit, so a job whose images changed is refused
instead of making another video than the one planned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framepack.defaults import apply_defaults
from framepack.enhancer.prompts import pending_prompts
from framepack.enhancer.source import EnhancerSource, check_enhancer, resolve_enhancer
from framepack.errors import UserError
from framepack.images import is_file_path
from framepack.jobs.models import Job
from framepack.jobs.service import MissingComponent
from framepack.models.loader import check_available
from framepack.models.recipe import Recipe, default_recipe, recipe_from_text, recipe_to_text
from framepack.outputs import default_stem
from framepack.plan import Plan, SourceVideo
from framepack.planning import plan_request, resolve_recipe
from framepack.request import IMAGE_FIELDS, SELF_TEST_MODEL, GenerateRequest
from framepack.runner import Runner, check_outputs


class PlanChanged(UserError):
    """An image file of a queued job changed since it was submitted (its digest differs)."""


@dataclass(frozen=True)
class PreparedJob:
    """A request checked once, as the worker runs it: the request (defaults applied, seed and filename fixed), its
    plan and model recipe, and the digests of the image files it names (field -> sha256)."""

    id: str
    request: GenerateRequest
    plan: Plan
    recipe: Recipe
    image_digests: dict[str, str] = field(default_factory=dict)


def image_sources(request: GenerateRequest) -> list[tuple[str, str]]:
    """(field, source) of every image of the request: init, end, single-frame and keyframe images, and the init
    video (its frame count and size are planned too)."""
    sources = [(name, getattr(request, name)) for name in (*IMAGE_FIELDS, "init_video") if getattr(request, name)]
    return sources + [(f"keyframes.{index}", source) for index, source in sorted(request.keyframes.items())]


def image_digests(request: GenerateRequest) -> dict[str, str]:
    """sha256 of each image given as a file path (embedded images are part of the request itself)."""
    return {
        name: hashlib.sha256(Path(source).read_bytes()).hexdigest()
        for name, source in image_sources(request)
        if is_file_path(source)
    }


class Preparer:
    """Checks requests with the runner's view of this machine (device, encoder prober, LoRA folders, model cache)
    and the face's defaults: `defaults()` returns the values for the fields a request leaves out, read at every
    call so that a changed setting applies at once (`framepack.defaults`)."""

    def __init__(self, runner: Runner, defaults: Callable[[], Mapping[str, Any]] | None = None):
        self.runner = runner
        self._defaults = defaults

    def complete(self, request: GenerateRequest) -> GenerateRequest:
        """The request with the face's defaults for the fields it left out."""
        return apply_defaults(request, self._defaults()) if self._defaults is not None else request

    def plan(self, request: GenerateRequest, check_encoder: bool = False, source: SourceVideo | None = None) -> Plan:
        """The plan of the completed request (images decoded for their size; `source`: see `plan_request`); with
        `check_encoder` the output settings are probed as a submit would."""
        request = self.complete(request)
        plan = plan_request(request, self.runner.home, source)
        if check_encoder:
            check_outputs(request, plan, self.runner.encoder_prober)
        return plan

    def recipe(self, model: str, variant: str) -> Recipe:
        return resolve_recipe(model, variant, self.runner.home)

    def missing(self, request: GenerateRequest, source: SourceVideo | None = None) -> list[MissingComponent]:
        """The components of the request's model that are not on this machine (a file check, nothing loaded), and
        the enhancer ("enhancer") when the request enhances prompts it has no enhanced text for."""
        request = self.complete(request)
        found = []
        if request.model != SELF_TEST_MODEL:  # the self-test model is written when it is first used: never missing
            missing = check_available(self.recipe(request.model, request.variant), self.runner.hub)
            found = [MissingComponent(error.component, str(error)) for error in missing]
        if request.enhance != "off" and pending_prompts(request, plan_request(request, source=source)):
            enhancer = check_enhancer(self.enhancer(request), self.runner.hub)
            if enhancer is not None:
                found.append(MissingComponent("enhancer", str(enhancer)))
        return found

    def enhancer(self, request: GenerateRequest) -> EnhancerSource:
        """The enhancer the request names (FieldError naming `enhancer` for a value that names none; the self-test
        enhancer is not written here)."""
        return resolve_enhancer(request.enhancer, self.runner.home, write_tiny=False)

    def check_enhancer(self, request: GenerateRequest, plan: Plan, everything: bool = False) -> None:
        """At submit: the enhancer's name is valid, and with enhance 'require' (or `everything`: the enhance route)
        its files are on this machine whenever it has prompts to write (else EnhancerUnavailableError, before any
        model loads). With 'on' a missing enhancer is reported by the job, which keeps the original prompts."""
        source = self.enhancer(request)
        needed = everything or (request.enhance == "require" and pending_prompts(request, plan))
        if needed and not source.self_test:  # the self-test enhancer is written when it is first used
            missing = check_enhancer(source, self.runner.hub)
            if missing is not None:
                raise missing

    def recipe_text(self, model: str, variant: str) -> str:
        return recipe_to_text(self.recipe(model, variant))

    @staticmethod
    def check_recipe(text: str, variant: str) -> None:
        """A recipe edited as text is valid over the variant's default recipe (else the parser's error)."""
        recipe_from_text(text, base=default_recipe(variant))

    def prepare(self, request: GenerateRequest, job_id: str, source: SourceVideo | None = None) -> PreparedJob:
        """Every check before a job is queued, without loading a model. Raises FieldError (a bad field or image,
        encoder settings that do not open, a LoRA tag whose weight, file or header is wrong, an enhancer that names
        no model), ModelUnavailableError (a component is not on this machine) or EnhancerUnavailableError (enhance
        'require' and the enhancer is not on this machine). A request without a filename is named by
        `default_stem` (time, seed and `job_id`). `source`: see `plan_request`."""
        request = self.complete(request)
        plan = plan_request(request, self.runner.home, source)
        self.runner.preflight(request, plan)
        recipe = self.recipe(request.model, request.variant)
        self.runner.check_recipe(recipe)
        missing = check_available(recipe, self.runner.hub)
        if missing:
            raise missing[0]
        self.check_enhancer(request, plan)
        fixed = GenerateRequest.model_validate(
            {**request.model_dump(), "seed": plan.seed, "filename": request.filename or default_stem(plan.seed, job_id)}
        )
        return PreparedJob(job_id, fixed, plan, recipe, image_digests(fixed))

    def restore(self, job: Job, digests: Mapping[str, str] | None) -> PreparedJob:
        """A stored job, prepared again from its stored request, plan and image digests (nothing re-checked; the
        recipe is resolved again). A job stored by an earlier version, without digests, takes its images as they
        are now; one without a plan is planned again."""
        request = GenerateRequest.model_validate(job.request)
        plan = Plan.model_validate(job.plan) if job.plan is not None else plan_request(request)
        digests = dict(digests) if digests is not None else image_digests(request)
        return PreparedJob(job.id, request, plan, self.recipe(request.model, request.variant), digests)

    @staticmethod
    def check_unchanged(job: PreparedJob) -> None:
        """PlanChanged when an image file of the job is gone or differs from the one checked at submit."""
        try:
            current = image_digests(job.request)
        except OSError as error:
            raise PlanChanged(f"an image of the job cannot be read any more ({error}); submit it again") from None
        if current != job.image_digests:
            changed = sorted(
                name
                for name in current.keys() | job.image_digests.keys()
                if current.get(name) != job.image_digests.get(name)
            )
            raise PlanChanged(f"the job's images changed since it was queued ({', '.join(changed)}); submit it again")
