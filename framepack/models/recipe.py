"""Model recipes: where each FramePack component comes from, in a form users can print and edit.

A recipe names, for every component, a source (a Hugging Face hub repo "owner/name" or a local folder), an
optional subfolder, an optional dtype and, for components with weights, an optional on-the-fly weight
quantization (optimum-quanto, applied after loading; see framepack/models/quantize.py). The text form is one
line per component:

    transformer: lllyasviel/FramePackI2V_HY dtype=bfloat16 quantize=float8
    vae: hunyuanvideo-community/HunyuanVideo subfolder=vae dtype=float16

and also accepts the short form SD.Next users know (`vae: hunyuanvideo-community/HunyuanVideo/vae`). Lines only
override the components they name, so a one-line recipe swaps one component of the default model. The transformer
may also come from one `.safetensors` file, local or in a hub repo (the community's single-file checkpoints):

    transformer: /models/FramePackI2V_HY_bf16.safetensors dtype=bfloat16
    transformer: Kijai/HunyuanVideo_comfy/FramePackI2V_HY_fp8_e4m3fn.safetensors

This module imports no torch: faces can parse and show recipes cheaply.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framepack.errors import UserError

COMPONENT_NAMES = (
    "transformer",
    "vae",
    "text_encoder",
    "tokenizer",
    "text_encoder_2",
    "tokenizer_2",
    "image_encoder",
    "feature_extractor",
)
# Components with weights; tokenizers and the image processor have no dtype.
WEIGHTED_COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "image_encoder")
DTYPES = ("float32", "float16", "bfloat16")
# Weight quantizations (optimum-quanto qint8 / qfloat8 / qint4: weight-only, to save memory) and float8 compute
# (torchao's dynamic float8: float8 weights and activations, to gain speed on GPUs of compute capability 8.9+),
# allowed on WEIGHTED_COMPONENTS only.
QUANTIZATIONS = ("int8", "float8", "int4", "float8-dynamic")
SINGLE_FILE_SUFFIX = ".safetensors"
SINGLE_FILE_COMPONENTS = ("transformer",)
VARIANTS = ("bidirectional", "f1")
OPTIONS = ("subfolder", "dtype", "quantize")

HUNYUAN_REPO = "hunyuanvideo-community/HunyuanVideo"
REDUX_REPO = "lllyasviel/flux_redux_bfl"
TRANSFORMER_REPOS = {
    "bidirectional": "lllyasviel/FramePackI2V_HY",
    "f1": "lllyasviel/FramePack_F1_I2V_HY_20250503",
}
DEFAULT_DTYPES = {
    "transformer": "bfloat16",
    "vae": "float16",
    "text_encoder": "float16",
    "tokenizer": None,
    "text_encoder_2": "float16",
    "tokenizer_2": None,
    "image_encoder": "float16",
    "feature_extractor": None,
}

_OPTION_RE = re.compile(r"(?P<source>.*?)(?P<options>(?:\s+[A-Za-z_][\w-]*=\S*)*)\s*")
_WINDOWS_DRIVE_RE = re.compile(r"^[A-Za-z]:[\\/]")


class RecipeError(UserError, ValueError):
    """A recipe that cannot be parsed or is invalid; the message says where and what is allowed."""


@dataclass(frozen=True)
class ComponentSource:
    """Where one component comes from: a hub repo id or a local folder, plus subfolder, dtype and quantization.

    `dtype` is the float dtype the weights load in (and the compute dtype); `quantize` (one of QUANTIZATIONS)
    then stores the weights of most layers in that format after loading; None (the default) keeps them as loaded.
    """

    source: str
    subfolder: str | None = None
    dtype: str | None = None
    quantize: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise RecipeError("missing source: give a hub repo id 'owner/name' or a local folder path")
        if self.subfolder is not None and (not isinstance(self.subfolder, str) or not self.subfolder.strip()):
            raise RecipeError(f"subfolder must be a non-empty string or absent, got {self.subfolder!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise RecipeError(_unknown_dtype_message(self.dtype))
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise RecipeError(_unknown_quantize_message(self.quantize))

    @property
    def is_local(self) -> bool:
        """True when the source is a local folder or file (existing, or written like a path), not a hub repo."""
        return is_local_path(self.source)

    @property
    def is_single_file(self) -> bool:
        """True when the weights come from one .safetensors file: a local file, or a file in a hub repo (then
        `subfolder` holds its path in the repo)."""
        return (self.subfolder or self.source).lower().endswith(SINGLE_FILE_SUFFIX)

    def describe(self) -> str:
        """Where this component is looked for, in words for messages."""
        if self.is_single_file:
            if self.is_local:
                return "local file " + str(Path(self.source) / self.subfolder if self.subfolder else self.source)
            return f"file {self.subfolder} of hub repo {self.source}"
        where = f"local folder {self.source}" if self.is_local else f"hub repo {self.source}"
        return where + (f" (subfolder {self.subfolder})" if self.subfolder else "")


@dataclass(frozen=True)
class Recipe:
    """One source per FramePack component; `self_test` marks the random-weight tiny model."""

    transformer: ComponentSource
    vae: ComponentSource
    text_encoder: ComponentSource
    tokenizer: ComponentSource
    text_encoder_2: ComponentSource
    tokenizer_2: ComponentSource
    image_encoder: ComponentSource
    feature_extractor: ComponentSource
    self_test: bool = False

    def __post_init__(self) -> None:
        for name in COMPONENT_NAMES:
            component = getattr(self, name)
            if not isinstance(component, ComponentSource):
                raise RecipeError(f"{name}: expected a ComponentSource, got {type(component).__name__}")
            if component.dtype is not None and name not in WEIGHTED_COMPONENTS:
                raise RecipeError(
                    f"{name}: has no weights, so no dtype; dtype is allowed on {', '.join(WEIGHTED_COMPONENTS)}"
                )
            if component.quantize is not None and name not in WEIGHTED_COMPONENTS:
                raise RecipeError(_no_quantize_message(name))
            if component.is_single_file and name not in SINGLE_FILE_COMPONENTS:
                raise RecipeError(_no_single_file_message(name))
            if component.is_single_file and not component.is_local and not component.subfolder:
                raise RecipeError(
                    f"{name}: a file in a hub repo is written owner/name/path/file{SINGLE_FILE_SUFFIX}, "
                    f"got {component.source!r}"
                )
        if not isinstance(self.self_test, bool):
            raise RecipeError(f"self_test must be true or false, got {self.self_test!r}")

    def component(self, name: str) -> ComponentSource:
        check_component_name(name)
        return getattr(self, name)

    def items(self) -> list[tuple[str, ComponentSource]]:
        """(name, source) pairs in COMPONENT_NAMES order."""
        return [(name, getattr(self, name)) for name in COMPONENT_NAMES]

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some components (or self_test) replaced."""
        for name in changes:
            if name != "self_test":
                check_component_name(name)
        return dataclasses.replace(self, **changes)

    def with_dtype(self, dtype: str | None) -> Recipe:
        """A copy with every weighted component in `dtype` (e.g. float32 to run on a CPU)."""
        changes = {name: dataclasses.replace(getattr(self, name), dtype=dtype) for name in WEIGHTED_COMPONENTS}
        return self.replace(**changes)


