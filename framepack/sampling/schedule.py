"""The sigma schedule of the original FramePack (flux-style resolution-dependent time shift)."""

from __future__ import annotations

import math

import torch


def auto_shift_mu(
    seq_len: float,
    base_seq_len: float = 256,
    max_seq_len: float = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    max_exp_shift: float = 7.0,
) -> float:
    """Shift parameter mu for a latent sequence of `seq_len` tokens.

    Longer sequences keep more signal at a given sigma, so they need more time at high noise: mu grows
    linearly from `base_shift` at `base_seq_len` to `max_shift` at `max_seq_len`. FramePack's sequences are
    long, so the line is capped at ln(`max_exp_shift`) to keep the schedule from collapsing towards sigma 1.
    """
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    mu = base_shift + slope * (seq_len - base_seq_len)
    return min(mu, math.log(max_exp_shift))


def flow_sigmas(steps: int, shift: float | None, seq_len: float, start: float = 1.0) -> torch.Tensor:
    """Sigmas for `steps` sampling steps: float32, length steps + 1, from 1 (or `start`) down to exactly 0.

    Uniform times t = linspace(1, 0) are warped with the exponential time shift
    sigma(t) = e^mu / (e^mu + (1/t - 1)). mu = ln(shift) when `shift` > 0 (a fixed shift; same as
    diffusers' shift * t / (1 + (shift - 1) * t)), otherwise (None or <= 0) mu = auto_shift_mu(seq_len).
    Computed in float64 and rounded once; the final sigma is set to 0 explicitly because 1/t is infinite there.

    `start` < 1 (video-to-video: denoising from a re-noised source) runs the same number of steps from sigma = `start`:
    the times run from the t whose shifted sigma is `start` (the inverse of the shift) down to 0, so the steps are
    spread over the shorter range exactly as the full schedule spreads them. `start` = 1 is the full schedule.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < start <= 1.0:
        raise ValueError(f"start must be in (0, 1], got {start}")
    mu = math.log(shift) if shift is not None and shift > 0 else auto_shift_mu(seq_len)
    exp_mu = math.exp(mu)
    first = 1.0 if start == 1.0 else 1.0 / (1.0 + exp_mu * (1.0 / start - 1.0))
    t = torch.linspace(first, 0.0, steps + 1, dtype=torch.float64)
    sigmas = torch.zeros_like(t)
    sigmas[:-1] = exp_mu / (exp_mu + (1.0 / t[:-1] - 1.0))
    return sigmas.to(torch.float32)


def sequence_length(latent_frames: int, latent_height: int, latent_width: int, patch_size: int = 2) -> int:
    """Number of transformer tokens for a latent of this size (each patch_size x patch_size patch is one token)."""
    return latent_frames * latent_height * latent_width // (patch_size * patch_size)
