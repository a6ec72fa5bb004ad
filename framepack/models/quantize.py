"""On-the-fly quantization of a loaded component (`quantize=` in a recipe line): weight-only with optimum-quanto
(int8, float8, int4: saves memory), or float8 compute with torchao (float8-dynamic: gains speed on GPUs of compute
capability 8.9 and up).

`quantize_module(module, kind, component)` replaces, in place, the Linear (and Conv2d) layers of a loaded model by
optimum-quanto's QLinear/QConv2d with frozen int8 / float8 (e4m3fn) / int4 weights; activations stay in the float
dtype the model was loaded in, which stays the compute dtype (`module.dtype` is unchanged). Weights are quantized
per output channel (int4: in groups of up to 128 inputs), on whatever device the module is on: the loader does it
on the CPU right after loading, then moves the module to its device, so a big model never sits on the GPU
unquantized. A quantized module still moves with `.to(device)` (quanto moves its quantized tensors), but its
float dtype can no longer be changed (`.to(torch.float16)` raises).

Layers kept in their float dtype (KEEP_UNQUANTIZED), measured on the tiny model (relative L2 error of one
transformer call against float32 when only that group is quantized, int8 / float8; everything: 0.32% / 2.1%):
- transformer `proj_out` (final projection to the latent velocity): 0.31% / 1.9%, almost all of the error,
  since its rounding lands on the output unaveraged; `norm_out` (final AdaLN modulation): 0.07% / 0.33%;
  `time_text_embed` (timestep, guidance and pooled-CLIP embedders, whose output modulates every block):
  0.04% / 0.34%. By contrast all weights of a double-stream block give 0.05% / 0.23%, of a single-stream block
  0.02% / 0.23%. Together these kept layers are about 0.4% of the 13B weights; keeping them brings the whole
  model's error to 0.06% / 0.30%. Also kept: the refiner's own timestep/text embedder
  (`context_embedder.time_text_embed`) and the patch embedders `x_embedder` / `clean_x_embedder` (Conv3d layers,
  which quanto does not quantize anyway).
- image_encoder (SigLIP): the patch embedding Conv2d, the model's input layer.
- text encoders and VAE: nothing beyond what quanto leaves alone (embeddings, norms, Conv3d). Note that quanto
  has no Conv3d layer, so `quantize=` on the HunyuanVideo VAE only touches its few attention Linear layers and
  saves almost nothing (a warning says so).
Also kept, for int8 on bfloat16 weights only: Linear layers whose input size is not a multiple of 16. quanto
runs those on the CPU through torch._weight_int8pack_mm, which crashes the process (segfault) or returns
garbage for such sizes with torch 2.13 (checked for every input size 4..96); the real model's sizes are all
multiples of 64, so this only matters for small test models.

`float8-dynamic` uses torchao's `Float8DynamicActivationFloat8WeightConfig`: the weights of the Linear layers are
stored in float8_e4m3fn with a scale per output row (per tensor when the model is not in bfloat16), and each call
quantizes its activations to float8 too, so the matmuls run on the GPU's float8 tensor cores (torch._scaled_mm).
Only CUDA GPUs of compute capability 8.9 and newer (Ada, Hopper, Blackwell) do that; anywhere else the choice is
refused before any model loads (`check_compute`). The same layers as above stay in float, and so do Linear layers
whose sizes are not multiples of 16 (float8 matmuls need them). Layers are quantized one by one on the GPU
(`quantize_(..., device=...)`), so the full-precision model never sits there whole. torchao is optional: it is not
in requirements.txt (only these GPUs use it) and a missing torchao is reported with the command that installs it.
This path needs a GPU that this project's CI does not have; only its refusals and its choice of layers are tested.

Moving and offloading a quantized module (checked on the CPU): `.to(device)`, accelerate's
`cpu_offload_with_hook` (whole-model offload) and diffusers' `apply_group_offloading` (block and leaf level) work;
accelerate's `cpu_offload` (sequential offload) fails (it rebuilds parameters as `type(param)(tensor)`, which
quanto's tensors do not support), as do `copy.deepcopy`, `.to(dtype)` / `.half()` (which leaves the module half
cast) and diffusers' `enable_layerwise_casting`. PEFT LoRAs (framepack/models/lora.py) apply on top of the
quantized layers and unload exactly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from framepack.errors import FieldError, UserError
from framepack.models.recipe import QUANTIZATIONS, WEIGHTED_COMPONENTS, Recipe

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install optimum-quanto"
TORCHAO_INSTALL_HINT = "pip install torchao"
QUANTO_QTYPES = {"int8": "qint8", "float8": "qfloat8", "int4": "qint4"}
COMPUTE_KINDS = ("float8-dynamic",)  # torchao: float8 weights and activations, computed in float8
MIN_FLOAT8_CAPABILITY = (8, 9)  # CUDA compute capability of float8 tensor cores (Ada, Hopper, Blackwell)
FLOAT8_MATMUL_MULTIPLE = 16  # torch._scaled_mm needs both sizes of a float8 weight to be multiples of 16
SUMMARY_ATTR = "_framepack_quantization"

# Module name patterns (fnmatch, whole name) kept in float, per component; why: see the module docstring.
KEEP_UNQUANTIZED: dict[str, tuple[str, ...]] = {
    "transformer": (
        "x_embedder*",
        "clean_x_embedder*",
        "time_text_embed*",
        "context_embedder.time_text_embed*",
        "norm_out*",
        "proj_out",
    ),
    "image_encoder": ("*embeddings*",),
    "text_encoder": (),
    "text_encoder_2": (),
    "vae": (),
}


class QuantizationError(UserError, ValueError):
    """An unknown quantization kind or component; the message names the allowed values."""


class QuantizationUnavailableError(UserError, RuntimeError):
    """optimum-quanto is not installed (or does not import); the message says how to install it."""


@dataclass(frozen=True)
class QuantizationSummary:
    """What `quantize_module` did, kept on the module (see `quantization_of`)."""

    kind: str
    layers: int  # layers whose weights were quantized
    kept: tuple[str, ...]  # quantizable layers kept in float
    bytes_before: int
    bytes_after: int
    seconds: float

    def describe(self) -> str:
        return (
            f"{self.kind}: {self.layers} layers quantized, {len(self.kept)} kept in float, "
            f"{format_bytes(self.bytes_before)} -> {format_bytes(self.bytes_after)} in {self.seconds:.2f} s"
        )


def quantization_missing(kind: str = "int8") -> str | None:
    """None when the library that does `kind` imports (optimum-quanto, or torchao for float8-dynamic), else a
    one-line message saying how to install it."""
    if kind in COMPUTE_KINDS:
        return torchao_missing()
    try:
        import optimum.quanto  # noqa: F401
    except Exception as error:  # noqa: BLE001 - an ImportError, or a broken install failing in its own way
        return (
            f"quantization (quantize=... in the model recipe) needs optimum-quanto, which does not import here "
            f"({type(error).__name__}: {error}). Fix: {INSTALL_HINT} in the Python environment that runs FramePack, "
            f"or remove quantize=... from the recipe"
        )
    return None


def torchao_missing() -> str | None:
    """None when torchao's dynamic float8 quantization imports, else a one-line message saying how to install it."""
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig  # noqa: F401
    except Exception as error:  # noqa: BLE001 - an ImportError, or an install that does not match this torch
        return (
            f"quantize=float8-dynamic needs torchao, which does not import here ({type(error).__name__}: {error}). "
            f"Fix: {TORCHAO_INSTALL_HINT} (a release that supports torch {torch.__version__}) in the Python "
            "environment that runs FramePack, or use quantize=float8 (weight-only)"
        )
    return None


