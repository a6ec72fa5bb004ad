"""Load every FramePack component named by a recipe, with clear errors when one is not available.

Each component is loaded with its library's own `from_pretrained` (diffusers for the transformer and VAE,
transformers for the encoders, tokenizers and image processor), so hub repos, the Hugging Face cache and local
folders in diffusers layout all work the same way. A component that cannot be found raises
`ModelUnavailableError`, which says where we looked and how to fix it; `check_available` answers the same
question without loading weights or touching the network, so faces can say so before a job starts.

A component whose recipe line says `quantize=int8|float8|int4` is loaded in its dtype on the CPU, quantized there
with optimum-quanto (framepack/models/quantize.py), and only then moved to the device, so a big model is never on
the GPU unquantized. Without optimum-quanto such a recipe fails before any weights are loaded (and
`check_available` reports it).

A transformer line that names one `.safetensors` file (local, or `owner/name/path/file.safetensors` in a hub repo)
is loaded by framepack/models/single_file.py: one copy of the weights in RAM, float8-stored Linear weights kept in
float8 and upcast per call. Its header is read by `check_available` too, so a file that is not a FramePack
transformer is reported before a job starts.

Hub repos are looked for in a Hugging Face cache folder: huggingface_hub's own (HF_HUB_CACHE) unless a `HubCache`
names another, as SD.Next's adapter does with the host's cache folder and offline setting (`framepack/host.py`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import EntryNotFoundError
from safetensors import SafetensorError
from transformers import (
    CLIPTextModel,
    CLIPTokenizer,
    LlamaModel,
    PreTrainedTokenizerFast,
    SiglipImageProcessorPil,
    SiglipVisionModel,
)

from framepack.errors import UserError
from framepack.models.components import Components
from framepack.models.load_lock import LOAD_LOCK
from framepack.models.quantize import (
    COMPUTE_KINDS,
    float8_compute_problem,
    quantization_missing,
    quantization_of,
    quantize_module,
)
from framepack.models.recipe import DEFAULT_DTYPES, VARIANTS, ComponentSource, Recipe
from framepack.models.single_file import (
    SingleFileError,
    check_transformer_header,
    load_transformer_file,
    read_header,
    transformer_config,
)
from framepack.models.tiny import is_self_test_folder

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Files that must be present for each component, as groups of alternatives: every group needs one alternative
# whose files are all there. Checked before loading because some loaders do not fail on a missing folder
# (CLIPTokenizer.from_pretrained quietly returns an empty 3-token tokenizer).
CONFIG = (("config.json",),)
WEIGHTS = tuple(
    (name,)
    for name in (
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.bin.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    )
)
REQUIRED_FILES: dict[str, tuple[tuple[tuple[str, ...], ...], ...]] = {
    "transformer": (CONFIG, WEIGHTS),
    "vae": (CONFIG, WEIGHTS),
    "text_encoder": (CONFIG, WEIGHTS),
    # tokenizer.json is what makes the Llama tokenizer byte-level; without it the text is tokenized wrongly.
    "tokenizer": ((("tokenizer.json",),),),
    "text_encoder_2": (CONFIG, WEIGHTS),
    "tokenizer_2": ((("vocab.json", "merges.txt"), ("tokenizer.json",)),),
    "image_encoder": (CONFIG, WEIGHTS),
    "feature_extractor": ((("preprocessor_config.json",),),),
}

# Exceptions from_pretrained raises for a missing or incomplete model, found by experiment (diffusers 0.42,
# transformers 5, huggingface_hub 1.x): OSError for missing folders/files, unreachable hub and hub HTTP errors
# (RepositoryNotFoundError, LocalEntryNotFoundError are OSErrors); ValueError from PreTrainedTokenizerFast without
# tokenizer.json and from repo id validation; EntryNotFoundError, which is not an OSError; SafetensorError from
# transformers for a truncated or corrupt .safetensors file (diffusers wraps that one in an OSError).
LOAD_ERRORS = (OSError, ValueError, EntryNotFoundError, SafetensorError)  # SingleFileError is a ValueError


@dataclass(frozen=True)
class HubCache:
    """Where hub repos are looked for and whether they may be downloaded: `folder` is the Hugging Face cache
    (None: huggingface_hub's default, HF_HUB_CACHE); `offline` forbids downloads (HF_HUB_OFFLINE does too)."""

    folder: Path | None = None
    offline: bool = False

    def cache_dir(self) -> Path:
        return Path(self.folder) if self.folder is not None else Path(hub_constants.HF_HUB_CACHE)

    def is_offline(self) -> bool:
        return self.offline or huggingface_hub.is_offline_mode()

    def reachable(self, timeout: float = 3.0) -> bool:
        """Whether the hub's host accepts a connection: a machine without a network is told so at once, instead
        of after the hub client's five retries (about 23 s)."""
        url = urllib.parse.urlsplit(hub_constants.ENDPOINT)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            with socket.create_connection((url.hostname, port), timeout=timeout):
                return True
        except OSError:
            return False

    def from_pretrained_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.folder is not None:
            options["cache_dir"] = str(self.folder)
        if self.offline:
            options["local_files_only"] = True
        return options


DEFAULT_HUB = HubCache()


class ModelUnavailableError(UserError, RuntimeError):
    """A component could not be found or loaded; the message says where we looked and how to fix it."""

    def __init__(self, component: str, source: ComponentSource, message: str) -> None:
        super().__init__(message)
        self.component = component
        self.source = source


@dataclass(frozen=True)
class _Loader:
    """How one component is loaded: its class and whether it is a torch module that takes a dtype."""

    cls: Any
    is_module: bool
    dtype_keyword: str | None  # diffusers says torch_dtype, transformers 5 says dtype (torch_dtype is deprecated)


LOADERS = {
    "transformer": _Loader(HunyuanVideoFramepackTransformer3DModel, True, "torch_dtype"),
    "vae": _Loader(AutoencoderKLHunyuanVideo, True, "torch_dtype"),
    "text_encoder": _Loader(LlamaModel, True, "dtype"),
    # The transformers 5 trap (FACTS.md): the hub's tokenizer_config.json names `LlamaTokenizerFast`, which in
    # transformers 5 is an alias of `LlamaTokenizer`; loading by that name (or with LlamaTokenizerFast directly)
    # builds a SentencePiece/Metaspace pre-tokenizer over the byte-level BPE in tokenizer.json. Spaces then vanish,
    # the template prefix no longer measures 95 tokens, the prompt is cropped away and every prompt gives the
    # same embedding. `PreTrainedTokenizerFast` loads tokenizer.json as written (byte-level), so we use it.
    "tokenizer": _Loader(PreTrainedTokenizerFast, False, None),
    "text_encoder_2": _Loader(CLIPTextModel, True, "dtype"),
    "tokenizer_2": _Loader(CLIPTokenizer, False, None),
    "image_encoder": _Loader(SiglipVisionModel, True, "dtype"),
    "feature_extractor": _Loader(SiglipImageProcessorPil, False, None),
}


def load_components(
    recipe: Recipe,
    device: str | torch.device = "cpu",
    variant: str = "bidirectional",
    on_progress: Callable[[str], None] | None = None,
    hub: HubCache = DEFAULT_HUB,
    compute_device: str | torch.device | None = None,
) -> Components:
    """Load every component of `recipe` onto `device`, in eval mode without gradients (hub repos from `hub`).

    `compute_device` is where the models will compute (default `device`; the GPU when offloaded models rest on
    the CPU): float8-dynamic quantization needs it and quantizes there."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    start = time.perf_counter()
    compute_device = torch.device(compute_device if compute_device is not None else device)
    for name, source in recipe.items():  # a missing optimum-quanto fails here, before any weights are loaded
        error = check_quantization(name, source, compute_device)
        if error is not None:
            raise error
    if not hub.is_offline():
        not_cached = [
            (name, source)
            for name, source in recipe.items()
            if not source.is_local and check_component(name, source, hub) is not None
        ]
        if not_cached and not hub.reachable():
            name, source = not_cached[0]
            host = urllib.parse.urlsplit(hub_constants.ENDPOINT).netloc
            raise _unavailable(name, source, f"it is not in the cache and {host} cannot be reached from here", hub)
    loaded = {}
    for name, source in recipe.items():
        message = f"loading {name} from {source.describe()}"
        logger.info(message)
        if on_progress is not None:
            on_progress(message)
        loaded[name] = load_component(name, source, device, hub, compute_device)
    self_test = recipe.self_test or _is_self_test_source(recipe.transformer)
    if self_test:
        logger.warning("loaded the SELF-TEST model (random weights): its output is noise")
    logger.info("loaded all components in %.2f s", time.perf_counter() - start)
    return Components(**loaded, variant=variant, self_test=self_test)


def load_component(
    name: str,
    source: ComponentSource,
    device: str | torch.device = "cpu",
    hub: HubCache = DEFAULT_HUB,
    compute_device: str | torch.device | None = None,
) -> Any:
    """Load one component with its library's from_pretrained (the transformer also from a single file);
    ModelUnavailableError if it is not there. `compute_device` as in `load_components`."""
    loader = LOADERS[name]
    compute_device = torch.device(compute_device if compute_device is not None else device)
    _check_before_loading(name, source, hub)
    quantization_error = check_quantization(name, source, compute_device)
    if quantization_error is not None:
        raise quantization_error
    kwargs: dict[str, Any] = {} if source.is_local else hub.from_pretrained_options()
    if source.subfolder:
        kwargs["subfolder"] = source.subfolder
    dtype = TORCH_DTYPES.get(source.dtype or DEFAULT_DTYPES[name])  # None for the tokenizers and the processor
    if loader.dtype_keyword is not None:
        kwargs[loader.dtype_keyword] = dtype
    start = time.perf_counter()
    with LOAD_LOCK:  # loading and quantizing are not thread-safe (several workers in one process)
        try:
            if source.is_single_file:
                component = load_transformer_file(_single_file_path(source, hub), dtype)
            else:
                component = loader.cls.from_pretrained(_source_path(source), **kwargs)
        except LOAD_ERRORS as error:
            raise _unavailable(name, source, f"{type(error).__name__}: {error}", hub) from error
        if loader.is_module:
            component = _prepare_module(component, device, name, source.quantize, compute_device)
    if name == "tokenizer":
        component = _prepare_llama_tokenizer(component)
    _check_after_loading(name, source, component, hub)
    summary = quantization_of(component) if loader.is_module else None
    logger.info(
        "loaded %s (%s) from %s in %.2f s%s",
        name,
        type(component).__name__,
        source.describe(),
        time.perf_counter() - start,
        f", quantized to {summary.describe()}" if summary is not None else "",
    )
    return component


def _prepare_module(
    module: torch.nn.Module,
    device: str | torch.device,
    name: str | None = None,
    quantize: str | None = None,
    compute_device: str | torch.device | None = None,
) -> torch.nn.Module:
    """Eval mode, no gradients, quantized when asked (where it was loaded, the CPU; float8-dynamic layer by layer
    on `compute_device`), then moved to `device`."""
    module.eval()
    module.requires_grad_(False)
    if quantize in COMPUTE_KINDS:
        quantize_module(module, quantize, name, device=compute_device)
    elif quantize is not None:
        quantize_module(module, quantize, name)
    return module.to(device)


def _prepare_llama_tokenizer(tokenizer: Any) -> Any:
    """Right padding with a pad token, as the HunyuanVideo text encoder expects (mask marks the prompt)."""
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or "<|end_of_text|>"
    return tokenizer


def _check_before_loading(name: str, source: ComponentSource, hub: HubCache) -> None:
    """Fail fast and clearly for local folders and, in offline mode, for hub repos missing from the cache."""
    if source.is_local or hub.is_offline():
        error = check_component(name, source, hub)
        if error is not None:
            raise error


def _check_after_loading(name: str, source: ComponentSource, component: Any, hub: HubCache) -> None:
    """Catch loads that "succeed" with nothing in them, and a tokenizer that lost its spaces (the trap)."""
    if name in ("tokenizer", "tokenizer_2") and len(component) <= 3:
        raise _unavailable(
            name, source, f"the tokenizer loaded empty ({len(component)} tokens): no vocabulary found", hub
        )
    if name == "tokenizer":
        sample = "a cat walks"
        decoded = component.decode(component(sample, add_special_tokens=False).input_ids)
        if decoded.strip() != sample:
            logger.warning(
                "tokenizer from %s does not round-trip spaces (%r -> %r): prompts will be encoded wrongly",
                source.describe(),
                sample,
                decoded,
            )


def _is_self_test_source(source: ComponentSource) -> bool:
    return source.is_local and is_self_test_folder(_local_folder(source))


# ---------------------------------------------------------------------------------------------- availability


def check_available(recipe: Recipe, hub: HubCache = DEFAULT_HUB) -> list[ModelUnavailableError]:
    """One error per component whose files are not on this machine (hub repos: in `hub`'s cache folder), or whose
    quantization cannot be done here (optimum-quanto missing); no weights loaded, no network used."""
    errors = [check_component(name, source, hub) or check_quantization(name, source) for name, source in recipe.items()]
    return [error for error in errors if error is not None]


def check_quantization(
    name: str, source: ComponentSource, device: str | torch.device | None = None
) -> ModelUnavailableError | None:
    """None unless the recipe line asks for `quantize=...` that cannot be done here: optimum-quanto does not
    import, or (float8-dynamic, checked only when the compute `device` is given) the device cannot compute in
    float8 or torchao does not import."""
    if source.quantize is None:
        return None
    if source.quantize in COMPUTE_KINDS:
        problem = float8_compute_problem(device) if device is not None else None
        if problem is None:
            return None
        return ModelUnavailableError(
            name, source, f"{name} cannot be loaded as the recipe asks: quantize={source.quantize}: {problem}"
        )
    missing = quantization_missing(source.quantize)
    if missing is None:
        return None
    message = missing.replace("quantize=...", f"quantize={source.quantize}")
    return ModelUnavailableError(name, source, f"{name} cannot be loaded as the recipe asks: {message}")


def check_component(name: str, source: ComponentSource, hub: HubCache = DEFAULT_HUB) -> ModelUnavailableError | None:
    """None when the component's files are present locally or in the Hugging Face cache, else the error."""
    if source.is_single_file:
        return _check_single_file(name, source, hub)
    if source.is_local:
        folder = _local_folder(source)
        if not folder.is_dir():
            return _unavailable(name, source, "the folder does not exist", hub)
    missing = _missing_files(name, source, hub)
    if missing:
        return _unavailable(name, source, f"{missing} not found", hub)
    return None


def _check_single_file(name: str, source: ComponentSource, hub: HubCache) -> ModelUnavailableError | None:
    """None when the file is there and its header is a FramePack transformer's (only the header is read), and it
    does not store float8 weights while the recipe line asks to quantize them again."""
    path = _find_single_file(source, hub)
    if path is None:
        reason = "the file does not exist" if source.is_local else f"{source.subfolder} not found"
        return _unavailable(name, source, reason, hub)
    try:
        header = read_header(path)
        check_transformer_header(header)
    except SingleFileError as error:
        return _unavailable(name, source, str(error), hub)
    if header.stores_float8 and source.quantize is not None:
        return ModelUnavailableError(
            name,
            source,
            f"{name} cannot be loaded as the recipe asks: {path} stores {len(header.float8_tensors)} weights in "
            f"float8 already, and quantize={source.quantize} would not apply to them. Fix: remove quantize= from "
            f"the {name} line (the float8 weights are upcast per layer as they compute), or quantize the file's "
            "bf16 version",
        )
    return None


def cached_transformer_config(source: ComponentSource, hub: HubCache = DEFAULT_HUB) -> dict[str, Any] | None:
    """The transformer's config without loading it and without the network: its folder's (or cached hub repo's)
    config.json, or a single file's stored or inferred config; None when it is not on this machine."""
    if source.is_single_file:
        path = _find_single_file(source, hub)
        return None if path is None else transformer_config(read_header(path))
    path = _find_file(source, "config.json", hub)
    return None if path is None else json.loads(path.read_text(encoding="utf-8"))


def _find_single_file(source: ComponentSource, hub: HubCache) -> Path | None:
    """The single file's path, locally or in the Hugging Face cache (no network)."""
    if source.is_local:
        path = _local_folder(source)
        return path if path.is_file() else None
    try:
        cached = huggingface_hub.try_to_load_from_cache(source.source, source.subfolder, cache_dir=hub.folder)
    except ValueError:  # not a valid repo id
        return None
    return Path(cached) if isinstance(cached, str) else None


def _single_file_path(source: ComponentSource, hub: HubCache) -> str:
    """The single file, downloaded into the Hugging Face cache first when it is a hub file that may be fetched."""
    path = _find_single_file(source, hub)
    if path is not None:
        return str(path)
    if source.is_local or hub.is_offline():
        raise FileNotFoundError(f"{source.describe()} not found")
    return huggingface_hub.hf_hub_download(source.source, source.subfolder, cache_dir=hub.folder)


def _missing_files(name: str, source: ComponentSource, hub: HubCache) -> str | None:
    """A description of the first required file group with no alternative present, or None if all are there."""
    for alternatives in REQUIRED_FILES[name]:
        found = None
        for files in alternatives:
            paths = [_find_file(source, filename, hub) for filename in files]
            if all(path is not None for path in paths):
                found = paths
                break
        if found is None:
            return " or ".join(" + ".join(files) for files in alternatives)
        shards = _missing_shards(source, found[0], hub)
        if shards:
            return f"weight shards {', '.join(shards)}"
    return None


def _missing_shards(source: ComponentSource, path: Path, hub: HubCache) -> list[str]:
    """Shards listed in a sharded checkpoint's index that are not present (an interrupted download)."""
    if not path.name.endswith(".index.json"):
        return []
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8")).get("weight_map", {})
    except (OSError, ValueError):
        return [path.name + " (unreadable)"]
    return sorted(shard for shard in set(weight_map.values()) if _find_file(source, shard, hub) is None)


def _find_file(source: ComponentSource, filename: str, hub: HubCache) -> Path | None:
    """The file's path in the local folder or the Hugging Face cache, without any network access."""
    if source.is_local:
        path = _local_folder(source) / filename
        return path if path.is_file() else None
    repo_filename = f"{source.subfolder}/{filename}" if source.subfolder else filename
    try:
        cached = huggingface_hub.try_to_load_from_cache(source.source, repo_filename, cache_dir=hub.folder)
    except ValueError:  # not a valid repo id
        return None
    return Path(cached) if isinstance(cached, str) else None


def _local_folder(source: ComponentSource) -> Path:
    folder = Path(source.source).expanduser()
    return folder / source.subfolder if source.subfolder else folder


def _source_path(source: ComponentSource) -> str:
    return str(Path(source.source).expanduser()) if source.is_local else source.source


# ---------------------------------------------------------------------------------------------- messages


def _unavailable(name: str, source: ComponentSource, reason: str, hub: HubCache) -> ModelUnavailableError:
    reason = " ".join(reason.split()).rstrip(". ")
    if source.is_single_file:
        message = _single_file_unavailable(name, source, reason, hub)
    elif source.is_local:
        message = (
            f"{name} is not available: {reason}. Looked in local folder {_local_folder(source)}. "
            f"Fix: point the recipe line '{name}: <folder>' at a folder that holds the {name} files "
            f"(diffusers layout: {_expected_files(name)}), or remove the line to use the default."
        )
    else:
        subfolder = f", subfolder {source.subfolder}" if source.subfolder else ""
        include = f" --include '{source.subfolder}/*'" if source.subfolder else ""
        folder = hub.cache_dir()
        message = (
            f"{name} is not available: {reason}. Looked for hub repo {source.source}{subfolder} "
            f"in the Hugging Face cache {folder}. "
            f"Fix: run `hf download {source.source}{include} --cache-dir {folder}` (on a connected machine; then copy "
            f"that folder here), or point the recipe line '{name}: <folder>' at a local folder with the files."
        )
        if hub.offline:
            message += " The host's offline mode is on, so nothing is downloaded."
        elif huggingface_hub.is_offline_mode():
            message += f" HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '1')} is set, so nothing is downloaded."
    return ModelUnavailableError(name, source, message)


def _single_file_unavailable(name: str, source: ComponentSource, reason: str, hub: HubCache) -> str:
    if source.is_local:
        return (
            f"{name} is not available: {reason}. Looked for local file {_local_folder(source)}. Fix: point the "
            f"recipe line '{name}: <file>.safetensors' at a FramePack transformer file, or remove the line to use "
            "the default."
        )
    folder = hub.cache_dir()
    message = (
        f"{name} is not available: {reason}. Looked for {source.describe()} in the Hugging Face cache {folder}. "
        f"Fix: run `hf download {source.source} {source.subfolder} --cache-dir {folder}` (on a connected machine; "
        f"then copy that folder here), or point the recipe line '{name}: <file>.safetensors' at a local file."
    )
    if hub.is_offline():
        message += " Offline mode is on, so nothing is downloaded."
    return message


def _expected_files(name: str) -> str:
    groups = REQUIRED_FILES[name]
    return "; ".join(" or ".join(" + ".join(files) for files in alternatives[:2]) for alternatives in groups)


__all__ = [
    "HubCache",
    "ModelUnavailableError",
    "check_available",
    "check_component",
    "check_quantization",
    "load_component",
    "load_components",
]
