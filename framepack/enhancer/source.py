"""Which model the request's `enhancer` names, and whether its files are on this machine. No torch here.

`enhancer` is 'tiny' (the self-test model, written into the data folder on first use), a local folder (written
like a path, or an existing folder) or a hub repo id, looked for in the Hugging Face cache the FramePack model uses
(`HubCache`: SD.Next's cache folder and offline setting in SD.Next). Like the FramePack components, a hub model is
never downloaded by a job: `check_enhancer` finds its files in the cache or says how to get them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import huggingface_hub
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from framepack.errors import FieldError, UserError
from framepack.home import data_home
from framepack.models.load_lock import LOAD_LOCK
from framepack.models.recipe import is_local_path
from framepack.request import DEFAULT_ENHANCER, QUALITY_ENHANCER, SELF_TEST_ENHANCER

if TYPE_CHECKING:
    from framepack.models.loader import HubCache

logger = logging.getLogger(__name__)

TINY_VLM_FOLDER = "tiny-vlm-self-test"  # the self-test enhancer's folder in the data folder

# Files an image-text-to-text model needs, as groups of alternatives (every group needs one alternative whose
# files are all there). transformers 5 saves the image processor inside processor_config.json; the hub's
# checkpoints ship preprocessor_config.json.
REQUIRED_FILES: tuple[tuple[tuple[str, ...], ...], ...] = (
    (("config.json",),),
    (("model.safetensors",), ("model.safetensors.index.json",), ("pytorch_model.bin",)),
    (("preprocessor_config.json",), ("processor_config.json",)),
    (("tokenizer.json",), ("tokenizer_config.json",)),
)


class EnhancerUnavailableError(UserError, RuntimeError):
    """The enhancer's files are not on this machine; the message names the model, where it looked and how to get
    it (a job with `enhance: require` fails with it: HTTP 503, field `enhancer`)."""

    field = "enhancer"


@dataclass(frozen=True)
class EnhancerSource:
    """Where the enhancer comes from: a hub repo id or a local folder (`is_local`); `self_test` for 'tiny'."""

    name: str  # as the request gave it
    path: str  # the repo id, or the folder
    is_local: bool
    self_test: bool = False

    def describe(self) -> str:
        if self.self_test:
            return "the tiny SELF-TEST enhancer (random weights: its text is noise)"
        return f"local folder {self.path}" if self.is_local else f"hub repo {self.path}"


def resolve_enhancer(value: str, home: Path | None = None, write_tiny: bool = True) -> EnhancerSource:
    """The source `value` names; FieldError naming `enhancer` for a value that is neither 'tiny', a folder written
    like a path, nor a valid hub repo id. 'tiny' is written into the data folder on first use (`write_tiny`)."""
    if value == SELF_TEST_ENHANCER:
        folder = (home or data_home()) / TINY_VLM_FOLDER
        with LOAD_LOCK:  # one writer, and no load building weights meanwhile (several workers in one process)
            if write_tiny and not (folder / "config.json").is_file():
                from framepack.models.tiny_vlm import write_tiny_vlm  # torch and transformers, to write it

                logger.info("writing the tiny SELF-TEST enhancer (random weights, its text is noise) to %s", folder)
                write_tiny_vlm(folder)
        return EnhancerSource(value, str(folder), True, self_test=True)
    if "\x00" in value:
        raise FieldError("enhancer", "must not contain NUL")
    if is_local_path(value):
        return EnhancerSource(value, str(Path(value).expanduser()), True)
    try:
        validate_repo_id(value)
    except HFValidationError:
        raise FieldError(
            "enhancer",
            f"{value!r} is not a hub repo id 'owner/name' (e.g. {DEFAULT_ENHANCER} or {QUALITY_ENHANCER}), a "
            f"local folder (written as a path: /..., ./..., ~/...) or '{SELF_TEST_ENHANCER}'",
        ) from None
    return EnhancerSource(value, value, False)


def check_enhancer(source: EnhancerSource, hub: HubCache) -> EnhancerUnavailableError | None:
    """None when the model's files are in its folder or in the Hugging Face cache (no network), else the error."""
    if source.is_local:
        folder = Path(source.path)
        if not folder.is_dir():
            return _unavailable(source, "the folder does not exist", hub)
    missing = _missing_files(source, hub)
    return _unavailable(source, f"{missing} not found", hub) if missing else None


def _missing_files(source: EnhancerSource, hub: HubCache) -> str | None:
    for alternatives in REQUIRED_FILES:
        found = next((files for files in alternatives if all(_find(source, name, hub) for name in files)), None)
        if found is None:
            return " or ".join(" + ".join(files) for files in alternatives)
        if found[0].endswith(".index.json"):
            shards = _missing_shards(source, _find(source, found[0], hub), hub)
            if shards:
                return f"weight shards {', '.join(shards)}"
    return None


def _missing_shards(source: EnhancerSource, index: Path | None, hub: HubCache) -> list[str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}) if index else {}
    except (OSError, ValueError):
        return ["(the index is unreadable)"]
    return sorted(shard for shard in set(weight_map.values()) if _find(source, shard, hub) is None)


def _find(source: EnhancerSource, filename: str, hub: HubCache) -> Path | None:
    if source.is_local:
        path = Path(source.path) / filename
        return path if path.is_file() else None
    cached = huggingface_hub.try_to_load_from_cache(source.path, filename, cache_dir=hub.folder)
    return Path(cached) if isinstance(cached, str) else None


def _unavailable(source: EnhancerSource, reason: str, hub: HubCache) -> EnhancerUnavailableError:
    if source.is_local:
        return EnhancerUnavailableError(
            f"enhancer {source.name} is not available: {reason}. Looked in local folder {source.path}. Fix: point "
            "enhancer at a folder holding an image-text-to-text model (config.json, model.safetensors, the "
            "processor and tokenizer files), use a hub repo id, or set enhance to 'off'."
        )
    folder = hub.cache_dir()
    message = (
        f"enhancer {source.path} is not available: {reason}. Looked for hub repo {source.path} in the Hugging Face "
        f"cache {folder}. Fix: run `hf download {source.path} --cache-dir {folder}` (on a connected machine; then "
        "copy that folder here), point enhancer at a local folder with the model, or set enhance to 'off'."
    )
    if hub.offline:
        message += " The host's offline mode is on, so nothing is downloaded."
    elif huggingface_hub.is_offline_mode():
        message += f" HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '1')} is set, so nothing is downloaded."
    return EnhancerUnavailableError(message)
