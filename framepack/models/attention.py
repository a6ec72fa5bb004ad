"""Attention kernels through diffusers' attention dispatcher, checked before any model loads.

The request names a kernel by its common name; diffusers names it differently and fails deep inside a model
call when the package is missing or the device cannot run it. `check_attention` answers first, with the fix,
and nothing is ever installed at run time.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from framepack.errors import FieldError

logger = logging.getLogger(__name__)

# request name -> (diffusers backend name, Python package that provides it, how to get it)
ATTENTION_BACKENDS: dict[str, tuple[str, str | None, str]] = {
    "sdpa": ("native", None, "built into PyTorch"),
    "flash": ("flash", "flash_attn", "pip install flash-attn (FlashAttention 2, CUDA)"),
    "flash3": ("_flash_3", "flash_attn_interface", "build FlashAttention 3 (hopper/) from source (H100/H200)"),
    "sage": ("sage", "sageattention", "pip install sageattention (CUDA)"),
    "xformers": ("xformers", "xformers", "pip install xformers matching your torch build (CUDA)"),
}


def check_attention(name: str, device: torch.device | str) -> None:
    """FieldError('attention', ...) when the kernel is unknown, not installed or cannot run on `device`."""
    if name not in ATTENTION_BACKENDS:
        raise FieldError("attention", f"unknown kernel {name!r}; allowed: {', '.join(ATTENTION_BACKENDS)}")
    backend, package, install = ATTENTION_BACKENDS[name]
    if package is None:
        return
    if importlib.util.find_spec(package) is None:
        raise FieldError(
            "attention",
            f"{name} is not installed (Python package {package!r} missing; {install}). "
            "Use attention 'sdpa', which always works; nothing is installed at run time.",
        )
    if torch.device(device).type != "cuda":
        raise FieldError("attention", f"{name} runs only on a CUDA GPU, this job runs on {device}; use 'sdpa'")
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    try:
        _check_attention_backend_requirements(AttentionBackendName(backend))
    except RuntimeError as error:  # installed but too old, or broken
        raise FieldError("attention", f"{name} is installed but not usable: {error}") from None


def set_attention(transformer: torch.nn.Module, name: str) -> None:
    """Route every attention layer of the transformer through the named kernel (a no-op when already set)."""
    backend = ATTENTION_BACKENDS[name][0]
    if getattr(transformer, "framepack_attention", None) == name:
        return
    # diffusers warns on every call that its backend switch is experimental: the warning says nothing to a user
    diffusers_logger = logging.getLogger("diffusers.models.modeling_utils")
    level = diffusers_logger.level
    diffusers_logger.setLevel(logging.ERROR)
    try:
        transformer.set_attention_backend(backend)
    finally:
        diffusers_logger.setLevel(level)
    transformer.framepack_attention = name
    logger.info("attention kernel: %s (diffusers backend %r)", name, backend)


__all__ = ["ATTENTION_BACKENDS", "check_attention", "set_attention"]