def _unknown_dtype_message(dtype: Any) -> str:
    message = f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}"
    if dtype in QUANTIZATIONS:
        message += f" (to store the weights in {dtype}, write quantize={dtype})"
    return message


def _unknown_quantize_message(quantize: Any) -> str:
    """One text for an unknown quantize, whether ComponentSource or a parser finds it."""
    return f"unknown quantize {quantize!r}; allowed: {', '.join(QUANTIZATIONS)}"


def _no_single_file_message(name: str) -> str:
    return (
        f"{name}: a single {SINGLE_FILE_SUFFIX} file is supported for {', '.join(SINGLE_FILE_COMPONENTS)} only; "
        f"give {name} a folder or hub repo in diffusers layout"
    )


def _no_quantize_message(name: str) -> str:
    return f"{name} has no weights, so no quantize; quantize is allowed on {', '.join(WEIGHTED_COMPONENTS)}"


def check_component_name(name: str) -> None:
    if name not in COMPONENT_NAMES:
        raise RecipeError(f"unknown component {name!r}; allowed: {', '.join(COMPONENT_NAMES)}")


def is_local_path(source: str) -> bool:
    """True for an existing path or one written like a path (absolute, ./, ~, a Windows drive, backslashes).

    Anything else is read as a hub repo id; "owner/name/sub" short forms are split by the parser before this.
    """
    if source.startswith(("/", ".", "~", "\\")) or "\\" in source or _WINDOWS_DRIVE_RE.match(source):
        return True
    return Path(source).expanduser().exists()


def default_recipe(variant: str = "bidirectional") -> Recipe:
    """The published FramePack model: HunyuanVideo encoders and VAE, Redux SigLIP, and the variant's transformer."""
    if variant not in VARIANTS:
        raise RecipeError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    sources = {name: ComponentSource(HUNYUAN_REPO, name, DEFAULT_DTYPES[name]) for name in COMPONENT_NAMES}
    sources["image_encoder"] = ComponentSource(REDUX_REPO, "image_encoder", DEFAULT_DTYPES["image_encoder"])
    sources["feature_extractor"] = ComponentSource(REDUX_REPO, "feature_extractor", None)
    sources["transformer"] = ComponentSource(TRANSFORMER_REPOS[variant], None, DEFAULT_DTYPES["transformer"])
    return Recipe(**sources)


