"""LoRAs from the prompt: `<lora:name:weight>` tags, a LoRA folder, three key formats, clean unloading.

Formats, detected per file and converted to diffusers PEFT keys of `HunyuanVideoFramepackTransformer3DModel`:
- diffusers (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`, with or without `transformer.`);
- original HunyuanVideo (`diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`, also `img_attn_qkv`),
  converted with diffusers' `_convert_hunyuan_video_lora_to_diffusers` (single-block `linear1` is split here,
  as diffusers hard-codes the 13B hidden size);
- kohya / musubi (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`, `.lora_up.weight`, `.alpha`), whose
  underscored names are resolved to original HunyuanVideo names or to the transformer's own module names.
`alpha` is folded into the up (B) weights as alpha / rank. Keys that map to no module are reported, never dropped.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from framepack.errors import FieldError
from framepack.safetensors_header import read_header as read_safetensors_header

logger = logging.getLogger(__name__)

TAG = re.compile(r"<lora:([^:<>]+?)(?::\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*)?>", re.IGNORECASE)
RECORD_ATTR = "_framepack_loras"
MAX_WEIGHT = 10.0  # a LoRA weight is a finite number in -MAX_WEIGHT..MAX_WEIGHT

LoraFolders = Path | str | Sequence[Path | str]  # one LoRA folder, or several searched in order


@dataclass(frozen=True)
class LoraRef:
    name: str
    weight: float = 1.0


# --------------------------------------------------------------------------------------------- prompt tags


def _tidy(text: str) -> str:
    """Per line: single spaces, no space before punctuation, no doubled or dangling commas."""
    lines = []
    for line in text.splitlines():
        line = re.sub(r"[ \t]+", " ", line).strip()
        line = re.sub(r" +([,.;:!?])", r"\1", line)
        line = re.sub(r",(\s*,)+", ",", line)
        line = re.sub(r"^[,;]\s*", "", line)
        line = re.sub(r"(\]\s*)[,;]\s*", r"\1", line)  # "[2s] , text" -> "[2s] text"
        line = re.sub(r"\s*[,;]$", "", line)
        lines.append(line.strip())
    return "\n".join(line for line in lines if line or len(lines) == 1)


def parse_lora_tags(text: str, warnings: list[str] | None = None) -> tuple[str, list[LoraRef]]:
    """Remove every `<lora:name[:weight]>` tag; return the tidied text and the refs in first-seen order.
    The same name twice: the later weight wins, and a warning is appended to `warnings`."""
    found: dict[str, float] = {}
    for match in TAG.finditer(text):
        name = match.group(1).strip()
        weight = float(match.group(2)) if match.group(2) is not None else 1.0
        if name in found and warnings is not None:
            warnings.append(f"LoRA '{name}' is named twice; the later weight {weight:g} is used")
        found[name] = weight
    if not found:
        return text, []
    return _tidy(TAG.sub(" ", text)), [LoraRef(name, weight) for name, weight in found.items()]


def check_weights(refs: list[LoraRef], field: str) -> None:
    """FieldError naming `field` for a weight that is not a finite number in -MAX_WEIGHT..MAX_WEIGHT (a tag with
    400 digits parses to infinity)."""
    for ref in refs:
        if not math.isfinite(ref.weight) or abs(ref.weight) > MAX_WEIGHT:
            raise FieldError(
                field,
                f"LoRA '{ref.name}' has weight {ref.weight:g}; allowed finite numbers from {-MAX_WEIGHT:g} to "
                f"{MAX_WEIGHT:g}",
            )


def merge_refs(groups: list[list[LoraRef]], warnings: list[str] | None = None) -> list[LoraRef]:
    """Refs from several texts (prompt, section lines): one per name, the later weight wins."""
    merged: dict[str, float] = {}
    for refs in groups:
        for ref in refs:
            if ref.name in merged and merged[ref.name] != ref.weight and warnings is not None:
                warnings.append(f"LoRA '{ref.name}' is named twice; the later weight {ref.weight:g} is used")
            merged[ref.name] = ref.weight
    return [LoraRef(name, weight) for name, weight in merged.items()]


# --------------------------------------------------------------------------------------------- the folder


def lora_folders(lora_dirs: LoraFolders) -> list[Path]:
    """The LoRA folders as a list of paths (one folder or several)."""
    if isinstance(lora_dirs, (str, Path)):
        return [Path(lora_dirs)]
    return [Path(folder) for folder in lora_dirs]


def available_loras(lora_dirs: LoraFolders) -> list[str]:
    """LoRA names (relative to their folder, without `.safetensors`) in every folder, sorted, each once."""
    names: set[str] = set()
    for folder in lora_folders(lora_dirs):
        if folder.is_dir():
            root = folder.resolve()
            for path in folder.rglob("*.safetensors"):
                if path.resolve().is_relative_to(root):  # a link leading outside is no LoRA of this folder
                    names.add(path.relative_to(folder).with_suffix("").as_posix())
    return sorted(names)


def find_lora(name: str, lora_dirs: LoraFolders, field: str = "prompt") -> Path:
    """`name` or `name.safetensors` inside a LoRA folder (searched in order; subfolders allowed; symlinks are
    resolved, and a name that leads outside its folder is refused). Messages name the LoRA as given and the
    folder as "the LoRA folder", never a server path (they reach API clients)."""
    if not name or any(not char.isprintable() for char in name):
        raise FieldError(field, f"LoRA name {name!r} must be printable text")
    folders = lora_folders(lora_dirs)
    outside = False
    for folder in folders:
        root = folder.resolve()
        for candidate in (name, f"{name}.safetensors"):
            try:
                path = (folder / candidate).resolve()
                if not path.is_relative_to(root):
                    outside = True
                    continue
                if path.is_file() and path.suffix == ".safetensors":
                    return path
            except OSError as error:  # a name too long for the file system, a loop of links: not a LoRA here
                logger.debug("LoRA candidate %r in %s: %s", candidate, folder, error)
    if outside:
        raise FieldError(field, f"LoRA name {name!r} points outside the LoRA folder")
    logger.warning("LoRA %r not found in %s", name, ", ".join(str(folder) for folder in folders))
    names = available_loras(folders)
    listed = ", ".join(names[:30]) + (" ..." if len(names) > 30 else "") if names else "none"
    raise FieldError(field, f"LoRA '{name}' not found in the LoRA folder; available: {listed}")


def read_header(path: Path) -> dict:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON), reading nothing else;
    ValueError saying what is wrong."""
    with open(path, "rb") as handle:
        return read_safetensors_header(handle)[0]


