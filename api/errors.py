"""The one error shape of the API.

Every failure answers JSON ``{"error": {"kind": ..., "field": ..., "message": ...}}`` with a 4xx/5xx status,
never 200 and never HTML. ``kind`` is one of ``ERROR_KINDS``; ``field`` names the request field at fault when
there is one (dotted for nested fields, e.g. ``keyframes.2``). The engine's and the queue's errors get their kind
and status from `framepack.jobs.errors` (the classification jobs use too); the kinds only the API has are below.

Routes are wrapped with `json_errors` so they answer in this shape even when mounted on a host app whose own
exception handlers differ (SD.Next); `install_error_handlers` covers what happens outside a route (unknown
paths, query-parameter validation, unexpected bugs) in the standalone app.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from framepack.errors import UserError
from framepack.jobs.errors import STATUS, classify

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 10  # what a 429 suggests; a queued job takes at least this long to make room

API_KINDS = (
    "unauthorized",  # 401
    "method_not_allowed",  # 405
    "too_large",  # 413: request body over the limit
    "unsupported_type",  # 415: an upload that is neither an image nor a video
    "too_many_streams",  # 429: too many event streams open on this server; retry after Retry-After seconds
    "rate_limited",  # 429: too many failed logins from this client; retry after Retry-After seconds
    "not_installed",  # 503: the SD.Next extension lacks a requirement; the message says how to install it
)
ERROR_KINDS = (*STATUS, *API_KINDS)  # STATUS: the kinds of `framepack.jobs.errors`, with their statuses
STATUS_KINDS = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_type",
    422: "invalid",
    429: "queue_full",
    503: "model_unavailable",
    507: "disk_full",
}


class ErrorDetail(BaseModel):
    kind: str = Field(description=" | ".join(ERROR_KINDS))
    field: str | None = Field(None, description="the request field at fault, dotted for nested ones")
    message: str = Field(description="one line meant for the user")


class ErrorResponse(BaseModel):
    """The body of every error response (`id` only when a job was made and failed)."""

    error: ErrorDetail
    id: str | None = Field(None, description="the failed job's id (blocking route only)")


class ApiError(Exception):
    """An error raised by the API layer itself with its status, kind and optional field and headers."""

    def __init__(
        self, status: int, kind: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status, self.kind, self.message, self.field, self.headers = status, kind, message, field, headers


def error_response(
    status: int,
    kind: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    job_id: str | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": ErrorDetail(kind=kind, field=field, message=message).model_dump()}
    if job_id is not None:
        body["id"] = job_id
    return JSONResponse(body, status_code=status, headers=headers)


def _loc_field(loc: tuple | list) -> str | None:
    """('body', 'steps') -> 'steps'; ('query', 'keep_partial') -> 'keep_partial'; () -> None."""
    parts = [str(part) for part in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or None


def validation_response(errors: list[dict[str, Any]]) -> JSONResponse:
    """A pydantic/FastAPI error list -> 422 naming the first field; the message lists every problem."""
    problems = []
    for item in errors:
        field = _loc_field(item.get("loc", ()))
        message = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
        problems.append(f"{field}: {message}" if field else message)
    first = _loc_field(errors[0].get("loc", ())) if errors else None
    return error_response(422, "invalid", "; ".join(problems) or "invalid request", first)


def response_for(error: BaseException) -> JSONResponse | None:
    """The JSON error response for a known exception, None for a bug."""
    if isinstance(error, ApiError):
        return error_response(error.status, error.kind, error.message, error.field, error.headers)
    if isinstance(error, ValidationError):
        return validation_response(error.errors(include_url=False))
    if isinstance(error, RequestValidationError):
        return validation_response(list(error.errors()))
    if isinstance(error, StarletteHTTPException):
        kind = STATUS_KINDS.get(error.status_code, "internal" if error.status_code >= 500 else "invalid")
        return error_response(error.status_code, kind, str(error.detail), None, getattr(error, "headers", None))
    known = classify(error)
    if known is None:
        return None
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if known.kind == "queue_full" else None
    return error_response(STATUS[known.kind], known.kind, known.message, known.field, headers)


def response_or_internal(error: BaseException, log_message: str, *log_args: Any) -> JSONResponse:
    """`response_for(error)`, or for a bug: log `log_message` (with `log_args` and the traceback) and answer 500."""
    response = response_for(error)
    if response is None:
        logger.exception(log_message, *log_args, exc_info=error, stacklevel=2)
        return error_response(500, "internal", f"internal error ({type(error).__name__}); see the server log")
    return response


Endpoint = TypeVar("Endpoint", bound=Callable[..., Awaitable[Any]])


def json_errors(endpoint: Endpoint) -> Endpoint:
    """Wrap an async endpoint so that every exception becomes the JSON error shape (500 for bugs, logged).

    `functools.wraps` keeps the signature, so FastAPI still sees the endpoint's parameters and dependencies.
    """

    @functools.wraps(endpoint)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await endpoint(*args, **kwargs)
        except Exception as error:
            return response_or_internal(error, "API error in %s", endpoint.__name__)

    return wrapper  # type: ignore[return-value]


def install_error_handlers(app: FastAPI) -> None:
    """App-level handlers for what no route wrapper sees: unknown routes, 405, parameter validation, bugs."""

    async def known(_request: Request, error: Exception) -> JSONResponse:
        return response_or_internal(error, "API error")

    app.add_exception_handler(RequestValidationError, known)
    app.add_exception_handler(StarletteHTTPException, known)
    app.add_exception_handler(UserError, known)
    app.add_exception_handler(ApiError, known)
    app.add_exception_handler(ValidationError, known)
    app.add_exception_handler(Exception, known)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Credentials missing or wrong (when the server requires them)."},
    422: {"model": ErrorResponse, "description": "Bad input; `error.field` names the field."},
    500: {"model": ErrorResponse, "description": "A bug; details are in the server log."},
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route: the common ones plus the listed statuses."""
    descriptions = {
        404: "Unknown job or file.",
        409: "The job's state does not allow this, the job was cancelled, or its filename is taken (field filename).",
        413: "Request body over the size limit.",
        415: "An upload that is neither an image nor a video that decodes; the message lists what is allowed.",
        429: "Queue full (or, for event streams, too many open); retry after the Retry-After header's seconds.",
        503: "Model not available (or out of memory); the message says what is missing and how to get it.",
        507: "Disk full: the job kept nothing; the message names the folder and its free space. Retry later.",
    }
    responses = dict(ERROR_RESPONSES)
    for status in statuses:
        responses[status] = {"model": ErrorResponse, "description": descriptions[status]}
    return responses
