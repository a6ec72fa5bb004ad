"""The processor of Qwen3-VL and Qwen3.5 models without torchvision.

In transformers 5 `Qwen3VLProcessor` takes a video processor too, which cannot be built or loaded without
torchvision (not installed on CPU machines: its registry wheel does not import with the CPU torch). The image-only
subclass loads (and saves) the image processor (its PIL backend when torchvision is absent), the tokenizer and the
chat template, which is all the enhancer uses.
"""

from __future__ import annotations

from transformers import Qwen3VLProcessor


class ImageOnlyQwenVLProcessor(Qwen3VLProcessor):
    """Qwen3VLProcessor without its video processor, so it loads (and saves) without torchvision."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )
