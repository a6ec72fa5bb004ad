"""One generation: conditioning, the section loop, streaming decode into the sinks.

The loop samples sections in the plan's generation order (end first for bi-directional, start first for F1)
and keeps only latents, which are small. A window decoder turns them into pixels in time order as soon as each
overlap window's latents exist: during sampling for F1, after the last section for bi-directional. Pixels are
never held beyond one window, so host RAM and VRAM stay flat as the video grows.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from framepack.directing import END_IMAGE
from framepack.encoders import PromptEmbeds, blend_prompt_embeds, encode_prompt, encode_vision, vae_encode
from framepack.enhancer.prompts import encoded_prompt
from framepack.events import (
    CancelToken,
    EventCallback,
    FramesWritten,
    SectionFinished,
    StageStarted,
    StepProgress,
    ignore_events,
)
from framepack.images import alpha_mask, fit_to_bucket, latent_mask, load_image, load_mask, to_tensor, to_uint8
from framepack.models.components import Components
from framepack.plan import VAE_TEMPORAL, Plan, SectionPlan
from framepack.request import GenerateRequest
from framepack.sampling.context import (
    HISTORY_FRAMES,
    SectionContext,
    bidirectional_context,
    forward_context,
    loop_context,
    single_frame_context,
)
from framepack.sampling.denoise import Conditioning, make_velocity_fn
from framepack.sampling.samplers import get_sampler
from framepack.sampling.schedule import flow_sigmas, sequence_length
from framepack.video.decode import OverlapJoiner, overlap_frames
from framepack.video.sink import FrameSink, abort_sinks, close_sinks
from framepack.video.source import HoldBack, encode_frames, frames_tensor, read_frames
from framepack.video.vae_tiles import TileSettings, VaeDecoder

if TYPE_CHECKING:
    from framepack.models.caches import TransformerCache

logger = logging.getLogger(__name__)

START = "start"  # key of the start-frame latent among the section latents
STREAM = "stream"  # key of a parent job's random-stream state among restored latents (a continuation)
SOURCE = "source"  # key of `source_latents` given among restored latents (a queued bidirectional continuation)
LatentKey = str | int
LatentCallback = Callable[[LatentKey, torch.Tensor], None]  # (START or section index, the section's latents)
KEPT_DTYPES = (torch.float16, torch.bfloat16)  # 16-bit transformer dtypes the section latents are rounded to


@dataclass
class ImageConditioning:
    """Latents and SigLIP embeddings of the request's images (start latent already strength-mixed)."""

    start_latent: torch.Tensor | None  # None for T2V until the start-frame pass made it
    end_latent: torch.Tensor | None
    keyframe_latents: dict[int, torch.Tensor]
    start_vision: torch.Tensor | None
    end_vision: torch.Tensor | None
    keyframe_vision: dict[int, torch.Tensor]
    source_context: torch.Tensor | None = None  # F1 continuing a source: its last latent frames, the first history


@dataclass
class KeptLatents:
    """What a finished job keeps to be continued or re-rolled (`keep_latents`): the start-frame latent (float32) and
    every section's latents in the dtype they were rounded to, by START or section index, and the state of the
    job's random stream after its last section."""

    latents: dict[LatentKey, torch.Tensor]
    stream_state: torch.Tensor  # torch.Generator.get_state(): uint8


@dataclass
class GenerationResult:
    plan: Plan
    outputs: list[str]
    frames: int
    timings: dict[str, float] = field(default_factory=dict)
    mag_ratios: list[float] | None = None  # set by a MagCache calibration run
    kept: KeptLatents | None = None  # with keep_latents (not for a single frame)


def kept_dtype(transformer_dtype: torch.dtype) -> torch.dtype:
    """The dtype section latents are rounded to as they are sampled, and kept in: the transformer's when it is a
    16-bit float (it reads the history in that dtype anyway), else float32. Rounding every job's latents, kept or
    not, makes a continuation or re-roll decode exactly the frames of the job it continues: the kept latents are the
    very latents the job used (a minute at 640 is then under 100 MB, see `framepack.kept_latents`)."""
    return transformer_dtype if transformer_dtype in KEPT_DTYPES else torch.float32


def window_keys(variant: str, index: int, sections: int) -> list[LatentKey]:
    """Latents decoded together for the time-ordered window `index` (the section plus its generated
    neighbour), exactly as the original and diffusers decode them, so the overlap blend matches."""
    if variant == "bidirectional":
        keys: list[LatentKey] = [START] if index == 0 else []
        keys.append(index)
        if index + 1 < sections:
            keys.append(index + 1)
        return keys
    return [START, 0] if index == 0 else [index - 1, index]


def latent_start(key: LatentKey, window: int) -> int:
    """Index of a key's first latent frame in the job's latent sequence in time order: the start frame (one latent
    frame), then every section's `window` frames."""
    return 0 if key == START else 1 + int(key) * window


