"""A tiny random-weight vision-language model, built in code: the prompt enhancer's self-test model.

It is a Qwen3-VL (the default enhancer's architecture) of about 200 k parameters, saved like the hub checkpoint
(`config.json`, `model.safetensors`, the processor's files with `processor_class` Qwen3VLProcessor and a ChatML
chat template), so the enhancer loads it through the same code as `Qwen/Qwen3-VL-2B-Instruct`. Its tokenizer is
byte-level BPE over the 256 byte symbols plus Qwen's special tokens, enough to encode any text. Its image processor
caps an image at 16 image tokens. Its text is NOISE (random bytes): it proves the enhancer's chain works, nothing
more. See ENHANCER.md in the project's shared notes for how the recipe was found.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from transformers import Qwen2Tokenizer, Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

from framepack.enhancer.processor import ImageOnlyQwenVLProcessor
from framepack.models.tiny import SELF_TEST_MARKER, byte_level_alphabet, write_json

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
PATCH_SIZE, MERGE_SIZE = 16, 2
TOKEN_PIXELS = (PATCH_SIZE * MERGE_SIZE) ** 2  # one image token per 32x32 pixels
MAX_IMAGE_TOKENS = 16
HIDDEN = 64

# ChatML with the system, user and assistant turns, string or list content, and Qwen's image placeholder. The
# newline after each role is written inside the expression: `{%-` would strip it.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

README = """# Tiny SELF-TEST vision-language model (random weights)

Written by `framepack.models.tiny_vlm.write_tiny_vlm` for the prompt enhancer's tests (`--enhancer tiny`). Its text
is NOISE: it proves that the enhancer loads a model, reads an image and a prompt and writes text, nothing more.
"""


def write_tiny_vlm(folder: Path | str, seed: int = 0) -> Path:
    """Write the random-weight Qwen3-VL self-test model (weights, processor, chat template) and return its path.
    The same seed writes the same weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tokenizer = build_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "initializer_range": 0.5,  # large random weights: the text then depends on the prompt and the image
            # mrope_section sums to head_dim / 2
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e4,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": HIDDEN,  # the text model's hidden size
            "patch_size": PATCH_SIZE,
            "num_position_embeddings": 64,  # a perfect square
            "deepstack_visual_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = None
    model.save_pretrained(folder)
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE,
        temporal_patch_size=2,
        size={"shortest_edge": TOKEN_PIXELS, "longest_edge": TOKEN_PIXELS * MAX_IMAGE_TOKENS},
    )
    processor = ImageOnlyQwenVLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    processor.save_pretrained(folder)
    processor_config = folder / "processor_config.json"
    saved = json.loads(processor_config.read_text(encoding="utf-8"))
    write_json(processor_config, {**saved, "processor_class": "Qwen3VLProcessor"})  # as the hub checkpoint says
    (folder / "README.md").write_text(README, encoding="utf-8")
    marker = {"self_test": True, "seed": seed, "note": "random weights: the enhancer's text is noise"}
    write_json(folder / SELF_TEST_MARKER, marker)
    logger.info("wrote the tiny SELF-TEST enhancer to %s in %.2f s", folder, time.perf_counter() - start)
    return folder


def build_tokenizer() -> Qwen2Tokenizer:
    """Byte-level BPE over the 256 byte symbols (no merges) plus Qwen's special tokens, which are never split."""
    vocab = {symbol: index for index, symbol in enumerate(byte_level_alphabet())}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    return tokenizer


__all__ = ["write_tiny_vlm"]