def tiny_recipe(folder: Path | str) -> Recipe:
    """The tiny self-test model written by `framepack.models.tiny.write_tiny_model`, all in float32."""
    folder = str(Path(folder))
    sources = {
        name: ComponentSource(folder, name, "float32" if name in WEIGHTED_COMPONENTS else None)
        for name in COMPONENT_NAMES
    }
    return Recipe(**sources, self_test=True)


# ---------------------------------------------------------------------------------------------- text form


def recipe_to_text(recipe: Recipe) -> str:
    """One line per component (`name: source [subfolder=...] [dtype=...] [quantize=...]`), then `self_test: true`
    if set."""
    lines = [component_to_text(name, source) for name, source in recipe.items()]
    if recipe.self_test:
        lines.append("self_test: true")
    return "\n".join(lines) + "\n"


def component_to_text(name: str, source: ComponentSource) -> str:
    line = f"{name}: {source.source}"
    if source.subfolder is not None:
        line += f" subfolder={source.subfolder}"
    if source.dtype is not None:
        line += f" dtype={source.dtype}"
    if source.quantize is not None:
        line += f" quantize={source.quantize}"
    return line


def recipe_from_text(text: str, base: Recipe | None = None) -> Recipe:
    """Parse the text form; each line overrides one component of `base` (default: the bidirectional model).

    Blank lines and `#` comments are ignored. A line fully describes its component: options it leaves out
    (subfolder, dtype, quantize) are absent: the loader then uses the component's default dtype and does not
    quantize.
    """
    recipe = base if base is not None else default_recipe("bidirectional")
    changes: dict[str, Any] = {}
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        if not line:
            continue
        name, value = _split_line(line, number)
        if name in seen:
            raise RecipeError(f"recipe line {number}: {name!r} is already set on line {seen[name]}")
        seen[name] = number
        where = f"recipe line {number}"
        changes[name] = _parse_self_test(value, where) if name == "self_test" else _parse_value(name, value, where)
    return recipe.replace(**changes)


def _strip_comment(line: str) -> str:
    """Drop a whole-line `#` comment or a trailing ` # comment` (a `#` inside a path stays)."""
    stripped = line.strip()
    if stripped.startswith("#"):
        return ""
    return re.split(r"\s+#", stripped, maxsplit=1)[0].strip()


def _split_line(line: str, number: int) -> tuple[str, str]:
    name, colon, value = line.partition(":")
    name = name.strip()
    if not colon or not name:
        raise RecipeError(
            f"recipe line {number}: expected 'component: source [subfolder=...] [dtype=...] [quantize=...]', "
            f"got {line!r}"
        )
    if name != "self_test" and name not in COMPONENT_NAMES:
        raise RecipeError(
            f"recipe line {number}: unknown component {name!r}; allowed: {', '.join(COMPONENT_NAMES)}, self_test"
        )
    return name, value.strip()