def tile_settings(request: GenerateRequest) -> TileSettings:
    return TileSettings(
        request.vae_tile_size, request.vae_tile_overlap, request.vae_tile_frames, request.vae_tile_frames_overlap
    )


@dataclass
class DecodedWindow:
    """The window the decoder handed to the joiner last: its index in time order and decode time."""

    index: int
    seconds: float
    tiled: bool


class WindowDecoder:
    """Decodes windows in time order as soon as their latents exist and feeds the overlap joiner. A cancel is
    honoured before each window, so a job cancelled while it decodes (all of a bi-directional video's decode comes
    after its last section) stops within one window. Each window is decoded exactly as `vae.decode` decodes it, and
    the temporal tiles it shares with the window before are reused (`VaeDecoder.window`)."""

    def __init__(self, vae: VaeDecoder, plan: Plan, joiner: OverlapJoiner, cancel: CancelToken):
        self.vae, self.plan, self.joiner, self.cancel = vae, plan, joiner, cancel
        self.next_window = 0
        self.last: DecodedWindow | None = None
        # keep_source: the source's last latent frames, decoded in the first window in place of the start frame (the
        # source's last) so that the window's first frames are the source frames the joiner cross-fades into
        self.source_tail: torch.Tensor | None = None

    def pump(self, latents: dict[LatentKey, torch.Tensor]) -> None:
        window_size = self.plan.latent_window_size
        while self.next_window < self.plan.num_sections:
            keys = window_keys(self.plan.variant, self.next_window, self.plan.num_sections)
            if not all(key in latents for key in keys):
                return
            self.cancel.check()
            clock = time.perf_counter()
            parts, start = [latents[key] for key in keys], latent_start(keys[0], window_size)
            if self.next_window == 0 and self.source_tail is not None:  # keys[0] is START, the source's last frame
                parts, start = [self.source_tail, *parts[1:]], 1 - self.source_tail.shape[2]
            window = torch.cat(parts, dim=2)
            # the next window starts with this one's last key: the tiles from there on may be decoded again there
            pixels = self.vae.window(window, start, latent_start(keys[-1], window_size))
            self.last = DecodedWindow(self.next_window, time.perf_counter() - clock, self.vae.tiled)
            self.joiner.add(pixels)
            self.next_window += 1


def encode_prompts(
    components: Components, plan: Plan, request: GenerateRequest
) -> tuple[dict[str, PromptEmbeds], PromptEmbeds | None]:
    """Each unique section prompt is encoded once (its enhanced text when the request has one, see
    `framepack.enhancer`); the negative only when real CFG is on."""
    device, dtype = components.device, components.transformer.dtype
    unique = dict.fromkeys(section.prompt for section in plan.sections)
    prompts = {text: encode_prompt(components, encoded_prompt(request, text), device, dtype) for text in unique}
    negative = encode_prompt(components, request.negative_prompt, device, dtype) if request.cfg_scale > 1 else None
    return prompts, negative


def encode_images(
    components: Components, plan: Plan, request: GenerateRequest, generator: torch.Generator
) -> ImageConditioning:
    """VAE latents (sampled with the job generator: start, end, keyframes in section order) and SigLIP."""
    dtype = components.transformer.dtype

    def prepare(source: str, field_name: str) -> torch.Tensor:
        pixels = fit_to_bucket(load_image(source, field_name), plan.width, plan.height)
        return to_tensor(pixels)

    start = end = start_vision = end_vision = None
    if request.init_image:
        start_pixels = prepare(request.init_image, "init_image")
        start = vae_encode(components, start_pixels, generator)
        start_vision = encode_vision(components, start_pixels, dtype)
    if request.end_image:
        end_pixels = prepare(request.end_image, "end_image")
        end = vae_encode(components, end_pixels, generator)
        end_vision = encode_vision(components, end_pixels, dtype)
    keyframe_latents, keyframe_vision = {}, {}
    for index in sorted(request.keyframes):
        pixels = prepare(request.keyframes[index], f"keyframes.{index}")
        keyframe_latents[index] = vae_encode(components, pixels, generator)
        keyframe_vision[index] = encode_vision(components, pixels, dtype)
    if start is not None and request.init_strength < 1.0:
        noise = randn_tensor(start.shape, generator=generator, device=start.device, dtype=start.dtype)
        start = request.init_strength * start + (1.0 - request.init_strength) * noise
    return ImageConditioning(start, end, keyframe_latents, start_vision, end_vision, keyframe_vision)


