"""The FramePack transformer as a flow-matching velocity function for one section."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from framepack.encoders import PromptEmbeds
from framepack.sampling.context import SectionContext

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TIMESTEP_SCALE = 1000.0  # sigma -> model timestep, and distilled guidance -> guidance embedding


@dataclass
class Conditioning:
    """What one model call is conditioned on besides the latents: text and SigLIP image tokens."""

    prompt: PromptEmbeds
    image_embeds: torch.Tensor


def rescale_cfg(guided: torch.Tensor, positive: torch.Tensor, rescale: float) -> torch.Tensor:
    """Pull the guided prediction's std back towards the positive one's (Lin et al. 2023, as in FramePack)."""
    if rescale <= 0.0:
        return guided
    dims = list(range(1, guided.ndim))
    rescaled = guided * (positive.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1.0 - rescale) * guided


def make_velocity_fn(
    transformer: torch.nn.Module,
    context: SectionContext,
    positive: Conditioning,
    negative: Conditioning | None,
    guidance: float,
    cfg_scale: float = 1.0,
    cfg_rescale: float = 0.0,
    device: torch.device | None = None,
    cache=None,
) -> VelocityFn:
    """Velocity of the section window; real CFG (two calls) only when cfg_scale > 1 and a negative is given.

    `device` is where the transformer computes (given when it is offloaded and rests elsewhere); `cache` (a
    `framepack.models.caches.TransformerCache`) sees each call with its branch, "cond" or "uncond", because the
    two branches of real CFG need separate cache states."""
    dtype = transformer.dtype
    device = device or next(transformer.parameters()).device
    context_kwargs = context.transformer_kwargs(device, dtype)
    guidance_embed = torch.tensor([guidance], dtype=dtype, device=device) * TIMESTEP_SCALE

    def call(x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, branch: str) -> torch.Tensor:
        with cache.call(branch) if cache is not None else contextlib.nullcontext():
            return transformer(
                hidden_states=x.to(device, dtype),
                timestep=(sigma * TIMESTEP_SCALE).to(device).expand(x.shape[0]),
                encoder_hidden_states=cond.prompt.llama,
                encoder_attention_mask=cond.prompt.mask,
                pooled_projections=cond.prompt.pooled,
                image_embeds=cond.image_embeds,
                guidance=guidance_embed,
                return_dict=False,
                **context_kwargs,
            )[0].float()

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        prediction = call(x, sigma, positive, "cond")
        if negative is None or cfg_scale <= 1.0:
            return prediction
        unconditional = call(x, sigma, negative, "uncond")
        guided = unconditional + cfg_scale * (prediction - unconditional)
        return rescale_cfg(guided, prediction, cfg_rescale)

    return velocity