def float8_compute_problem(
    device: torch.device | str, capability: tuple[int, int] | None = None, check_torchao: bool = True
) -> str | None:
    """Why float8 compute cannot run on `device`, or None when it can. `capability` is the GPU's compute capability
    (read from the device when not given); `check_torchao` also requires torchao to import."""
    device = torch.device(device)
    wanted = ".".join(map(str, MIN_FLOAT8_CAPABILITY))
    if device.type != "cuda":
        return (
            f"float8 compute needs a CUDA GPU of compute capability {wanted} or newer (Ada, Hopper, Blackwell), "
            f"and this job runs on the {device.type}"
        )
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    if tuple(capability) < MIN_FLOAT8_CAPABILITY:
        return (
            f"float8 compute needs a GPU of compute capability {wanted} or newer (Ada, Hopper, Blackwell); this "
            f"GPU has {capability[0]}.{capability[1]}"
        )
    return torchao_missing() if check_torchao else None


def check_compute(recipe: Recipe, device: torch.device | str, capability: tuple[int, int] | None = None) -> None:
    """FieldError('model', ...) when a recipe line asks for float8 compute that `device` cannot do; nothing loads."""
    for name, source in recipe.items():
        if source.quantize not in COMPUTE_KINDS:
            continue
        problem = float8_compute_problem(device, capability)
        if problem is not None:
            raise FieldError(
                "model",
                f"the recipe's {name} line asks quantize={source.quantize}, which cannot run here: {problem}. Use "
                f"quantize=float8 (weight-only float8, saves memory on any device) or leave quantize out",
            )


