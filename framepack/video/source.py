"""A source video: probed and read with PyAV, fitted to the bucket like an image, VAE-encoded in chunks.

The job's video input (`init_video`) comes before the new video (a continuation) or is re-rendered (video-to-video).
`probe_video` checks the file and counts its frames before any model loads (it only demuxes: packets, not
pictures, are counted). `read_frames` decodes it frame by frame, each frame fitted to the plan's bucket exactly as
an image is (`framepack.images.fit_to_bucket`), and `encode_frames` turns such a stream into latents holding at most
one temporal tile of pixel frames: peak memory does not grow with the video's length (latents, which are small, are
kept whole).

The HunyuanVideo VAE is causal: a clip of 1 + 4k frames becomes 1 + k latent frames, the first frame alone, then
every 4 frames. Its `encode` of a clip longer than `tile_sample_min_num_frames` (16) already works in temporal tiles
(diffusers' "framewise encoding", on by default): a tile of 17 frames starts every `tile_sample_stride_num_frames`
(12) frames, each tile is encoded from a fresh causal start, every tile but the first loses its first latent frame,
and the latent frame two neighbouring tiles share is taken from the earlier tile (`blend_t` over one latent frame).
`encode_frames` runs exactly these tiles as the frames arrive, so its latents are exactly those of `vae.encode` on
the whole clip at once (the distribution's mean, see below) whatever the length; a clip of at most 16 frames is one
chunk, encoded whole. Source latents are the mean of the VAE's distribution, not a sample: they are deterministic,
need no random numbers, and so leave the job's random stream exactly as a job without a video uses it.

`HoldBack` passes frames on in chunks but keeps the last few: `keep_source` writes the source's frames into the
output, all but the ones the first new window cross-fades into.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from framepack.errors import FieldError
from framepack.images import fit_to_bucket

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

FrameWriter = Callable[[np.ndarray], None]  # uint8 [T, H, W, 3], in time order
READABLE = "not a readable video (MP4, WebM, MKV, MOV, ...)"


class VideoInputError(FieldError):
    """A video field that cannot be used."""


@dataclass(frozen=True)
class VideoInfo:
    """What the probe found: frames (counted by demuxing), the coded size, the average frame rate (None if unknown)."""

    frames: int
    width: int
    height: int
    fps: float | None


def probe_video(path: str, field: str = "init_video") -> VideoInfo:
    """Open the file with PyAV and count its first video stream's frames (packets that hold one), without decoding
    pictures; VideoInputError naming `field` when it is no file, not a video, or has no frames."""
    import av

    if not os.path.isfile(path):
        raise VideoInputError(field, f"no such file: {path}")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoInputError(field, f"{READABLE}: it has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate
            frames = sum(1 for packet in container.demux(stream) if packet.size and not packet.is_discard)
    except av.FFmpegError as error:
        raise VideoInputError(field, f"{READABLE}: {error}") from None
    if frames == 0 or width <= 0 or height <= 0:
        raise VideoInputError(field, f"{READABLE}: it has no frames")
    return VideoInfo(frames=frames, width=width, height=height, fps=float(rate) if rate else None)


def read_frames(path: str, width: int, height: int, count: int, field: str = "init_video") -> Iterator[np.ndarray]:
    """The video's first `count` frames in time order, each uint8 [height, width, 3] fitted to the bucket like an
    image (scaled to cover, centre-cropped); VideoInputError when the file ends before `count` frames."""
    import av

    read = 0
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if read == count:
                    return
                yield fit_to_bucket(frame.to_image(), width, height)
                read += 1
    except av.FFmpegError as error:
        raise VideoInputError(field, f"{READABLE}: {error}") from None
    if read < count:
        raise VideoInputError(field, f"decoding ended after {read} frames; its packets promised {count}")


def frames_tensor(frames: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] (or a list of [H, W, 3]) -> float32 [1, 3, T, H, W] in [-1, 1], each frame as
    `framepack.images.to_tensor` makes it."""
    import torch

    pixels = torch.from_numpy(np.ascontiguousarray(np.asarray(frames, dtype=np.uint8))).float().div(127.5).sub(1.0)
    return pixels.permute(3, 0, 1, 2)[None]