def _parse_self_test(value: str, where: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise RecipeError(f"{where}: self_test must be true or false, got {value!r}")
    return value.lower() == "true"


def _parse_value(name: str, value: str, where: str) -> ComponentSource:
    """`source [subfolder=x] [dtype=y] [quantize=z]`; the source may contain spaces, options come last."""
    match = _OPTION_RE.fullmatch(" " + value)
    source = match.group("source").strip() if match else ""
    options: dict[str, str] = {}
    for option in match.group("options").split() if match else []:
        key, _, option_value = option.partition("=")
        if key not in OPTIONS:
            raise RecipeError(f"{where} ({name}): unknown option {key!r}; allowed: {', '.join(OPTIONS)}")
        if not option_value:
            raise RecipeError(f"{where} ({name}): option {key!r} has no value")
        options[key] = option_value
    try:
        return make_component(name, source, options.get("subfolder"), options.get("dtype"), options.get("quantize"))
    except RecipeError as error:
        raise RecipeError(f"{where} ({name}): {error}") from None


def make_component(
    name: str, source: str, subfolder: str | None, dtype: str | None, quantize: str | None = None
) -> ComponentSource:
    """Validate one component's fields and expand SD.Next short forms of hub ids."""
    if not source:
        raise RecipeError("missing source: give a hub repo id 'owner/name' or a local folder path")
    if dtype is not None and dtype not in DTYPES:
        raise RecipeError(_unknown_dtype_message(dtype))
    if dtype is not None and name not in WEIGHTED_COMPONENTS:
        raise RecipeError(f"{name} has no weights, so no dtype; dtype is allowed on {', '.join(WEIGHTED_COMPONENTS)}")
    # also checked by ComponentSource, but here first: an unknown quantize on a weightless component (tokenizer)
    # is reported as unknown, not as misplaced
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise RecipeError(_unknown_quantize_message(quantize))
    if quantize is not None and name not in WEIGHTED_COMPONENTS:
        raise RecipeError(_no_quantize_message(name))
    if subfolder is None:
        source, subfolder = split_hub_shorthand(source)
    component = ComponentSource(source, subfolder, dtype, quantize)
    if component.is_single_file and name not in SINGLE_FILE_COMPONENTS:
        raise RecipeError(_no_single_file_message(name).removeprefix(f"{name}: "))
    return component


def split_hub_shorthand(source: str) -> tuple[str, str | None]:
    """SD.Next's short forms: "owner/name/" is that repo, "owner/name/sub/dir" is a repo plus subfolder.

    Only for sources that are not local paths, so an existing folder "a/b/c" stays a folder.
    """
    if is_local_path(source):
        return source, None
    parts = source.split("/")
    if len(parts) <= 2:
        return source, None
    repo = "/".join(parts[:2])
    subfolder = "/".join(part for part in parts[2:] if part)
    return repo, subfolder or None


# ---------------------------------------------------------------------------------------------- JSON form


def recipe_to_json(recipe: Recipe) -> str:
    """Every component as {"source", "subfolder", "dtype", "quantize"} (null when absent), plus "self_test"."""
    data: dict[str, Any] = {name: dataclasses.asdict(source) for name, source in recipe.items()}
    data["self_test"] = recipe.self_test
    return json.dumps(data, indent=2) + "\n"


def recipe_from_json(text: str, base: Recipe | None = None) -> Recipe:
    """Parse the JSON form; keys override components of `base` (default: the bidirectional model).

    A component is an object {"source", "subfolder"?, "dtype"?, "quantize"?} or a string in the text form's value
    syntax.
    """
    recipe = base if base is not None else default_recipe("bidirectional")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecipeError(f"recipe JSON line {error.lineno}: {error.msg}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe JSON must be an object with keys among {', '.join(COMPONENT_NAMES)}, self_test")
    changes: dict[str, Any] = {}
    for name, value in data.items():
        if name == "self_test":
            if not isinstance(value, bool):
                raise RecipeError(f"recipe JSON: self_test must be true or false, got {value!r}")
            changes[name] = value
        elif name not in COMPONENT_NAMES:
            raise RecipeError(
                f"recipe JSON: unknown component {name!r}; allowed: {', '.join(COMPONENT_NAMES)}, self_test"
            )
        else:
            changes[name] = _json_component(name, value)
    return recipe.replace(**changes)


def _json_component(name: str, value: Any) -> ComponentSource:
    where = f"recipe JSON ({name})"
    if isinstance(value, str):
        return _parse_value(name, value, "recipe JSON")
    if not isinstance(value, dict):
        raise RecipeError(f'{where}: expected an object {{"source", "subfolder", "dtype", "quantize"}} or a string')
    unknown = sorted(set(value) - {"source", *OPTIONS})
    if unknown:
        raise RecipeError(f"{where}: unknown key {unknown[0]!r}; allowed: source, {', '.join(OPTIONS)}")
    fields = {key: value.get(key) for key in ("source", *OPTIONS)}
    for key, field in fields.items():
        if field is not None and not isinstance(field, str):
            raise RecipeError(f"{where}: {key} must be a string or null, got {field!r}")
    try:
        return make_component(
            name, (fields["source"] or "").strip(), fields["subfolder"], fields["dtype"], fields["quantize"]
        )
    except RecipeError as error:
        raise RecipeError(f"{where}: {error}") from None


# ---------------------------------------------------------------------------------------------- either form


def load_recipe(text_or_path: str | Path, base: Recipe | None = None) -> Recipe:
    """A recipe from text, JSON, or a file holding either (JSON when the content starts with `{`)."""
    text = _read_if_path(text_or_path)
    if text.lstrip().startswith("{"):
        return recipe_from_json(text, base)
    return recipe_from_text(text, base)


def _read_if_path(text_or_path: str | Path) -> str:
    if isinstance(text_or_path, Path) or ("\n" not in text_or_path and _is_file(text_or_path)):
        path = Path(text_or_path).expanduser()
        try:
            return path.read_text(encoding="utf-8")
        except OSError as error:
            raise RecipeError(f"cannot read recipe file {path}: {error}") from None
    return text_or_path


def _is_file(text: str) -> bool:
    try:
        return Path(text.strip()).expanduser().is_file()
    except (OSError, ValueError):
        return False
