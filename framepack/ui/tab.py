"""The FramePack Gradio tab: controls from the request model, a live plan and timeline, the prompt enhancer (its
Enhance button fills an editable table of the section prompts' texts), a streaming run over the shared job queue,
presets, load-from-video and the model recipe. Works on Gradio 3.43 (SD.Next) and current
Gradio (standalone) through `compat`; it never imports SD.Next modules.

`FramePackTab` holds the python handlers (plain functions and generators, testable without a browser) over a
`JobService`, the only way it reaches jobs, plans, models and records; `create_tab` builds the Blocks around them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from framepack.defaults import DEFAULTABLE
from framepack.errors import FieldError
from framepack.jobs.events import (
    EndEvent,
    EnhanceEvent,
    FramesEvent,
    ProgressEvent,
    SectionEvent,
    StageEvent,
    StateEvent,
)
from framepack.jobs.models import EnhanceResult, Job, JobState
from framepack.jobs.service import JobService
from framepack.outputs import FINAL_SUFFIXES, IMAGE_SUFFIX, VIDEO_SUFFIXES
from framepack.plan import section_ranges
from framepack.request import SELF_TEST_MODEL, GenerateRequest
from framepack.ui import compat
from framepack.ui.batch_panel import BatchQueuer, build_batch_panel
from framepack.ui.controls import (
    CONTROL_FIELDS,
    ENHANCED,
    IMAGE_FIELDS,
    KEYFRAMES,
    MODEL_CHOICES,
    as_markdown,
    default_values,
    describe_error,
    field_to_control,
    image_to_source,
    make_control,
    request_from_values,
    source_to_image,
    stored_fields,
    values_from_request,
)
from framepack.ui.last_images import LastImages
from framepack.ui.presets import PresetError, PresetStore
from framepack.ui.queue_panel import QueuePanel, build_queue_panel
from framepack.ui.timeline import render_timeline
from framepack.ui.widgets import tolerant_component

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25  # progress lines are yielded at most this often (sections and the end always)
HEARTBEAT_S = 1.0
INTRO = (
    "# FramePack\n\nMake a video from a prompt, a start image (image-to-video) or a start and an end image. Choose "
    "the model, write a prompt, check the plan on the right (frames, sections, size), then **Generate**; "
    "**Add to queue** (in the queue panel below) queues it without following it. Without the real model's files, "
    "choose model **tiny**: the built-in SELF-TEST model runs everything with random weights (the video is noise)."
)
ENCODED_PICTURES_KEPT = 2 * len(IMAGE_FIELDS)  # pictures kept as PNG data URLs by FramePackTab.request (each twice)


def _format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class FramePackTab:
    """Handlers of the tab over a job service; `values` arguments come in CONTROL_FIELDS order."""

    def __init__(self, service: JobService, output_dir: Path | str, presets_path: Path | str):
        self.service = service
        self.output_dir = Path(output_dir)
        self.presets = PresetStore(presets_path)
        self.recipes_dir = Path(presets_path).parent / "recipes"
        self.last_images = LastImages(Path(presets_path).parent / "last-used-images")
        self._encoded: dict[bytes, str] = {}  # picture digest -> PNG data URL, oldest first (see `request`)

    # ---------------------------------------------------------------------------------------------- values

    @staticmethod
    def named(values: tuple | list) -> dict[str, Any]:
        return dict(zip(CONTROL_FIELDS, values))

    @staticmethod
    def ordered(values: dict[str, Any]) -> list[Any]:
        return [values[name] for name in CONTROL_FIELDS]

    def request(self, values: tuple | list) -> GenerateRequest:
        """The request the control values make. The plan line is recomputed on every keystroke, and encoding a
        1080p picture as a PNG data URL takes about half a second, so the last few encodings are kept, keyed by
        a digest of the picture (same pixels, mode and metadata: the same PNG)."""
        named = self.named(values)
        for name in IMAGE_FIELDS:
            picture = named.get(name)
            if isinstance(picture, Image.Image):
                digest = hashlib.blake2b(picture.tobytes(), digest_size=16)
                digest.update(repr((picture.mode, picture.size, sorted(picture.info.items()))).encode())
                key = digest.digest()
                if key not in self._encoded:
                    while len(self._encoded) >= ENCODED_PICTURES_KEPT:
                        self._encoded.pop(next(iter(self._encoded)))
                    self._encoded[key] = image_to_source(picture)
                named[name] = self._encoded[key]
        return request_from_values(named)

    # ---------------------------------------------------------------------------------------------- plan

    def plan(self, *values: Any) -> tuple[str, Any]:
        """(plan line in Markdown, timeline picture) for the current control values."""
        try:
            request = self.request(values)
            plan = self.service.plan(request)
        except Exception as error:  # noqa: BLE001 - every refusal is shown, not raised
            return f"**Cannot plan:** {as_markdown(describe_error(error))}", None
        lines = [
            f"**Plan:** {plan.summary()}",
            f"{plan.model_calls} model calls, {plan.steps} steps per section, seed {plan.seed}",
            plan.estimate_summary(),
        ]
        if request.model == SELF_TEST_MODEL:
            lines.append("SELF-TEST model: random weights, the video is noise.")
        lines += model_availability(self.service, request)
        lines += [f"Warning: {warning}" for warning in plan.warnings]
        return "\n\n".join(lines), render_timeline(plan)

    def runnable(self, *values: Any) -> bool:
        """Whether a job of these values can run here: the request is valid, plans, and its model is here."""
        try:
            request = self.request(values)
            self.service.plan(request)
            return not [item for item in self.service.missing_components(request) if item.component != "enhancer"]
        except Exception:  # noqa: BLE001 - the plan line says why
            return False

    def plan_view(self, *values: Any) -> tuple[str, Any, Any]:
        """The plan line and timeline, and Generate enabled only when the plan can run (the line says why not)."""
        return (*self.plan(*values), compat.update(interactive=self.runnable(*values)))

    # ---------------------------------------------------------------------------------------------- run

    def generate(self, *values: Any) -> Iterator[tuple[str, str, Any, list, Any, str]]:
        """Submit to the shared queue and stream (job id, progress, preview, storyboard, video, output paths).

        The storyboard holds a thumbnail of every finished section in time order, so the video is seen growing
        (from its end backwards for bi-directional, forwards for F1). Preview and storyboard are sent when a
        section changed them and "no change" (`compat.update()`) in between, so Gradio does not encode the same
        pictures again with every progress line; the last update sends everything."""
        try:
            request = self.request(values)
            job = self.service.submit(request)
        except Exception as error:  # noqa: BLE001
            yield "", f"**Not started:** {as_markdown(describe_error(error))}", None, [], None, ""
            return
        self.remember(request)
        preview = None
        board: dict[int, Any] = {}
        status = f"Queued ({job.summary})"
        yield job.id, status, None, [], None, ""
        last_yield = 0.0
        pictures_changed = False  # preview or storyboard changed since they were last sent
        for event in self.service.subscribe(job.id, heartbeat=HEARTBEAT_S):
            force = False
            if isinstance(event, EndEvent):
                yield self._finish(event, preview, storyboard(board))
                return
            if isinstance(event, StateEvent):
                status = f"{event.state.value}: {event.summary or ''}"
            elif isinstance(event, StageEvent):
                status = f"Stage: {event.stage} {event.detail}".strip()
                force = True
            elif isinstance(event, ProgressEvent):
                section = (
                    "start frame"
                    if event.section < 0
                    else f"section {event.order + 1}/{job.progress.sections} (#{event.section})"
                )
                status = (
                    f"{section}, step {event.step}/{event.steps} — total {event.done_steps}/{event.total_steps}, "
                    f"ETA {_format_eta(event.eta)}"
                )
            elif isinstance(event, SectionEvent):
                status = f"finished {event.sections_done}/{event.sections} sections"
                if event.skipped_calls:
                    status += f" (cache skipped {event.skipped_calls}/{event.model_calls} model calls of the last)"
                if event.pixels is not None:  # the section's preview comes with its event
                    preview = event.pixels
                    board[event.section] = thumbnail(preview)
                    pictures_changed = True
                force = True
            elif isinstance(event, FramesEvent):
                status = f"decoding: {event.frames}/{event.total} frames written"
                if event.window >= 0:
                    tiled = ", tiled" if event.tiled else ""
                    status += f", window {event.window + 1}/{event.windows} took {event.window_seconds:.1f} s{tiled}"
            elif isinstance(event, EnhanceEvent):
                status = enhance_summary(event)
                force = True
            else:
                continue  # a heartbeat
            now = time.monotonic()
            if force or now - last_yield >= PROGRESS_INTERVAL_S:
                last_yield = now
                if pictures_changed:
                    pictures_changed = False
                    yield job.id, status, preview, storyboard(board), None, ""
                else:
                    yield job.id, status, compat.update(), compat.update(), None, ""
        # the stream ended without an end event (the job service stopped)
        yield (
            job.id,
            "The job manager stopped; the job resumes when it starts again.",
            preview,
            storyboard(board),
            None,
            "",
        )

    def _finish(self, job: Job, preview: Any, board: list) -> tuple[str, str, Any, list, Any, str]:
        paths = [self._absolute(path) for path in job.outputs]
        video = next((str(path) for path in paths if path.suffix in VIDEO_SUFFIXES), None)
        image = next((str(path) for path in paths if path.suffix == IMAGE_SUFFIX), None)
        preview = image or preview  # a single frame's image shows where the previews did
        if job.state == JobState.FINISHED:
            took = (job.finished_at or 0) - (job.started_at or job.created_at)
            status = f"**Finished** in {took:.1f} s: {job.summary}"
            if job.progress.enhanced_prompts:
                count = len(job.progress.enhanced_prompts)
                plural = "s" if count != 1 else ""
                status += f" Encoded {count} enhanced prompt{plural} (Load settings from a video shows them)."
        else:
            message = as_markdown(job.error.message) if job.error else ""
            status = f"**{job.state.value.capitalize()}:** {message}"
        status += "".join(f"\n\nWarning: {as_markdown(warning)}" for warning in job.progress.warnings)
        return job.id, status, preview, board, video, output_links(paths)

    def _absolute(self, path: str) -> Path:
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.output_dir / candidate

    def cancel(self, job_id: str, keep_partial: bool) -> str:
        if not job_id:
            return "Nothing to cancel."
        try:
            job = self.service.cancel(job_id, keep_partial=bool(keep_partial))
        except Exception as error:  # noqa: BLE001
            return f"Cannot cancel: {as_markdown(describe_error(error))}"
        return f"Cancel requested for {job.id} ({'keeping' if keep_partial else 'discarding'} finished sections)."

    def pick_section(self, job_id: str, selected: gr.SelectData) -> tuple[Any, Any]:
        """A storyboard click: (job, section) for the queue panel's "Re-roll section" (the start frame is no
        section: nothing changes)."""
        section = caption_section(selected.value)
        if not job_id or section is None:
            return compat.update(), compat.update()
        return job_id, section

    # ---------------------------------------------------------------------------------------------- enhancer

    def enhance(self, *values: Any) -> tuple[Any, str]:
        """(table rows, status): every distinct section prompt enhanced anew by the request's enhancer, for the
        user to read and edit before Generate (the table is what the job encodes)."""
        try:
            request = self.request(values)
            result = self.service.enhance(request)
        except Exception as error:  # noqa: BLE001 - shown to the user, the tab keeps working
            return compat.update(), f"**Cannot enhance:** {as_markdown(describe_error(error))}"
        rows = [[section_ranges(item.sections), item.prompt, item.enhanced or ""] for item in result.prompts]
        return rows, enhance_summary(result) + " Edit the texts as you like: Generate encodes what the table holds."

    # ---------------------------------------------------------------------------------------------- keyframes

    def add_keyframe(self, image: Any, section: Any, keyframes: list, *values: Any) -> tuple:
        keyframes = [list(item) for item in (keyframes or [])]
        if image is not None and section is not None:
            try:
                index = int(section)
                if index < 0:
                    raise FieldError("keyframes", f"section {index}: sections count from 0")
                source = image_to_source(image, f"keyframes.{index}")
            except (FieldError, TypeError, ValueError, OverflowError) as error:
                message = f"**Keyframe not added:** {as_markdown(describe_error(error))}"
                return keyframes, compat.update(), message, compat.update()
            keyframes = [item for item in keyframes if int(item[0]) != index]
            keyframes.append([index, source])
            keyframes.sort(key=lambda item: int(item[0]))
        return (keyframes, self.keyframe_gallery(keyframes), *self._plan_with(values, keyframes))

    def clear_keyframes(self, *values: Any) -> tuple:
        return ([], [], *self._plan_with(values, []))

    def _plan_with(self, values: tuple, keyframes: list) -> tuple[str, Any]:
        named = self.named(values)
        named[KEYFRAMES] = keyframes
        return self.plan(*self.ordered(named))

    @staticmethod
    def keyframe_gallery(keyframes: list) -> list:
        return [(source_to_image(source), f"section {index}") for index, source in keyframes or []]

    # ---------------------------------------------------------------------------------------------- presets

    def preset_choices(self) -> list[str]:
        try:
            return self.presets.names()
        except PresetError:
            return []

    def save_preset(self, name: str, *values: Any) -> tuple[Any, str]:
        try:
            request = self.request(values)
            saved = self.presets.save(name, stored_fields(request))
        except Exception as error:  # noqa: BLE001
            return compat.update(), f"Not saved: {as_markdown(describe_error(error))}"
        return compat.update(choices=self.preset_choices(), value=saved), f"Saved preset {saved!r}."

    def load_preset(self, name: str) -> list:
        """Control updates (images untouched) followed by a status line."""
        try:
            fields = self.presets.load(name)
        except PresetError as error:
            return [compat.update() for _ in CONTROL_FIELDS] + [str(error)]
        return self._fill(values_from_request(fields, include_images=False)) + [f"Loaded preset {name!r}."]

    def delete_preset(self, name: str) -> tuple[Any, str]:
        try:
            self.presets.delete(name)
        except PresetError as error:
            return compat.update(), str(error)
        return compat.update(choices=self.preset_choices(), value=None), f"Deleted preset {name!r}."

    def remember(self, request: GenerateRequest) -> None:
        """Keep the request as the last-used settings, its images as files beside them (see `LastImages`)."""
        fields = stored_fields(request)
        try:
            fields.update(self.last_images.save(request))
        except Exception as error:  # noqa: BLE001 - the settings are kept without the images, and the log says so
            logger.warning("could not keep the last-used images: %s", error)
        try:
            self.presets.save_last_used(fields)
        except (OSError, PresetError) as error:
            logger.warning("could not save the last-used settings: %s", error)

    def restore_last_used(self) -> list:
        """For the tab's load event: last-used settings (defaults where none) with their images, then the preset
        choices, the keyframe gallery and a note naming any image that could not be restored."""
        values = self.default_values()
        last = self.presets.last_used()  # None when there is none or the presets file cannot be read
        note = ""
        if last:
            values.update(values_from_request(last, include_images=False))
            images, lost = self.last_images.restore(last)
            values.update(images)
            if lost:
                note = (
                    f"**Not restored:** the last-used {', '.join(lost)} could not be read back (the file is gone or "
                    "damaged); add it again, or the video is made without it."
                )
        gallery = self.keyframe_gallery(values[KEYFRAMES])
        return self.ordered(values) + [compat.update(choices=self.preset_choices()), gallery, note]

    def default_values(self) -> dict[str, Any]:
        """The controls' defaults: the request model's, under this face's defaults for the fields a face may
        default (model, cache, offload: SD.Next's FramePack settings, `serve --model`, FRAMEPACK_MODEL), read now."""
        values = default_values()
        try:
            completed = self.service.complete(GenerateRequest())
        except Exception as error:  # noqa: BLE001 - a bad setting is reported when a job is submitted
            logger.warning("the default settings are not usable: %s", error)
            return values
        values.update({name: field_to_control(name, getattr(completed, name)) for name in DEFAULTABLE})
        return values

    def _fill(self, values: dict[str, Any]) -> list:
        return [values[name] if name in values else compat.update() for name in CONTROL_FIELDS]

    # ---------------------------------------------------------------------------------------------- load from video

    def load_from_video(self, file: Any) -> list:
        """Every control from an output's metadata (video, raw .safetensors or sidecar .json), then a status line
        and the keyframe gallery."""
        path = compat.file_path(file)
        unchanged = [compat.update() for _ in CONTROL_FIELDS]
        if path is None:
            return unchanged + ["", compat.update()]
        try:
            record = self.service.read_record(path)
            fields = record["request"]
        except Exception as error:  # noqa: BLE001
            return unchanged + [as_markdown(f"Cannot read {path.name}: {describe_error(error)}"), compat.update()]
        values = self.default_values()
        values.update(values_from_request(fields))
        notes = [f"Loaded the settings of {path.name} ({record.get('plan', '')})."]
        missing = [name for name in IMAGE_FIELDS if fields.get(name) and values.get(name) is None]
        if missing:
            notes.append(f"Images no longer found: {', '.join(missing)}.")
        if record.get("images_not_stored"):
            notes.append(f"Not stored in the file (embedded images): {', '.join(record['images_not_stored'])}.")
        if record.get("self_test_model"):
            notes.append("Made with the SELF-TEST model.")
        return self.ordered(values) + [" ".join(notes), self.keyframe_gallery(values[KEYFRAMES])]

    # ---------------------------------------------------------------------------------------------- model

    def show_recipe(self, model: str, variant: str) -> str:
        try:
            return self.service.recipe_text(model or "default", variant)
        except Exception as error:  # noqa: BLE001
            return f"# cannot resolve model {model!r}: {describe_error(error)}"

    def use_recipe(self, text: str, variant: str) -> tuple[Any, str]:
        """Validate an edited recipe, save it as a file and select it as the model (applies to the next job)."""
        try:
            self.service.check_recipe(text, variant)
        except Exception as error:  # noqa: BLE001
            return compat.update(), f"Recipe not valid: {as_markdown(describe_error(error))}"
        self.recipes_dir.mkdir(parents=True, exist_ok=True)
        path = self.recipes_dir / f"recipe-{hashlib.sha256(text.encode()).hexdigest()[:10]}.txt"
        path.write_text(text)
        return (
            compat.update(choices=[*MODEL_CHOICES, str(path)], value=str(path)),
            f"Recipe saved to {path}; it applies from the next job.",
        )

    def load(self, *values: Any) -> str:
        """Load the chosen model now (after any running job), so the first Generate starts sampling at once."""
        try:
            request = self.request(values)
            self_test = self.service.load_model(request)
        except Exception as error:  # noqa: BLE001 - shown to the user, the tab keeps working
            return f"**Cannot load:** {as_markdown(describe_error(error))}"
        label = "the SELF-TEST model (random weights: the video is noise)" if self_test else f"model '{request.model}'"
        return f"Loaded {label} ({request.variant})."

    def unload(self) -> str:
        self.service.unload_model()
        return "Model unloaded; the next job loads it again."


def thumbnail(image: Any, size: int = 160) -> Image.Image:
    """A small copy of a section preview for the storyboard (a long video has hundreds of sections)."""
    picture = Image.fromarray(image)
    picture.thumbnail((size, size))
    return picture


def caption_section(value: Any) -> int | None:
    """The section index of a storyboard picture's caption ('#3' -> 3; 'start' -> None). Gradio 3 gives a selected
    picture's caption, later versions a dict holding it."""
    caption = value.get("caption") if isinstance(value, dict) else value
    text = str(caption or "")
    return int(text[1:]) if text.startswith("#") and text[1:].isdigit() else None


def storyboard(board: dict[int, Any]) -> list[tuple[Any, str]]:
    """Gallery value: finished sections in time order, captioned with their index ('start' for the T2V frame)."""
    return [(image, "start" if index < 0 else f"#{index}") for index, image in sorted(board.items())]


def output_links(paths: list[Path]) -> str:
    """The job's files as download links (Markdown), each named by its file name, the folder said once."""
    if not paths:
        return ""
    shown = []
    for path in paths:
        name = as_markdown(path.name).replace("[", "\\[").replace("]", "\\]")
        shown.append(f"[{name}]({compat.file_url(path)})" if path.is_file() else f"{name}/ (folder)")
    return f"**Files** (in {as_markdown(str(paths[0].parent))}): {' · '.join(shown)}"


def model_availability(service: JobService, request: GenerateRequest) -> list[str]:
    """A note when the chosen model's files are not on this machine (a file check in the model cache, no
    loading), offering the self-test model so the app can still be tried; and one when the enhancer the request
    would use is not there."""
    try:
        missing = service.missing_components(request)
    except Exception as error:  # noqa: BLE001 - a bad recipe file is reported the same way
        return [f"**Model:** {as_markdown(describe_error(error))}"]
    lines = []
    model = [item for item in missing if item.component != "enhancer"]
    if model:
        names = ", ".join(item.component for item in model)
        lines += [
            f"**Model not on this machine** ({names} missing): {as_markdown(model[0].message)}",
            "Choose model **tiny** to try everything with the SELF-TEST model (random weights: the video is noise).",
        ]
    for item in missing:
        if item.component == "enhancer":
            then = "the job is refused" if request.enhance == "require" else "the original prompts are used"
            lines.append(f"**Enhancer not on this machine** ({then}): {as_markdown(item.message)}")
    return lines


def enhance_summary(result: EnhanceResult) -> str:
    """One status line about an enhance result: what wrote how many prompts, and its warnings."""
    written = sum(1 for item in result.prompts if item.by == "enhancer")
    given = sum(1 for item in result.prompts if item.by == "request")
    parts = []
    if written:
        label = f"{result.enhancer}" + (" (SELF-TEST: its text is noise)" if result.self_test else "")
        parts.append(f"Enhanced {written} prompt{'s' if written != 1 else ''} with {label}, seed {result.seed}")
    if given:
        parts.append(f"{given} enhanced prompt{'s' if given != 1 else ''} given with the request")
    text = "; ".join(parts) + "." if parts else "No prompt enhanced."
    return as_markdown(text + "".join(f" Warning: {warning}" for warning in result.warnings))


def create_tab(service: JobService, output_dir: Path | str, presets_path: Path | str) -> gr.Blocks:
    """The tab's Blocks over `service` (the shared job service); the handler object is `blocks.framepack`."""
    return build_tab(FramePackTab(service, output_dir, presets_path))


def build_tab(tab: FramePackTab) -> gr.Blocks:
    c = compat.component
    controls: dict[str, Any] = {}
    initial = {name: value for name, value in tab.default_values().items() if name in DEFAULTABLE}

    def make(*names: str) -> None:
        for name in names:
            controls[name] = make_control(name, gr, tolerant_component, initial.get(name))

    with gr.Blocks(analytics_enabled=False, title="FramePack") as blocks:
        c(gr.Markdown, value=INTRO, elem_id="framepack_intro")
        restore_note = c(gr.Markdown, value="", elem_id="framepack_restore_note")
        with gr.Row():
            with gr.Column(scale=3):
                make("model")
                make("prompt", "negative_prompt", "section_prompts")
                with gr.Accordion("Prompt enhancer", open=False):
                    make("enhance", "enhancer", "enhance_instructions")
                    with gr.Row():
                        make("enhance_seed", "enhance_max_tokens", "enhance_quantize")
                    with gr.Row():
                        enhance_button = c(gr.Button, value="Enhance", elem_id="framepack_enhance_button")
                    enhance_status = c(gr.Markdown, value="", elem_id="framepack_enhance_status")
                    make(ENHANCED)
                    c(gr.Markdown, value=controls[ENHANCED].info, elem_id="framepack_enhanced_prompts_help")
                with gr.Row():
                    make("init_image", "end_image")
                with gr.Accordion("Section keyframes", open=False):
                    make(KEYFRAMES)
                    with gr.Row():
                        keyframe_image = tolerant_component(
                            gr.Image,
                            label="Keyframe image",
                            type="pil",
                            sources=["upload", "clipboard"],
                            elem_id="framepack_keyframe_image",
                            height=160,
                        )
                        with gr.Column():
                            keyframe_section = tolerant_component(
                                gr.Number,
                                label="Section (time order, 0 = first)",
                                value=0,
                                precision=0,
                                minimum=0,
                                elem_id="framepack_keyframe_section",
                            )
                            keyframe_add = c(
                                gr.Button, value="Add / replace keyframe", elem_id="framepack_keyframe_add"
                            )
                            keyframe_clear = c(gr.Button, value="Clear keyframes", elem_id="framepack_keyframe_clear")
                    keyframe_gallery = c(  # thumbnails whole, never stretched to the width (fit_columns)
                        gr.Gallery,
                        label="Keyframes",
                        columns=6,
                        height=180,
                        object_fit="contain",
                        fit_columns=False,
                        elem_id="framepack_keyframe_gallery",
                    )
                with gr.Accordion("Directing: prompt blending, vision schedule, latent paddings", open=False):
                    make("prompt_blend_sections", "vision_schedule", "latent_paddings")
                with gr.Accordion("Single frame: one edited image instead of a video", open=False):
                    make("single_frame", "target_index", "single_frame_post")
                    with gr.Row():
                        make("reference_image", "init_mask", "reference_mask")
                    make("reference_index")
                with gr.Accordion("Strengths", open=False):
                    make("init_strength", "end_strength", "vision_strength", "end_vision_weight")
                with gr.Accordion("Video", open=True):
                    make(
                        "variant",
                        "resolution",
                        "aspect_ratio",
                        "duration",
                        "fps",
                        "interpolate",
                        "interpolation",
                        "latent_window_size",
                    )
                    make("loop")
                with gr.Accordion("Sampling", open=False):
                    make("seed", "steps", "sampler", "guidance", "cfg_scale", "cfg_rescale", "shift")
                with gr.Accordion("Speed and memory", open=False):
                    make("cache", "cache_threshold", "attention", "offload", "preserved_memory_gb", "compile")
                    make(
                        "vae_tiling", "vae_tile_size", "vae_tile_overlap", "vae_tile_frames", "vae_tile_frames_overlap"
                    )
                with gr.Accordion("Output", open=False):
                    make(
                        "codec",
                        "container",
                        "codec_options",
                        "save_raw",
                        "save_frames",
                        "jpeg_quality",
                        "filename",
                        "preview",
                        "keep_latents",
                    )
                with gr.Accordion("Model recipe, load and unload", open=False):
                    recipe_text = c(
                        gr.Textbox,
                        label="Model recipe",
                        lines=8,
                        max_lines=30,
                        elem_id="framepack_recipe",
                        info=(
                            "One component per line: 'name: source [subfolder=..] [dtype=..]'. Use it to save it as "
                            "a recipe file and select it; it applies from the next job."
                        ),
                    )
                    with gr.Row():
                        recipe_show = c(gr.Button, value="Show recipe of the model", elem_id="framepack_recipe_show")
                        recipe_use = c(gr.Button, value="Use edited recipe", elem_id="framepack_recipe_use")
                        load_button = c(gr.Button, value="Load model", elem_id="framepack_load")
                        unload_button = c(gr.Button, value="Unload model", elem_id="framepack_unload")
                    model_status = c(gr.Markdown, value="", elem_id="framepack_model_status")
                with gr.Accordion("Presets", open=False):
                    with gr.Row():  # each button beside what it acts on, none right above the next header
                        preset_choice = c(
                            gr.Dropdown, label="Preset", choices=tab.preset_choices(), elem_id="framepack_preset"
                        )
                        preset_load = c(gr.Button, value="Load preset", elem_id="framepack_preset_load")
                        preset_delete = c(gr.Button, value="Delete preset", elem_id="framepack_preset_delete")
                    with gr.Row():
                        preset_name = c(gr.Textbox, label="Save as", elem_id="framepack_preset_name")
                        preset_save = c(gr.Button, value="Save preset", elem_id="framepack_preset_save")
                    preset_status = c(gr.Markdown, value="", elem_id="framepack_preset_status")
                with gr.Accordion("Load settings from a video", open=False):
                    video_file = c(
                        gr.File,
                        label="A video, raw .safetensors or sidecar .json made by FramePack",
                        file_types=list(FINAL_SUFFIXES),
                        elem_id="framepack_load_file",
                    )
                    load_status = c(gr.Markdown, value="", elem_id="framepack_load_status")
            with gr.Column(scale=2):
                plan_line = c(gr.Markdown, value="", elem_id="framepack_plan")
                timeline = c(
                    gr.Image,
                    label="Sections (time order; gen = generation order, L = prompt line, K = keyframe)",
                    type="pil",
                    interactive=False,
                    height=190,
                    elem_id="framepack_timeline",
                )
                with gr.Row():
                    generate_button = c(gr.Button, value="Generate", variant="primary", elem_id="framepack_generate")
                    cancel_button = c(gr.Button, value="Cancel", variant="stop", elem_id="framepack_cancel")
                    keep_partial = c(
                        gr.Checkbox, label="keep finished sections", value=False, elem_id="framepack_keep_partial"
                    )
                cancel_status = c(gr.Markdown, value="", elem_id="framepack_cancel_status")
                job_id = c(gr.Textbox, label="Job id", interactive=False, elem_id="framepack_job_id")
                progress = c(gr.Markdown, value="", elem_id="framepack_progress")
                preview = c(
                    gr.Image,
                    label="Latest section preview",
                    type="numpy",
                    interactive=False,
                    elem_id="framepack_preview",
                )
                board = c(
                    gr.Gallery,
                    label="Finished sections in time order",
                    columns=4,
                    height=230,  # room for a caption under each thumbnail; more rows scroll
                    object_fit="contain",
                    fit_columns=False,
                    allow_preview=True,
                    elem_id="framepack_storyboard",
                )
                video = c(gr.Video, label="Video", interactive=False, elem_id="framepack_video")
                outputs = c(gr.Markdown, value="", elem_id="framepack_outputs")

        missing = set(CONTROL_FIELDS) - set(controls)
        if missing:
            raise RuntimeError(f"the tab has no control for {', '.join(sorted(missing))}")
        inputs = [controls[name] for name in CONTROL_FIELDS]
        plan_outputs = [plan_line, timeline]
        queue_panel = QueuePanel(tab)
        with gr.Accordion("Queue", open=True, elem_id="framepack_queue_panel"):
            queue_parts = build_queue_panel(queue_panel, blocks, inputs, keyframe_gallery)
            with gr.Accordion("Batch: several start images or prompts, one job each", open=False):
                build_batch_panel(BatchQueuer(tab), inputs)
        # a click on a finished section of the storyboard picks it, and its job, for the queue panel's Re-roll
        compat.on(board.select, tab.pick_section, [job_id], [queue_parts["job"], queue_parts["reroll_section"]])

        for name in CONTROL_FIELDS:
            control = controls[name]
            if name != KEYFRAMES and hasattr(control, "change"):
                compat.on(control.change, tab.plan_view, inputs, [*plan_outputs, generate_button], queue=False)
        compat.on(
            keyframe_add.click,
            tab.add_keyframe,
            [keyframe_image, keyframe_section, controls[KEYFRAMES], *inputs],
            [controls[KEYFRAMES], keyframe_gallery, *plan_outputs],
            queue=False,
        )
        compat.on(
            keyframe_clear.click,
            tab.clear_keyframes,
            inputs,
            [controls[KEYFRAMES], keyframe_gallery, *plan_outputs],
            queue=False,
        )

        # clear the last cancel answer, then run: two listeners on one click may run in either order, and a clear
        # that lands after a cancel would hide its answer
        clear = compat.on(generate_button.click, lambda: "", None, [cancel_status], queue=False)
        compat.on(clear.then, tab.generate, inputs, [job_id, progress, preview, board, video, outputs])
        # the cancel answer has its own line: the run's stream owns the progress line, and a late cancel answer
        # must not overwrite the "Cancelled" state the stream already showed
        compat.on(cancel_button.click, tab.cancel, [job_id, keep_partial], [cancel_status], queue=False)

        compat.on(
            preset_save.click, tab.save_preset, [preset_name, *inputs], [preset_choice, preset_status], queue=False
        )
        compat.on(preset_load.click, tab.load_preset, [preset_choice], [*inputs, preset_status], queue=False)
        compat.on(preset_delete.click, tab.delete_preset, [preset_choice], [preset_choice, preset_status], queue=False)
        compat.on(
            video_file.change, tab.load_from_video, [video_file], [*inputs, load_status, keyframe_gallery], queue=False
        )

        compat.on(
            recipe_show.click, tab.show_recipe, [controls["model"], controls["variant"]], [recipe_text], queue=False
        )
        compat.on(
            recipe_use.click,
            tab.use_recipe,
            [recipe_text, controls["variant"]],
            [controls["model"], model_status],
            queue=False,
        )
        compat.on(enhance_button.click, tab.enhance, inputs, [controls[ENHANCED], enhance_status])
        compat.on(load_button.click, tab.load, inputs, [model_status])
        compat.on(unload_button.click, tab.unload, None, [model_status])

        load = compat.on(
            blocks.load,
            tab.restore_last_used,
            None,
            [*inputs, preset_choice, keyframe_gallery, restore_note],
            queue=False,
        )
        compat.on(load.then, tab.plan_view, inputs, [*plan_outputs, generate_button], queue=False)

    compat.fill_translations(blocks)
    blocks.framepack = tab  # the handlers, for hosts and tests
    blocks.framepack_queue = queue_panel
    blocks.framepack_controls = controls
    return blocks


__all__ = ["FramePackTab", "build_tab", "create_tab"]
