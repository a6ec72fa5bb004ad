"""A tiny random-weight FramePack model, built in code, for tests and self-tests without a download.

It has the real model's layout (diffusers folders, the hub's class names) and the real wiring (latent channels,
VAE compression factors, text/pooled/image embedding sizes all agree), so every code path runs; its output is
noise. The Llama tokenizer is byte-level BPE saved with the hub's `LlamaTokenizerFast` class name, so a loader
that falls into the transformers 5 tokenizer trap (see FACTS.md) is caught by the tests.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import diffusers
import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoFramepackTransformer3DModel,
)
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    LlamaConfig,
    LlamaModel,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
)

logger = logging.getLogger(__name__)

SELF_TEST_MARKER = "framepack_self_test.json"

LATENT_CHANNELS = 4
LLAMA_HIDDEN = 32
CLIP_HIDDEN = 24
SIGLIP_HIDDEN = 40
IMAGE_SIZE = 32

LLAMA_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"

# A few merges so the vocabulary is real BPE (multi-byte tokens) while staying tiny. "Ġ" is the byte-level
# symbol for a space: merges that start with it make words that carry their leading space, like Llama-3's.
LLAMA_MERGES = (
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("Ġ", "a"),
    ("i", "n"),
    ("e", "r"),
    ("o", "n"),
    ("Ġ", "c"),
    ("Ġ", "s"),
    ("a", "t"),
    ("e", "n"),
    ("o", "r"),
    ("Ġa", "n"),
    ("Ġan", "d"),
    ("Ġ", "o"),
    ("Ġo", "f"),
    ("in", "g"),
    ("r", "e"),
    ("Ġ", "m"),
    ("i", "o"),
    ("io", "n"),
    ("Ġ", "p"),
    ("Ġ", "d"),
    ("e", "s"),
)
# CLIP's BPE marks the end of a word with "</w>" instead of a leading space.
CLIP_MERGES = (
    ("t", "h"),
    ("th", "e</w>"),
    ("a", "t</w>"),
    ("c", "at</w>"),
    ("i", "n"),
    ("o", "n</w>"),
    ("a", "n"),
    ("an", "d</w>"),
    ("o", "f</w>"),
    ("in", "g</w>"),
    ("e", "r"),
    ("o", "r"),
)

README = """# FramePack SELF-TEST model

This folder holds a tiny FramePack model with RANDOM weights, written by `framepack.models.tiny.write_tiny_model`.
It exists to test the software without downloading the real model (tens of GB). Its output is NOISE:
do not use it to make videos.

Layout and class names follow the real model on the Hugging Face hub (diffusers layout), so both the FramePack
loader and diffusers' `HunyuanVideoFramepackPipeline.from_pretrained` can load it.
"""


def write_tiny_model(folder: Path | str, seed: int = 0) -> Path:
    """Write a complete random-weight FramePack model folder (diffusers layout) and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    llama_tokenizer = write_llama_tokenizer(folder / "tokenizer")
    clip_vocab = write_clip_tokenizer(folder / "tokenizer_2")
    write_text_encoder(folder / "text_encoder", llama_tokenizer, seed)
    write_text_encoder_2(folder / "text_encoder_2", clip_vocab, seed + 1)
    write_image_encoder(folder / "image_encoder", seed + 2)
    write_feature_extractor(folder / "feature_extractor")
    write_vae(folder / "vae", seed + 3)
    write_transformer(folder / "transformer", seed + 4)
    write_scheduler(folder / "scheduler")
    write_model_index(folder)
    (folder / "README.md").write_text(README, encoding="utf-8")
    marker = {"self_test": True, "seed": seed, "note": "random weights: output is noise"}
    (folder / SELF_TEST_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote tiny self-test model to %s in %.2f s", folder, time.perf_counter() - start)
    return folder


def byte_level_alphabet() -> list[str]:
    """The 256 printable symbols byte-level BPE uses for the bytes 0..255, in byte order (GPT-2's table)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


def write_llama_tokenizer(folder: Path) -> Tokenizer:
    """Byte-level BPE like Llama-3's, saved as tokenizer.json with the hub's class name."""
    vocab = {symbol: index for index, symbol in enumerate(byte_level_alphabet())}
    for left, right in LLAMA_MERGES:
        vocab[left + right] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=list(LLAMA_MERGES)))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA_SPECIAL_TOKENS])
    bos = LLAMA_SPECIAL_TOKENS[0]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        # The hub's class name on purpose: loading it as that class is the transformers 5 trap.
        "tokenizer_class": "LlamaTokenizerFast",
        "bos_token": bos,
        "eos_token": "<|end_of_text|>",
        "pad_token": "<|end_of_text|>",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    write_json(folder / "tokenizer_config.json", config)
    return tokenizer


def write_clip_tokenizer(folder: Path) -> int:
    """CLIP's BPE (words end in "</w>") as vocab.json + merges.txt, the files the hub ships; returns its size."""
    alphabet = byte_level_alphabet()
    symbols = alphabet + [symbol + "</w>" for symbol in alphabet]
    symbols += [left + right for left, right in CLIP_MERGES] + [CLIP_BOS, CLIP_EOS]
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "vocab.json", vocab)
    merges = "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in CLIP_MERGES)
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": CLIP_BOS,
        "eos_token": CLIP_EOS,
        "pad_token": CLIP_EOS,
        "unk_token": CLIP_EOS,
        "model_max_length": 77,
    }
    write_json(folder / "tokenizer_config.json", config)
    return len(vocab)


