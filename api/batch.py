"""A batch body: several requests, all read and validated before any is queued.

Two forms, told apart by the Content-Type:

- JSON (`application/json`): `{"requests": [{...}, ...], "defaults": {...}}`, each element a request object;
- JSON lines (`application/x-ndjson`, `application/jsonl`, `application/x-jsonlines` or `text/plain`): one request
  object per line, as `python -m framepack generate --batch FILE.jsonl` reads; blank lines are skipped but
  counted.

Each request's fields go over `defaults` (JSON form only), and each is read as a single request is
(`api.intake.api_request`: SD.Next's names, base64 images only, no output folder). Requests are numbered from 1
(the line, or the element of `requests`); the first one refused refuses the batch with a `BatchLineError` whose
field is `requests.<number>.<field>` and whose message starts with "line <number>: ".
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import ValidationError

from framepack.errors import validation_message
from framepack.jobs.errors import STATUS, classify
from framepack.jobs.models import BatchLineError
from framepack.request import GenerateRequest
from framepack.uploads import UploadStore

from .aliases import translate
from .errors import ApiError
from .intake import api_request
from .limits import DEFAULT_MAX_BODY_BYTES, parse_json, read_body

LINE_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines", "text/plain")
BATCH_KEYS = ("requests", "defaults")


def batch_objects(raw: bytes, content_type: str) -> tuple[list[tuple[int, Any]], dict[str, Any]]:
    """(numbered request objects, defaults) of a batch body."""
    media = content_type.split(";")[0].strip().lower()
    if media in LINE_TYPES:
        numbered = []
        for number, line in enumerate(raw.split(b"\n"), 1):
            if line.strip():
                try:
                    numbered.append((number, parse_json(line)))
                except ApiError as error:
                    raise BatchLineError(
                        number, "invalid", None, error.message.replace("the body", "the line")
                    ) from None
        return numbered, {}
    payload = parse_json(raw)
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid", 'the body must be a JSON object {"requests": [...], "defaults": {...}}', "body")
    unknown = sorted(set(payload) - set(BATCH_KEYS))
    if unknown:
        raise ApiError(422, "invalid", f"unknown key {unknown[0]!r}; allowed: requests, defaults", unknown[0])
    requests, defaults = payload.get("requests"), payload.get("defaults") or {}
    if not isinstance(requests, list):
        raise ApiError(422, "invalid", "must be a list of request objects", "requests")
    if not isinstance(defaults, dict):
        raise ApiError(422, "invalid", "must be an object of request fields", "defaults")
    return list(enumerate(requests, 1)), defaults


def batch_requests(raw: bytes, content_type: str, uploads: UploadStore | None = None) -> list[GenerateRequest]:
    """Every request of a batch body, validated (see the module docstring); `upload:<id>` names files of
    `uploads`."""
    numbered, defaults = batch_objects(raw, content_type)
    if not numbered:
        raise ApiError(422, "invalid", "a batch needs at least one request", "requests")
    try:
        base = translate(defaults)
        api_request(dict(base), uploads)  # the defaults alone must be valid, so their errors name them
    except Exception as error:  # noqa: BLE001 - the defaults' own field error, named under "defaults"
        raise _named(error, "defaults") from None
    requests = []
    for number, fields in numbered:
        if not isinstance(fields, dict):
            raise BatchLineError(number, "invalid", None, "must be a JSON object of request fields")
        try:
            requests.append(api_request({**base, **translate(fields)}, uploads))
        except ValidationError as error:
            first = error.errors()[0]["loc"] if error.errors() else ()
            field = ".".join(str(part) for part in first) or None
            raise BatchLineError(number, "invalid", field, validation_message(error)) from None
        except ApiError as error:
            raise BatchLineError(number, error.kind, error.field, error.message) from None
        except Exception as error:
            known = classify(error)
            if known is None:
                raise
            raise BatchLineError(number, known.kind, known.field, known.message) from None
    return requests


def _named(error: Exception, prefix: str) -> Exception:
    """An error in `defaults` as an ApiError naming `defaults.<field>` (a bug as it is)."""
    if isinstance(error, ValidationError):
        first = error.errors()[0]["loc"] if error.errors() else ()
        field = ".".join(str(part) for part in first)
        return ApiError(
            422, "invalid", f"{prefix}: {validation_message(error)}", f"{prefix}.{field}" if field else prefix
        )
    if isinstance(error, ApiError):
        return ApiError(error.status, error.kind, f"{prefix}: {error.message}", f"{prefix}.{error.field or 'body'}")
    known = classify(error)
    if known is None:
        return error
    field = f"{prefix}.{known.field}" if known.field else prefix
    return ApiError(STATUS[known.kind], known.kind, f"{prefix}: {known.message}", field)


async def read_batch_requests(
    request: Request, max_bytes: int = DEFAULT_MAX_BODY_BYTES, uploads: UploadStore | None = None
) -> list[GenerateRequest]:
    return batch_requests(await read_body(request, max_bytes), request.headers.get("content-type", ""), uploads)