@contextlib.contextmanager
def tile_encode_mode(vae) -> Iterator[None]:
    """The VAE set to encode what it is given as one temporal tile (framewise encoding off: the tiles are ours); its
    spatial tiling stays as it is. The setting comes back afterwards."""
    saved = vae.use_framewise_encoding
    vae.use_framewise_encoding = False
    try:
        yield
    finally:
        vae.use_framewise_encoding = saved


def _encode_tile(vae, frames: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """Mean of the VAE's distribution (unscaled) for one tile of frames, on the VAE's compute device."""
    pixels = frames_tensor(frames).to(device=vae.device, dtype=vae.dtype)
    with tile_encode_mode(vae):
        return vae.encode(pixels).latent_dist.mean


def encode_frames(vae, frames: Iterator[np.ndarray], count: int) -> torch.Tensor:
    """Scaled float32 latents [1, C, 1 + (count - 1) // 4, h, w] on the CPU of `count` frames from `frames` (uint8
    [H, W, 3], time order, `count` = 1 + 4k), exactly `vae.encode` of the whole clip (its distribution's mean),
    holding at most one temporal tile (17 frames) of pixels. See the module's docstring.

    What lives across tiles (the tile's frames, the latents) is allocated once: long-lived buffers allocated between
    the encoder's large short-lived ones fragment the heap, and the peak then crept up with the video's length
    (by a third from 121 to 1,801 frames before it was so)."""
    import torch

    if count < 1 or (count - 1) % 4:
        raise ValueError(f"a causal VAE clip has 1 + 4k frames, got {count}")
    tile, stride = vae.tile_sample_min_num_frames, vae.tile_sample_stride_num_frames
    temporal = int(vae.temporal_compression_ratio)
    latent_count = (count - 1) // temporal + 1
    scale = vae.config.scaling_factor
    with torch.no_grad():
        if not vae.use_framewise_encoding or count <= tile:  # diffusers encodes such a clip whole
            return (_encode_tile(vae, [next(frames) for _ in range(count)]) * scale).float().cpu()
        tile_latents, stride_latents = tile // temporal, stride // temporal
        blend = tile_latents - stride_latents
        ring: np.ndarray | None = None  # the current tile's frames, from its start
        latents: torch.Tensor | None = None
        held, previous = 0, None
        for index, start in enumerate(range(0, count, stride)):
            needed = min(tile + 1, count - start)
            for frame in (next(frames) for _ in range(needed - held)):
                if ring is None:
                    ring = np.empty((tile + 1, *frame.shape), dtype=np.uint8)
                ring[held] = frame
                held += 1
            encoded = _encode_tile(vae, ring[:needed])
            if previous is None:
                piece, at = encoded[:, :, : stride_latents + 1], 0
            else:  # the first latent frame goes, the one it shares with the previous tile is the previous tile's
                encoded = vae.blend_t(previous, encoded[:, :, 1:], blend)
                piece, at = encoded[:, :, :stride_latents], 1 + index * stride_latents
            if latents is None:
                latents = torch.empty((1, piece.shape[1], latent_count, *piece.shape[3:]), dtype=torch.float32)
            kept = min(piece.shape[2], latent_count - at)
            if kept > 0:
                latents[:, :, at : at + kept] = piece[:, :, :kept].float().cpu()
            previous = encoded
            held = max(0, needed - stride)  # the frames the next tile starts with
            ring[:held] = ring[stride:needed].copy()
        return latents.mul_(scale)


class HoldBack:
    """Writes frames on in chunks of `chunk`, keeping the last `hold` back; `finish()` writes what is left but those
    and returns them (uint8 [hold, H, W, 3], fewer if fewer came). Holds at most hold + chunk frames."""

    def __init__(self, write: FrameWriter, hold: int, chunk: int = 16):
        self.write, self.hold, self.chunk = write, hold, chunk
        self.frames: list[np.ndarray] = []

    def push(self, frame: np.ndarray) -> None:
        self.frames.append(frame)
        if len(self.frames) >= self.hold + self.chunk:
            self._flush(len(self.frames) - self.hold)

    def push_many(self, frames: np.ndarray) -> None:
        for frame in frames:
            self.push(frame)

    def finish(self) -> np.ndarray:
        self._flush(max(0, len(self.frames) - self.hold))
        held, self.frames = self.frames, []
        return np.stack(held)

    def _flush(self, count: int) -> None:
        if count > 0:
            self.write(np.stack(self.frames[:count]))
            del self.frames[:count]
