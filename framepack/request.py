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

# The prompt enhancer (framepack/enhancer/): its models and the bounds of its fields
DEFAULT_ENHANCER = "Qwen/Qwen3-VL-2B-Instruct"  # Apache-2.0, about 4.3 GB in bfloat16
QUALITY_ENHANCER = "Qwen/Qwen3-VL-4B-Instruct"  # about 9 GB in bfloat16
SELF_TEST_ENHANCER = "tiny"  # the random-weight self-test VLM (its text is noise)
MAX_ENHANCER_LENGTH = 1024  # a hub id is at most 96 + 1 + 96 characters; a folder path fits PATH_MAX's quarter
MAX_PROMPT_LENGTH = 20000  # the bound of `prompt`
MAX_SECTION_PROMPTS_LENGTH = 50000  # the bound of `section_prompts`
MAX_ENHANCED_PROMPTS = 1000  # one per section at most (framepack.plan.MAX_SECTIONS)
JOB_ID_LENGTH = 64  # the queue's ids are 32 hex digits; ids name files, so they are kept short and plain
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_SECTION_INDEX = 999  # framepack.plan.MAX_SECTIONS - 1
EXTEND_FIELDS = ("continue_job", "reroll_job", "reroll_section", "reroll_seed", "reroll_prompt")


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


MAX_LATENT_PADDING = 32
SINGLE_FRAME_IMAGES = ("reference_image", "init_mask", "reference_mask")  # images only single_frame uses
IMAGE_FIELDS = ("init_image", "end_image", *SINGLE_FRAME_IMAGES)  # the request's single-image fields


