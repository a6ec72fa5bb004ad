"""Controls generated from the request model, and the one mapping between control values and request fields.

Every `GenerateRequest` field gets a control whose kind, bounds, choices, default and help text come from the
field itself (a Literal gives a dropdown, bounds give a slider or a bounded number, the description is the
help). Fields the host chooses (listed in HOST_CHOSEN) have no control. `request_from_values` is the single
place that turns control values into a request; `values_from_request` is its inverse (presets, load from video).
"""

from __future__ import annotations

import base64
import html
import io
import typing
from typing import Any

import numpy as np
from annotated_types import Ge, Gt, Le, Lt, MaxLen, MultipleOf
from PIL import Image
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from framepack.errors import FieldError, validation_message
from framepack.images import load_image
from framepack.request import (
    BUILTIN_MODELS,
    DEFAULT_ENHANCER,
    IMAGE_FIELDS,
    QUALITY_ENHANCER,
    SELF_TEST_ENHANCER,
    GenerateRequest,
    field_kind,
)

# Fields with no control of their own: the host decides them, or a button of the queue panel sets them for the job
# chosen there (Continue, Re-roll; see framepack.ui.queue_panel).
EXTEND_BUTTONS = "set by the queue panel's Continue and Re-roll buttons for the job chosen there"
HOST_CHOSEN: dict[str, str] = {
    "output_dir": "the host chooses the output folder (SD.Next's video folder, or the server's --output-dir)",
    **dict.fromkeys(("continue_job", "reroll_job", "reroll_section", "reroll_seed", "reroll_prompt"), EXTEND_BUTTONS),
}
RGBA_IMAGES = ("reference_image",)  # image controls that keep transparency (the alpha channel is a mask)
KEYFRAMES = "keyframes"
ENHANCED = "enhanced_prompts"  # a table: one row per distinct section prompt, its enhanced text editable
ENHANCED_HEADERS = ["Sections", "Section prompt", "Enhanced text (editable; what is here is encoded)"]
NUMBER_FIELDS = ("seed", "duration", "enhance_seed")  # bounded, but a slider over their whole range is useless
SLIDER_STEPS = {"resolution": 16}
TEXT_LINES = {"prompt": 3, "negative_prompt": 2, "section_prompts": 4, "enhance_instructions": 3}
LABELS = {
    "init_image": "Init image (start frame; empty = text-to-video)",
    "end_image": "End image (FLF2V, bidirectional only)",
    "reference_image": "Reference image (single frame; its alpha is its mask)",
    "init_mask": "Init image mask (single frame; white = kept)",
    "reference_mask": "Reference image mask (single frame; white = kept)",
    "cfg_scale": "CFG scale",
    "cfg_rescale": "CFG rescale",
    "fps": "FPS",
    "codec_options": "Codec options",
    "save_raw": "Save raw frames (.safetensors)",
    "jpeg_quality": "JPEG quality",
    "preview": "Section previews",
    "loop": "Seamless loop (one connecting section more)",
    "enhance": "Enhance prompts",
    "enhancer": "Enhancer model (tiny = SELF-TEST, its text is noise)",
    "enhance_instructions": "Enhancer instructions (empty = built in)",
    "enhanced_prompts": "Enhanced prompts",
    "keep_latents": "Keep latents (to continue or re-roll the job later)",
}
MODEL_CHOICES = list(BUILTIN_MODELS)
ENHANCER_CHOICES = [DEFAULT_ENHANCER, QUALITY_ENHANCER, SELF_TEST_ENHANCER]

CONTROL_FIELDS: tuple[str, ...] = tuple(name for name in GenerateRequest.model_fields if name not in HOST_CHOSEN)


def field_info(name: str) -> FieldInfo:
    return GenerateRequest.model_fields[name]


def field_default(name: str) -> Any:
    info = field_info(name)
    return info.default_factory() if info.default_factory is not None else info.default


def field_bounds(name: str) -> tuple[float | None, float | None]:
    """(minimum, maximum) from the field's ge/gt/le/lt constraints (gt 0 of a float becomes a small step)."""
    low = high = None
    for item in field_info(name).metadata:
        if isinstance(item, Ge):
            low = item.ge
        elif isinstance(item, Gt):
            low = item.gt + (1 if field_type(name) is int else 0.1)
        elif isinstance(item, Le):
            high = item.le
        elif isinstance(item, Lt):
            high = item.lt
    return low, high


def field_multiple(name: str) -> int | None:
    """The field's `multiple_of` constraint (a slider's step), None without one."""
    for item in field_info(name).metadata:
        if isinstance(item, MultipleOf):
            return item.multiple_of
    return None


def field_max_length(name: str) -> int | None:
    for item in field_info(name).metadata:
        if isinstance(item, MaxLen):
            return item.max_length
    return None


