"""The one request model: every input of a generation, its default, bounds and help.

The CLI builds its flags from these fields, the REST API uses the model as its schema and the UI builds its
controls from it, so a default exists here and nowhere else.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from framepack.outputs import MAX_NAME_BYTES, MAX_STEM_BYTES, TEMPORARY_MARK, Container

Variant = Literal["bidirectional", "f1"]
Sampler = Literal["unipc", "euler"]
Offload = Literal["none", "model", "balanced", "blocks"]
Attention = Literal["sdpa", "flash", "flash3", "sage", "xformers"]
Cache = Literal["none", "teacache", "magcache", "fbc"]
BuiltinModel = Literal["default", "tiny"]  # any other `model` value is the path of a recipe file
BUILTIN_MODELS: tuple[str, ...] = typing.get_args(BuiltinModel)
PUBLISHED_MODEL: BuiltinModel = "default"  # the published FramePack weights of the request's variant
SELF_TEST_MODEL: BuiltinModel = "tiny"  # the random-weight self-test model (its videos are noise)

ASPECT_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:x/]\s*(\d+(?:\.\d+)?)\s*$")

MAX_DURATION_S = 600.0
MAX_KEYFRAMES = 64
PATH_CHECK_LENGTH = 4096  # longer strings cannot be file paths (PATH_MAX): image values this long are base64
FILENAME_FORBIDDEN = '/\\<>:"|?*'  # folders, and what Windows refuses in names (":" would name an NTFS stream)


def field_kind(annotation: typing.Any) -> tuple[type, tuple | None]:
    """(base type, Literal choices or None) of a request field annotation: a Literal gives the type of its first
    choice and its choices, an optional type (`X | None`) gives X's kind, anything else itself and None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), choices
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return field_kind(inner[0])
    return annotation, None


def filename_problem(stem: str) -> str | None:
    """What is wrong with `stem` as an output file stem (a phrase after "filename"), or None when it is fine."""
    if not stem.strip():
        return "must not be empty"
    if not stem.isprintable():
        return "must be printable: no control characters, line breaks or tabs"
    if stem != stem.strip():
        return "must not start or end with a space"
    if stem.startswith("."):
        return "must not start with '.' (hidden names are not served and are used for temporary files)"
    if TEMPORARY_MARK in stem.lower():
        return f"must not contain {TEMPORARY_MARK!r} (the temporary-file mark)"
    forbidden = sorted({char for char in stem if char in FILENAME_FORBIDDEN})
    if forbidden:
        return f"must be a plain file stem: none of {' '.join(FILENAME_FORBIDDEN)} (found {' '.join(forbidden)})"
    size = len(stem.encode("utf-8"))
    if size > MAX_STEM_BYTES:
        return (
            f"is {size} bytes of UTF-8; at most {MAX_STEM_BYTES} (its longest output name, the temporary "
            f"'.<filename>{TEMPORARY_MARK}.safetensors', must fit in {MAX_NAME_BYTES} bytes)"
        )
    return None


