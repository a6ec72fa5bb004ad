"""The FramePack transformer from one `.safetensors` file (the community's single-file bf16 and fp8 checkpoints).

The community files (Kijai/HunyuanVideo_comfy `FramePackI2V_HY_bf16.safetensors` and
`FramePackI2V_HY_fp8_e4m3fn.safetensors`, made from lllyasviel's FramePack model) use diffusers' parameter names,
the names lllyasviel's own model class uses; a ComfyUI-style prefix (`model.diffusion_model.`, `diffusion_model.`
or `transformer.`) on every key is removed. The original HunyuanVideo key names (`double_blocks.*`, `img_in.*`)
belong to plain HunyuanVideo checkpoints, which have none of FramePack's layers: such a file is refused, naming
what it is.

The model's config is read from the file's metadata when it carries one (`config`, JSON, as
`write_transformer_file` stores it), otherwise inferred from the tensor shapes: every size of the model shows in
some weight except the rotary embedding's axes, which are the published model's (16, 56, 56) for its head size
of 128 and must come from the metadata for any other.

Loading keeps one copy of the weights in RAM: the model is built on the meta device (no memory), then each tensor
is read from the file with plain reads (no memory map, whose touched pages would count in the process's RSS on
top of the model) into its own buffer, converted to the compute dtype when it differs, and assigned in place.
Float8 weights (`F8_E4M3`, `F8_E5M2`) of Linear layers stay in float8: those layers become `Float8StoredLinear`,
which upcasts the weight to the compute dtype for each call (one layer's weight at a time). Every other float8
tensor (embedders, norms, biases: a small share of the model) is upcast when it is read, so the model's `dtype`
stays the compute dtype.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from framepack.errors import UserError
from framepack.safetensors_header import read_header as read_safetensors_header

logger = logging.getLogger(__name__)

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
FLOAT8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
KEY_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")
CONFIG_METADATA_KEY = "config"
# The published FramePack transformer's rotary axes and theta (both variants; HunyuanVideo's head size 128).
PUBLISHED_ROPE = {128: {"rope_axes_dim": (16, 56, 56), "rope_theta": 256.0}}
# Keys that mark a FramePack transformer in diffusers naming, and the original HunyuanVideo naming.
FRAMEPACK_KEYS = ("x_embedder.proj.weight", "proj_out.weight", "transformer_blocks.0.attn.to_q.weight")
ORIGINAL_HUNYUAN_KEYS = ("double_blocks.0.img_attn_qkv.weight", "img_in.proj.weight")


class SingleFileError(UserError, ValueError):
    """A file that is not a readable FramePack transformer checkpoint; the message says what is wrong."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in a safetensors file: its stored dtype, shape and byte range (absolute)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class FileHeader:
    """A safetensors file's table of contents: its tensors (keys with any prefix removed) and metadata."""

    path: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]

    @property
    def float8_tensors(self) -> list[str]:
        return [name for name, entry in self.tensors.items() if entry.dtype in FLOAT8_DTYPES]

    @property
    def stores_float8(self) -> bool:
        return bool(self.float8_tensors)

    def describe(self) -> str:
        counts: dict[str, int] = {}
        for entry in self.tensors.values():
            name = str(entry.dtype).removeprefix("torch.")
            counts[name] = counts.get(name, 0) + 1
        return f"{len(self.tensors)} tensors ({', '.join(f'{count} {name}' for name, count in sorted(counts.items()))})"


