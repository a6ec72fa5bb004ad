"""Face defaults: values a request takes for the fields it leaves out (the default model, cache, offload).

A field is "left out" when the request did not set it: not sent over the API, not given as a CLI flag (pydantic's
`model_fields_set`). A field that is set always wins, so `"model": "default"` means the published weights even
when the server's default model is the self-test model. Each face has its own defaults:

- CLI (`generate`, `plan`, `calibrate-magcache`): the environment variable FRAMEPACK_MODEL;
- `serve`: `--model`, else FRAMEPACK_MODEL;
- SD.Next: its settings page (section "FramePack"), whose default model setting starts at FRAMEPACK_MODEL.

The CLI's `generate` also defaults `keep_latents` to off: a plain run is no job of a job store, so it keeps nothing
(`--keep-latents`, `--continue-job` and `--reroll-job` run it as a job of the server's data folder instead).

Defaults are applied once, when a job is submitted (or planned), so a stored job names its model explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from framepack.errors import FieldError
from framepack.request import PUBLISHED_MODEL, SELF_TEST_MODEL, GenerateRequest

MODEL_ENV = "FRAMEPACK_MODEL"
DEFAULTABLE = ("model", "cache", "offload", "keep_latents")  # the fields a face may default
# The names a default model may be given by: the request's own ('default', 'tiny') and the settings page's words.
MODEL_NAMES = {
    PUBLISHED_MODEL: PUBLISHED_MODEL,
    "published": PUBLISHED_MODEL,
    SELF_TEST_MODEL: SELF_TEST_MODEL,
    "self-test": SELF_TEST_MODEL,
}
SELF_TEST_NOTICE = "the default model is the SELF-TEST model (random weights: every video is noise)"


def model_default(value: str | None, source: str) -> str | None:
    """A default model given as 'published'/'default', 'self-test'/'tiny' or a recipe file path, in the request's
    words ('default', 'tiny' or the path); None for None or blank. FieldError naming `source` for anything else."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.lower() in MODEL_NAMES:
        return MODEL_NAMES[value.lower()]
    if not Path(value).expanduser().is_file():
        raise FieldError(
            "model",
            f"{source} is {value!r}: allowed 'published' (or 'default'), 'self-test' (or 'tiny') or the path of "
            "an existing recipe file",
        )
    return str(Path(value).expanduser())


def env_defaults(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """{"model": ...} from FRAMEPACK_MODEL when it is set and not blank, else {}."""
    environ = os.environ if environ is None else environ
    model = model_default(environ.get(MODEL_ENV), f"the environment variable {MODEL_ENV}")
    return {"model": model} if model is not None else {}


def apply_defaults(request: GenerateRequest, defaults: Mapping[str, Any]) -> GenerateRequest:
    """The request with each field it left out set from `defaults` (None values and unknown fields ignored);
    the same object when nothing changes. Values are validated like any request field."""
    unknown = set(defaults) - set(DEFAULTABLE)
    if unknown:
        raise ValueError(f"not a defaultable field: {', '.join(sorted(unknown))}; allowed: {', '.join(DEFAULTABLE)}")
    missing = {
        name: value for name, value in defaults.items() if value is not None and name not in request.model_fields_set
    }
    if not missing:
        return request
    return GenerateRequest.model_validate({**request.model_dump(), **missing})


def uses_self_test(defaults: Mapping[str, Any]) -> bool:
    return defaults.get("model") == SELF_TEST_MODEL
