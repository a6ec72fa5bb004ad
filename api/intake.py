"""From an HTTP body to the one request model, with the restrictions a network face needs.

The engine's `GenerateRequest` also serves the CLI, where file paths and output folders are the user's own. Over
the network they are not: a client must not make the server read or write arbitrary files. So here

- images (`IMAGE_FIELDS`: `init_image`, `end_image`, the single-frame images; and `keyframes`) must be base64, with
  or without a `data:` prefix, or `upload:<id>`; a value that names an existing path is refused, and accepted base64
  values are passed on as `data:` URLs so the engine never tries them as paths;
- videos (`VIDEO_FIELDS`: `init_video`, when the request model has it) must be `upload:<id>`;
- `upload:<id>` (an id `POST .../uploads` answered, see `api.uploads`) becomes the path of that upload's file, the
  only way a path reaches the engine from the network; an id malformed, unknown, expired or of the other kind
  (an image field naming a video) is refused naming the field;
- `output_dir` is refused (the server chooses the folder; `filename` may name the stem);
- `model` is 'default' or 'tiny' (recipe files are a local, CLI/UI matter);
- `enhancer` is a hub repo id or 'tiny', never a folder: a value written like a path, or naming an existing one, is
  refused.
"""

from __future__ import annotations

import os
import re
from typing import Any

from fastapi import Request

from framepack.errors import FieldError
from framepack.jobs.models import brief_request
from framepack.request import BUILTIN_MODELS, IMAGE_FIELDS, PATH_CHECK_LENGTH, GenerateRequest
from framepack.uploads import Kind, UploadStore

from .aliases import translate
from .errors import ApiError
from .limits import DEFAULT_MAX_BODY_BYTES, read_json_body

API_MODELS = BUILTIN_MODELS
WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
UPLOAD_PREFIX = "upload:"
VIDEO_FIELDS = tuple(name for name in ("init_video",) if name in GenerateRequest.model_fields)


def api_image(value: Any, field: str) -> Any:
    """A base64 image as a `data:` URL; None for an empty value; file paths refused."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return value  # the request model refuses it with the right message
    if value.startswith("data:"):
        return value
    if len(value) < PATH_CHECK_LENGTH and "\x00" not in value and os.path.lexists(value):
        raise FieldError(field, "images must be sent as base64 (optionally a data: URL), not as a path on the server")
    return "data:;base64," + value


def api_upload(value: str, field: str, kind: Kind, uploads: UploadStore | None) -> str:
    """The path of the file `value` ('upload:<id>') names, for `field`, which takes a `kind`; FieldError naming the
    field for an id that is malformed, unknown, expired or of the other kind."""
    if uploads is None:
        raise FieldError(field, "upload ids are not taken here (no upload store); send the file inline")
    return str(uploads.resolve(value.removeprefix(UPLOAD_PREFIX), field, kind))


def api_media(value: Any, field: str, kind: Kind, uploads: UploadStore | None) -> Any:
    """An image (`api_image`) or a video field's value: `upload:<id>` becomes the upload's path."""
    if isinstance(value, str) and value.startswith(UPLOAD_PREFIX):
        return api_upload(value, field, kind, uploads)
    if kind == "image":
        return api_image(value, field)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        raise FieldError(
            field,
            f"over the API a video must be uploaded: send '{UPLOAD_PREFIX}<id>' (POST .../uploads); "
            "paths on the server are not read",
        )
    return value  # the request model refuses it with the right message


def api_enhancer(value: Any) -> Any:
    """The enhancer of an API request: a hub repo id or 'tiny'; folders on the server are refused."""
    if not isinstance(value, str):
        return value  # the request model refuses it with the right message
    path_like = value.startswith(("/", ".", "~", "\\")) or "\\" in value or WINDOWS_DRIVE.match(value) is not None
    if path_like or (len(value) < PATH_CHECK_LENGTH and "\x00" not in value and os.path.lexists(value)):
        raise FieldError(
            "enhancer", "over the API only a hub repo id ('owner/name') or 'tiny'; local folders are for the CLI and UI"
        )
    return value


def api_request(payload: Any, uploads: UploadStore | None = None) -> GenerateRequest:
    """Validate a JSON payload (our field names or SD.Next's) into a GenerateRequest for the API; `upload:<id>`
    values name files of `uploads`."""
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object of request fields", "body")
    fields = translate(payload)
    if fields.get("output_dir") is not None:
        raise FieldError("output_dir", "is chosen by the server; use filename to name the output")
    fields.pop("output_dir", None)
    model = fields.get("model")
    if model is not None and model not in API_MODELS:
        raise FieldError(
            "model",
            f"over the API only {' or '.join(repr(m) for m in API_MODELS)}; recipe files are for the CLI and UI",
        )
    if "enhancer" in fields:
        fields["enhancer"] = api_enhancer(fields["enhancer"])
    for name in IMAGE_FIELDS:
        if name in fields:
            fields[name] = api_media(fields[name], name, "image", uploads)
    for name in VIDEO_FIELDS:
        if name in fields:
            fields[name] = api_media(fields[name], name, "video", uploads)
    keyframes = fields.get("keyframes")
    if isinstance(keyframes, dict):
        fields["keyframes"] = {
            key: api_media(source, f"keyframes.{key}", "image", uploads) for key, source in keyframes.items()
        }
    return GenerateRequest.model_validate(fields)


async def read_generate_request(
    request: Request, max_bytes: int = DEFAULT_MAX_BODY_BYTES, uploads: UploadStore | None = None
) -> GenerateRequest:
    return api_request(await read_json_body(request, max_bytes), uploads)


def redact_images(fields: dict[str, Any]) -> dict[str, Any]:
    """A request dict for responses: embedded images replaced by a short note (they can be megabytes)."""
    return brief_request(fields)
