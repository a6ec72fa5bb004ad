"""Prompts and images to the conditioning tensors the FramePack transformer takes.

These follow diffusers' `HunyuanVideoFramepackPipeline` (Llama hidden state -3 cropped after the template prefix, CLIP
pooled output, SigLIP last hidden state, VAE latents sampled with the job's generator), so that our section loop and
the pipeline agree on the same inputs; SigLIP gets the uint8 picture as in the original app (see `encode_vision`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from framepack.images import to_uint8
from framepack.models.components import Components

logger = logging.getLogger(__name__)

PROMPT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
LLAMA_MAX_TOKENS = 256
CLIP_MAX_TOKENS = 77


@dataclass
class PromptEmbeds:
    """Text conditioning for one prompt: Llama tokens [1, L, D] with mask [1, L], CLIP pooled [1, D2]."""

    llama: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype) -> PromptEmbeds:
        return PromptEmbeds(self.llama.to(device, dtype), self.mask.to(device, dtype), self.pooled.to(device, dtype))


def blend_prompt_embeds(old: PromptEmbeds, new: PromptEmbeds, weight: float) -> PromptEmbeds:
    """`(1 - weight) * old + weight * new`: a prompt change blended over sections.

    Llama tokens are mixed position by position. Each prompt's tokens past its mask (padding) are zeroed first, as
    the original FramePack pads its prompts with zeros, so where one prompt has tokens and the other has not, those
    tokens fade in from zero (or out to it); the mask is the union of the two (the longer prompt's tokens). The CLIP
    pooled vectors are mixed linearly."""
    llama = (1.0 - weight) * old.llama * old.mask[..., None] + weight * new.llama * new.mask[..., None]
    pooled = (1.0 - weight) * old.pooled + weight * new.pooled
    return PromptEmbeds(llama=llama, mask=torch.maximum(old.mask, new.mask), pooled=pooled)


def template_crop_start(tokenizer, template: str = PROMPT_TEMPLATE) -> int:
    """Number of tokens before the user prompt in the template (95 for the HunyuanVideo tokenizer).

    Measured rather than hard-coded, so a tokenizer that splits differently (a broken load, or the byte-level
    self-test tokenizer) is cropped at its own boundary instead of cutting into the prompt.
    """
    prefix = template.split("{}")[0]
    return len(tokenizer(prefix, add_special_tokens=True).input_ids)


@torch.no_grad()
def encode_prompt(
    components: Components,
    prompt: str,
    device: torch.device | str,
    dtype: torch.dtype,
    template: str = PROMPT_TEMPLATE,
    max_tokens: int = LLAMA_MAX_TOKENS,
) -> PromptEmbeds:
    """Encode one prompt with the Llama and CLIP text encoders."""
    tokenizer = components.tokenizer
    crop = template_crop_start(tokenizer, template)
    inputs = tokenizer(
        [template.format(prompt)],
        max_length=max_tokens + crop,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
        return_attention_mask=True,
    )
    if int(inputs.attention_mask.sum()) >= max_tokens + crop:
        logger.warning("prompt is longer than %d tokens and was truncated: %.60s...", max_tokens, prompt)
    ids = inputs.input_ids.to(device)
    mask = inputs.attention_mask.to(device)
    hidden = components.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-3]
    llama = hidden[:, crop:].to(dtype)
    mask = mask[:, crop:].to(dtype)

    clip_ids = components.tokenizer_2(
        [prompt], padding="max_length", max_length=CLIP_MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    pooled = components.text_encoder_2(clip_ids.to(device), output_hidden_states=False).pooler_output.to(dtype)
    return PromptEmbeds(llama=llama, mask=mask, pooled=pooled)


def vision_pixels(image: torch.Tensor) -> np.ndarray:
    """The uint8 picture [H, W, 3] of an image tensor [1, 3, H, W] in [-1, 1], rounded: what the original app hands
    SigLIP (a tensor made by `to_tensor` comes back exactly)."""
    return to_uint8(image[0].detach().cpu())


@torch.no_grad()
def encode_vision(components: Components, image: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """SigLIP last hidden state [1, N, D] for an image tensor [1, 3, H, W] in [-1, 1].

    The processor gets the uint8 picture and rescales it itself, as in the original app. (Floats in [0, 1] with
    `do_rescale=False`, as diffusers' pipeline passes them, are truncated back to uint8 before the resize, so about a
    third of the pixels lose a level and the embeddings differ by about 3e-2.)"""
    encoder = components.image_encoder
    inputs = components.feature_extractor(images=vision_pixels(image), return_tensors="pt")
    inputs = inputs.to(device=encoder.device, dtype=encoder.dtype)
    return encoder(**inputs).last_hidden_state.to(dtype)


@torch.no_grad()
def vae_encode(components: Components, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Scaled float32 latent [1, C, 1, h, w] of an image [1, 3, H, W] in [-1, 1], sampled with `generator`."""
    vae = components.vae
    pixels = image.unsqueeze(2).to(device=vae.device, dtype=vae.dtype)
    latent = vae.encode(pixels).latent_dist.sample(generator=generator)
    return (latent * vae.config.scaling_factor).float()


@torch.no_grad()
def vae_decode(components: Components, latents: torch.Tensor) -> torch.Tensor:
    """Pixels [1, 3, T, H, W] in [-1, 1] (float32, on the VAE's device) for scaled latents [1, C, t, h, w]."""
    vae = components.vae
    scaled = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
    return vae.decode(scaled, return_dict=False)[0].float()
