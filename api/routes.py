"""The FramePack REST routes, built by a factory over a job manager and the output folder.

The same routes serve the standalone server (`api.server.create_app`) and SD.Next: `route_table` returns plain
endpoint functions with their FastAPI options, so a host can register them one by one (SD.Next:
`shared.api.add_api_route(spec.path, spec.endpoint, methods=spec.methods, **spec.options)`, which adds the host's
own auth), and `create_router` puts them on an `APIRouter` for `app.include_router`. Nothing here is global: each
call builds fresh closures over its manager.

Errors answer JSON `{"error": {"kind", "field", "message"}}` (see `api.errors`) with 4xx/5xx statuses, never
200. Limits: bodies over `max_body_bytes` (64 MiB by default) get 413; images must be base64 (no server paths)
and are decoded within the engine's MAX_IMAGE_PIXELS; every value is bounded by the request model; NaN and
Infinity are refused.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from framepack.jobs.models import Job, JobState
from framepack.request import GenerateRequest

from . import streams
from .aliases import ALIAS_TABLE
from .errors import JOB_ERROR_STATUS, ApiError, error_response, error_responses, json_errors
from .intake import read_generate_request, redact_images
from .limits import DEFAULT_MAX_BODY_BYTES
from .schemas import CodecInfo, CodecList, GenerateResponse, JobList, PlanResponse
from .streams import DEFAULT_MAX_STREAMS, EventStreamResponse, StreamSlots, sse_events

logger = logging.getLogger(__name__)

PREFIX = "/sdapi/v1/framepack"
WAIT_SLICE_SECONDS = 1.0  # the blocking route waits in slices so a shutdown can cancel it between two
ENCODED_TRAVERSAL = (b"%2e", b"%2f", b"%5c", b"%00")  # ".", "/", "\", NUL in percent-encoded form

REQUEST_BODY_DOC = (
    "A JSON object of `GenerateRequest` fields (schema below; every field is optional, defaults are the "
    "model's). SD.Next's FramePack field names are accepted too: "
    + "; ".join(f"{peer} -> {ours}" for peer, ours in ALIAS_TABLE)
    + ". Its TeaCache switch (`use_teacache`) and attention names are converted as listed; its options without "
    "an equivalent here (CFGZero, VLM enhance, styles, VAE type, system prompts) are accepted only when off; "
    "unknown fields are refused. Images are base64 with or without a `data:` prefix; server file paths are "
    "refused; `output_dir` is the server's; `model` is 'default' or 'tiny' (left out: the server's default "
    "model; in SD.Next also cache and offload). Bodies over the size limit get 413; NaN/Infinity get 422."
)


KeepPartial = Annotated[bool, Query(description="keep the finished sections' latents (see the job's error message)")]
Refresh = Annotated[bool, Query(description="probe the encoders again (about a second)")]


@dataclass(frozen=True)
class RouteSpec:
    """One route: what `APIRouter.add_api_route` / SD.Next's `add_api_route` take."""

    path: str
    endpoint: Callable[..., Any]
    methods: list[str]
    options: dict[str, Any] = field(default_factory=dict)


def _request_body_openapi() -> dict[str, Any]:
    """The body is read by hand (aliases, strict JSON, size cap), so its schema is declared here for OpenAPI."""
    schema = GenerateRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {
        "requestBody": {
            "required": True,
            "description": REQUEST_BODY_DOC,
            "content": {"application/json": {"schema": schema}},
        }
    }


def job_view(job: Job) -> Job:
    """The job as the API shows it: embedded images left out of the request echo."""
    return job.model_copy(update={"request": redact_images(job.request)})


def main_output(job: Job) -> str | None:
    """The video when there is one, else the first output that is not the sidecar JSON."""
    container = str(job.request.get("container", "mp4"))
    for output in job.outputs:
        if output.endswith("." + container):
            return output
    others = [output for output in job.outputs if not output.endswith(".json")]
    return (others or job.outputs or [None])[0]