def field_choices(name: str) -> list[str] | None:
    """The Literal choices of a field, None if it has none."""
    _, choices = field_kind(field_info(name).annotation)
    return list(choices) if choices is not None else None


def field_type(name: str) -> type:
    """int, float, bool or str (optional and Literal types reduce to their base; anything else is text)."""
    kind, _ = field_kind(field_info(name).annotation)
    return kind if kind in (bool, int, float) else str


def label(name: str) -> str:
    return LABELS.get(name, name.replace("_", " ").capitalize())


# ------------------------------------------------------------------------------------------ value mapping

UNREADABLE = "not a readable image (PNG, JPEG, WebP, ...)"  # as `framepack.images` says it


class UnreadableImage:
    """An upload an image control could not read (`framepack.ui.widgets.TolerantImage`); refused by name."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"UnreadableImage({self.reason!r})"


def image_to_source(value: Any, field: str = "init_image") -> str | None:
    """A UI image (PIL, numpy array, file path or data URL) as a request image string (a data URL for pixels);
    FieldError naming `field` for an upload that is no image."""
    if value is None:
        return None
    if isinstance(value, UnreadableImage):
        raise FieldError(field, UNREADABLE)
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):  # Gradio 4+ image editor / file payloads
        return image_to_source(value.get("path") or value.get("composite") or value.get("image"))
    if isinstance(value, np.ndarray):
        value = Image.fromarray(value.astype(np.uint8))
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    raise TypeError(f"unsupported image value {type(value).__name__}")


def source_to_image(source: str | None) -> Image.Image | None:
    """A request image string (path or base64) as a PIL image for an image control; None if it cannot load."""
    if not source:
        return None
    try:
        return load_image(source)
    except Exception:  # noqa: BLE001 - a record's image may be gone; the caller says so
        return None


def keyframes_from_value(value: Any) -> dict[int, str]:
    """The keyframe list control ([[section, image], ...]) as the request's {section: image string}."""
    keyframes: dict[int, str] = {}
    for index, image in value or []:
        source = image_to_source(image, f"keyframes.{index}")
        if source:
            keyframes[int(index)] = source
    return keyframes


def table_rows(value: Any) -> list[list[Any]]:
    """A table control's value as rows: a list of lists (Gradio's "array"), a pandas DataFrame or Gradio's
    {"data": rows} payload."""
    if value is None:
        return []
    if isinstance(value, dict):
        value = value.get("data") or []
    elif hasattr(value, "values") and hasattr(value, "columns"):  # a pandas DataFrame (never imported here)
        value = value.values.tolist()
    return [list(row) for row in value]


def enhanced_from_value(value: Any) -> dict[str, str]:
    """The enhanced-prompts table ([sections, section prompt, enhanced text] rows) as the request's
    {section prompt: enhanced text}; rows without a prompt or a text are left out (the prompt is encoded as it is)."""
    enhanced: dict[str, str] = {}
    for row in table_rows(value):
        if len(row) < 3:
            continue
        prompt, text = ("" if cell is None else str(cell) for cell in row[1:3])
        if prompt and text.strip():
            enhanced[prompt] = text
    return enhanced


def enhanced_to_value(enhanced: dict[str, str], sections: dict[str, str] | None = None) -> list[list[str]]:
    """The request's enhanced prompts as table rows; `sections` gives each prompt's sections as text ('' without)."""
    return [[(sections or {}).get(prompt, ""), prompt, text] for prompt, text in (enhanced or {}).items()]


def control_to_field(name: str, value: Any) -> Any:
    """One control's value as its request field's value."""
    if name in IMAGE_FIELDS:
        return image_to_source(value, name)
    if name == KEYFRAMES:
        return keyframes_from_value(value)
    if name == ENHANCED:
        return enhanced_from_value(value)
    kind = field_type(name)
    info = field_info(name)
    optional = type(None) in typing.get_args(info.annotation)
    if value is None or (optional and isinstance(value, str) and not value.strip()):
        return None if optional else field_default(name)
    if kind is bool:
        return bool(value)
    if kind is int:
        return int(round(float(value)))
    if kind is float:
        return float(value)
    return str(value)


def field_to_control(name: str, value: Any) -> Any:
    """A request field's value as its control's value (inverse of control_to_field)."""
    if name in IMAGE_FIELDS:
        return source_to_image(value)
    if name == KEYFRAMES:
        return [[int(index), source] for index, source in sorted((value or {}).items(), key=lambda item: int(item[0]))]
    if name == ENHANCED:
        return enhanced_to_value(value or {})
    if value is None:
        return "" if field_type(name) is str else field_default(name)
    return value


