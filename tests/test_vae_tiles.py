"""The VAE decode (framepack/video/vae_tiles.py) on the self-test VAE: windows decoded exactly as diffusers decodes
them while shared temporal tiles are decoded once, spatial tiling within the stated tolerance, the `auto` rule, and
the out-of-memory retry."""

from __future__ import annotations

import types

import numpy as np
import pydantic
import pytest
import torch

from framepack.images import to_uint8
from framepack.jobs.errors import classify
from framepack.request import GenerateRequest
from framepack.video.vae_tiles import (
    DecodeOutOfMemory,
    TileSettings,
    VaeDecoder,
    decode_peak_bytes,
    needs_tiling,
)

WINDOW = 9


class DecoderCalls:
    """Counts the VAE decoder's forward calls (one per temporal tile, or per spatial tile when tiled)."""

    def __init__(self, vae):
        self.count = 0
        self._handle = vae.decoder.register_forward_hook(self._count)

    def _count(self, *_args) -> None:
        self.count += 1

    def __enter__(self) -> DecoderCalls:
        return self

    def __exit__(self, *_exc) -> None:
        self._handle.remove()


def diffusers_decode(vae, latents: torch.Tensor, tiled: bool, settings: TileSettings) -> torch.Tensor:
    """What `vae.decode` gives for scaled latents with these tiles (its attributes restored afterwards)."""
    names = ("use_tiling", "tile_sample_min_height", "tile_sample_min_width", "tile_sample_stride_height",
             "tile_sample_stride_width", "tile_sample_min_num_frames", "tile_sample_stride_num_frames")  # fmt: skip
    saved = {name: getattr(vae, name) for name in names}
    vae.use_tiling = tiled
    vae.tile_sample_min_height = vae.tile_sample_min_width = settings.size
    vae.tile_sample_stride_height = vae.tile_sample_stride_width = settings.size - settings.overlap
    vae.tile_sample_min_num_frames = settings.frames
    vae.tile_sample_stride_num_frames = settings.frames - settings.frames_overlap
    try:
        with torch.no_grad():
            return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0].float()
    finally:
        for name, value in saved.items():
            setattr(vae, name, value)


def levels(pixels: torch.Tensor) -> np.ndarray:
    return to_uint8(pixels[0].transpose(0, 1)).astype(np.int64)


@pytest.mark.parametrize(
    "tiled,settings",
    [(False, TileSettings()), (True, TileSettings(size=32, overlap=8))],
    ids=["untiled", "spatially-tiled"],
)
def test_windows_decode_exactly_as_diffusers_and_shared_tiles_once(tiny_components, tiled, settings):
    """Bi-directional, 3 sections of window 6 (a multiple of the tile stride, like the default 9) at 64x32: windows
    [start, 0, 1], [1, 2], [2] are latent frames 0-12, 7-18, 13-18. Temporal tiles are 5 latent frames every 3: the
    first window decodes 5 tiles, the second 4 (it starts at frame 7, off the first window's grid of 0, 3, 6, ...),
    and the last window's tiles at 13 and 16 are the second window's last two: 9 decoded and 2 reused, against 11
    decodes when every window is decoded. Spatially tiled, each temporal tile is 2 x 3 tiles of 32 px."""
    window = 6
    vae = tiny_components.vae
    latents = torch.randn(1, 4, 1 + 3 * window, 4, 8, generator=torch.Generator().manual_seed(0))
    decoder = VaeDecoder(vae, "cpu", "on" if tiled else "off", settings, 32, 64)
    windows = [(0, 1 + 2 * window, 1 + window), (1 + window, 1 + 3 * window, 1 + 2 * window), (13, 19, 13)]
    with torch.no_grad(), DecoderCalls(vae) as calls:
        for start, end, next_start in windows:
            ours = decoder.window(latents[:, :, start:end], start, next_start)
            reference = diffusers_decode(vae, latents[:, :, start:end], tiled, settings)
            assert ours.shape == reference.shape == (1, 3, (end - start - 1) * 4 + 1, 32, 64)
            assert torch.equal(ours, reference), (start, end)
    assert (decoder.stats.tiles_decoded, decoder.stats.tiles_reused) == (9, 2)
    assert calls.count == (9 + 11) * (6 if tiled else 1)  # ours, then diffusers' own decodes
    assert decoder.stats.tiled_decodes == (3 if tiled else 0)
    # the VAE's own settings are back (encoding uses them): framewise decoding on, tiling off
    assert vae.use_framewise_decoding is True and vae.use_tiling is False


