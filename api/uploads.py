"""The upload routes: `POST .../uploads` streams a file into the `UploadStore` and answers its id; `GET` and
`DELETE .../uploads/{id}` read and end one. Requests then name the file as `upload:<id>` (`api.intake`).

The body is either `multipart/form-data` with the file in the field `file` (what `curl -F file=@clip.mp4` sends)
or the file's bytes themselves with any other Content-Type. It is written to disk as it arrives, never held in
memory; past the store's byte limit the answer is 413 at once (a declared Content-Length over it is refused
before reading), and the temporary file is removed, as it is for every refusal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from framepack.errors import FieldError
from framepack.jobs.models import JobNotFound, JobState
from framepack.jobs.service import JobService
from framepack.uploads import (
    UPLOAD_FIELD,
    IncomingFile,
    UnsupportedUpload,
    UploadDiskFull,
    UploadStore,
    UploadTooLarge,
    uploads_folder,
)

from .errors import ApiError, json_errors

logger = logging.getLogger(__name__)

MULTIPART_OVERHEAD = 64 * 1024  # the most a multipart body may carry beyond the file: boundaries and part headers

UPLOAD_DOC = (
    "The file as `multipart/form-data` field `file`, or as the raw body with its own Content-Type. An image "
    "(PNG, JPEG, WebP, GIF, BMP, TIFF) or a video (MP4/MOV, WebM/MKV, AVI), checked before the answer. Name it in "
    "requests as `upload:<id>` (image fields, keyframes, init_video) until `expires_at`."
)


def upload_body_openapi() -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    form = {"type": "object", "required": ["file"], "properties": {"file": binary}}
    return {
        "requestBody": {
            "required": True,
            "description": UPLOAD_DOC,
            "content": {"multipart/form-data": {"schema": form}, "application/octet-stream": {"schema": binary}},
        }
    }


class UploadRoutes:
    """The upload endpoints over `store` (default: the default limits in `service`'s jobs folder, made when first
    needed), whose uploads `service`'s queued and running jobs may name; `prefix` is where the routes live."""

    def __init__(self, service: JobService, store: UploadStore | None, prefix: str):
        self.service, self._store, self.prefix = service, store, prefix

    @property
    def store(self) -> UploadStore:
        if self._store is None:
            self._store = UploadStore(uploads_folder(self.service.jobs_dir))
        return self._store

    def in_use(self) -> set[str]:
        """The ids of the uploads the queued and running jobs name (their whole requests are read)."""
        found: set[str] = set()
        for listed in self.service.list_jobs(states=(JobState.QUEUED, JobState.RUNNING)):
            try:
                found |= self.store.named_in(self.service.get(listed.id).request.values())
            except JobNotFound:
                continue  # removed meanwhile: it needs nothing
        return found

    def sweep_at_start(self) -> None:
        """Remove what expired while the server was down (a failure is logged: the routes serve all the same)."""
        try:
            self.store.sweep(self.in_use)
        except Exception:  # noqa: BLE001 - a failed clean-up must not keep the routes from serving
            logger.exception("sweeping expired uploads failed")

    @json_errors
    async def upload(self, request: Request, response: Response) -> Any:
        """Receive a file (see the module docstring) and answer 201 with its id, kind (image or video), size in
        bytes, width and height, for a video its frames and duration (seconds), and `expires_at` (Unix seconds).
        413: over the byte limit; 415: not an image or video; 422 naming `file`: outside the pixel or duration
        limits, damaged, or empty."""
        content_type = request.headers.get("content-type", "")
        multipart = content_type.lower().startswith("multipart/form-data")
        limit = self.store.limits.max_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + (MULTIPART_OVERHEAD if multipart else 0):
            raise _too_large(UploadTooLarge(limit))
        await run_in_threadpool(self.store.sweep, self.in_use)
        incoming = await run_in_threadpool(self.store.incoming)
        try:
            try:
                if multipart:
                    await _receive_form(request, content_type, incoming)
                else:
                    async for chunk in request.stream():
                        incoming.write(chunk)
            except BaseException:
                incoming.discard()
                raise
            info = await run_in_threadpool(self.store.accept, incoming)
        except ClientDisconnect:
            raise ApiError(422, "invalid", "the upload was cut off before its end; nothing was kept", "file") from None
        except UploadTooLarge as error:
            raise _too_large(error) from None
        except UnsupportedUpload as error:
            raise ApiError(415, "unsupported_type", str(error), error.field) from None
        except UploadDiskFull as error:
            raise ApiError(507, "disk_full", str(error)) from None
        response.status_code = 201
        response.headers["Location"] = f"{request.scope.get('root_path', '')}{self.prefix}/{info.id}"
        return info

    @json_errors
    async def get(self, upload_id: str) -> Any:
        """An upload's metadata, as its upload answered; 404 once it expired or was deleted."""
        info = await run_in_threadpool(self.store.get, upload_id)
        if info is None:
            raise _not_found(upload_id)
        return info

    @json_errors
    async def delete(self, upload_id: str) -> Response:
        """End an upload now (204): requests can no longer name it; its file is removed at once, or when the
        last queued or running job that names it has ended. 404 for an unknown or expired one."""
        if not await run_in_threadpool(self.store.delete, upload_id, self.in_use):
            raise _not_found(upload_id)
        return Response(status_code=204)


def _too_large(error: UploadTooLarge) -> ApiError:
    return ApiError(413, "too_large", str(error), error.field)


def _not_found(upload_id: str) -> ApiError:
    shown = upload_id if len(upload_id) <= 40 else upload_id[:40] + "..."
    return ApiError(404, "not_found", f"no upload {shown!r} (unknown, deleted or expired)", "id")


class _Form:
    """python-multipart callbacks that write the part named `file` into `incoming` and refuse any other part."""

    def __init__(self, incoming: IncomingFile):
        self.incoming = incoming
        self.header_name, self.header_value, self.disposition = b"", b"", b""
        self.in_file = self.file_done = self.ended = False

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value_part,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
            "on_end": self.end,
        }

    def part_begin(self) -> None:
        self.disposition = b""

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def header_value_part(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name, self.header_value = b"", b""

    def headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self.disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name != UPLOAD_FIELD:
            shown = name if len(name) <= 40 else name[:40] + "..."
            raise FieldError(UPLOAD_FIELD, f"form field {shown!r} is not taken: send the file as the field 'file' only")
        if self.file_done or self.in_file:
            raise FieldError(UPLOAD_FIELD, "one file per upload: the form has more than one 'file'")
        self.in_file = True

    def part_data(self, data: bytes, start: int, end: int) -> None:
        self.incoming.write(data[start:end])

    def part_end(self) -> None:
        self.in_file, self.file_done = False, True

    def end(self) -> None:
        self.ended = True


async def _receive_form(request: Request, content_type: str, incoming: IncomingFile) -> None:
    """Stream a multipart/form-data body's `file` part into `incoming`; the whole body is bounded too."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(422, "invalid", "a multipart/form-data body needs a boundary in its Content-Type", "body")
    form = _Form(incoming)
    parser = MultipartParser(boundary, form.callbacks())
    limit, received = incoming.limit + MULTIPART_OVERHEAD, 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise UploadTooLarge(incoming.limit)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as error:
        raise ApiError(422, "invalid", f"not a valid multipart/form-data body ({error})", "body") from None
    if not form.file_done or not form.ended:
        raise FieldError(UPLOAD_FIELD, "the form has no complete field 'file' (send the file as the field 'file')")