def read_header(path: Path | str) -> FileHeader:
    """The file's tensors and metadata, reading only its header; SingleFileError when it is not safetensors."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            raw, data_start, size = read_safetensors_header(file)
    except OSError as error:
        raise SingleFileError(f"cannot read {path}: {error}") from None
    except ValueError as error:
        raise SingleFileError(f"{path} is not a safetensors file: {error}") from None
    metadata = raw.pop("__metadata__", None) or {}
    tensors: dict[str, TensorEntry] = {}
    for key, info in raw.items():
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            begin, end = (int(offset) for offset in info["data_offsets"])
            shape = tuple(int(side) for side in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise SingleFileError(f"{path}: tensor {key!r} has an unsupported or malformed header entry") from None
        expected = _numel(shape) * _element_size(dtype)
        if end - begin != expected or data_start + end > size:
            raise SingleFileError(
                f"{path}: tensor {key!r} does not fit its shape and dtype, or the file is truncated "
                f"({size} bytes); download it again"
            )
        tensors[key] = TensorEntry(key, dtype, shape, data_start + begin, data_start + end)
    return FileHeader(path, _strip_prefix(tensors), {str(k): str(v) for k, v in metadata.items()})


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for side in shape:
        count *= side
    return count


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _strip_prefix(tensors: dict[str, TensorEntry]) -> dict[str, TensorEntry]:
    for prefix in KEY_PREFIXES:
        if tensors and all(name.startswith(prefix) for name in tensors):
            return {
                name.removeprefix(prefix): dataclasses.replace(entry, name=name.removeprefix(prefix))
                for name, entry in tensors.items()
            }
    return tensors


def check_transformer_header(header: FileHeader) -> None:
    """SingleFileError unless the file looks like a FramePack transformer in diffusers naming."""
    keys = header.tensors
    if all(key in keys for key in FRAMEPACK_KEYS):
        if "clean_x_embedder.proj.weight" not in keys:
            raise SingleFileError(
                f"{header.path} holds a HunyuanVideo transformer without FramePack's history embedder "
                "(clean_x_embedder): not a FramePack model"
            )
        return
    if any(key in keys for key in ORIGINAL_HUNYUAN_KEYS):
        raise SingleFileError(
            f"{header.path} uses the original HunyuanVideo key names (double_blocks.*, img_in.*): it is a "
            "HunyuanVideo checkpoint, which has none of FramePack's layers. FramePack single files (such as "
            "Kijai/HunyuanVideo_comfy FramePackI2V_HY_bf16.safetensors) use diffusers names"
        )
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    lacking = ", ".join(key for key in FRAMEPACK_KEYS if key not in keys)
    raise SingleFileError(f"{header.path} is not a FramePack transformer: it lacks {lacking} (first keys: {sample})")


# ---------------------------------------------------------------------------------------------- config


def transformer_config(header: FileHeader) -> dict[str, Any]:
    """The HunyuanVideoFramepackTransformer3DModel config of the file: from its metadata, else from its shapes."""
    stored = header.metadata.get(CONFIG_METADATA_KEY)
    if stored is not None:
        try:
            config = json.loads(stored)
        except json.JSONDecodeError as error:
            raise SingleFileError(f"{header.path}: the metadata's config is not JSON ({error})") from None
        if not isinstance(config, dict):
            raise SingleFileError(f"{header.path}: the metadata's config is not a JSON object")
        return {key: value for key, value in config.items() if not key.startswith("_")}
    return infer_config(header)


def infer_config(header: FileHeader) -> dict[str, Any]:
    """Every size of the model from the shapes of its weights; the rotary axes from the published model."""
    shapes = {name: entry.shape for name, entry in header.tensors.items()}
    hidden, in_channels, patch_t, patch, _ = shapes["x_embedder.proj.weight"]
    head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
    rope = PUBLISHED_ROPE.get(head_dim)
    if rope is None:
        raise SingleFileError(
            f"{header.path}: attention head size {head_dim} is not the published model's (128), so its rotary "
            f"axes cannot be told from the weights; store the model config in the file's metadata as "
            f"'{CONFIG_METADATA_KEY}' (JSON)"
        )
    config = {
        "in_channels": in_channels,
        "out_channels": shapes["proj_out.weight"][0] // (patch_t * patch * patch),
        "num_attention_heads": hidden // head_dim,
        "attention_head_dim": head_dim,
        "num_layers": _count(shapes, "transformer_blocks"),
        "num_single_layers": _count(shapes, "single_transformer_blocks"),
        "num_refiner_layers": _count(shapes, "context_embedder.token_refiner.refiner_blocks"),
        "mlp_ratio": shapes["transformer_blocks.0.ff.net.0.proj.weight"][0] / hidden,
        "patch_size": patch,
        "patch_size_t": patch_t,
        "qk_norm": "layer_norm" if "transformer_blocks.0.attn.norm_q.bias" in shapes else "rms_norm",
        "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in shapes,
        "text_embed_dim": shapes["context_embedder.proj_in.weight"][1],
        "pooled_projection_dim": shapes["time_text_embed.text_embedder.linear_1.weight"][1],
        "image_condition_type": None,
        "has_image_proj": "image_projection.up.weight" in shapes,
        "has_clean_x_embedder": "clean_x_embedder.proj.weight" in shapes,
        **rope,
    }
    if config["has_image_proj"]:
        config["image_proj_dim"] = shapes["image_projection.up.weight"][1]
    return config


def _count(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    indices = {int(match.group(1)) for name in shapes if (match := pattern.match(name))}
    return max(indices) + 1 if indices else 0


# ---------------------------------------------------------------------------------------------- float8 layers


class Float8StoredLinear(torch.nn.Linear):
    """A Linear whose weight is stored in float8 and upcast to `compute_dtype` for each call.

    The upcast weight exists only during the call. `compute_dtype` is also what PEFT reads (as for bitsandbytes
    layers) to give LoRA weights the compute dtype instead of float8.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool, compute_dtype: torch.dtype, device: Any = None
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device)
        self.compute_dtype = compute_dtype

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight.to(self.compute_dtype), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, stored={self.weight.dtype}, compute_dtype={self.compute_dtype}"