def parse_paddings(text: str) -> list[int]:
    """The numbers of a `latent_paddings` value ('3' or '3,2,2,1,0'; commas or spaces); [] for an empty one."""
    items = [item for item in re.split(r"[,\s]+", text.strip()) if item]
    if not all(item.isdigit() and int(item) <= MAX_LATENT_PADDING for item in items):
        raise ValueError(
            f"latent_paddings must be whole numbers from 0 to {MAX_LATENT_PADDING}, one for every section or one per "
            f"section in time order, comma-separated (e.g. '3' or '3,2,2,1,0'); got {text.strip()[:60]!r}"
        )
    return [int(item) for item in items]


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
            "middle); FramePack-Studio's '[0s-2s: walking]' / '[3s: jumping]' (snapped to section boundaries); or "
            "musubi-tuner's '0:walking;;;1-2:jumping;;;-1:waving' (section indices, -1 = last)."
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

    # Directing (issue 15): blended prompt changes, vision schedule, latent paddings, single-frame inference
    prompt_blend_sections: int = Field(
        0,
        ge=0,
        le=16,
        description=(
            "After each section prompt change the text conditioning moves linearly from the old to the new prompt "
            "over this many sections (0 = a hard cut)."
        ),
    )
    vision_schedule: Literal["constant", "linear"] = Field(
        "constant",
        description=(
            "SigLIP image conditioning over the sections: constant (the section's keyframe or start image, mixed "
            "with the end image by end_vision_weight) or linear (moving from the start or keyframe image toward the "
            "next keyframe, else the end image)."
        ),
    )
    latent_paddings: str = Field(
        "",
        max_length=6000,
        description=(
            "Bidirectional only: the latent padding of each section (how far, in windows, the section is placed after "
            "its start or key image; 0 makes that image the section's start). One number for every section, or one "
            "per section in time order, comma-separated, e.g. '3,2,2,1,0'. Empty = the original's (counting down to 0)."
        ),
    )

    single_frame: bool = Field(
        False,
        description=(
            "Render one image (PNG) instead of a video: one section that generates one latent frame at target_index "
            "from init_image and the prompt (image editing, pose changes). Bidirectional only."
        ),
    )
    target_index: int = Field(
        9,
        ge=0,
        le=64,
        description="Single frame: the time index of the generated frame; larger moves further from init_image.",
    )
    single_frame_post: bool = Field(
        True,
        description=(
            "Single frame: pass a zero clean frame right after the window (musubi-tuner's default; without it, its "
            "no_post, calls are faster but may be less stable)."
        ),
    )
    reference_image: str | None = Field(
        None,
        description=(
            "Single frame: a second control image at reference_index (kisekaeichi: the look to take over), path or "
            "base64; its alpha channel is its mask unless reference_mask is given."
        ),
    )
    reference_index: int = Field(
        10, ge=0, le=64, description="Single frame: the time index of reference_image (kisekaeichi: 10)."
    )
    init_mask: str | None = Field(
        None,
        description=(
            "Single frame: grayscale mask of init_image's latent (255 kept, 0 ignored); default its alpha channel, "
            "if it has one."
        ),
    )
    reference_mask: str | None = Field(
        None, description="Single frame: grayscale mask of reference_image's latent (255 kept, 0 ignored)."
    )

    @field_validator("latent_paddings")
    @classmethod
    def _check_latent_paddings(cls, value: str) -> str:
        parse_paddings(value)
        return value

    @model_validator(mode="after")
    def _check_directing(self) -> GenerateRequest:
        if self.latent_paddings.strip() and self.variant != "bidirectional":
            raise ValueError(
                "latent_paddings works only with variant 'bidirectional' (F1 has no padding: its history lies "
                "before the section); leave it empty"
            )
        if not self.single_frame:
            given = [name for name in SINGLE_FRAME_IMAGES if getattr(self, name)]
            if given:
                raise ValueError(f"{given[0]} is used only with single_frame; turn single_frame on or leave it out")
            return self
        conflicts = {
            "init_image": not self.init_image and "single_frame needs init_image (the image it edits)",
            "variant": self.variant != "bidirectional" and "single_frame works with variant 'bidirectional' only",
            "end_image": bool(self.end_image) and "end_image does not apply to single_frame; leave it out",
            "keyframes": bool(self.keyframes) and "keyframes do not apply to single_frame; leave them out",
            "interpolate": self.interpolate > 0 and "interpolate does not apply to single_frame (one image); use 0",
            "latent_paddings": bool(self.latent_paddings.strip())
            and "latent_paddings does not apply to single_frame (target_index places the frame); leave it empty",
            "save_raw": self.save_raw and "save_raw does not apply to single_frame (it writes one PNG); turn it off",
            "save_frames": self.save_frames != "none"
            and "save_frames does not apply to single_frame (it writes one PNG); use 'none'",
            "reference_mask": bool(self.reference_mask and not self.reference_image)
            and "reference_mask needs reference_image",
        }
        problem = next((message for message in conflicts.values() if message), None)
        if problem:
            raise ValueError(problem)
        return self

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

    # Seamless loop (issue 16; framepack.plan.add_loop_sections)
    loop: bool = Field(
        False,
        description=(
            "Seamless loop: after the video, one connecting section (4 x latent_window_size frames more) is generated "
            "from the video's last latent frame (before it) toward its start frame and first sections (after it), so "
            "the file's last frame leads into its first when played on repeat. Not with single_frame."
        ),
    )

    @model_validator(mode="after")
    def _check_loop(self) -> GenerateRequest:
        if self.loop and self.single_frame:
            raise ValueError("loop does not apply to single_frame (it renders one image); turn loop off")
        return self

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
    compile: Literal["none", "blocks"] = Field(
        "none",
        description=(
            "torch.compile the transformer's repeated blocks: none, or blocks (compiled on the first job, minutes "
            "on a CPU, then reused while the model stays loaded; needs Triton on a GPU, a C++ compiler on a CPU)."
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

    # Prompt enhancer (framepack/enhancer/): a vision-language model rewrites each section's prompt
    enhance: Literal["off", "on", "require"] = Field(
        "off",
        description=(
            "Rewrite each section prompt (prompt + its section line) with a vision-language model that sees the "
            "start image (or the section's keyframe): off, on (a missing model keeps the original prompts, with a "
            "warning) or require (a missing model refuses the job). Prompts listed in enhanced_prompts are used as "
            "they are, whatever this says."
        ),
    )
    enhancer: str = Field(
        DEFAULT_ENHANCER,
        max_length=MAX_ENHANCER_LENGTH,
        description=(
            f"The enhancer: a hub repo id ({DEFAULT_ENHANCER}; {QUALITY_ENHANCER} for quality), a local folder of "
            f"an image-text-to-text model, or '{SELF_TEST_ENHANCER}' (random-weight SELF-TEST model: its text is "
            "noise)."
        ),
    )
    enhance_instructions: str = Field(
        "",
        max_length=8000,
        description="The enhancer's instructions (system prompt); empty = the built-in one.",
    )
    enhance_seed: int = Field(
        -1, ge=-1, le=2**63 - 1, description="Seed of the enhancer's sampling; -1 = the video's seed."
    )
    enhance_max_tokens: int = Field(
        300, ge=16, le=1024, description="Most tokens the enhancer writes per prompt (about 0.75 words each)."
    )
    enhance_quantize: Literal["none", "int8", "float8", "int4"] = Field(
        "none",
        description="Weight quantization of the enhancer's language model (optimum-quanto); its vision tower stays "
        "in float.",
    )
    enhanced_prompts: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "The text encoded for each section prompt (the plan's prompt of a section -> its enhanced text). The "
            "enhance stage fills it and the record keeps it, so a record replays without the enhancer; a prompt "
            "listed here is never enhanced again. Editable in the tab."
        ),
    )

    # Extend (issue 16): keep a finished job's latents, continue it, re-roll one of its sections
    keep_latents: bool = Field(
        True,
        description=(
            "Keep the finished job's latents (start frame and every section) and its random stream's state with the "
            "job, so it can be continued (continue_job) or a section re-rolled (reroll_job); deleting the job removes "
            "them. A minute at 640 keeps about 88 MB with the published model."
        ),
    )
    continue_job: str | None = Field(
        None,
        max_length=JOB_ID_LENGTH,
        description=(
            "Continue this finished job (its id) from its kept latents, without decoding its video: duration is the "
            "length ADDED; prompt, section_prompts and settings that do not change the kept latents may be given, "
            "everything else is the job's. F1: the same frames one longer job with the job's seed makes "
            "(bidirectional jobs: planned, not run yet)."
        ),
    )
    reroll_job: str | None = Field(
        None,
        max_length=JOB_ID_LENGTH,
        description=(
            "Re-roll one section of this finished job (its id): reroll_section and the sections that depend on it are "
            "sampled again, the others come from its kept latents. The result is a new job that names its parent."
        ),
    )
    reroll_section: int | None = Field(
        None,
        ge=0,
        le=MAX_SECTION_INDEX,
        description=(
            "The section to re-roll (time order, 0 = first). F1 samples it and every later section again; "
            "bidirectional samples it and every earlier one again (those are generated after it)."
        ),
    )
    reroll_seed: int = Field(
        -1,
        ge=-1,
        le=2**63 - 1,
        description="Seed of the re-rolled sections' noise (a new stream from reroll_section on); -1 picks one.",
    )
    reroll_prompt: str = Field(
        "",
        max_length=MAX_SECTION_PROMPTS_LENGTH,
        description=(
            "A new section_prompts line for the re-rolled section (joined to prompt like any line); empty keeps its "
            "line. A keyframe for it goes in keyframes."
        ),
    )

    @field_validator("continue_job", "reroll_job")
    @classmethod
    def _check_job_id(cls, value: str | None) -> str | None:
        if value is not None and not JOB_ID_PATTERN.match(value):
            raise ValueError("must be a job id: letters, digits, '-' or '_' (the id the queue gave the job)")
        return value

    @model_validator(mode="after")
    def _check_extend(self) -> GenerateRequest:
        rerolling = self.reroll_job is not None
        problems = {
            "continue_job": bool(self.continue_job and rerolling)
            and "continue_job and reroll_job: give one of them, not both",
            "reroll_section": (rerolling != (self.reroll_section is not None))
            and (
                "reroll_section: give the section to re-roll with reroll_job"
                if rerolling
                else "reroll_section is used only with reroll_job"
            ),
            "reroll_seed": not rerolling and self.reroll_seed != -1 and "reroll_seed is used only with reroll_job",
            "reroll_prompt": not rerolling
            and bool(self.reroll_prompt)
            and "reroll_prompt is used only with reroll_job",
            "single_frame": self.single_frame
            and bool(self.continue_job or rerolling)
            and "single_frame images cannot be continued or re-rolled; leave continue_job and reroll_job out",
        }
        problem = next((message for message in problems.values() if message), None)
        if problem:
            raise ValueError(problem)
        return self

    @field_validator("enhancer")
    @classmethod
    def _check_enhancer(cls, value: str) -> str:
        if not value.strip() or value != value.strip() or not value.isprintable():
            raise ValueError("must be a hub repo id, a folder or 'tiny': printable, no surrounding spaces")
        return value

    @field_validator("enhanced_prompts")
    @classmethod
    def _check_enhanced_prompts(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_ENHANCED_PROMPTS:
            raise ValueError(f"at most {MAX_ENHANCED_PROMPTS} entries (one per section prompt)")
        longest_key = MAX_PROMPT_LENGTH + MAX_SECTION_PROMPTS_LENGTH + 2  # prompt, separator, section line
        for prompt, text in value.items():
            if len(prompt) > longest_key:
                raise ValueError(f"a section prompt has at most {longest_key} characters")
            if not text.strip():
                raise ValueError("an enhanced text must not be empty (leave its prompt out instead)")
            if len(text) > MAX_PROMPT_LENGTH:
                raise ValueError(f"an enhanced text has at most {MAX_PROMPT_LENGTH} characters")
        return value

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