def check_loras(refs: Iterable[LoraRef], lora_dirs: LoraFolders, fields: dict[str, str] | None = None) -> list[Path]:
    """Each ref's weight, file (inside a LoRA folder) and safetensors header, checked without loading a tensor:
    the files, or FieldError naming the ref's field (`fields[name]`, default "prompt") and the LoRA by name."""
    paths = []
    for ref in refs:
        field = (fields or {}).get(ref.name, "prompt")
        check_weights([ref], field)
        path = find_lora(ref.name, lora_dirs, field)
        try:
            read_header(path)
        except (OSError, ValueError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise FieldError(field, f"LoRA '{ref.name}' is not a readable safetensors file: {reason}") from None
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------- conversion

DOUBLE_SUBS = (
    "img_attn_qkv", "img_attn_proj", "img_mlp_fc1", "img_mlp_fc2", "img_mod_linear",
    "txt_attn_qkv", "txt_attn_proj", "txt_mlp_fc1", "txt_mlp_fc2", "txt_mod_linear",
)  # fmt: skip
SINGLE_SUBS = ("linear1", "linear2", "modulation_linear")
OTHER_ORIGINAL = {
    "img_in_proj": "img_in.proj", "time_in_mlp_0": "time_in.mlp.0", "time_in_mlp_2": "time_in.mlp.2",
    "guidance_in_mlp_0": "guidance_in.mlp.0", "guidance_in_mlp_2": "guidance_in.mlp.2",
    "vector_in_in_layer": "vector_in.in_layer", "vector_in_out_layer": "vector_in.out_layer",
    "final_layer_linear": "final_layer.linear", "final_layer_adaLN_modulation_1": "final_layer.adaLN_modulation.1",
}  # fmt: skip
ORIGINAL_DOTTED = {
    "img_attn_qkv": "img_attn_qkv", "img_attn_proj": "img_attn_proj", "img_mlp_fc1": "img_mlp.fc1",
    "img_mlp_fc2": "img_mlp.fc2", "img_mod_linear": "img_mod.linear", "txt_attn_qkv": "txt_attn_qkv",
    "txt_attn_proj": "txt_attn_proj", "txt_mlp_fc1": "txt_mlp.fc1", "txt_mlp_fc2": "txt_mlp.fc2",
    "txt_mod_linear": "txt_mod.linear", "linear1": "linear1", "linear2": "linear2",
    "modulation_linear": "modulation.linear",
}  # fmt: skip
LORA_SUFFIX = re.compile(r"\.(lora_A|lora_B|lora_down|lora_up)\.(weight|bias)$")


def _lora_modules(transformer) -> dict[str, object]:
    import torch

    layers = (torch.nn.Linear, torch.nn.Conv3d, torch.nn.Conv2d)
    # a module already wrapped by an earlier adapter (PEFT layer with `base_layer`) still takes LoRAs
    return {
        name: module
        for name, module in transformer.named_modules()
        if (isinstance(module, layers) or hasattr(module, "base_layer"))
        and ".base_layer" not in name
        and ".lora_" not in name
    }


def _fold_alpha(state: dict) -> dict:
    """lora_down/lora_up -> lora_A/lora_B; `<module>.alpha` folded into B as alpha / rank."""
    out, alphas = {}, {}
    for key, value in state.items():
        if key.endswith(".alpha"):
            alphas[key[: -len(".alpha")]] = float(value.reshape(-1)[0])
            continue
        out[key.replace(".lora_down.", ".lora_A.").replace(".lora_up.", ".lora_B.")] = value
    for module, alpha in alphas.items():
        down, up = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
        if down not in out or up not in out:
            out[f"{module}.alpha"] = state[f"{module}.alpha"]  # reported as unknown later
            continue
        scale = alpha / out[down].shape[0]
        out[up] = out[up] * scale
        if f"{module}.lora_B.bias" in out:
            out[f"{module}.lora_B.bias"] = out[f"{module}.lora_B.bias"] * scale
    return out


def detect_format(state: dict) -> str:
    keys = list(state)
    if any(key.startswith("lora_unet_") for key in keys):
        return "kohya"
    original = re.compile(
        r"(^|\.)(double_blocks|single_blocks|img_in|txt_in|final_layer|time_in|vector_in|guidance_in)\."
    )
    if any(original.search(key) for key in keys):
        return "hunyuan"
    return "diffusers"


def _kohya_to_original(state: dict, module_names: set[str]) -> dict:
    """`lora_unet_<underscored module>.<rest>` -> `diffusion_model.<original name>.<rest>` (or the transformer's
    own dotted module name when the underscored name is one of those); unresolvable keys keep their name."""
    underscored = {name.replace(".", "_"): name for name in module_names}
    out = {}
    for key, value in state.items():
        if not key.startswith("lora_unet_"):
            out[key] = value
            continue
        module, _, rest = key[len("lora_unet_") :].partition(".")
        match = re.fullmatch(r"(double_blocks|single_blocks)_(\d+)_(.+)", module)
        if match and match.group(3) in (DOUBLE_SUBS if match.group(1) == "double_blocks" else SINGLE_SUBS):
            out[f"diffusion_model.{match.group(1)}.{match.group(2)}.{ORIGINAL_DOTTED[match.group(3)]}.{rest}"] = value
        elif module in OTHER_ORIGINAL:
            out[f"diffusion_model.{OTHER_ORIGINAL[module]}.{rest}"] = value
        elif module in underscored:
            out[f"{underscored[module]}.{rest}"] = value
        else:
            out[key] = value
    return out


def _original_to_diffusers(state: dict, hidden_size: int) -> dict:
    from diffusers.loaders.lora_conversion_utils import _convert_hunyuan_video_lora_to_diffusers

    state = {re.sub(r"^(diffusion_model|transformer)\.", "", key): value for key, value in state.items()}
    # `img_attn.qkv` spelling -> `img_attn_qkv`, as the diffusers converter expects
    state = {re.sub(r"(img|txt)_attn\.(qkv|proj)", r"\1_attn_\2", key): value for key, value in state.items()}
    done = {}
    for key in list(state):
        match = re.fullmatch(r"single_blocks\.(\d+)\.linear1\.(lora_A|lora_B)\.(weight|bias)", key)
        if not match:
            continue
        value = state.pop(key)
        base = f"single_transformer_blocks.{match.group(1)}"
        targets = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
        if match.group(2) == "lora_A":
            parts = [value] * 4
        else:
            parts = value.split([hidden_size] * 3 + [value.shape[0] - 3 * hidden_size], dim=0)
        for target, part in zip(targets, parts):
            done[f"{base}.{target}.{match.group(2)}.{match.group(3)}"] = part
    passthrough = {
        key: state.pop(key)
        for key in list(state)
        if not re.match(r"(double_blocks|single_blocks|img_in|txt_in|final_layer|time_in|vector_in|guidance_in)\.", key)
    }
    converted = _convert_hunyuan_video_lora_to_diffusers(state) if state else {}
    converted = {key.removeprefix("transformer."): value for key, value in converted.items()}
    return {**converted, **done, **passthrough}


def convert_lora(state: dict, transformer, strict: bool = True, name: str = "LoRA") -> tuple[dict, list[str]]:
    """A LoRA state dict in any supported format -> diffusers PEFT keys (no prefix) and the unknown keys."""
    modules = _lora_modules(transformer)
    kind = detect_format(state)
    state = dict(state)
    if kind == "kohya":
        state = _kohya_to_original(state, set(modules))
    state = _fold_alpha(state)
    if kind in ("kohya", "hunyuan"):
        config = transformer.config
        state = _original_to_diffusers(state, int(config.num_attention_heads * config.attention_head_dim))
    else:
        state = {key.removeprefix("transformer."): value for key, value in state.items()}
    known, unknown = {}, []
    for key, value in state.items():
        match = LORA_SUFFIX.search(key)
        module = key[: match.start()] if match else None
        if module is not None and module in modules:
            known[key] = value
        else:
            unknown.append(key)
    if unknown:
        listed = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        message = f"LoRA '{name}' ({kind} format): {len(unknown)} keys match no transformer module: {listed}"
        if strict:
            raise FieldError("prompt", message)
        logger.warning(message)
    if not known:
        raise FieldError("prompt", f"LoRA '{name}' ({kind} format) has no keys for this transformer")
    return known, unknown


# --------------------------------------------------------------------------------------------- apply / remove


def _adapter_name(index: int, name: str) -> str:
    return f"fp{index}_" + re.sub(r"\W", "_", name)


def applied_loras(transformer) -> tuple:
    return getattr(transformer, RECORD_ATTR, ())


def _lora_record(ref: LoraRef, lora_dir: LoraFolders) -> tuple[Path, tuple]:
    """The ref's file and what `applied_loras` records for it: (name, weight, path, mtime_ns, size).

    One builder for `apply_loras`' record and `ensure_loras`' comparison, so the two cannot drift apart (a
    changed file, same name, must still count as a different set)."""
    path = find_lora(ref.name, lora_dir)
    stat = path.stat()
    return path, (ref.name, float(ref.weight), str(path), stat.st_mtime_ns, stat.st_size)


def apply_loras(
    transformer,
    refs: list[LoraRef],
    lora_dir: LoraFolders,
    strict: bool = True,
    resolved: Sequence[tuple[Path, tuple]] | None = None,
) -> list[str]:
    """Load each ref's file, convert, add as a PEFT adapter and activate all with their weights.
    Anything already applied is removed first; on failure nothing stays applied.

    `resolved`: `_lora_record(ref, lora_dir)` per ref, when the caller (`ensure_loras`) already looked the
    files up, so they are not found and statted a second time."""
    from safetensors.torch import load_file

    remove_loras(transformer)
    if not refs:
        return []
    parameter = next(transformer.parameters())
    names, record = [], []
    try:
        for index, ref in enumerate(refs):
            path, entry = resolved[index] if resolved is not None else _lora_record(ref, lora_dir)
            try:
                raw = load_file(str(path))
            except Exception as error:  # a broken file is the user's problem, not a bug
                reason = str(error).replace(str(path), f"'{ref.name}'")  # no server path in the message
                raise FieldError("prompt", f"LoRA '{ref.name}' could not be read: {reason}") from error
            state, _unknown = convert_lora(raw, transformer, strict=strict, name=ref.name)
            state = {key: value.to(parameter.device, parameter.dtype) for key, value in state.items()}
            adapter = _adapter_name(index, ref.name)
            transformer.load_lora_adapter(state, adapter_name=adapter, prefix=None)
            names.append(adapter)
            record.append(entry)
        transformer.set_adapters(names, [ref.weight for ref in refs])
    except BaseException:
        remove_loras(transformer)
        raise
    setattr(transformer, RECORD_ATTR, tuple(record))
    logger.info("LoRAs applied: %s", ", ".join(f"{ref.name}:{ref.weight:g}" for ref in refs))
    return names


def remove_loras(transformer) -> None:
    """Unload every adapter: the PEFT layers are replaced by the original modules, weights untouched.

    Only `peft_config` says whether PEFT layers are there (a failed `apply_loras` may leave some before any
    record), so it alone decides whether to unload."""
    if getattr(transformer, "peft_config", None):
        transformer.unload_lora()
    setattr(transformer, RECORD_ATTR, ())


def ensure_loras(
    transformer,
    refs: list[LoraRef],
    lora_dir: LoraFolders,
    around_change: Callable[[], AbstractContextManager] = nullcontext,
) -> bool:
    """Apply exactly `refs` (none -> unload all); nothing happens when that set is already applied.
    Returns whether the transformer's layers changed.

    `around_change()` wraps the change only when there is one (the runner passes `Offloader.regrouping`, so
    a block-streamed transformer is regrouped once with its new layers, never for an unchanged set). Each
    file is looked up and statted once: the comparison's records are the ones applied."""
    if not refs:
        changed = bool(applied_loras(transformer) or getattr(transformer, "peft_config", None))
        with around_change() if changed else nullcontext():
            remove_loras(transformer)
        return changed
    resolved = [_lora_record(ref, lora_dir) for ref in refs]
    if applied_loras(transformer) == tuple(entry for _path, entry in resolved):
        return False
    with around_change():
        apply_loras(transformer, refs, lora_dir, resolved=resolved)
    return True
