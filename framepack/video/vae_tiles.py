"""The VAE decode of a job: temporal tiles decoded once, optional spatial tiling, and an out-of-memory retry.

diffusers' `AutoencoderKLHunyuanVideo.decode` always works in temporal tiles ("framewise decoding", on by default):
a tile of `frames / 4 + 1` latent frames starts every `(frames - frames_overlap) / 4` latent frames, each tile is
decoded from a fresh causal start, every tile but the first loses its first pixel frame, and neighbours are
cross-faded over `frames_overlap` pixel frames. With `use_tiling` each temporal tile is also decoded in spatial tiles
of `size` pixels cross-faded over `overlap` pixels (`tiled_decode`), which bounds the decode's memory by the tile
instead of the frame.

Consecutive overlap windows share a section's latents. When the window (9 latent frames by default) is a multiple
of the tile stride (3), the later window's first temporal tiles are exactly tiles the earlier window decoded:
`VaeDecoder.window` reproduces diffusers' temporal loop step for step (its own `decode` per tile and its
`blend_t`), so its output is diffusers' output, and keeps those tiles for the next window instead of decoding them
again.

`auto` tiling decides before each decode from the frame size and the free memory of the device (see
`needs_tiling`); a decode that runs out of memory untiled is retried once tiled, and a tiled one that still does
not fit fails with advice (`DecodeOutOfMemory`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from framepack.models.offload import available_host_memory, device_memory

logger = logging.getLogger(__name__)

# Peak bytes of an untiled decode per output pixel of a temporal tile, per channel of the VAE's first decoder block
# (its full-resolution width) and per byte of its dtype. On an H200 the HunyuanVideo VAE (128 channels, bf16) took
# about 19-21.5 GB over what was resident to decode 17-frame temporal tiles at 640x608 (docs/performance.md):
# 12 * 128 * 2 * 17 * 640 * 608 bytes = 20.3 GB.
DECODE_BYTES_PER_CHANNEL = 12
FREE_SHARE = 0.8  # `auto` tiles when the estimated untiled peak exceeds this share of the free memory
OUT_OF_MEMORY_ERRORS = (torch.OutOfMemoryError, MemoryError)


class DecodeOutOfMemory(torch.OutOfMemoryError):
    """The VAE decode ran out of memory even after the retry `vae_tiling` allows; the message says what to change."""


@dataclass(frozen=True)
class TileSettings:
    """Tile sizes of the decode, in pixels and pixel frames (diffusers' defaults: 256/64 px, 16/4 frames)."""

    size: int = 256  # spatial tile edge
    overlap: int = 64  # pixels shared (cross-faded) by neighbouring spatial tiles
    frames: int = 16  # temporal tile: frames / 4 + 1 latent frames are decoded together
    frames_overlap: int = 4  # pixel frames shared (cross-faded) by neighbouring temporal tiles


def decode_peak_bytes(vae, height: int, width: int, settings: TileSettings, tiled: bool) -> int:
    """Estimated peak memory of decoding one temporal tile (`settings.frames + 1` pixel frames) of `height` x
    `width` pixels, spatially tiled or not (`DECODE_BYTES_PER_CHANNEL`)."""
    if tiled:
        height, width = min(height, settings.size), min(width, settings.size)
    channels = int(vae.config.block_out_channels[0])
    dtype_bytes = torch.empty((), dtype=vae.dtype).element_size()
    return DECODE_BYTES_PER_CHANNEL * channels * dtype_bytes * (settings.frames + 1) * height * width


def free_memory(device: torch.device) -> int | None:
    """Bytes free for the decode on `device`: an accelerator's free memory (torch's cache emptied first), the host's
    available RAM for the CPU; None where it cannot be read."""
    if device.type == "cpu":
        return available_host_memory()
    return device_memory(device)[0]


def needs_tiling(peak_bytes: int, free_bytes: int | None) -> bool:
    """`auto`'s rule: tile when the untiled decode's estimated peak exceeds FREE_SHARE of the free memory (never
    when the free memory cannot be read; the out-of-memory retry is the net then)."""
    return free_bytes is not None and peak_bytes > FREE_SHARE * free_bytes


@contextlib.contextmanager
def decode_mode(vae, tiled: bool, settings: TileSettings) -> Iterator[None]:
    """The VAE set to decode one temporal tile per `decode` call (framewise decoding off: the tiles are ours), spatially
    tiled with `settings` or not; its previous settings come back afterwards (encoding uses them too)."""
    names = (
        "use_tiling", "use_framewise_decoding", "tile_sample_min_height", "tile_sample_min_width",
        "tile_sample_stride_height", "tile_sample_stride_width",
    )  # fmt: skip
    saved = {name: getattr(vae, name) for name in names}
    stride = settings.size - settings.overlap
    vae.use_tiling, vae.use_framewise_decoding = tiled, False
    vae.tile_sample_min_height = vae.tile_sample_min_width = settings.size
    vae.tile_sample_stride_height = vae.tile_sample_stride_width = stride
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(vae, name, value)


@dataclass
class DecodeStats:
    """What the job's decode did: temporal tiles decoded and reused, decodes (windows, previews) done in spatial
    tiles, out-of-memory retries."""

    tiles_decoded: int = 0
    tiles_reused: int = 0
    tiled_decodes: int = 0
    retries: int = 0
    retry_reasons: list[str] = field(default_factory=list)


class VaeDecoder:
    """Decodes one job's latents with its tiling mode (`auto`, `on`, `off`) and tile settings.

    `window(latents, start, keep_from)` decodes an overlap window whose first latent frame is frame `start` of the
    job's latent sequence, exactly as `vae.decode` would, reusing the temporal tiles the previous window decoded;
    afterwards it keeps the tiles that start at or after `keep_from` (the next window's start), on the decode's
    device. `auto` decides before each window. `frames(latents)` decodes a short clip (a preview, the text-to-video
    start frame: one latent frame) with the tiling as it stands and nothing kept; it asks for no free memory, which
    would empty torch's cache between two sampling steps. Both return float32 pixels [1, 3, T, H, W] in [-1, 1] on
    the execution device; an out-of-memory error is retried tiled in `auto`, once per job.
    """

    def __init__(
        self,
        vae,
        device: torch.device | str,
        mode: str,
        settings: TileSettings,
        height: int,
        width: int,
        read_free_memory: Callable[[torch.device], int | None] = free_memory,
    ):
        """`device`: where the decode computes (the execution device); `read_free_memory(device)`: the bytes `auto`
        compares the estimate with."""
        self.vae, self.device, self.mode, self.settings = vae, torch.device(device), mode, settings
        self.height, self.width = height, width
        self.read_free_memory = read_free_memory
        self.tiled = mode == "on"  # once tiled (by `on`, the auto rule or a retry), the job stays tiled
        self.stats = DecodeStats()
        self._tiles: dict[tuple[int, int, bool], torch.Tensor] = {}  # (start, latent frames, tiled) -> raw decode

    # ------------------------------------------------------------------------------------------------ public

    def window(self, latents: torch.Tensor, start: int, keep_from: int) -> torch.Tensor:
        self._decide()
        pixels = self._retrying(lambda: self._window(latents, start))
        self._tiles = {key: tile for key, tile in self._tiles.items() if key[0] >= keep_from and key[2] == self.tiled}
        return pixels

    def frames(self, latents: torch.Tensor) -> torch.Tensor:
        return self._retrying(lambda: self._window(latents, None))

    # ------------------------------------------------------------------------------------------------ tiling

    def _decide(self) -> None:
        if self.mode != "auto" or self.tiled:
            return
        peak = decode_peak_bytes(self.vae, self.height, self.width, self.settings, tiled=False)
        free = self.read_free_memory(self.device)
        if needs_tiling(peak, free):
            logger.info(
                "VAE decode tiled: an untiled decode of %dx%d needs about %.1f GB, %.1f GB are free",
                self.width, self.height, peak / 1e9, free / 1e9,
            )  # fmt: skip
            self.tiled = True

    def _retrying(self, decode: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`decode()`; in `auto`, an out-of-memory error is retried once tiled (and the job stays tiled)."""
        reason = self._attempt(decode)
        if not isinstance(reason, str):
            return reason
        if self.mode == "auto" and not self.tiled:  # the failed attempt's tensors went with its traceback
            logger.warning("VAE decode ran out of memory untiled (%s); retrying it tiled", reason)
            self.stats.retries += 1
            self.stats.retry_reasons.append(reason)
            self.tiled = True
            self._release()
            reason = self._attempt(decode)
            if not isinstance(reason, str):
                return reason
        self._release()
        raise DecodeOutOfMemory(self._advice(reason))

    def _attempt(self, decode: Callable[[], torch.Tensor]) -> torch.Tensor | str:
        """The pixels, or the out-of-memory error's text (any other error is raised)."""
        try:
            return decode()
        except OUT_OF_MEMORY_ERRORS as error:
            return " ".join(str(error).split())[:300] or type(error).__name__

    def _release(self) -> None:
        self._tiles.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _advice(self, reason: str) -> str:
        size = f"{self.width}x{self.height}"
        if not self.tiled:
            return (
                f"the VAE decode at {size} ran out of memory with vae_tiling 'off' ({reason}); set vae_tiling to "
                "'auto' or 'on' to decode in tiles"
            )
        tried = " after an untiled attempt" if self.stats.retries else ""
        return (
            f"the VAE decode at {size} ran out of memory even in {self.settings.size} px tiles{tried} ({reason}); "
            "lower vae_tile_size or vae_tile_frames, use offload 'model' or 'blocks' so the transformer leaves the "
            "GPU first, or lower the resolution"
        )

    # ------------------------------------------------------------------------------------------------ decode

    def _window(self, latents: torch.Tensor, start: int | None) -> torch.Tensor:
        """diffusers' `_temporal_tiled_decode` (and its whole-clip `_decode` for short clips), tile for tile."""
        vae, settings = self.vae, self.settings
        temporal = int(vae.temporal_compression_ratio)
        z = latents.to(device=self.device, dtype=vae.dtype) / vae.config.scaling_factor
        frames = z.shape[2]
        tile_latents = settings.frames // temporal
        stride = (settings.frames - settings.frames_overlap) // temporal
        blend = settings.frames - (settings.frames - settings.frames_overlap)
        if self.tiled:
            self.stats.tiled_decodes += 1
        with decode_mode(vae, self.tiled, settings):
            if frames <= tile_latents:  # diffusers decodes a short clip whole
                return self._tile(z, start, 0, frames).clone().float()
            row = []
            for index in range(0, frames, stride):
                decoded = self._tile(z, start, index, min(tile_latents + 1, frames - index))
                row.append((decoded[:, :, 1:] if index > 0 else decoded).clone())  # blend_t writes into its tile
            pieces = []
            for index, tile in enumerate(row):
                if index > 0:
                    tile = vae.blend_t(row[index - 1], tile, blend)
                    pieces.append(tile[:, :, : settings.frames - settings.frames_overlap])
                else:
                    pieces.append(tile[:, :, : settings.frames - settings.frames_overlap + 1])
            return torch.cat(pieces, dim=2)[:, :, : (frames - 1) * temporal + 1].float()

    def _tile(self, z: torch.Tensor, start: int | None, index: int, length: int) -> torch.Tensor:
        """The raw decode of latent frames [index, index + length) of the window (as `vae.decode` gives it), from
        the previous window's tiles when it decoded the same latent frames with the same tiling."""
        key = (start + index, length, self.tiled) if start is not None else None
        if key is not None and key in self._tiles:
            self.stats.tiles_reused += 1
            return self._tiles[key]
        decoded = self.vae.decode(z[:, :, index : index + length], return_dict=False)[0]
        self.stats.tiles_decoded += 1
        if key is not None:
            self._tiles[key] = decoded
        return decoded