def write_text_encoder(folder: Path, tokenizer: Tokenizer, seed: int) -> None:
    """Llama with 3 layers, so that hidden_states[-3] (what FramePack uses) is a real layer's output."""
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        hidden_size=LLAMA_HIDDEN,
        intermediate_size=2 * LLAMA_HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        rope_theta=500000.0,
        bos_token_id=tokenizer.token_to_id("<|begin_of_text|>"),
        eos_token_id=tokenizer.token_to_id("<|end_of_text|>"),
        pad_token_id=tokenizer.token_to_id("<|end_of_text|>"),
    )
    torch.manual_seed(seed)
    LlamaModel(config).save_pretrained(folder)


def write_text_encoder_2(folder: Path, vocab_size: int, seed: int) -> None:
    """CLIP-L's text tower, tiny; its pooled output feeds the transformer's pooled projection."""
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=CLIP_HIDDEN,
        intermediate_size=2 * CLIP_HIDDEN,
        projection_dim=CLIP_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    torch.manual_seed(seed)
    CLIPTextModel(config).save_pretrained(folder)


def write_image_encoder(folder: Path, seed: int) -> None:
    """SigLIP vision tower, tiny; its last hidden state feeds the transformer's image projection."""
    config = SiglipVisionConfig(
        hidden_size=SIGLIP_HIDDEN,
        intermediate_size=2 * SIGLIP_HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=8,
    )
    torch.manual_seed(seed)
    SiglipVisionModel(config).save_pretrained(folder)


def write_feature_extractor(folder: Path) -> None:
    """SigLIP preprocessing at the tiny image size, normalised to [-1, 1] like the real one."""
    processor = SiglipImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]
    )
    processor.save_pretrained(folder)


def write_vae(folder: Path, seed: int) -> None:
    """HunyuanVideo's causal 3D VAE with its real compression (8x spatial, 4x temporal) and tiny widths."""
    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=LATENT_CHANNELS,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=0,
        norm_num_groups=4,
        scaling_factor=0.476986,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=False,
    )
    vae.save_pretrained(folder)


def write_transformer(folder: Path, seed: int) -> None:
    """The FramePack transformer with every FramePack part switched on (image projection, history embedder)."""
    torch.manual_seed(seed)
    transformer = HunyuanVideoFramepackTransformer3DModel(
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        mlp_ratio=4.0,
        patch_size=2,
        patch_size_t=1,
        qk_norm="rms_norm",
        guidance_embeds=True,
        text_embed_dim=LLAMA_HIDDEN,
        pooled_projection_dim=CLIP_HIDDEN,
        rope_theta=256.0,
        rope_axes_dim=(2, 2, 4),
        image_condition_type=None,
        has_image_proj=True,
        image_proj_dim=SIGLIP_HIDDEN,
        has_clean_x_embedder=True,
    )
    transformer.save_pretrained(folder)


def write_scheduler(folder: Path) -> None:
    """Flow-matching scheduler with the resolution-dependent shift the original sampler uses."""
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0,
        use_dynamic_shifting=True,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        base_shift=0.5,
        max_shift=1.15,
    )
    scheduler.save_pretrained(folder)


def write_model_index(folder: Path) -> None:
    """model_index.json so that diffusers' HunyuanVideoFramepackPipeline.from_pretrained(folder) works.

    The tokenizer is listed as `PreTrainedTokenizerFast` (not the hub's `LlamaTokenizerFast`) so that the pipeline
    loads it honouring tokenizer.json, like our loader does; parity tests then compare like with like.
    """
    index = {
        "_class_name": "HunyuanVideoFramepackPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": ["transformers", "SiglipImageProcessor"],
        "image_encoder": ["transformers", "SiglipVisionModel"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "LlamaModel"],
        "text_encoder_2": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "transformer": ["diffusers", "HunyuanVideoFramepackTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLHunyuanVideo"],
    }
    write_json(folder / "model_index.json", index)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def is_self_test_folder(folder: Path | str) -> bool:
    """True when `folder` (or its parent, for a component subfolder) carries the self-test marker."""
    folder = Path(folder)
    return (folder / SELF_TEST_MARKER).is_file() or (folder.parent / SELF_TEST_MARKER).is_file()


__all__ = ["SELF_TEST_MARKER", "is_self_test_folder", "write_tiny_model"]
