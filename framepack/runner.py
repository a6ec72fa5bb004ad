"""From a request to a finished file: resolve and load the model, plan, build the sinks, generate.

The faces (CLI, UI, API) call `Runner.run`; the runner owns the one loaded model so repeated jobs with the
same recipe do not reload it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from framepack.errors import FieldError
from framepack.events import CancelToken, EventCallback, StageStarted, ignore_events
from framepack.generate import FrameSink, GenerationResult, generate
from framepack.images import load_image
from framepack.models.components import Components
from framepack.models.loader import load_components
from framepack.models.recipe import Recipe, default_recipe, load_recipe, tiny_recipe
from framepack.models.tiny import write_tiny_model
from framepack.plan import Plan, make_plan
from framepack.request import GenerateRequest
from framepack.video.encoder import VideoEncoderSink

logger = logging.getLogger(__name__)

TINY_FOLDER = "tiny-self-test"


def data_home() -> Path:
    """Where the self-test model and other generated data live (FRAMEPACK_HOME, else ~/.cache/framepack)."""
    return Path(os.environ.get("FRAMEPACK_HOME") or Path.home() / ".cache" / "framepack")


def resolve_recipe(model: str, variant: str, home: Path | None = None) -> Recipe:
    """'default' -> the published weights for the variant, 'tiny' -> the self-test model (written on first
    use, in seconds), anything else -> a recipe file (JSON or text) on top of the variant's default."""
    if model == "default":
        return default_recipe(variant)
    if model == "tiny":
        folder = (home or data_home()) / TINY_FOLDER
        if not (folder / "model_index.json").is_file():
            logger.info("writing the tiny SELF-TEST model (random weights, output is noise) to %s", folder)
            write_tiny_model(folder)
        return tiny_recipe(folder)
    path = Path(model)
    if not path.is_file():
        raise FieldError("model", f"{model!r} is not 'default', 'tiny' or an existing recipe file")
    return load_recipe(path.read_text(), base=default_recipe(variant))


def plan_request(request: GenerateRequest) -> Plan:
    """Plan with the init image's real (EXIF-upright) size; bad images fail here, before any model loads."""
    size = None
    if request.init_image:
        size = load_image(request.init_image, "init_image").size
    if request.end_image:
        load_image(request.end_image, "end_image")
    for index, source in request.keyframes.items():
        load_image(source, f"keyframes.{index}")
    return make_plan(request, size)


def output_path(request: GenerateRequest, plan: Plan, default_dir: Path) -> Path:
    folder = Path(request.output_dir) if request.output_dir else default_dir
    stem = request.filename or f"framepack-{time.strftime('%Y%m%d-%H%M%S')}-{plan.seed}"
    return folder / f"{stem}.{request.container}"


def request_metadata(request: GenerateRequest, plan: Plan) -> dict:
    """What the file records about itself: the full request (images by reference) and the plan summary."""
    fields = request.model_dump(mode="json", exclude={"init_image", "end_image", "keyframes"})
    return {"framepack": fields, "seed": plan.seed, "mode": plan.mode, "plan": plan.summary()}


def build_sinks(request: GenerateRequest, plan: Plan, path: Path) -> list[FrameSink]:
    if request.codec == "none":
        return []
    return [
        VideoEncoderSink(
            path,
            fps=plan.fps,
            width=plan.width,
            height=plan.height,
            codec=request.codec,
            container=request.container,
            options=request.codec_options,
            metadata=request_metadata(request, plan),
        )
    ]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Runner:
    """Runs requests one at a time on one device, keeping the last loaded model."""

    def __init__(self, device: torch.device | str | None = None, output_dir: Path | str = "outputs", home: Path | None = None):
        self.device = torch.device(device) if device else default_device()
        self.output_dir = Path(output_dir)
        self.home = home
        self._recipe: Recipe | None = None
        self._components: Components | None = None

    def components_for(self, request: GenerateRequest, recipe: Recipe, on_event: EventCallback = ignore_events) -> Components:
        if self._components is None or recipe != self._recipe:
            self.unload()
            on_event(StageStarted("load model", "self-test model" if recipe.self_test else request.model))
            self._components = load_components(recipe, self.device, variant=request.variant)
            self._recipe = recipe
        return self._components

    def unload(self) -> None:
        self._components, self._recipe = None, None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def run(
        self,
        request: GenerateRequest,
        on_event: EventCallback = ignore_events,
        cancel: CancelToken | None = None,
        plan: Plan | None = None,
    ) -> GenerationResult:
        plan = plan or plan_request(request)
        recipe = resolve_recipe(request.model, request.variant, self.home)
        sinks = build_sinks(request, plan, output_path(request, plan, self.output_dir))  # bad codec: before loading
        try:
            components = self.components_for(request, recipe, on_event)
        except BaseException:
            for sink in sinks:
                sink.abort()
            raise
        if components.self_test:
            logger.warning("running the SELF-TEST model: random weights, the video is noise")
        return generate(components, request, plan, sinks, on_event, cancel)
