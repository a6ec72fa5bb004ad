"""Decoded section windows to frames in time order, with the original's linear overlap cross-fade.

Each section is decoded together with the latents generated next to it; consecutive windows share
`4*window - 3` pixel frames, which are cross-faded. Only one window and the shared tail are ever held, so
memory stays flat however long the video is.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from framepack.images import to_uint8

FrameWriter = Callable[[np.ndarray], None]  # uint8 [T, H, W, 3], in time order


def overlap_frames(window: int, temporal_scale: int = 4) -> int:
    return (window - 1) * temporal_scale + 1


class OverlapJoiner:
    """Receives decoded windows in time order and writes every frame once it can no longer change."""

    def __init__(self, overlap: int, write: FrameWriter):
        self.overlap = overlap
        self.write = write
        self.tail: torch.Tensor | None = None
        self.frames_written = 0

    def add(self, pixels: torch.Tensor) -> None:
        """`pixels`: [1, 3, T, H, W] in [-1, 1], the next window in time."""
        pixels = pixels.float()
        if self.tail is None:
            body = pixels
        else:
            overlap = self.tail.shape[2]  # `overlap`, or what `seed` gave
            weights = torch.linspace(1, 0, overlap, device=pixels.device).view(1, 1, -1, 1, 1)
            blended = weights * self.tail.to(pixels.device) + (1 - weights) * pixels[:, :, :overlap]
            body = torch.cat([blended, pixels[:, :, overlap:]], dim=2)
        self._emit(body[:, :, : body.shape[2] - self.overlap])
        self.tail = body[:, :, body.shape[2] - self.overlap :]

    def seed(self, tail: torch.Tensor) -> None:
        """Start from frames already written up to `tail` ([1, 3, T, H, W] in [-1, 1], the last T of them, not
        written yet): the next window's first T frames cross-fade with it (`keep_source`: the source video's end)."""
        if self.tail is not None:
            raise RuntimeError("the joiner has started already")
        self.tail = tail.float()

    def finish(self) -> None:
        if self.tail is not None:
            self._emit(self.tail)
            self.tail = None

    def _emit(self, pixels: torch.Tensor) -> None:
        if pixels.shape[2] == 0:
            return
        frames = to_uint8(pixels[0].transpose(0, 1))  # [T, 3, H, W] -> uint8 [T, H, W, 3]
        self.frames_written += frames.shape[0]
        self.write(frames)