def test_a_short_clip_is_decoded_whole_and_a_finer_temporal_grid_reuses_more(tiny_components):
    vae = tiny_components.vae
    latents = torch.randn(1, 4, 1 + 2 * WINDOW, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        short = VaeDecoder(vae, "cpu", "off", TileSettings(), 32, 32)
        assert torch.equal(
            short.frames(latents[:, :, :3]), diffusers_decode(vae, latents[:, :, :3], False, TileSettings())
        )
        assert short.stats.tiles_decoded == 1  # 3 latent frames fit in one 16-frame tile (4 latent frames)
        # 8-frame tiles with a 4-frame overlap: 3 latent frames every latent frame; the second window [0, 1] starts at
        # latent frame 1 and all its tiles but the last ones (cut at the end of the window) were the first's
        fine = TileSettings(frames=8, frames_overlap=4)
        decoder = VaeDecoder(vae, "cpu", "off", fine, 32, 32)
        first = decoder.window(latents[:, :, : 1 + WINDOW], 0, 1)
        second = decoder.window(latents[:, :, 1 : 1 + 2 * WINDOW], 1, 1 + WINDOW)
        assert torch.equal(first, diffusers_decode(vae, latents[:, :, : 1 + WINDOW], False, fine))
        assert torch.equal(second, diffusers_decode(vae, latents[:, :, 1 : 1 + 2 * WINDOW], False, fine))
    # first window: 10 tiles (starts 0..9); second: 18 tiles, of which those starting at 1..7 (lengths 3) were decoded
    assert (decoder.stats.tiles_decoded, decoder.stats.tiles_reused) == (10 + 18 - 7, 7)


def test_tiled_frames_stay_within_the_stated_tolerance_of_untiled_frames(tiny_components):
    """The stated tolerance (README, docs/performance.md): at the default tiles (256 px, 64 px overlap) the
    self-test VAE's tiled frames are within a mean absolute difference of 3 levels of 255 and 35 dB PSNR of the
    untiled frames (measured: 2.2-2.6 levels, 36.5-37.5 dB at 320 to 512 px). Random weights learned no smooth
    image prior, so seams show more than they would with the real VAE."""
    vae = tiny_components.vae
    latents = torch.randn(1, 4, 1, 48, 48, generator=torch.Generator().manual_seed(0))  # 384x384
    with torch.no_grad(), DecoderCalls(vae) as calls:
        untiled = levels(VaeDecoder(vae, "cpu", "off", TileSettings(), 384, 384).frames(latents))
        assert calls.count == 1
        tiled = levels(VaeDecoder(vae, "cpu", "on", TileSettings(), 384, 384).frames(latents))
        assert calls.count == 1 + 4  # tiles at 0 and 192 px in both directions
    delta = np.abs(tiled - untiled)
    psnr = 10 * np.log10(255**2 / float((delta**2).mean()))
    assert delta.any()  # it was tiled: the seams differ
    assert delta.mean() <= 3.0 and psnr >= 35.0, (delta.mean(), psnr)


def test_the_auto_rule_compares_the_estimated_peak_with_the_free_memory(tiny_components):
    real = types.SimpleNamespace(
        config=types.SimpleNamespace(block_out_channels=(128, 256, 512, 512)), dtype=torch.bfloat16
    )  # fmt: skip - the HunyuanVideo VAE's widths and dtype
    peak = decode_peak_bytes(real, 608, 640, TileSettings(), tiled=False)
    assert peak == 12 * 128 * 2 * 17 * 640 * 608 == 20_321_402_880  # 20.3 GB at 640x608
    assert decode_peak_bytes(real, 608, 640, TileSettings(), tiled=True) == 12 * 128 * 2 * 17 * 256 * 256
    gb = 1024**3
    assert needs_tiling(peak, 24 * 10**9) and not needs_tiling(peak, 48 * gb) and not needs_tiling(peak, None)
    assert needs_tiling(peak, int(peak / 0.8) - 1) and not needs_tiling(peak, int(peak / 0.8) + 1)

    vae = tiny_components.vae
    small = decode_peak_bytes(vae, 32, 64, TileSettings(), tiled=False)
    assert small == 12 * 8 * 4 * 17 * 32 * 64  # 8 channels in float32
    settings = TileSettings(size=32, overlap=8)
    latents = torch.randn(1, 4, 2, 4, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        roomy = VaeDecoder(vae, "cpu", "auto", settings, 32, 64, read_free_memory=lambda _: int(small / 0.8) + 1)
        tight = VaeDecoder(vae, "cpu", "auto", settings, 32, 64, read_free_memory=lambda _: int(small / 0.8) - 1)
        assert torch.equal(roomy.window(latents, 0, 2), diffusers_decode(vae, latents, False, settings))
        assert torch.equal(tight.window(latents, 0, 2), diffusers_decode(vae, latents, True, settings))
        asked = VaeDecoder(vae, "cpu", "auto", settings, 32, 64, read_free_memory=lambda _: pytest.fail("asked"))
        asked.frames(latents)  # a preview does not ask (reading CUDA's free memory empties torch's cache)
    assert (roomy.tiled, tight.tiled, tight.stats.tiled_decodes) == (False, True, 1)


class FailingDecode:
    """`vae.decode` that runs out of memory on untiled decodes (or on every decode), recording each attempt's
    tiling; otherwise the real decode."""

    def __init__(self, vae, always: bool = False):
        self.vae, self.always, self.attempts = vae, always, []
        self.original = vae.decode

    def __call__(self, latents, return_dict=True):
        self.attempts.append(self.vae.use_tiling)
        if self.always or not self.vae.use_tiling:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.original(latents, return_dict=return_dict)


def test_out_of_memory_is_retried_once_tiled_and_later_windows_stay_tiled(tiny_components, monkeypatch):
    vae, window = tiny_components.vae, 6
    settings = TileSettings(size=32, overlap=8)
    latents = torch.randn(1, 4, 1 + 2 * window, 4, 8, generator=torch.Generator().manual_seed(3))
    failing = FailingDecode(vae)
    monkeypatch.setattr(vae, "decode", failing)
    decoder = VaeDecoder(vae, "cpu", "auto", settings, 32, 64, read_free_memory=lambda _: None)
    with torch.no_grad():
        first = decoder.window(latents[:, :, : 1 + window], 0, 1)
        second = decoder.window(latents[:, :, 1:], 1, 1 + window)
    monkeypatch.undo()
    # one untiled attempt (the first temporal tile), then every tile tiled: 3 of the first window (latent frames 0-6),
    # 4 of the second (1-12; it starts off the first window's grid of 0, 3, 6, so none is shared)
    assert failing.attempts == [False] + [True] * 7
    assert decoder.stats.retries == 1 and "Tried to allocate 20.00 GiB" in decoder.stats.retry_reasons[0]
    assert torch.equal(first, diffusers_decode(vae, latents[:, :, : 1 + window], True, settings))
    assert torch.equal(second, diffusers_decode(vae, latents[:, :, 1:], True, settings))


@pytest.mark.parametrize(
    "mode,always,attempts,advice",
    [
        ("auto", True, [False, True], "even in 32 px tiles after an untiled attempt"),
        ("on", True, [True], "even in 32 px tiles ("),
        ("off", False, [False], "with vae_tiling 'off'"),
    ],
)
def test_a_decode_that_still_runs_out_of_memory_fails_with_advice(
    tiny_components, monkeypatch, mode, always, attempts, advice
):
    vae = tiny_components.vae
    failing = FailingDecode(vae, always=always)
    monkeypatch.setattr(vae, "decode", failing)
    decoder = VaeDecoder(vae, "cpu", mode, TileSettings(size=32, overlap=8), 32, 64, read_free_memory=lambda _: None)
    with pytest.raises(DecodeOutOfMemory) as caught, torch.no_grad():
        decoder.window(torch.zeros(1, 4, 1 + WINDOW, 4, 8), 0, 1)
    assert failing.attempts == attempts
    message = str(caught.value)
    assert advice in message and "at 64x32" in message and "Tried to allocate 20.00 GiB" in message
    assert ("vae_tile_size" in message) != (mode == "off") and ("'auto' or 'on'" in message) == (mode == "off")
    info = classify(caught.value)  # what a job records: out of memory (503), with this advice
    assert info.kind == "out_of_memory" and advice in info.message


@pytest.mark.parametrize(
    "fields,field,message",
    [
        ({"vae_tiling": "yes"}, "vae_tiling", "'auto', 'on' or 'off'"),
        ({"vae_tile_size": 100}, "vae_tile_size", "multiple of 8"),
        ({"vae_tile_size": 32}, "vae_tile_size", "greater than or equal to 64"),
        ({"vae_tile_size": 128, "vae_tile_overlap": 72}, "vae_tile_overlap", "72 exceeds half of vae_tile_size (128)"),
        ({"vae_tile_frames": 6}, "vae_tile_frames", "multiple of 4"),
        ({"vae_tile_frames": 8, "vae_tile_frames_overlap": 8}, "vae_tile_frames_overlap", "exceeds half"),
    ],
)
def test_tile_fields_are_refused_naming_the_field(fields, field, message):
    with pytest.raises(pydantic.ValidationError) as caught:
        GenerateRequest(**fields)
    errors = caught.value.errors()
    assert len(errors) == 1 and errors[0]["loc"] == (field,) and message in errors[0]["msg"]
    assert GenerateRequest(vae_tile_size=128, vae_tile_overlap=64).vae_tile_overlap == 64  # exactly half is fine
