"""The loaded FramePack model: one explicit object holding every component."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from framepack.models.recipe import WEIGHTED_COMPONENTS


@dataclass
class Components:
    """Everything a FramePack generation needs, loaded and ready.

    `variant` is "bidirectional" or "f1" (which transformer was loaded); `self_test` marks the random-weight
    tiny model, whose output is noise.
    """

    transformer: Any  # HunyuanVideoFramepackTransformer3DModel
    vae: Any  # AutoencoderKLHunyuanVideo
    text_encoder: Any  # LlamaModel
    tokenizer: Any  # PreTrainedTokenizerFast (byte-level BPE, honours tokenizer.json)
    text_encoder_2: Any  # CLIPTextModel
    tokenizer_2: Any  # CLIPTokenizer
    image_encoder: Any  # SiglipVisionModel
    feature_extractor: Any  # SiglipImageProcessorPil
    variant: str = "bidirectional"
    self_test: bool = False
    execution_device: torch.device | None = None  # set by offloading: where the models run, wherever they rest

    @property
    def device(self) -> torch.device:
        """Where inputs go and the models compute (the GPU even while offloaded components rest on the CPU)."""
        if self.execution_device is not None:
            return self.execution_device
        return next(self.transformer.parameters()).device

    def modules(self) -> dict[str, torch.nn.Module]:
        """The components with weights, by name, in recipe.WEIGHTED_COMPONENTS' order (the one list of them)."""
        return {name: getattr(self, name) for name in WEIGHTED_COMPONENTS}

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    @property
    def spatial_scale(self) -> int:
        return int(self.vae.config.spatial_compression_ratio)

    @property
    def temporal_scale(self) -> int:
        return int(self.vae.config.temporal_compression_ratio)