def float8_layers(module: torch.nn.Module) -> list[str]:
    """Names of the Float8StoredLinear layers of `module`."""
    return [name for name, layer in module.named_modules() if isinstance(layer, Float8StoredLinear)]


def _use_float8_linears(model: torch.nn.Module, names: set[str], dtype: torch.dtype) -> None:
    """Replace the (meta) Linear layers named in `names` by Float8StoredLinear layers."""
    for name in sorted(names):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, child)
        if type(layer) is not torch.nn.Linear:
            raise SingleFileError(f"{name} holds float8 weights but is a {type(layer).__name__}, not a Linear layer")
        replacement = Float8StoredLinear(
            layer.in_features, layer.out_features, layer.bias is not None, dtype, device="meta"
        )
        setattr(parent, child, replacement)


# ---------------------------------------------------------------------------------------------- loading


def read_tensors(header: FileHeader, names: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each tensor of the file in file order, each read into its own CPU buffer."""
    wanted = header.tensors.values() if names is None else [header.tensors[name] for name in names]
    with header.path.open("rb") as file:
        for entry in sorted(wanted, key=lambda entry: entry.start):
            buffer = torch.empty(entry.end - entry.start, dtype=torch.uint8)
            file.seek(entry.start)
            if file.readinto(buffer.numpy()) != buffer.numel():
                raise SingleFileError(f"{header.path}: the file ended inside tensor {entry.name!r}; download it again")
            yield entry.name, buffer.view(entry.dtype).reshape(entry.shape)


def load_transformer_file(path: Path | str, dtype: torch.dtype) -> torch.nn.Module:
    """The FramePack transformer of a single .safetensors file, on the CPU in eval mode without gradients.

    Tensors are converted to `dtype` as they are read, except the float8 weights of Linear layers (see the module
    docstring). The model holds exactly the file's tensors: a missing, unexpected or misshapen one is an error.
    """
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    start = time.perf_counter()
    header = read_header(path)
    check_transformer_header(header)
    config = transformer_config(header)
    with torch.device("meta"):
        try:
            model = HunyuanVideoFramepackTransformer3DModel.from_config(config)
        except (TypeError, ValueError) as error:
            raise SingleFileError(f"{header.path}: its config does not build the model: {error}") from None
    expected = dict(model.state_dict(keep_vars=True))
    unexpected = sorted(set(header.tensors) - set(expected))
    missing = sorted(set(expected) - set(header.tensors))
    if unexpected or missing:
        raise SingleFileError(
            f"{header.path} does not match the FramePack transformer its shapes describe: "
            + "; ".join(
                f"{label} {len(keys)} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})"
                for label, keys in (("unexpected keys", unexpected), ("missing keys", missing))
                if keys
            )
        )
    for name, entry in header.tensors.items():
        if tuple(expected[name].shape) != entry.shape:
            raise SingleFileError(
                f"{header.path}: {name} has shape {list(entry.shape)}, the model expects {list(expected[name].shape)}"
            )
    float8 = {
        name.removesuffix(".weight")
        for name in header.float8_tensors
        if name.endswith(".weight") and type(model.get_submodule(name.removesuffix(".weight"))) is torch.nn.Linear
    }
    _use_float8_linears(model, float8, dtype)
    for name, tensor in read_tensors(header):
        keep = name.endswith(".weight") and name.removesuffix(".weight") in float8
        if not keep and tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        _assign(model, name, tensor)
    left = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if left:
        raise SingleFileError(f"{header.path}: nothing in the file for {', '.join(left[:4])}")
    model.eval()
    model.requires_grad_(False)
    if model.dtype != dtype:  # a guard: the first parameter (the patch embedder) is always upcast
        raise RuntimeError(f"{header.path}: loaded model reports dtype {model.dtype}, expected {dtype}")
    logger.info(
        "loaded the transformer from %s: %s%s in %.2f s",
        header.path,
        header.describe(),
        f", {len(float8)} Linear layers kept in float8 (upcast to {dtype} per call)" if float8 else "",
        time.perf_counter() - start,
    )
    return model


def _assign(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, attribute = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    if attribute in owner._parameters:
        owner._parameters[attribute] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        owner._buffers[attribute] = tensor


# ---------------------------------------------------------------------------------------------- writing


def write_transformer_file(
    transformer: torch.nn.Module,
    path: Path | str,
    dtype: torch.dtype | None = None,
    float8: bool = False,
    prefix: str = "",
    with_config: bool = True,
) -> Path:
    """Write `transformer` as one .safetensors file in diffusers naming (tests and conversions).

    `dtype` converts the float tensors; `float8` stores every float tensor whose name contains neither "norm" nor
    "bias" in float8_e4m3fn (the rule of the community's fp8 file: the norms, the AdaLN modulation layers named
    `norm*.linear` and all biases stay in `dtype`); `prefix` goes before every key; `with_config` stores the model
    config in the metadata.
    """
    from safetensors.torch import save_file

    tensors = {}
    for name, tensor in transformer.state_dict().items():
        if tensor.is_floating_point() and dtype is not None:
            tensor = tensor.to(dtype)
        if float8 and tensor.is_floating_point() and "norm" not in name and "bias" not in name:
            tensor = tensor.to(torch.float8_e4m3fn)
        tensors[prefix + name] = tensor.contiguous()
    metadata = {"format": "pt"}
    if with_config:
        config = {key: value for key, value in dict(transformer.config).items() if not key.startswith("_")}
        metadata[CONFIG_METADATA_KEY] = json.dumps(config)
    save_file(tensors, str(path), metadata=metadata)
    return Path(path)


__all__ = [
    "Float8StoredLinear",
    "FileHeader",
    "SingleFileError",
    "check_transformer_header",
    "float8_layers",
    "infer_config",
    "load_transformer_file",
    "read_header",
    "transformer_config",
    "write_transformer_file",
]
