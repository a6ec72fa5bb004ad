"""Request size limits and strict JSON reading.

Base64 images make requests large, so bodies are capped (64 MiB by default: a 16-megapixel PNG in base64 fits).
The cap is enforced twice: `BodySizeLimit` (standalone app) refuses an oversized Content-Length before reading
and counts streamed bytes of chunked bodies; `read_json_body` counts again while reading, so the routes keep the
cap when mounted on a host app without the middleware. Image decode limits (`MAX_IMAGE_PIXELS`) and value bounds
come from the engine's request model.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_response

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, "too_large", f"request body over the limit of {limit} bytes ({limit / 2**20:.0f} MiB)")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows; use a finite value")


def parse_json(raw: bytes) -> Any:
    """Strict JSON: NaN, Infinity and -Infinity (which Python's json accepts by default) are refused."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(422, "invalid", f"the body is not valid JSON: {error}", "body") from None


async def read_json_body(request: Request, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Any:
    """Read at most `max_bytes` of body (413 beyond) and parse it strictly."""
    return parse_json(await read_body(request, max_bytes))


async def read_body(request: Request, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> bytes:
    """At most `max_bytes` of body (413 beyond); 422 naming "body" for an empty one."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(max_bytes)
        chunks.append(chunk)
    if size == 0:
        raise ApiError(422, "invalid", "the body is empty; send the request as a JSON object", "body")
    return b"".join(chunks)


class BodySizeLimit:
    """ASGI middleware: 413 JSON for bodies over `max_bytes`, by Content-Length up front or by counting. The
    paths in `exempt` (routes that bound their own bodies, such as uploads) are passed through."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES, exempt: tuple[str, ...] = ()):
        self.app, self.max_bytes, self.exempt = app, max_bytes, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await error_response(413, "too_large", str(BodyTooLarge(self.max_bytes)))(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)