def section_vision(images: ImageConditioning, section: SectionPlan, request: GenerateRequest) -> torch.Tensor:
    """SigLIP conditioning of a section: its keyframe's (else the start image's), moved toward the image the plan
    names (`vision_toward`: the end image or a later keyframe) by its share, scaled by the vision strength."""
    vision = images.keyframe_vision[section.keyframe] if section.keyframe is not None else images.start_vision
    toward, weight = section.vision_toward, section.vision_weight
    if request.vision_schedule == "constant":  # as today, also for plans stored before they named the target
        toward = END_IMAGE if section.keyframe is None and images.end_vision is not None else None
        weight = request.end_vision_weight
    if toward is not None:
        target = images.end_vision if toward == END_IMAGE else images.keyframe_vision[int(toward.split(".")[1])]
        vision = (1.0 - weight) * vision + weight * target
    return vision * request.vision_strength


def section_prompt(prompts: dict[str, PromptEmbeds], section: SectionPlan) -> PromptEmbeds:
    """The text conditioning of a section: its prompt's, blended with an earlier one as the plan says."""
    if section.blend_from is None:
        return prompts[section.prompt]
    return blend_prompt_embeds(prompts[section.blend_from], prompts[section.prompt], section.blend_weight)


def end_context(images: ImageConditioning, request: GenerateRequest) -> torch.Tensor:
    """FLF2V: the clean frame after the first generated section, weighted against the start frame."""
    weight = request.end_strength
    return weight * images.end_latent + (1.0 - weight) * images.start_latent


def zero_vision(components: Components) -> torch.Tensor:
    """SigLIP-shaped zeros: the vision conditioning of the T2V start-frame pass, which has no image."""
    config = components.image_encoder.config
    tokens = (config.image_size // config.patch_size) ** 2
    return torch.zeros(1, tokens, config.hidden_size, dtype=components.transformer.dtype, device=components.device)


class SectionSampler:
    """Samples section windows with the chosen sampler and reports step progress."""

    def __init__(
        self,
        components: Components,
        plan: Plan,
        request: GenerateRequest,
        on_event: EventCallback,
        cancel: CancelToken,
        cache: TransformerCache | None = None,
    ):
        self.components, self.plan, self.request = components, plan, request
        self.on_event, self.cancel = on_event, cancel
        self.cache = cache
        self.sample = get_sampler(plan.sampler)
        scale = components.spatial_scale
        self.latent_height, self.latent_width = plan.height // scale, plan.width // scale
        self.total_steps = plan.total_steps
        self.done_steps = 0
        self.started = time.perf_counter()

    def noise(self, frames: int, generator: torch.Generator) -> torch.Tensor:
        shape = (1, self.components.latent_channels, frames, self.latent_height, self.latent_width)
        return randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)

    def skip(self) -> None:
        """Count a section restored from a checkpoint as done."""
        self.done_steps += self.plan.steps

    def run(
        self,
        noise: torch.Tensor,
        context: SectionContext,
        positive: Conditioning,
        negative: Conditioning | None,
        section: int,
        order: int,
        source: torch.Tensor | None = None,
        strength: float = 0.0,
    ) -> torch.Tensor:
        """Denoise `noise` (with `source` and `strength` > 0, video-to-video: the source re-noised to sigma
        1 - strength, x = (1 - sigma) * source + sigma * noise, denoised in the same number of steps from there; at
        strength 0 exactly the pure-noise run)."""
        request, device = self.request, self.components.device
        velocity = make_velocity_fn(
            self.components.transformer, context, positive, negative, request.guidance, request.cfg_scale,
            request.cfg_rescale, device, self.cache,
        )  # fmt: skip
        seq_len = sequence_length(noise.shape[2], self.latent_height, self.latent_width)
        start = 1.0 - strength if source is not None else 1.0
        shift = request.shift if request.shift > 0 else None
        sigmas = flow_sigmas(self.plan.steps, shift, seq_len, start).to(device)
        if start < 1.0:
            sigma = float(sigmas[0])
            noise = (1.0 - sigma) * source + sigma * noise

        def on_step(step: int, steps: int, _x: torch.Tensor, _x0: torch.Tensor) -> None:
            self.done_steps += 1
            elapsed = time.perf_counter() - self.started
            eta = elapsed / max(1, self.done_steps) * (self.total_steps - self.done_steps)
            self.on_event(
                StepProgress(section, order, step + 1, steps, self.done_steps, self.total_steps, elapsed, eta)
            )
            self.cancel.check()

        self.cancel.check()
        if self.cache is not None:
            self.cache.start_section()  # a section never reuses another section's cached residuals
        return self.sample(velocity, noise.to(device), sigmas, callback=on_step).float().cpu()

    def section_calls(self) -> tuple[int, int]:
        """(transformer calls, calls the cache skipped) of the last sampled section."""
        if self.cache is None:
            return 0, 0
        return self.cache.section_stats.calls, self.cache.section_stats.skipped


@dataclass
class EncodedInputs:
    """The job's prompts and images, encoded once before the sections."""

    prompts: dict[str, PromptEmbeds]  # by section prompt text
    negative: PromptEmbeds | None  # only with real CFG
    images: ImageConditioning