def resolve_output_file(output_dir: Path, relative: str, raw_path: bytes = b"") -> Path:
    """The real path of a file inside the output folder, or ApiError 404.

    Refused: empty, absolute, backslash, NUL, '.'/'..'/hidden components (also hides partial files), percent-
    encoded '.', '/', '\\' or NUL in the raw URL, anything whose real path (symlinks resolved) leaves the real
    output folder or has a hidden component there (a link to a partial file), and anything that is not a
    regular file.
    """
    not_found = ApiError(404, "not_found", "no such output file", "path")
    lowered = raw_path.lower()
    if any(token in lowered for token in ENCODED_TRAVERSAL):
        raise not_found
    if not relative or "\\" in relative or "\x00" in relative or relative.startswith("/") or os.path.isabs(relative):
        raise not_found
    if any(part in ("", ".", "..") or part.startswith(".") for part in relative.split("/")):
        raise not_found
    root = os.path.realpath(output_dir)
    target = os.path.realpath(os.path.join(root, relative))
    if target == root or os.path.commonpath([root, target]) != root or not os.path.isfile(target):
        raise not_found
    if any(part.startswith(".") for part in Path(os.path.relpath(target, root)).parts):
        raise not_found
    return Path(target)


def route_table(
    manager: Any,
    output_dir: Path | str,
    *,
    prefix: str = PREFIX,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_streams: int = DEFAULT_MAX_STREAMS,
) -> list[RouteSpec]:
    """The API's routes over `manager` (a `framepack.jobs.manager.JobManager`) and the folder its runner
    writes to. `prefix` is where the routes live; the download URLs in responses use it. At most `max_streams`
    event streams are open at once (429 past it)."""
    output_dir = Path(output_dir)
    stream_slots = StreamSlots(max_streams)
    codec_list: CodecList | None = None  # this router's probe result; ?refresh=true probes again

    def file_url(relative: str) -> str:
        return f"{prefix}/files/{quote(relative)}"

    def output_urls(job: Job) -> list[str]:
        return [file_url(rel) for rel in job.outputs if (output_dir / rel).is_file()]

    def generate_response(job: Job) -> GenerateResponse:
        filename = main_output(job)
        total = job.timings.get("total")
        took = f" in {total:.1f} s" if total is not None else ""
        return GenerateResponse(
            id=job.id,
            filename=filename,
            url=file_url(filename) if filename else None,
            message=f"finished{took}: {job.summary or ''}".strip(),
            state=job.state,
            summary=job.summary,
            plan=job.plan,
            outputs=job.outputs,
            urls=output_urls(job),
            timings=job.timings,
            resumed_sections=job.resumed_sections,
        )

    def failure_response(job: Job) -> Response:
        error = job.error
        kind = error.kind if error else ("cancelled" if job.state == JobState.CANCELLED else "internal")
        message = f"job {job.id} {job.state.value}: {error.message if error else 'no reason recorded'}"
        field = error.field if error else None
        return error_response(JOB_ERROR_STATUS.get(kind, 500), kind, message, field, job_id=job.id)

    async def submit(request: Request) -> Job:
        """Read, validate and queue a request (in the threadpool: the queue touches the disk). A filename that a
        queued or running job or an existing output has taken is a 409 from the manager, as for every face."""
        generate_request = await read_generate_request(request, max_body_bytes)
        return await run_in_threadpool(manager.submit, generate_request)

    async def wait_until_ended(job_id: str) -> Job:
        while True:
            job = await run_in_threadpool(manager.wait, job_id, WAIT_SLICE_SECONDS)
            if job.state.ended:
                return job
            await asyncio.sleep(0)

    @json_errors
    async def generate(request: Request) -> Any:
        """Generate a video and answer when it exists (SD.Next's route). The job runs in the server's queue like
        any other; the request only waits for it, so other requests are served meanwhile (a client that goes away
        leaves the job running; it stays listed). A failed job answers its error status (422 invalid, 409
        cancelled or an output name taken meanwhile, 503 model unavailable or out of memory, 507 disk full, 500 bug)
        with the error shape and the job id, never 200."""
        job = await wait_until_ended((await submit(request)).id)
        if job.state != JobState.FINISHED:
            return failure_response(job)
        return generate_response(job)

    @json_errors
    async def submit_job(request: Request, response: Response) -> Any:
        """Queue a generation and answer at once with 202, the job (id, state, queue_position) and its Location.
        Follow it with GET .../jobs/{id} or the .../events stream. Queue full: 429 with Retry-After."""
        job = await submit(request)
        response.headers["Location"] = f"{request.scope.get('root_path', '')}{prefix}/jobs/{job.id}"
        return job_view(job)

    @json_errors
    async def list_jobs() -> Any:
        """Every job the server knows (queued, running, ended), oldest first."""
        return JobList(jobs=[job_view(job) for job in await run_in_threadpool(manager.list_jobs)])

    @json_errors
    async def get_job(job_id: str) -> Any:
        """One job: state, plan, progress, outputs (relative to the output folder), timings, error."""
        return job_view(await run_in_threadpool(manager.get, job_id))

    @json_errors
    async def cancel_job(job_id: str, keep_partial: KeepPartial = False) -> Any:
        """Cancel a queued or running job (409 when it has already ended)."""
        return job_view(await run_in_threadpool(manager.cancel, job_id, keep_partial))

    @json_errors
    async def job_events(job_id: str) -> Any:
        """Server-sent events of a job: `event: state|progress|section|stage|frames|end` lines, each with a
        `data:` JSON object, and a `: ping` comment after 15 quiet seconds. The stream ends after `end` (sent at
        once for a job that has already ended). Too many open streams: 429 with Retry-After."""
        stream_slots.take()  # before the first await, so concurrent requests cannot all pass the check
        try:
            # JobNotFound (404) comes now, before the stream starts; no thread waits on the events afterwards
            subscription = await run_in_threadpool(
                manager.subscribe_async, job_id, asyncio.get_running_loop(), heartbeat=streams.HEARTBEAT_SECONDS
            )
        except BaseException:
            stream_slots.give_back()
            raise

        def closed() -> None:
            subscription.close()
            stream_slots.give_back()

        return EventStreamResponse(sse_events(subscription, job_id, redact_images), on_close=closed)

    @json_errors
    async def job_preview(job_id: str) -> Any:
        """The latest section preview as PNG; 404 until the first section is done (or when previews are off)."""
        pixels = await run_in_threadpool(manager.preview, job_id)
        if pixels is None:
            raise ApiError(404, "not_found", f"job {job_id} has no preview yet", "id")

        def encode() -> bytes:
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            return buffer.getvalue()

        return Response(await run_in_threadpool(encode), media_type="image/png", headers={"Cache-Control": "no-store"})

    @json_errors
    async def download(file_path: str, request: Request) -> Any:
        """Download an output. Only regular files inside the output folder are served: traversal ('..',
        absolute paths, backslashes, NUL, their percent-encoded forms), hidden/partial files, folders and
        symlinks leading outside all answer 404."""
        path = resolve_output_file(output_dir, file_path, request.scope.get("raw_path") or b"")
        return FileResponse(path)

    @json_errors
    async def codecs(refresh: Refresh = False) -> Any:
        """Video encoders that really open on this machine (hardware first), with the containers each fits."""
        nonlocal codec_list
        if refresh or codec_list is None:
            from framepack.video.codecs import list_video_encoders

            infos = await run_in_threadpool(list_video_encoders)
            codec_list = CodecList(codecs=[CodecInfo.model_validate(info, from_attributes=True) for info in infos])
        return codec_list

    @json_errors
    async def plan(request: Request) -> Any:
        """The plan of a request without running it: bucket size, sections, exact frame count, per-section
        prompts and generation order. Checks images and encoder settings like a submit would; loads no model."""
        generate_request = manager.complete(await read_generate_request(request, max_body_bytes))  # its defaults

        def make() -> PlanResponse:
            from framepack.runner import check_outputs, plan_request

            result = plan_request(generate_request)
            check_outputs(generate_request, result, manager.runner.encoder_prober)  # the runner's probe process
            return PlanResponse(summary=result.summary(), plan=result)

        return await run_in_threadpool(make)

    body = _request_body_openapi()
    common = {"tags": ["framepack"]}
    return [
        RouteSpec(
            prefix,
            generate,
            ["POST"],
            {
                **common,
                "response_model": GenerateResponse,
                "openapi_extra": body,
                "summary": "Generate a video (blocks until done)",
                "responses": error_responses(409, 413, 429, 503, 507),
            },
        ),
        RouteSpec(
            f"{prefix}/jobs",
            submit_job,
            ["POST"],
            {
                **common,
                "status_code": 202,
                "response_model": Job,
                "openapi_extra": body,
                "summary": "Queue a generation",
                "responses": error_responses(409, 413, 429, 503),
            },
        ),
        RouteSpec(
            f"{prefix}/jobs",
            list_jobs,
            ["GET"],
            {**common, "response_model": JobList, "summary": "List jobs", "responses": error_responses()},
        ),
        RouteSpec(
            f"{prefix}/jobs/{{job_id}}",
            get_job,
            ["GET"],
            {**common, "response_model": Job, "summary": "Get a job", "responses": error_responses(404)},
        ),
        RouteSpec(
            f"{prefix}/jobs/{{job_id}}",
            cancel_job,
            ["DELETE"],
            {
                **common,
                "response_model": Job,
                "summary": "Cancel a job",
                "name": "cancel_job_delete",
                "responses": error_responses(404, 409),
            },
        ),
        RouteSpec(
            f"{prefix}/jobs/{{job_id}}/cancel",
            cancel_job,
            ["POST"],
            {**common, "response_model": Job, "summary": "Cancel a job", "responses": error_responses(404, 409)},
        ),
        RouteSpec(
            f"{prefix}/jobs/{{job_id}}/events",
            job_events,
            ["GET"],
            {
                **common,
                "summary": "Job events (SSE)",
                "response_class": StreamingResponse,
                "responses": {
                    **error_responses(404, 429),
                    200: {
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        "description": "event stream",
                    },
                },
            },
        ),
        RouteSpec(
            f"{prefix}/jobs/{{job_id}}/preview",
            job_preview,
            ["GET"],
            {
                **common,
                "summary": "Latest section preview (PNG)",
                "response_class": Response,
                "responses": {
                    **error_responses(404),
                    200: {
                        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                        "description": "PNG image",
                    },
                },
            },
        ),
        RouteSpec(
            f"{prefix}/files/{{file_path:path}}",
            download,
            ["GET"],
            {
                **common,
                "summary": "Download an output file",
                "response_class": FileResponse,
                "responses": {
                    **error_responses(404),
                    200: {
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                        "description": "the file, with the media type of its extension",
                    },
                },
            },
        ),
        RouteSpec(
            f"{prefix}/codecs",
            codecs,
            ["GET"],
            {
                **common,
                "response_model": CodecList,
                "summary": "Available video encoders",
                "responses": error_responses(),
            },
        ),
        RouteSpec(
            f"{prefix}/plan",
            plan,
            ["POST"],
            {
                **common,
                "response_model": PlanResponse,
                "openapi_extra": body,
                "summary": "Plan a request without running it",
                "responses": error_responses(413),
            },
        ),
    ]


def create_router(
    manager: Any, output_dir: Path | str, *, dependencies: list[Any] | None = None, **options: Any
) -> APIRouter:
    """An APIRouter with every route of `route_table` (options: prefix, max_body_bytes)."""
    router = APIRouter(dependencies=dependencies or [])
    for spec in route_table(manager, output_dir, **options):
        router.add_api_route(spec.path, spec.endpoint, methods=spec.methods, **spec.options)
    return router