def check_kind(kind: str) -> None:
    if kind not in QUANTIZATIONS:
        raise QuantizationError(f"unknown quantization {kind!r}; allowed: {', '.join(QUANTIZATIONS)}")


def quantize_module(
    module: torch.nn.Module, kind: str, component: str, device: torch.device | str | None = None
) -> torch.nn.Module:
    """Quantize `module`'s weights to `kind` (int8, float8, int4, float8-dynamic) in place, freeze them, and return
    the module.

    `component` (a recipe component name: transformer, vae, text_encoder, text_encoder_2, image_encoder) picks
    the layers kept in float. The module's float dtype and eval/grad state are kept, and its device too, except
    for float8-dynamic: its layers are quantized on `device` (the GPU that computes; required) and stay there.
    """
    check_kind(kind)
    if component not in WEIGHTED_COMPONENTS:
        raise QuantizationError(
            f"cannot quantize {component!r}: quantization applies to {', '.join(WEIGHTED_COMPONENTS)}"
        )
    if kind in COMPUTE_KINDS:
        problem = float8_compute_problem(device if device is not None else "cpu")
        if problem is not None:
            raise QuantizationUnavailableError(f"{component}: quantize={kind}: {problem}")
    missing = quantization_missing(kind)
    if missing is not None:
        raise QuantizationUnavailableError(f"{component}: {missing}")

    if quantized_layers(module):
        raise ValueError(f"{component} is already quantized; quantize a freshly loaded model")
    start = time.perf_counter()
    dtype = getattr(module, "dtype", None)
    training = module.training
    grads = {name: parameter.requires_grad for name, parameter in module.named_parameters()}
    bytes_before = module_bytes(module)
    if kind in COMPUTE_KINDS:
        exclude = _quantize_float8_dynamic(module, component, device)
    else:
        exclude = _quantize_quanto(module, kind, component)
    # freeze() wraps each quantized weight in a new nn.Parameter, which asks for gradients by default
    if not any(grads.values()):
        module.requires_grad_(False)
    module.train(training)

    layers = quantized_layers(module)
    if dtype is not None and module.dtype != dtype:  # never seen: quanto's tensors report their float dtype
        raise RuntimeError(f"{component}: quantization changed the model dtype from {dtype} to {module.dtype}")
    summary = QuantizationSummary(
        kind, len(layers), tuple(exclude), bytes_before, module_bytes(module), time.perf_counter() - start
    )
    setattr(module, SUMMARY_ATTR, summary)
    logger.info("quantized %s (%s) to %s", component, type(module).__name__, summary.describe())
    if exclude:
        logger.debug("%s: kept in float: %s", component, ", ".join(exclude))
    if not layers:
        logger.warning(
            "%s: quantize=%s found no layer to quantize (optimum-quanto quantizes Linear and Conv2d layers only); "
            "its weights are unchanged",
            component,
            kind,
        )
    elif summary.bytes_after > 0.9 * summary.bytes_before:
        logger.warning(
            "%s: quantize=%s saved little memory (%s -> %s): most of its weights are in layers optimum-quanto "
            "does not quantize (Conv3d, embeddings, norms)",
            component,
            kind,
            format_bytes(summary.bytes_before),
            format_bytes(summary.bytes_after),
        )
    return module


def _quantize_quanto(module: torch.nn.Module, kind: str, component: str) -> list[str]:
    """optimum-quanto weight-only quantization in place; returns the quantizable layers kept in float."""
    from optimum import quanto

    candidates = _quantizable_layers(module)
    keep = set(_matching(candidates, KEEP_UNQUANTIZED[component])) | set(_unsafe_on_cpu(module, kind))
    exclude = sorted(keep)
    quanto.quantize(module, weights=getattr(quanto, QUANTO_QTYPES[kind]), exclude=exclude or None)
    quanto.freeze(module)
    return exclude


