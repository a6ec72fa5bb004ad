"""A request's plan and model, as a face submits it: no torch or diffusers is imported here, PyAV only for a video.

`plan_request` reads the request's images (PIL: the init image's upright size picks the bucket, and an image that
cannot be decoded is refused here), probes its init video (PyAV, imported only for a request that has one: its frames
are counted, a file that is no video is refused here) and whether its model is a self-test model, then calls the
pure `make_plan`.
`resolve_recipe` turns the request's model into a recipe; only for the self-test model on its first use does it
write that model, importing its writer (torch, diffusers) then.
"""

from __future__ import annotations

import logging
from pathlib import Path

from framepack.errors import FieldError
from framepack.estimate import estimate_seconds
from framepack.home import data_home
from framepack.images import load_image
from framepack.models.load_lock import LOAD_LOCK
from framepack.models.recipe import Recipe, default_recipe, load_recipe, tiny_recipe
from framepack.plan import Plan, SourceVideo, make_plan
from framepack.request import BUILTIN_MODELS, PUBLISHED_MODEL, SELF_TEST_MODEL, SINGLE_FRAME_IMAGES, GenerateRequest

logger = logging.getLogger(__name__)

TINY_FOLDER = "tiny-self-test"  # the self-test model's folder in the data folder


def source_video(request: GenerateRequest) -> SourceVideo | None:
    """The probe of the request's init_video (PyAV, imported only then): a file that is no video fails here, naming
    the field, before any model loads."""
    if not request.init_video:
        return None
    from framepack.video.source import probe_video

    info = probe_video(request.init_video, "init_video")
    return SourceVideo(frames=info.frames, width=info.width, height=info.height, fps=info.fps)


def plan_request(request: GenerateRequest, home: Path | None = None, source: SourceVideo | None = None) -> Plan:
    """Plan with the init image's real (EXIF-upright) size and the init video's frame count and size; bad images and
    videos fail here, before any model loads. `source` is a source video given as latents instead of init_video (a
    bidirectional continuation's parent, `framepack.extend`). The plan's `estimated_seconds` comes from the speed
    measurements in `home` (default: FRAMEPACK_HOME)."""
    size = None
    if request.init_image:
        size = load_image(request.init_image, "init_image").size
    if request.end_image:
        load_image(request.end_image, "end_image")
    for index, keyframe in request.keyframes.items():
        load_image(keyframe, f"keyframes.{index}")
    for name in SINGLE_FRAME_IMAGES:
        if getattr(request, name):
            load_image(getattr(request, name), name)
    plan = make_plan(request, size, source=source or source_video(request))
    if not plan.self_test_model and declares_self_test(request.model):
        plan = plan.model_copy(update={"self_test_model": True})
    return plan.model_copy(update={"estimated_seconds": estimate_seconds(home or data_home(), request, plan)})


def declares_self_test(model: str) -> bool:
    """Whether `model` is a recipe file that says `self_test: true` (a file that cannot be read says no here; it
    fails with its reason when the model is resolved)."""
    if model in BUILTIN_MODELS or not Path(model).is_file():
        return False
    try:
        return load_recipe(Path(model)).self_test
    except Exception:  # noqa: BLE001
        return False


def resolve_recipe(model: str, variant: str, home: Path | None = None) -> Recipe:
    """'default' -> the published weights for the variant, 'tiny' -> the self-test model (written on first
    use, in seconds), anything else -> a recipe file (JSON or text) on top of the variant's default."""
    if model == PUBLISHED_MODEL:
        return default_recipe(variant)
    if model == SELF_TEST_MODEL:
        folder = (home or data_home()) / TINY_FOLDER
        with LOAD_LOCK:  # one writer, and no load building weights meanwhile (several workers in one process)
            if not (folder / "model_index.json").is_file():
                from framepack.models.tiny import write_tiny_model  # torch and diffusers, needed only to write it

                logger.info("writing the tiny SELF-TEST model (random weights, output is noise) to %s", folder)
                write_tiny_model(folder)
        return tiny_recipe(folder)
    path = Path(model)
    if not path.is_file():
        allowed = f"'{PUBLISHED_MODEL}', '{SELF_TEST_MODEL}' or an existing recipe file"
        raise FieldError("model", f"{model!r} is not {allowed}")
    return load_recipe(path.read_text(), base=default_recipe(variant))