class GenerateRequest(BaseModel):
    """Inputs of one FramePack video generation. Mode follows from the images: none = T2V, init = I2V,
    init + end = FLF2V."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Prompts
    prompt: str = Field("", max_length=20000, description="What the video shows.")
    negative_prompt: str = Field(
        "", max_length=20000, description="What to avoid; used only when cfg_scale > 1 (doubles model calls)."
    )
    section_prompts: str = Field(
        "",
        max_length=50000,
        description=(
            "One prompt suffix per line, added to the prompt for each section in time order. Fewer lines than "
            "sections stretch evenly; more lines are sampled evenly (unused lines are reported). Lines may be "
            "timestamped instead: '[0s] walking' / '[2.5s] jumping' (each section takes the line active at its "
            "middle)."
        ),
    )

    # Images
    init_image: str | None = Field(
        None, description="Start frame: file path or base64 (optionally a data: URL). None = text-to-video."
    )
    end_image: str | None = Field(
        None, description="End frame (bidirectional only): file path or base64. Needs init_image (FLF2V)."
    )
    keyframes: dict[int, str] = Field(
        default_factory=dict,
        description=(
            "Per-section keyframe images {section index in time order: path or base64}. A keyframe conditions "
            "its section and the following ones until the next keyframe."
        ),
    )

    # Strengths
    init_strength: float = Field(
        1.0, ge=0.0, le=1.0, description="Weight of the start image against noise (1 = exact image, like img2img)."
    )
    end_strength: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Weight of the end frame against the start frame in the last section's context.",
    )
    vision_strength: float = Field(1.0, ge=0.0, le=2.0, description="Scale of the SigLIP image conditioning.")
    end_vision_weight: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Share of the end image in the SigLIP conditioning (weighted mean with the start image).",
    )

    # Video shape
    variant: Variant = Field("bidirectional", description="bidirectional (inverted anti-drifting) or f1 (forward).")
    resolution: int = Field(640, ge=128, le=1536, description="Bucket scale in pixels; 640 is the trained size.")
    aspect_ratio: str = Field(
        "auto",
        description="'auto' (the init image's, 1:1 without one) or W:H such as 16:9; the nearest bucket is used.",
    )
    duration: float = Field(5.0, gt=0.0, le=MAX_DURATION_S, description="Video length in seconds.")
    fps: int = Field(30, ge=1, le=120, description="Frames per second of the output video.")
    interpolate: int = Field(
        0, ge=0, le=10, description="Frames interpolated between generated pairs; fps and duration stay the same."
    )
    latent_window_size: int = Field(
        9, ge=1, le=33, description="Latent frames per section (the model is trained on 9)."
    )

    # Sampling
    sampler: Sampler = Field("unipc", description="unipc (flow-matching UniPC bh1, the original) or euler.")
    steps: int = Field(25, ge=1, le=100, description="Denoising steps per section.")
    guidance: float = Field(10.0, ge=0.0, le=32.0, description="Distilled guidance scale (fed to the model x1000).")
    cfg_scale: float = Field(
        1.0, ge=1.0, le=32.0, description="Real classifier-free guidance; > 1 doubles model calls."
    )
    cfg_rescale: float = Field(0.0, ge=0.0, le=1.0, description="Rescale of the CFG result towards the positive std.")
    shift: float = Field(0.0, ge=0.0, le=100.0, description="Sigma shift; 0 = automatic from the sequence length.")
    seed: int = Field(31337, ge=-1, le=2**63 - 1, description="Random seed; -1 picks one (recorded in the plan).")

    # Output
    codec: str = Field("libx264", description="Video encoder (PyAV/FFmpeg name); 'none' writes no video.")
    container: Container = Field("mp4", description="Video container.")
    codec_options: str = Field("crf:16", description="Encoder options, e.g. 'crf:16' or 'crf=16,preset=slow'.")
    save_raw: bool = Field(
        False, description="Also save the frames as raw safetensors (uint8 [T, H, W, 3]) for encode-video.py."
    )
    save_frames: Literal["none", "png", "jpeg"] = Field("none", description="Also save every frame as an image.")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of saved frames.")
    interpolation: Literal["auto", "rife", "flow"] = Field(
        "auto",
        description="Interpolation method: rife (needs its weights), flow (optical flow), auto (rife if present).",
    )
    output_dir: str | None = Field(None, description="Folder for outputs; default is the host's video folder.")
    filename: str | None = Field(
        None,
        max_length=MAX_STEM_BYTES,  # characters, a bound the tab's textbox keeps; the validator counts UTF-8 bytes
        description=(
            f"Output file stem; default is the job id (CLI: time + seed). Printable, no leading '.', no "
            f"'{TEMPORARY_MARK}', none of {FILENAME_FORBIDDEN}, at most {MAX_STEM_BYTES} bytes of UTF-8 (so every "
            f"output and temporary name stays within {MAX_NAME_BYTES} bytes). Taken names are refused (409)."
        ),
    )
    preview: bool = Field(True, description="Decode a preview image of each finished section.")

    # Performance
    offload: Offload = Field(
        "balanced",
        description=(
            "Where the models live between uses: none (all on the GPU), model (one component on the GPU at a time), "
            "balanced (as many as fit on the GPU, keeping preserved_memory_gb free; the host's in SD.Next), "
            "blocks (the transformer streamed block by block, about 6 GB of VRAM). Ignored on a CPU."
        ),
    )
    preserved_memory_gb: float = Field(
        6.0, ge=0.0, le=256.0, description="GPU memory in GB kept free for activations by balanced offload."
    )
    attention: Attention = Field(
        "sdpa",
        description="Attention kernel: sdpa (PyTorch, always there), flash, flash3, sage or xformers (when installed).",
    )
    cache: Cache = Field(
        "teacache",
        description=(
            "Skip transformer calls whose result barely changes: teacache (the original's), magcache, fbc "
            "(diffusers' first-block cache) or none (exact; best for final renders)."
        ),
    )
    cache_threshold: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description=(
            "Cache threshold; higher skips more. 0 = the method's default (teacache 0.15, magcache 0.06, fbc 0.05)."
        ),
    )

    # VAE decode: spatial tiling and tile sizes (framepack/video/vae_tiles.py)
    vae_tiling: Literal["auto", "on", "off"] = Field(
        "auto",
        description=(
            "Decode in spatial tiles to fit in less memory (frames then differ slightly): auto (tile when the untiled "
            "decode's estimated peak exceeds 80% of the free device memory; a decode that runs out of memory is "
            "retried once tiled), on, off."
        ),
    )
    vae_tile_size: int = Field(
        256, ge=64, le=1536, multiple_of=8, description="Spatial tile edge in pixels (multiple of 8) when tiling."
    )
    vae_tile_overlap: int = Field(
        64,
        ge=0,
        le=768,
        multiple_of=8,
        description="Pixels neighbouring spatial tiles share and cross-fade (multiple of 8, at most half the tile).",
    )
    vae_tile_frames: int = Field(
        16,
        ge=4,
        le=64,
        multiple_of=4,
        description=(
            "Temporal tile in pixel frames (multiple of 4): the decode always works in temporal tiles; memory grows "
            "with it. 16 is diffusers' default."
        ),
    )
    vae_tile_frames_overlap: int = Field(
        4,
        ge=0,
        le=32,
        multiple_of=4,
        description="Pixel frames neighbouring temporal tiles cross-fade (multiple of 4, at most half the tile).",
    )

    @field_validator("vae_tile_overlap", "vae_tile_frames_overlap")
    @classmethod
    def _check_tile_overlap(cls, value: int, info: ValidationInfo) -> int:
        tile_field = "vae_tile_size" if info.field_name == "vae_tile_overlap" else "vae_tile_frames"
        tile = info.data.get(tile_field)
        if tile is not None and value * 2 > tile:
            raise ValueError(f"{value} exceeds half of {tile_field} ({tile})")
        return value

    # Model
    model: str = Field(
        PUBLISHED_MODEL,
        description=f"'{PUBLISHED_MODEL}' (the published FramePack weights), '{SELF_TEST_MODEL}' (random-weight "
        "SELF-TEST model: noise) or a path to a recipe file. Left out: the face's default model ($FRAMEPACK_MODEL, "
        f"serve --model, SD.Next's FramePack setting), else '{PUBLISHED_MODEL}'.",
    )

    @field_validator("aspect_ratio")
    @classmethod
    def _check_aspect(cls, value: str) -> str:
        if value != "auto":
            match = ASPECT_PATTERN.match(value)
            if not match or float(match.group(1)) <= 0 or float(match.group(2)) <= 0:
                raise ValueError("aspect_ratio must be 'auto' or W:H with positive numbers, e.g. 16:9")
        return value

    @field_validator("keyframes")
    @classmethod
    def _check_keyframes(cls, value: dict[int, str]) -> dict[int, str]:
        if len(value) > MAX_KEYFRAMES:
            raise ValueError(f"keyframes: at most {MAX_KEYFRAMES} keyframes")
        for index in value:
            if index < 0:
                raise ValueError(f"keyframes: section index {index} must be >= 0")
        return value

    @field_validator("filename")
    @classmethod
    def _check_filename(cls, value: str | None) -> str | None:
        if value is not None:
            problem = filename_problem(value)
            if problem:
                raise ValueError(f"filename {problem}")
        return value

    @model_validator(mode="after")
    def _check_images(self) -> GenerateRequest:
        if self.end_image and not self.init_image:
            raise ValueError("end_image needs init_image (FLF2V); for text-to-video leave both empty")
        if self.codec == "none" and not self.save_raw and self.save_frames == "none":
            raise ValueError("codec is 'none' and save_raw/save_frames are off: nothing would be saved")
        if self.end_image and self.variant != "bidirectional":
            raise ValueError("end_image works only with variant 'bidirectional' (F1 generates forward)")
        return self

    @property
    def mode(self) -> Literal["t2v", "i2v", "flf2v"]:
        if not self.init_image:
            return "t2v"
        return "flf2v" if self.end_image else "i2v"

    def aspect(self) -> tuple[float, float] | None:
        """(width, height) of an explicit aspect ratio, None for 'auto'."""
        match = ASPECT_PATTERN.match(self.aspect_ratio)
        return (float(match.group(1)), float(match.group(2))) if match else None
