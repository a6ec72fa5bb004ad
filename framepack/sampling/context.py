"""Where each section sits and what clean history it sees, for both FramePack variants.

Bi-directional (inverted anti-drifting) and F1 (forward) differ only in the index layout and on which side of
the section the history lies; both are expressed here as data so one section loop serves both.
Layouts follow the released checkpoints (and diffusers' pipeline): history slots of 1, 2 and 16 latent frames
fed at 1x, 2x and 4x compression.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

HISTORY_1X, HISTORY_2X, HISTORY_4X = 1, 2, 16
HISTORY_FRAMES = HISTORY_1X + HISTORY_2X + HISTORY_4X


@dataclass
class SectionContext:
    """Clean latents and RoPE frame indices that accompany one section's noisy window."""

    indices_latents: torch.Tensor
    latents_clean: torch.Tensor
    indices_clean: torch.Tensor
    latents_2x: torch.Tensor
    indices_2x: torch.Tensor
    latents_4x: torch.Tensor
    indices_4x: torch.Tensor

    def transformer_kwargs(self, device: torch.device, dtype: torch.dtype) -> dict:
        return dict(
            indices_latents=self.indices_latents,
            latents_clean=self.latents_clean.to(device, dtype),
            indices_latents_clean=self.indices_clean,
            latents_history_2x=self.latents_2x.to(device, dtype),
            indices_latents_history_2x=self.indices_2x,
            latents_history_4x=self.latents_4x.to(device, dtype),
            indices_latents_history_4x=self.indices_4x,
        )


def _fit(history: torch.Tensor, keep_start: bool) -> torch.Tensor:
    """Exactly HISTORY_FRAMES frames: the first (keep_start) or last ones, zero-padded on the far side."""
    frames = history.shape[2]
    if frames >= HISTORY_FRAMES:
        return history[:, :, :HISTORY_FRAMES] if keep_start else history[:, :, -HISTORY_FRAMES:]
    pad = history.new_zeros(history.shape[0], history.shape[1], HISTORY_FRAMES - frames, *history.shape[3:])
    return torch.cat([history, pad] if keep_start else [pad, history], dim=2)


def _context(prefix, i_prefix, i_latents, slot_1x, slot_2x, slot_4x) -> SectionContext:
    """The anchor frame travels with the 1x history slot (the model's `latents_clean`)."""
    (latents_1x, i_1x), (latents_2x, i_2x), (latents_4x, i_4x) = slot_1x, slot_2x, slot_4x
    return SectionContext(
        indices_latents=i_latents,
        latents_clean=torch.cat([prefix, latents_1x], dim=2),
        indices_clean=torch.cat([i_prefix, i_1x]),
        latents_2x=latents_2x,
        indices_2x=i_2x,
        latents_4x=latents_4x,
        indices_4x=i_4x,
    )


def bidirectional_context(
    prefix: torch.Tensor, after: torch.Tensor, padding: int, window: int, end_context: torch.Tensor | None = None
) -> SectionContext:
    """Section placed `padding` windows after the start frame; its history is the video that follows it.

    `after` holds the already generated latents that follow the section in time (maybe none); `end_context`
    replaces the 1x slot (the frame right after the window) in FLF2V's first generated section.
    """
    history = _fit(after, keep_start=True)
    latents_1x, latents_2x, latents_4x = history.split([HISTORY_1X, HISTORY_2X, HISTORY_4X], dim=2)
    if end_context is not None:
        latents_1x = end_context
    indices = torch.arange(1 + padding * window + window + HISTORY_FRAMES)
    i_prefix, _, i_latents, i_1x, i_2x, i_4x = indices.split(
        [1, padding * window, window, HISTORY_1X, HISTORY_2X, HISTORY_4X]
    )
    return _context(prefix, i_prefix, i_latents, (latents_1x, i_1x), (latents_2x, i_2x), (latents_4x, i_4x))


def loop_context(before: torch.Tensor, after: torch.Tensor, window: int) -> SectionContext:
    """A loop's connecting section, between the video's end and its start (`framepack.plan.add_loop_sections`), for
    both variants: the bi-directional layout at padding 0. `before` ends with the video's last latent frame, which
    takes the prefix slot right before the window (the layout has one past slot); `after` is the video's start in
    time order (the start latent, then the first sections' latents) and fills the 1x, 2x and 4x slots after it.

    F1 gets this layout too: its transformer takes any clean frames at any indices, but its checkpoint was trained with
    history before the window only, so with F1 the future slots are context it has not seen in training."""
    return bidirectional_context(before[:, :, -1:], after, 0, window)


def forward_context(prefix: torch.Tensor, before: torch.Tensor, window: int) -> SectionContext:
    """F1: the section follows its history; `before` is the video so far in time order (start frame first)."""
    history = _fit(before, keep_start=False)
    latents_4x, latents_2x, latents_1x = history.split([HISTORY_4X, HISTORY_2X, HISTORY_1X], dim=2)
    indices = torch.arange(1 + HISTORY_FRAMES + window)
    i_prefix, i_4x, i_2x, i_1x, i_latents = indices.split([1, HISTORY_4X, HISTORY_2X, HISTORY_1X, window])
    return _context(prefix, i_prefix, i_latents, (latents_1x, i_1x), (latents_2x, i_2x), (latents_4x, i_4x))


def single_frame_context(
    controls: list[tuple[torch.Tensor, int]], target_index: int, window: int, post: bool
) -> SectionContext:
    """One generated latent frame at `target_index` beside clean control latents at their own indices (musubi-tuner's
    one-frame layout): the controls (each [1, C, 1, h, w], already masked), then with `post` a zero frame at
    1 + window (where the frame after a window sits); the 2x slot holds 2 zero frames at 2 + window and the 4x slot
    16 after those. (musubi-tuner can leave the 2x and 4x slots out; diffusers' transformer cannot take a call
    without them, see huggingface/diffusers#13588, so they are always there, as zeros.)"""
    like = controls[0][0]

    def zeros(frames: int) -> torch.Tensor:
        return like.new_zeros(like.shape[0], like.shape[1], frames, *like.shape[3:])

    latents = [latent for latent, _index in controls] + ([zeros(HISTORY_1X)] if post else [])
    indices = [index for _latent, index in controls] + ([1 + window] if post else [])
    first_2x, first_4x = 2 + window, 2 + window + HISTORY_2X
    return SectionContext(
        indices_latents=torch.tensor([target_index]),
        latents_clean=torch.cat(latents, dim=2),
        indices_clean=torch.tensor(indices),
        latents_2x=zeros(HISTORY_2X),
        indices_2x=torch.arange(first_2x, first_2x + HISTORY_2X),
        latents_4x=zeros(HISTORY_4X),
        indices_4x=torch.arange(first_4x, first_4x + HISTORY_4X),
    )