def request_from_values(values: dict[str, Any]) -> GenerateRequest:
    """Control values by field name -> the request; controls left out keep the field default.

    Raises pydantic.ValidationError (bad values, named by field) or TypeError (an unknown name)."""
    unknown = set(values) - set(CONTROL_FIELDS)
    if unknown:
        raise TypeError(f"no control for {', '.join(sorted(unknown))}")
    return GenerateRequest(**{name: control_to_field(name, value) for name, value in values.items()})


def values_from_request(fields: dict[str, Any], include_images: bool = True) -> dict[str, Any]:
    """Request fields (a dump or a record's "request") -> control values by name; unknown keys are ignored."""
    values = {}
    for name in CONTROL_FIELDS:
        if name not in fields or (not include_images and (name in IMAGE_FIELDS or name == KEYFRAMES)):
            continue
        values[name] = field_to_control(name, fields[name])
    return values


def default_values() -> dict[str, Any]:
    return {name: field_to_control(name, field_default(name)) for name in CONTROL_FIELDS}


def describe_error(error: Exception) -> str:
    """A user-facing line for a request that does not validate or plan, naming the field (plain text)."""
    if isinstance(error, ValidationError):
        return validation_message(error)
    field = getattr(error, "field", None)
    return f"{field}: {error}" if field and field not in str(error) else str(error)


def as_markdown(text: str) -> str:
    """Plain text for a Markdown field: HTML-like parts such as `<folder>` are escaped so they show as typed
    (unescaped, the renderer takes them for tags and the rest of the sentence disappears)."""
    return html.escape(text, quote=False)


def stored_fields(request: GenerateRequest) -> dict[str, Any]:
    """The request as stored in presets: every controlled field except the images (JSON types)."""
    dump = request.model_dump(mode="json")
    return {name: dump[name] for name in CONTROL_FIELDS if name not in IMAGE_FIELDS and name != KEYFRAMES}


# ------------------------------------------------------------------------------------------ components


def make_control(name: str, gr: Any, component: Any, value: Any = None) -> Any:
    """The Gradio component for one request field (built inside a Blocks context), showing `value` (a control
    value) or else the field's default.

    `gr` is the gradio module, `component` is compat.component (so version differences stay in compat)."""
    info = field_info(name)
    help_text = info.description or ""
    elem_id = f"framepack_{name}"
    common = {"label": label(name), "info": help_text, "elem_id": elem_id}
    default = value if value is not None else field_to_control(name, field_default(name))
    if name in IMAGE_FIELDS:
        mode = {"image_mode": "RGBA"} if name in RGBA_IMAGES else {}
        return component(
            gr.Image,
            label=label(name),
            type="pil",
            sources=["upload", "clipboard"],
            elem_id=elem_id,
            height=220,
            **mode,
        )
    if name == KEYFRAMES:
        return gr.State(default)
    if name == ENHANCED:
        table = component(
            gr.Dataframe,
            value=default,
            headers=list(ENHANCED_HEADERS),
            datatype=["str", "str", "str"],
            type="array",
            col_count=(len(ENHANCED_HEADERS), "fixed"),
            static_columns=[0, 1],
            interactive=True,
            wrap=True,
            label=label(name),
            elem_id=elem_id,
        )
        table.info = help_text  # every control carries its field's help; a table shows none, the tab writes it below
        return table
    if name == "enhancer":
        return component(
            gr.Dropdown,
            choices=list(ENHANCER_CHOICES),
            value=default,
            allow_custom_value=True,
            label=label(name),
            info=help_text,
            elem_id=elem_id,
        )
    if name == "model":
        return component(
            gr.Dropdown,
            choices=list(MODEL_CHOICES),
            value=default,
            allow_custom_value=True,
            label="Model (tiny = SELF-TEST, random weights)",
            info=help_text,
            elem_id=elem_id,
        )
    choices = field_choices(name)
    kind = field_type(name)
    if choices:
        widget = gr.Radio if len(choices) <= 3 else gr.Dropdown
        return component(widget, choices=choices, value=default, **common)
    if kind is bool:
        return component(gr.Checkbox, value=default, **common)
    if kind in (int, float):
        low, high = field_bounds(name)
        if low is not None and high is not None and name not in NUMBER_FIELDS:
            if kind is int:
                step = SLIDER_STEPS.get(name) or field_multiple(name) or 1
            else:
                step = 0.01 if high - low <= 2 else 0.1
            return component(gr.Slider, minimum=low, maximum=high, step=step, value=default, **common)
        return component(
            gr.Number, value=default, minimum=low, maximum=high, precision=0 if kind is int else None, **common
        )
    lines = TEXT_LINES.get(name, 1)
    return component(
        gr.Textbox,
        value=default,
        lines=lines,
        max_lines=max(lines, 20) if lines > 1 else 1,
        max_length=field_max_length(name),
        **common,
    )