@dataclass
class LoopState:
    """What the loop has produced so far."""

    latents: dict[LatentKey, torch.Tensor] = field(default_factory=dict)  # START and finished sections
    written: int = 0  # frames handed to the sinks
    decode_seconds: float = 0.0  # decoding windows between sections
    sampling_seconds: float = 0.0  # sampled (not restored) sections and start frame, previews included
    sampled_steps: int = 0  # their denoising steps


class SectionLoop:
    """One generation: encode the conditioning, sample the T2V start frame when there is no init image, then every
    section in the plan's generation order, decoding windows into the sinks as soon as their latents exist.

    The two variants share this loop; they differ in data: the generation order and paddings (the plan), the side
    of the section its history lies on (`history_context`) and the latents a window decodes (`window_keys`).

    A source video (the plan's `source`: init_video encoded, or `source_latents`) changes data too. Continuing it
    (extend), its last latent frame is the start frame (START) the new video begins on; F1 sees its last
    `context_frames` latent frames as the history before the first section and its first frame as the prefix (the
    anchor every F1 section sees, as in a job that had generated the source itself), bidirectional its last frame as
    the prefix (the frame right before the video, where the model expects the start). keep_source writes the source's
    frames first and decodes the first window from its last latent frames. Re-rendering it (v2v), the start frame and
    each section start from their part of the source re-noised (`SectionSampler.run`).
    """

    def __init__(
        self,
        components: Components,
        request: GenerateRequest,
        plan: Plan,
        sinks: list[FrameSink],
        on_event: EventCallback,
        cancel: CancelToken,
        restored: dict[LatentKey, torch.Tensor],
        on_section_latents: LatentCallback | None,
        cache: TransformerCache | None,
        source_latents: torch.Tensor | None = None,
    ):
        self.components, self.request, self.plan, self.sinks = components, request, plan, sinks
        self.on_event, self.cancel, self.cache = on_event, cancel, cache
        self.restored, self.on_section_latents = restored, on_section_latents
        self.source = source_latents  # the source video's latents in time order (init_video's once encoded)
        self.source_held: np.ndarray | None = None  # keep_source: the source's last frames, for the first window
        v2v = plan.source is not None and plan.source.kind == "v2v"
        self.strength = plan.source.strength if v2v else None  # video-to-video's video_strength
        self.timings: dict[str, float] = {}
        self.state = LoopState()
        self.generator = torch.Generator("cpu").manual_seed(plan.seed)  # the job's one random stream
        self.kept_dtype = kept_dtype(components.transformer.dtype)
        self.joiner = OverlapJoiner(overlap_frames(plan.latent_window_size, components.temporal_scale), self.write)
        self.vae = VaeDecoder(
            components.vae, components.device, request.vae_tiling, tile_settings(request), plan.height, plan.width
        )
        self.decoder = WindowDecoder(self.vae, plan, self.joiner, cancel)

    def run(self) -> GenerationResult:
        inputs = self.encode()
        sampler = SectionSampler(self.components, self.plan, self.request, self.on_event, self.cancel, self.cache)
        if self.plan.single_frame is not None:
            return self.single_frame(inputs, sampler)
        if self.plan.source is not None and self.plan.source.kind == "extend":
            self.start_from_source(inputs)
        elif self.plan.start_frame_pass:
            self.start_frame(inputs, sampler)
        else:  # a continuation or re-roll restores the parent's start latent, the image's as it was encoded then
            inputs.images.start_latent = self.restored.get(START, inputs.images.start_latent)
            self.state.latents[START] = inputs.images.start_latent
        plan = self.plan
        self.on_event(StageStarted("sample", f"{plan.num_sections} sections, {plan.steps} steps each"))
        for order, index in enumerate(plan.generation_order):
            self.section(inputs, sampler, order, index)
        return self.finish()

    def encode(self) -> EncodedInputs:
        clock = time.perf_counter()
        unique = len(set(section.prompt for section in self.plan.sections))
        self.on_event(StageStarted("encode prompts", f"{unique} unique"))
        prompts, negative = encode_prompts(self.components, self.plan, self.request)
        self.timings["encode_prompts"] = time.perf_counter() - clock

        clock = time.perf_counter()
        self.on_event(StageStarted("encode images", self.plan.mode))
        images = encode_images(self.components, self.plan, self.request, self.generator)
        self.timings["encode_images"] = time.perf_counter() - clock
        if self.plan.source is not None:
            clock = time.perf_counter()
            self.encode_source()
            self.timings["encode_video"] = time.perf_counter() - clock
        return EncodedInputs(prompts, negative, images)

    def encode_source(self) -> None:
        """The source latents: init_video read and encoded in chunks (with keep_source its frames are written to the
        sinks meanwhile, all but those the first window cross-fades into), or `source_latents` checked against the
        plan (with keep_source decoded into the sinks the same way)."""
        plan, source = self.plan, self.plan.source
        scale = self.components.spatial_scale
        hold = None
        if source.kept_frames:
            blended = min(plan.latent_window_size, source.latent_frames)  # source latents the first window decodes
            hold = HoldBack(self.write, overlap_frames(blended, self.components.temporal_scale))
        if self.source is None:
            if not self.request.init_video:
                raise ValueError("the plan has a source video, but there is no init_video and no source_latents")
            detail = f"{source.used_frames} frames to {source.latent_frames} latent frames"
            self.on_event(StageStarted("encode video", detail + (", keeping its frames" if hold else "")))
            count = source.first_used + source.used_frames
            frames = read_frames(self.request.init_video, plan.width, plan.height, count, "init_video")
            with contextlib.closing(frames):
                self.source = encode_frames(self.components.vae, self.used_frames(frames, hold), source.used_frames)
        else:  # given as latents: all of them make the source (v2v uses its first `latent_frames`)
            channels, whole = self.components.latent_channels, 1 + (source.frames - 1) // VAE_TEMPORAL
            expected = (1, channels, whole, plan.height // scale, plan.width // scale)
            if tuple(self.source.shape) != expected:
                raise ValueError(f"source_latents have the shape {tuple(self.source.shape)}; the plan needs {expected}")
            self.source = self.source[:, :, : source.latent_frames].float().cpu()
            if hold is not None:
                self.on_event(StageStarted("decode source", f"{source.kept_frames} frames of the source latents"))
                self.decode_source(hold)
        if hold is not None:
            self.source_held = hold.finish()

    def used_frames(self, frames: Iterator[np.ndarray], hold: HoldBack | None) -> Iterator[np.ndarray]:
        """The frames the VAE encodes (from the plan's first used one on); every frame goes to `hold` too."""
        for index, frame in enumerate(frames):
            if hold is not None:
                hold.push(frame)
            if index >= self.plan.source.first_used:
                yield frame

    def decode_source(self, hold: HoldBack) -> None:
        """keep_source without the source's pixels: its latents decoded in windows (`source_windows`), joined with
        the overlap blend, into `hold`."""
        latents = self.source
        count = latents.shape[2]
        joiner = OverlapJoiner(
            overlap_frames(self.plan.latent_window_size, self.components.temporal_scale), hold.push_many
        )
        windows = self.source_windows(count)
        for (start, end), (next_start, _) in zip(windows, [*windows[1:], (count, count)], strict=True):
            self.cancel.check()
            # positions count from the source's last frame (START, 0), so the first window may reuse tiles
            joiner.add(self.vae.window(latents[:, :, start:end], start - (count - 1), next_start - (count - 1)))
        joiner.finish()

    def source_windows(self, count: int) -> list[tuple[int, int]]:
        """(first, end) latent frames of the windows keep_source decodes the source latents in. A bidirectional
        parent's kept latents (a continuation) are decoded in the parent's own windows, so its frames come back as it
        wrote them; other latents in windows of two sections' length that share one section with the next."""
        window, extend = self.plan.latent_window_size, self.plan.extend
        if extend is not None and extend.source_latents:
            sections = extend.parent_sections
            keys = [window_keys("bidirectional", index, sections) for index in range(sections)]
            return [(latent_start(first[0], window), latent_start(first[-1], window) + window) for first in keys]
        windows = [(0, min(count, 2 * window))]
        while windows[-1][1] < count:
            start = windows[-1][0] + window
            windows.append((start, min(count, start + 2 * window)))
        return windows

    def write(self, frames: np.ndarray) -> None:
        for sink in self.sinks:
            sink.write(frames)
        self.state.written += frames.shape[0]
        last = self.decoder.last
        self.on_event(
            FramesWritten(
                self.state.written,
                self.plan.generated_frames,
                window=last.index if last else -1,
                windows=self.plan.num_sections,
                window_seconds=round(last.seconds, 3) if last else 0.0,
                tiled=last.tiled if last else False,
            )
        )

    def conditioning(
        self, inputs: EncodedInputs, section: SectionPlan, vision: torch.Tensor
    ) -> tuple[Conditioning, Conditioning | None]:
        device, dtype = self.components.device, self.components.transformer.dtype
        positive = Conditioning(section_prompt(inputs.prompts, section).to(device, dtype), vision.to(device, dtype))
        if inputs.negative is None:
            return positive, None
        return positive, Conditioning(inputs.negative.to(device, dtype), vision.to(device, dtype))

    def preview(self, section_latents: torch.Tensor) -> np.ndarray | None:
        if not self.request.preview:
            return None
        middle = section_latents.shape[2] // 2
        return to_uint8(self.vae.frames(section_latents[:, :, middle : middle + 1])[0, :, 0])

    def start_from_source(self, inputs: EncodedInputs) -> None:
        """Continuing a source video: the start frame is its last latent frame; the prefix (F1: its first, else its
        last) gives the SigLIP conditioning as the start image does; F1's first history is its last context frames.
        With keep_source the joiner starts from the source frames written already."""
        images, source, plan = inputs.images, self.source, self.plan
        self.state.latents[START] = source[:, :, -1:]
        images.start_latent = source[:, :, :1] if plan.variant == "f1" else source[:, :, -1:]
        if plan.variant == "f1":
            images.source_context = source[:, :, -plan.source.context_frames :]
        start_pixels = self.vae.frames(images.start_latent)[:, :, 0]
        dtype = self.components.transformer.dtype
        images.start_vision = encode_vision(self.components, start_pixels.cpu().clamp(-1, 1), dtype)
        if self.source_held is not None:
            self.joiner.seed(frames_tensor(list(self.source_held)))
            self.decoder.source_tail = source[:, :, -min(plan.latent_window_size, source.shape[2]) :]

    def source_window(self, key: LatentKey) -> torch.Tensor | None:
        """Video-to-video: the source latents a key re-renders (START: the first frame, a section: its window)."""
        if self.strength is None:
            return None
        start = latent_start(key, self.plan.latent_window_size)
        return self.source[:, :, start : start + (1 if key == START else self.plan.latent_window_size)]

    def start_frame(self, inputs: EncodedInputs, sampler: SectionSampler) -> None:
        """T2V: the first frame from the prompt (one latent frame, empty context); it then acts as the init image.
        Video-to-video: the same, from the source's first frame re-noised (at strength 1: that frame)."""
        detail = "T2V: generating the first frame from the prompt"
        if self.strength is not None:
            detail = f"video-to-video: the first frame from the source's at strength {self.strength:g}"
        self.on_event(StageStarted("start frame", detail))
        clock = time.perf_counter()
        latents, images = self.state.latents, inputs.images
        noise = sampler.noise(1, self.generator)
        source = self.source_window(START)
        sampled = False
        if START in self.restored:
            latents[START] = self.restored[START]
            sampler.skip()
        elif self.strength == 1.0:
            latents[START] = source.clone()
            sampler.skip()
            if self.on_section_latents:
                self.on_section_latents(START, latents[START])
        else:
            empty = torch.zeros_like(noise)
            no_history = empty[:, :, :0]
            if self.plan.variant == "bidirectional":
                context = bidirectional_context(empty, no_history, 0, 1)
            else:
                context = forward_context(empty, no_history, 1)
            positive, negative = self.conditioning(inputs, self.plan.sections[0], zero_vision(self.components))
            latents[START] = sampler.run(noise, context, positive, negative, -1, -1, source, self.strength or 0.0)
            self.state.sampled_steps += self.plan.steps
            sampled = True
            if self.on_section_latents:
                self.on_section_latents(START, latents[START])
        images.start_latent = latents[START]
        start_pixels = self.vae.frames(latents[START])[:, :, 0]
        dtype = self.components.transformer.dtype
        images.start_vision = encode_vision(self.components, start_pixels.cpu().clamp(-1, 1), dtype)
        self.timings["start_frame"] = time.perf_counter() - clock
        if sampled:
            self.state.sampling_seconds += self.timings["start_frame"]
        preview = to_uint8(start_pixels[0]) if self.request.preview else None
        self.on_event(SectionFinished(-1, -1, self.timings["start_frame"], preview, *sampler.section_calls()))

    def history_context(
        self, images: ImageConditioning, section: SectionPlan, order: int, noise: torch.Tensor
    ) -> SectionContext:
        """The section's clean context: its keyframe (else the start latent) and the neighbouring sections' latents
        already generated, after it for bi-directional (plus the end frame on the first generated section), before
        it for F1 (from the start latent on)."""
        plan, latents, index = self.plan, self.state.latents, section.index
        window = plan.latent_window_size
        span = -(-HISTORY_FRAMES // window)  # neighbouring sections that fill the history slots
        if section.connecting:
            return self.connecting_context(section, span)
        prefix = images.keyframe_latents[section.keyframe] if section.keyframe is not None else images.start_latent
        if plan.variant == "bidirectional":
            after = [latents[i] for i in range(index + 1, min(plan.main_sections, index + 1 + span))]
            history = torch.cat(after, dim=2) if after else noise[:, :, :0]
            end = end_context(images, self.request) if images.end_latent is not None and order == 0 else None
            return bidirectional_context(prefix, history, section.latent_padding, window, end)
        first = images.source_context if images.source_context is not None else latents[START]
        history = torch.cat([first] + [latents[i] for i in range(max(0, index - span), index)], dim=2)
        return forward_context(prefix, history, window)

    def connecting_context(self, section: SectionPlan, span: int) -> SectionContext:
        """A loop's connecting section, either variant (`loop_context`): the section before it (the video's end) as
        its past, the start latent and the first `span` sections as its future."""
        latents = self.state.latents
        future = [latents[START]] + [latents[i] for i in range(min(self.plan.main_sections, span))]
        return loop_context(latents[section.index - 1], torch.cat(future, dim=2), self.plan.latent_window_size)

    def section(self, inputs: EncodedInputs, sampler: SectionSampler, order: int, index: int) -> None:
        """Sample (or restore) one section, report it, and decode every window its latents complete (those of the
        last section in the decode stage)."""
        section, latents = self.plan.sections[index], self.state.latents
        clock = time.perf_counter()
        self.new_stream(order)
        noise = sampler.noise(self.plan.latent_window_size, self.generator)  # drawn for restored sections too
        source = self.source_window(index)
        calls = (0, 0)
        sampled = False
        if index in self.restored:
            latents[index] = self.restored[index]
            sampler.skip()
        elif self.strength == 1.0:  # video-to-video at strength 1: the source's window unchanged
            latents[index] = source.clone()
            sampler.skip()
            if self.on_section_latents:
                self.on_section_latents(index, latents[index])
        else:
            context = self.history_context(inputs.images, section, order, noise)
            vision = section_vision(inputs.images, section, self.request)
            positive, negative = self.conditioning(inputs, section, vision)
            fresh = sampler.run(noise, context, positive, negative, index, order, source, self.strength or 0.0)
            latents[index] = fresh.to(self.kept_dtype).float()  # see `kept_dtype`
            calls = sampler.section_calls()
            sampled = True
            if self.on_section_latents:
                self.on_section_latents(index, latents[index])
        seconds = time.perf_counter() - clock
        self.timings[f"section_{index}"] = seconds
        if sampled:
            self.state.sampling_seconds += seconds
            self.state.sampled_steps += self.plan.steps
        self.on_event(SectionFinished(index, order, seconds, self.preview(latents[index]), *calls))
        if order < self.plan.num_sections - 1:  # what the last section completes is decoded in the decode stage
            clock = time.perf_counter()
            self.decoder.pump(latents)
            self.state.decode_seconds += time.perf_counter() - clock

    def new_stream(self, order: int) -> None:
        """A continuation or re-roll (`plan.extend`) samples its first section after the parent's restored ones from a
        new random stream: a continuation from the parent's kept stream state (restored[STREAM]), so its new
        sections draw what one longer job draws; a re-roll from `reroll_seed`."""
        extend = self.plan.extend
        if extend is None or extend.source_latents or order != len(extend.restored):
            return
        if extend.kind == "reroll":
            self.generator = torch.Generator("cpu").manual_seed(extend.reroll_seed)
        elif STREAM in self.restored:
            self.generator.set_state(self.restored[STREAM])
        else:
            raise RuntimeError(f"internal error: continuing job {extend.parent} without its random stream's state")

    def single_frame(self, inputs: EncodedInputs, sampler: SectionSampler) -> GenerationResult:
        """Single-frame inference: one latent frame at the plan's target index beside the (masked) control latents,
        decoded into one image."""
        plan, layout, section = self.plan, self.plan.single_frame, self.plan.sections[0]
        controls = [(self.control_latent(inputs.images, name), index) for name, index in layout.controls]
        self.on_event(StageStarted("sample", f"single frame: {layout.summary()}, {plan.steps} steps"))
        clock = time.perf_counter()
        noise = sampler.noise(1, self.generator)  # drawn for a restored frame too
        calls = (0, 0)
        if 0 in self.restored:
            latent = self.restored[0]
            sampler.skip()
        else:
            context = single_frame_context(
                controls, layout.target_index, plan.latent_window_size, layout.post_index is not None
            )
            positive, negative = self.conditioning(
                inputs, section, section_vision(inputs.images, section, self.request)
            )
            latent = sampler.run(noise, context, positive, negative, 0, 0)
            calls = sampler.section_calls()
            if self.on_section_latents:
                self.on_section_latents(0, latent)
        self.state.latents[0] = latent
        self.timings["section_0"] = time.perf_counter() - clock
        self.on_event(SectionFinished(0, 0, self.timings["section_0"], self.preview(latent), *calls))
        self.on_event(StageStarted("decode", "one image"))
        clock = time.perf_counter()
        self.cancel.check()
        self.write(to_uint8(self.vae.frames(latent)[0].transpose(0, 1)))
        self.timings["decode"] = time.perf_counter() - clock
        return self.close()

    def control_latent(self, images: ImageConditioning, name: str) -> torch.Tensor:
        """A single-frame control's latent (init_image: the start latent; reference_image: encoded now with the job's
        generator) times its mask (the given mask, else the image's alpha channel, else none)."""
        request, plan = self.request, self.plan
        if name == "init_image":
            latent, mask_field = images.start_latent, "init_mask"
        else:
            pixels = fit_to_bucket(load_image(request.reference_image, name), plan.width, plan.height)
            latent, mask_field = vae_encode(self.components, to_tensor(pixels), self.generator), "reference_mask"
        source = getattr(request, mask_field)
        mask = load_mask(source, mask_field) if source else alpha_mask(getattr(request, name), name)
        if mask is None:
            return latent
        grid = latent_mask(mask, plan.width, plan.height, self.components.spatial_scale)
        return latent * torch.from_numpy(grid).to(latent.device, latent.dtype)[None, None, None]

    def finish(self) -> GenerationResult:
        """Decode the windows the last section completed (bi-directional: all of them, its start is generated
        last), check the frame count against the plan, close the sinks."""
        left = self.plan.num_sections - self.decoder.next_window
        self.on_event(
            StageStarted("decode", f"writing frames in time order: {left} windows left, vae_tiling {self.vae.mode}")
        )
        clock = time.perf_counter()
        self.decoder.pump(self.state.latents)
        self.joiner.finish()
        self.timings["decode"] = self.state.decode_seconds + time.perf_counter() - clock
        return self.close()

    def close(self) -> GenerationResult:
        """Check the frame count against the plan, report the decode's and the cache's counts, close the sinks."""
        stats = self.vae.stats
        self.timings["decode_tiles"] = stats.tiles_decoded
        self.timings["decode_tiles_reused"] = stats.tiles_reused
        self.timings["decode_tiled"] = stats.tiled_decodes
        self.timings["decode_retries"] = stats.retries
        self.timings["sampling"] = self.state.sampling_seconds
        self.timings["sampled_steps"] = self.state.sampled_steps
        written, planned = self.state.written, self.plan.generated_frames
        if written != planned:
            raise RuntimeError(f"internal error: wrote {written} frames, the plan announced {planned}")
        if self.cache is not None:
            self.timings["transformer_calls"] = self.cache.stats.calls
            self.timings["cache_skipped_calls"] = self.cache.stats.skipped
        self.on_event(StageStarted("finish", "closing outputs"))
        outputs = [str(path) for path in close_sinks(self.sinks)]
        return GenerationResult(plan=self.plan, outputs=outputs, frames=written, kept=self.kept())

    def kept(self) -> KeptLatents | None:
        """The latents and stream state to keep (`keep_latents`; a single frame keeps none)."""
        if not self.request.keep_latents or self.plan.single_frame is not None:
            return None
        latents = self.state.latents
        kept: dict[LatentKey, torch.Tensor] = {START: latents[START].float().contiguous()}
        for index in range(self.plan.num_sections):
            kept[index] = latents[index].to(self.kept_dtype).contiguous()
        return KeptLatents(kept, self.generator.get_state())


def generate(
    components: Components,
    request: GenerateRequest,
    plan: Plan,
    sinks: list[FrameSink],
    on_event: EventCallback = ignore_events,
    cancel: CancelToken | None = None,
    finished_sections: dict[LatentKey, torch.Tensor] | None = None,
    on_section_latents: LatentCallback | None = None,
    cache: TransformerCache | None = None,
    source_latents: torch.Tensor | None = None,
) -> GenerationResult:
    """Run `plan` and stream its frames into `sinks`; on any error or cancel the sinks are aborted.

    `cache` (built for this job's transformer and step count) skips transformer calls; its counts are reported
    per section and in the timings.

    `finished_sections` (latents by section index, plus START for T2V) resumes a job: those sections are not
    sampled again, and the random stream is consumed exactly as in an uninterrupted run, so the result is the
    same. `on_section_latents(key, latents)` is called after each sampled section (for checkpoints)
    and for each section video-to-video at strength 1 takes unchanged from the source. A continuation
    or re-roll (`plan.extend`) passes its parent's kept latents the same way: START (also for I2V: it replaces the
    image's latent) and the sections it reuses, and for a continuation STREAM, the parent's random-stream state.
    With `keep_latents`, `result.kept` holds what the job keeps.

    `source_latents` ([1, C, L, h, w] float, scaled as the VAE's latents are, on any device) are the latents of a video
    that comes before the new one, in time order, at the plan's size: the job continues it (or re-renders it with
    video_strength) exactly as it would an init_video that encodes to them, without reading or encoding a video. The
    plan must have been made for it: `make_plan(request, source=SourceVideo(frames=4 * (L - 1) + 1, width=...,
    height=..., latents=True))`. Without them, a plan with a source encodes the request's init_video. They may also
    come among `finished_sections` as SOURCE (how the job queue hands over a bidirectional continuation's parent).
    """
    finished_sections = dict(finished_sections or {})
    source_latents = finished_sections.pop(SOURCE, source_latents)
    if source_latents is not None and plan.source is None:
        raise ValueError("source_latents need a plan made with their SourceVideo (make_plan(..., source=...))")
    started = time.perf_counter()
    loop = SectionLoop(
        components, request, plan, sinks, on_event, cancel or CancelToken(), finished_sections, on_section_latents,
        cache, source_latents,
    )  # fmt: skip
    try:
        with torch.no_grad():
            result = loop.run()
    except BaseException:
        abort_sinks(sinks)
        raise
    loop.timings["total"] = time.perf_counter() - started
    result.timings = loop.timings
    return result
