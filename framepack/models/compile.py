"""Regional compilation of the FramePack transformer: torch.compile on its repeated blocks (`compile: blocks`).

The 20 dual-stream and 40 single-stream blocks of the transformer are two classes repeated; compiling each
block's forward (as diffusers' `compile_repeated_blocks` does for models that declare `_repeated_blocks`, which
HunyuanVideoFramepackTransformer3DModel does not in diffusers 0.42) compiles one graph per block class and
shape, shared by every block of the class, instead of one whole-model graph: the compile costs seconds to
minutes once, and the compiled blocks serve every later section and job while the model stays loaded.

Each block's `forward` is replaced by its compiled version as an instance attribute (and the attribute deleted
to undo it). Hooks that wrap a block's forward (block offloading, the caches) are added after the compile and
removed before an undo, so they run around the compiled block, in Python, and never inside its graph.

`check_compile` refuses, before any model loads, a platform that cannot compile: torch.compile unsupported on
this Python, no Triton for a CUDA GPU, no C++ compiler for the CPU (inductor builds C++ kernels there), or a
device other than the CPU and CUDA.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import types
from typing import get_args

import torch

from framepack.errors import FieldError
from framepack.request import GenerateRequest

logger = logging.getLogger(__name__)

COMPILE_MODES: tuple[str, ...] = get_args(GenerateRequest.model_fields["compile"].annotation)  # its choices
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")
MODE_ATTR = "framepack_compile"
_COMPILED_ATTR = "_framepack_compiled_forward"


def compile_problem(device: torch.device | str) -> str | None:
    """Why torch.compile (inductor) cannot run for `device` here, or None when it can."""
    device = torch.device(device)
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support Python {sys.version.split()[0]} with torch {torch.__version__}"
    if device.type == "cuda":
        if not _has_triton():
            hint = "pip install triton-windows" if sys.platform == "win32" else "install the triton build of your torch"
            return f"compiling for a CUDA GPU needs Triton, which is not usable here ({hint})"
        return None
    if device.type == "cpu":
        candidates = cpp_compilers()
        if not any(shutil.which(candidate) for candidate in candidates):
            return (
                f"compiling on the CPU needs a C++ compiler (torch's inductor builds C++ kernels), and none of "
                f"{', '.join(candidates)} was found; install one (Linux: g++, macOS: the Xcode command line tools, "
                "Windows: the MSVC build tools) or name it in the CXX environment variable"
            )
        return None
    return f"compiling is supported on the CPU and CUDA GPUs; this job runs on {device.type}"


def cpp_compilers() -> list[str]:
    """The C++ compilers inductor tries on this platform, in its order (its `cpp.cxx` setting; `cl` on Windows)."""
    if sys.platform == "win32":
        return [os.environ.get("CXX", "cl")]
    import torch._inductor.config as inductor_config

    setting = inductor_config.cpp.cxx
    candidates = setting if isinstance(setting, (list, tuple)) else (setting,)
    return [candidate for candidate in candidates if candidate]


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton
    except ImportError:  # a torch without the helper
        import importlib.util

        return importlib.util.find_spec("triton") is not None
    return has_triton()


def check_compile(mode: str, device: torch.device | str) -> None:
    """FieldError('compile', ...) for an unknown mode, or for 'blocks' where this platform cannot compile."""
    if mode not in COMPILE_MODES:
        raise FieldError("compile", f"unknown mode {mode!r}; allowed: {', '.join(COMPILE_MODES)}")
    if mode == "none":
        return
    problem = compile_problem(device)
    if problem is not None:
        raise FieldError("compile", f"'{mode}' cannot run here: {problem}. Use compile 'none'")


def repeated_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The dual-stream then single-stream blocks of the transformer."""
    return [block for name in BLOCK_LISTS for block in getattr(transformer, name, ())]


def compile_mode(transformer: torch.nn.Module) -> str:
    return getattr(transformer, MODE_ATTR, "none")


def set_compile(transformer: torch.nn.Module, mode: str) -> None:
    """Compile the repeated blocks ('blocks') or restore their eager forward ('none'); a no-op when already so.

    Call it while no hook wraps a block's forward (before offloading is applied, outside a cache's context).
    Compiling happens lazily, on each block class's first call with a new shape.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; allowed: {', '.join(COMPILE_MODES)}")
    if compile_mode(transformer) == mode:
        return
    blocks = repeated_blocks(transformer)
    for block in blocks:
        current = vars(block).get("forward")
        if mode == "blocks":
            if not _is_eager(block, current):
                raise RuntimeError(f"{type(block).__name__}.forward is wrapped (a hook?); compile before adding hooks")
            compiled = torch.compile(types.MethodType(type(block).forward, block))
            setattr(block, _COMPILED_ATTR, compiled)
            block.forward = compiled
        else:
            if current is None or current is not vars(block).get(_COMPILED_ATTR):
                raise RuntimeError(f"{type(block).__name__}.forward is not the compiled one (a hook?); remove it first")
            del block.forward
            delattr(block, _COMPILED_ATTR)
    setattr(transformer, MODE_ATTR, mode)
    logger.info(
        "compile %s: %d transformer blocks %s",
        mode,
        len(blocks),
        "compile on their first call (then reused)" if mode == "blocks" else "run eagerly",
    )


def _is_eager(block: torch.nn.Module, forward: object) -> bool:
    """True for the class's own forward: no instance attribute, or the bound method a removed hook put back."""
    if forward is None:
        return True
    return getattr(forward, "__func__", None) is type(block).forward and getattr(forward, "__self__", None) is block


def compile_seconds() -> float:
    """Seconds torch.compile has spent compiling in this process so far (dynamo's own account; 0 without it)."""
    try:
        from torch._dynamo.utils import compilation_time_metrics
    except ImportError:  # torch without the metric: compile time is not reported
        return 0.0
    return float(sum(compilation_time_metrics.get("_compile.compile_inner", ())))


__all__ = [
    "COMPILE_MODES",
    "check_compile",
    "compile_mode",
    "compile_problem",
    "compile_seconds",
    "repeated_blocks",
    "set_compile",
]