def float8_dynamic_layers(module: torch.nn.Module, component: str) -> tuple[list[str], list[str]]:
    """(layers float8-dynamic quantizes, Linear layers it keeps in float): every Linear layer except those of
    KEEP_UNQUANTIZED and those with a size that is not a multiple of 16."""
    linears = {name: layer for name, layer in module.named_modules() if type(layer) is torch.nn.Linear}
    keep = set(_matching(list(linears), KEEP_UNQUANTIZED[component]))
    keep |= {
        name
        for name, layer in linears.items()
        if layer.in_features % FLOAT8_MATMUL_MULTIPLE or layer.out_features % FLOAT8_MATMUL_MULTIPLE
    }
    return [name for name in linears if name not in keep], sorted(keep)


def _quantize_float8_dynamic(module: torch.nn.Module, component: str, device: torch.device | str | None) -> list[str]:
    """torchao dynamic float8 in place, layer by layer on `device`; returns the Linear layers kept in float."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    selected, kept = float8_dynamic_layers(module, component)
    chosen = set(selected)
    granularity = PerRow() if getattr(module, "dtype", None) == torch.bfloat16 else PerTensor()
    quantize_(
        module,
        Float8DynamicActivationFloat8WeightConfig(granularity=granularity),
        filter_fn=lambda _layer, name: name in chosen,
        device=device,
    )
    return kept


def quantization_of(module: torch.nn.Module) -> QuantizationSummary | None:
    """The summary `quantize_module` left on `module`, None when it was not quantized that way."""
    return getattr(module, SUMMARY_ATTR, None)


def quantized_layers(module: torch.nn.Module) -> list[str]:
    """Names of the quantized layers in `module`: optimum-quanto's (QLinear, QConv2d...) and Linear layers whose
    weight is a torchao tensor (float8-dynamic)."""
    try:
        from optimum.quanto.nn import QModuleMixin
    except Exception:  # noqa: BLE001 - not installed: no quanto layer can be there
        QModuleMixin = ()  # noqa: N806
    return [
        name
        for name, layer in module.named_modules()
        if (QModuleMixin and isinstance(layer, QModuleMixin)) or _has_torchao_weight(layer)
    ]


def _has_torchao_weight(layer: torch.nn.Module) -> bool:
    weight = getattr(layer, "weight", None) if type(layer) is torch.nn.Linear else None
    return weight is not None and type(weight) not in (torch.Tensor, torch.nn.Parameter)


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes held by the module's parameters and buffers, counting quantized tensors by their real storage."""
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return sum(tensor_bytes(t) for t in tensors.values())


def tensor_bytes(tensor: torch.Tensor) -> int:
    """A tensor's storage in bytes; for a wrapper subclass (quanto's QTensors), the sum of its inner tensors."""
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and hasattr(tensor, "__tensor_flatten__"):
        names, _meta = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def format_bytes(count: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} B"


def _quantizable_layers(module: torch.nn.Module) -> list[str]:
    layers = (torch.nn.Linear, torch.nn.Conv2d)
    return [name for name, layer in module.named_modules() if type(layer) in layers]


def _matching(names: list[str], patterns: tuple[str, ...]) -> list[str]:
    from fnmatch import fnmatchcase

    return [name for name in names if any(fnmatchcase(name, pattern) for pattern in patterns)]


def _unsafe_on_cpu(module: torch.nn.Module, kind: str) -> list[str]:
    """bfloat16 int8 Linear layers whose input size is not a multiple of 16: quanto's CPU kernel for them
    (torch._weight_int8pack_mm) segfaults or returns garbage with torch 2.13, so they stay in float."""
    if kind != "int8":
        return []
    return [
        name
        for name, layer in module.named_modules()
        if type(layer) is torch.nn.Linear and layer.weight.dtype == torch.bfloat16 and layer.in_features % 16
    ]


__all__ = [
    "COMPUTE_KINDS",
    "KEEP_UNQUANTIZED",
    "QUANTIZATIONS",
    "QuantizationError",
    "QuantizationSummary",
    "QuantizationUnavailableError",
    "check_compute",
    "float8_compute_problem",
    "float8_dynamic_layers",
    "module_bytes",
    "quantization_missing",
    "quantization_of",
    "quantize_module",
    "quantized_layers",
]
