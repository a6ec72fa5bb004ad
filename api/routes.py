"""The FramePack REST routes: `FramePackRoutes`, one method per endpoint over a `JobService` and its output folder.

The same routes serve the standalone server (`api.server.create_app`) and SD.Next: `FramePackRoutes.table()` (or
`route_table`) lists each endpoint with its FastAPI options as a `RouteSpec`, so a host can register them one by
one (SD.Next: `shared.api.add_api_route(spec.path, spec.endpoint, methods=spec.methods, **spec.options)`, which
adds the host's own auth), and `create_router` puts them on an `APIRouter` for `app.include_router`. Nothing here
is global: each `FramePackRoutes` holds its own service, stream slots and codec list.

Errors answer JSON `{"error": {"kind", "field", "message"}}` (see `api.errors`) with 4xx/5xx statuses, never
200. Limits: bodies over `max_body_bytes` (64 MiB by default) get 413 (uploads have their own limit, see
`api.uploads`); images must be base64 or `upload:<id>` (no server paths) and are decoded within the engine's
MAX_IMAGE_PIXELS; every value is bounded by the request model; NaN and Infinity are refused.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from framepack.jobs.errors import STATUS
from framepack.jobs.events import EVENT_MODELS, JobEvent
from framepack.jobs.models import DeletedJob, EnhanceResult, Job, JobState, QueueState
from framepack.jobs.service import JobService
from framepack.request import GenerateRequest
from framepack.uploads import UploadInfo, UploadStore

from . import streams
from .aliases import ALIAS_TABLE
from .batch import read_batch_requests
from .errors import ApiError, error_response, error_responses, json_errors
from .intake import read_generate_request, redact_images
from .limits import DEFAULT_MAX_BODY_BYTES, read_json_body
from .schemas import BatchResponse, CodecInfo, CodecList, GenerateResponse, JobList, JobPatch, PlanResponse
from .streams import DEFAULT_MAX_STREAMS, EventStreamResponse, StreamSlots, sse_events
from .uploads import UploadRoutes, upload_body_openapi

logger = logging.getLogger(__name__)

PREFIX = "/sdapi/v1/framepack"
WAIT_SLICE_SECONDS = 1.0  # the blocking route waits in slices so a shutdown can cancel it between two
ENCODED_TRAVERSAL = (b"%2e", b"%2f", b"%5c", b"%00")  # ".", "/", "\", NUL in percent-encoded form

REQUEST_BODY_DOC = (
    "A JSON object of `GenerateRequest` fields (schema below; every field is optional, defaults are the "
    "model's). SD.Next's FramePack field names are accepted too: "
    + "; ".join(f"{peer} -> {ours}" for peer, ours in ALIAS_TABLE)
    + ". Its TeaCache switch (`use_teacache`) and attention names are converted as listed; its options without "
    "an equivalent here (CFGZero, styles, VAE type, system prompts) are accepted only when off; "
    "unknown fields are refused. Images are base64 with or without a `data:` prefix; server file paths are "
    "refused; `output_dir` is the server's; `model` is 'default' or 'tiny' (left out: the server's default "
    "model; in SD.Next also cache and offload); `enhancer` is a hub repo id or 'tiny'. Bodies over the size "
    "limit get 413; NaN/Infinity get 422."
)


KeepPartial = Annotated[bool, Query(description="keep the finished sections' latents (see the job's error message)")]
Refresh = Annotated[bool, Query(description="probe the encoders again (about a second)")]
Remove = Annotated[
    bool, Query(description="delete an ended job's record (without it, DELETE cancels and an ended job is a 409)")
]
RemoveFiles = Annotated[
    bool, Query(description="with remove=true: also delete the outputs the job wrote inside the output folder")
]
States = Annotated[
    str | None,
    Query(max_length=200, description="comma-separated states to list: queued, running, finished, failed, cancelled"),
]
Limit = Annotated[int | None, Query(ge=1, le=1000, description="list at most this many jobs (default: all)")]
Offset = Annotated[int, Query(ge=0, le=10**9, description="skip this many jobs first")]
Order = Annotated[Literal["oldest", "newest"], Query(description="oldest (default) or newest first")]
BatchFilter = Annotated[str | None, Query(max_length=64, description="only the jobs of this batch")]


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
    container = str(job.request.get("container", GenerateRequest.model_fields["container"].default))
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


EVENTS_DOC = (
    "Server-sent events: `event: NAME` and `data: JSON` lines, the JSON being the model of that name "
    "(state: StateEvent, stage: StageEvent, progress: ProgressEvent, section: SectionEvent, frames: FramesEvent, "
    "enhance: EnhanceEvent, end: EndEvent); a `: ping` comment after 15 quiet seconds. The stream ends after `end`."
)


class FramePackRoutes:
    """The API's endpoints over `service`, whose outputs lie in `output_dir` (default: the service's). `prefix` is
    where the routes live; the download URLs in responses use it. Bodies over `max_body_bytes` get 413; at most
    `max_streams` event streams are open at once (429 past it). Uploads go to `uploads` (default: a store with the
    default limits in the service's jobs folder), swept of expired ones now."""

    def __init__(
        self,
        service: JobService,
        output_dir: Path | str | None = None,
        *,
        prefix: str = PREFIX,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_streams: int = DEFAULT_MAX_STREAMS,
        uploads: UploadStore | None = None,
    ):
        self.service = service
        self.output_dir = Path(output_dir) if output_dir is not None else service.output_dir
        self.prefix = prefix
        self.max_body_bytes = max_body_bytes
        self.stream_slots = StreamSlots(max_streams)
        self._codecs: CodecList | None = None  # this object's probe result; ?refresh=true probes again
        self.upload_routes = UploadRoutes(service, uploads, f"{prefix}/uploads")
        self.upload_routes.sweep_at_start()

    @property
    def uploads(self) -> UploadStore:
        return self.upload_routes.store

    def table(self) -> list[RouteSpec]:
        """Every route, for `APIRouter.add_api_route` or a host's `add_api_route`."""
        p, job, uploads = self.prefix, f"{self.prefix}/jobs/{{job_id}}", self.upload_routes
        return [
            _route("POST", p, self.generate, "Generate a video (blocks until done)", GenerateResponse,
                   errors=(409, 413, 429, 503, 507), body=True),
            _route("POST", f"{p}/jobs", self.submit_job, "Queue a generation", Job, errors=(409, 413, 429, 503),
                   body=True, status_code=202),
            _route("POST", f"{p}/jobs/batch", self.submit_batch, "Queue a batch of generations", BatchResponse,
                   errors=(409, 413, 429, 503), body=_batch_body_openapi(), status_code=202),
            _route("GET", f"{p}/jobs", self.list_jobs, "List jobs", JobList),
            _route("GET", job, self.get_job, "Get a job", Job, errors=(404,)),
            _route("PATCH", job, self.patch_job, "Move a queued job in the queue", Job, errors=(404, 409, 413),
                   body=_patch_body_openapi()),
            _route("DELETE", job, self.delete_job, "Cancel a job, or delete an ended one (remove=true)",
                   Job | DeletedJob, errors=(404, 409), name="cancel_job_delete"),
            _route("POST", f"{job}/cancel", self.cancel_job, "Cancel a job", Job, errors=(404, 409)),
            _route("GET", f"{job}/thumbnail", self.job_thumbnail, "A small picture of the job (PNG)", errors=(404,),
                   response_class=Response, ok=_binary("image/png", "PNG image")),
            _route("POST", f"{p}/batches/{{batch_id}}/cancel", self.cancel_batch, "Cancel every job of a batch",
                   JobList, errors=(404,)),
            _route("GET", f"{p}/queue", self.queue_state, "The queue: paused, waiting, running", QueueState),
            _route("POST", f"{p}/queue/pause", self.pause_queue, "Pause the queue (the running job finishes)",
                   QueueState),
            _route("POST", f"{p}/queue/resume", self.resume_queue, "Resume the queue", QueueState),
            _route("GET", f"{job}/events", self.job_events, "Job events (SSE)", JobEvent, errors=(404, 429),
                   response_class=StreamingResponse, ok=_event_stream()),
            _route("GET", f"{job}/preview", self.job_preview, "Latest section preview (PNG)", errors=(404,),
                   response_class=Response, ok=_binary("image/png", "PNG image")),
            _route("GET", f"{p}/files/{{file_path:path}}", self.download, "Download an output file", errors=(404,),
                   response_class=FileResponse,
                   ok=_binary("*/*", "the file, with the media type of its extension")),
            _route("GET", f"{p}/codecs", self.codecs, "Available video encoders", CodecList),
            _route("POST", f"{p}/plan", self.plan, "Plan a request without running it", PlanResponse, errors=(413,),
                   body=True),
            _route("POST", f"{p}/enhance", self.enhance, "Enhance a request's prompts (no video)", EnhanceResult,
                   errors=(413, 503), body=True),
            _route("POST", f"{p}/uploads", uploads.upload, "Upload an image or video for later requests", UploadInfo,
                   errors=(413, 415, 507), body=upload_body_openapi(), status_code=201,
                   response_model_exclude_none=True),
            _route("GET", f"{p}/uploads/{{upload_id}}", uploads.get, "An upload's metadata", UploadInfo,
                   errors=(404,), response_model_exclude_none=True),
            _route("DELETE", f"{p}/uploads/{{upload_id}}", uploads.delete, "End an upload now", errors=(404,),
                   status_code=204, response_class=Response),
        ]  # fmt: skip

    # ------------------------------------------------------------------------------------------- endpoints

    @json_errors
    async def generate(self, request: Request) -> Any:
        """Generate a video and answer when it exists (SD.Next's route). The job runs in the server's queue like
        any other; the request only waits for it, so other requests are served meanwhile (a client that goes away
        leaves the job running; it stays listed). A failed job answers its error status (422 invalid, 409
        cancelled or an output name taken meanwhile, 503 model unavailable or out of memory, 507 disk full, 500 bug)
        with the error shape and the job id, never 200."""
        job = await self._wait_until_ended((await self._submit(request)).id)
        if job.state != JobState.FINISHED:
            return _failure_response(job)
        return self._generate_response(job)

    @json_errors
    async def submit_job(self, request: Request, response: Response) -> Any:
        """Queue a generation and answer at once with 202, the job (id, state, queue_position) and its Location.
        Follow it with GET .../jobs/{id} or the .../events stream. Queue full: 429 with Retry-After."""
        job = await self._submit(request)
        response.headers["Location"] = f"{request.scope.get('root_path', '')}{self.prefix}/jobs/{job.id}"
        return job_view(job)

    @json_errors
    async def submit_batch(self, request: Request) -> Any:
        """Queue several generations at once: a JSON object `{"requests": [...], "defaults": {...}}` (each request's
        fields over the defaults) or JSON lines (`Content-Type: application/x-ndjson`, one request per line). Every
        request is validated and checked before any is queued; the first bad one refuses the whole batch with the
        error of its status, `field` `requests.<n>.<field>` and a message starting "line <n>:" (n counts from 1).
        Answers 202 with the batch id and the job ids in request order."""
        requests = await read_batch_requests(request, self.max_body_bytes, self.uploads)
        batch = await run_in_threadpool(self.service.submit_batch, requests)
        return BatchResponse(
            batch_id=batch.batch_id, ids=[job.id for job in batch.jobs], jobs=[job_view(job) for job in batch.jobs]
        )

    @json_errors
    async def list_jobs(
        self,
        state: States = None,
        limit: Limit = None,
        offset: Offset = 0,
        order: Order = "oldest",
        batch_id: BatchFilter = None,
    ) -> Any:
        """The jobs the server knows (queued, running, ended), oldest first (or `order=newest`), filtered by `state`
        and `batch_id`, a page of `limit` jobs after `offset`; with any of these parameters the answer also carries
        `total` (the jobs that match), `offset` and `limit`. Requests come without their embedded images (the
        listing never reads them)."""
        states = _parse_states(state)

        filters = {"states": states, "batch_id": batch_id}
        paging = {"limit": limit, "offset": offset, "newest_first": order == "newest"}
        given = {name: value for name, value in {**filters, **paging}.items() if value not in (None, 0, False)}

        def page() -> tuple[list[Job], int]:
            jobs = self.service.list_jobs(**given)  # only the filters given: the service's defaults otherwise
            return jobs, self.service.count_jobs(**{name: given[name] for name in filters if name in given})

        jobs, total = await run_in_threadpool(page)
        listing = JobList(jobs=[job_view(job) for job in jobs], total=total, offset=offset, limit=limit)
        if not given:  # the answer of the route before it took parameters: {"jobs": [...]} alone
            return JSONResponse(listing.model_dump(mode="json", include={"jobs"}))
        return listing

    @json_errors
    async def get_job(self, job_id: str) -> Any:
        """One job: state, plan, progress, outputs (relative to the output folder), timings, error."""
        return job_view(await run_in_threadpool(self.service.get, job_id))

    @json_errors
    async def patch_job(self, job_id: str, request: Request) -> Any:
        """Move a queued job: `{"position": 0}` runs it next, a position past the end moves it last. 409 when the
        job is not queued; unknown fields and non-integer positions are 422."""
        patch = JobPatch.model_validate(await read_json_body(request, self.max_body_bytes))
        return job_view(await run_in_threadpool(self.service.move, job_id, patch.position))

    @json_errors
    async def cancel_job(self, job_id: str, keep_partial: KeepPartial = False) -> Any:
        """Cancel a queued or running job (409 when it has already ended)."""
        return job_view(await run_in_threadpool(self.service.cancel, job_id, keep_partial))

    @json_errors
    async def delete_job(
        self, job_id: str, keep_partial: KeepPartial = False, remove: Remove = False, files: RemoveFiles = False
    ) -> Any:
        """Without `remove`: cancel a queued or running job (409 when it has already ended). With `remove=true`:
        delete an ended job's record (409 while it is queued or running: cancel it first), and with `files=true`
        also the outputs it wrote inside the output folder; answers what was removed and what was kept."""
        if files and not remove:
            raise ApiError(
                422, "invalid", "files=true deletes a job's outputs with its record; add remove=true", "files"
            )
        if not remove:
            return job_view(await run_in_threadpool(self.service.cancel, job_id, keep_partial))
        if keep_partial:
            raise ApiError(
                422, "invalid", "keep_partial applies to cancelling; leave it out with remove=true", "keep_partial"
            )
        deleted = await run_in_threadpool(self.service.delete, job_id, files)
        return deleted.model_copy(update={"job": job_view(deleted.job)})

    @json_errors
    async def cancel_batch(self, batch_id: str, keep_partial: KeepPartial = False) -> Any:
        """Cancel every queued or running job of a batch; answers the batch's jobs (404 for an unknown batch)."""
        jobs = await run_in_threadpool(self.service.cancel_batch, batch_id, keep_partial)
        return JobList(jobs=[job_view(job) for job in jobs], total=len(jobs))

    @json_errors
    async def queue_state(self) -> Any:
        """Whether the queue is paused, how many jobs wait and which one runs."""
        return await run_in_threadpool(self.service.queue_state)

    @json_errors
    async def pause_queue(self) -> Any:
        """Start no further job; the running one finishes. The pause outlasts a restart of the server."""
        return await run_in_threadpool(self.service.pause)

    @json_errors
    async def resume_queue(self) -> Any:
        """Start queued jobs again."""
        return await run_in_threadpool(self.service.resume)

    @json_errors
    async def job_thumbnail(self, job_id: str) -> Any:
        """A small picture of the job as PNG: its latest section while it runs, the first frame of its video once
        finished, else its start image; 404 when it has none."""
        pixels = await run_in_threadpool(self.service.thumbnail, job_id)
        if pixels is None:
            raise ApiError(404, "not_found", f"job {job_id} has no picture", "id")
        return Response(
            await run_in_threadpool(_png, pixels), media_type="image/png", headers={"Cache-Control": "no-store"}
        )

    @json_errors
    async def job_events(self, job_id: str) -> Any:
        """Server-sent events of a job: `event: state|progress|section|stage|frames|enhance|end` lines, each with a
        `data:` JSON object (the event models in this document's schemas), and a `: ping` comment after 15 quiet
        seconds. The stream ends after `end` (sent at once for a job that has already ended). Too many open
        streams: 429 with Retry-After."""
        slots = self.stream_slots
        slots.take()  # before the first await, so concurrent requests cannot all pass the check
        try:
            # JobNotFound (404) comes now, before the stream starts; no thread waits on the events afterwards
            subscription = await run_in_threadpool(
                self.service.subscribe_async, job_id, asyncio.get_running_loop(), streams.HEARTBEAT_SECONDS
            )
        except BaseException:
            slots.give_back()
            raise

        def closed() -> None:
            subscription.close()
            slots.give_back()

        return EventStreamResponse(sse_events(subscription, job_id, redact_images), on_close=closed)

    @json_errors
    async def job_preview(self, job_id: str) -> Any:
        """The latest section preview as PNG; 404 until the first section is done (or when previews are off)."""
        pixels = await run_in_threadpool(self.service.preview, job_id)
        if pixels is None:
            raise ApiError(404, "not_found", f"job {job_id} has no preview yet", "id")
        return Response(
            await run_in_threadpool(_png, pixels), media_type="image/png", headers={"Cache-Control": "no-store"}
        )

    @json_errors
    async def download(self, file_path: str, request: Request) -> Any:
        """Download an output. Only regular files inside the output folder are served: traversal ('..',
        absolute paths, backslashes, NUL, their percent-encoded forms), hidden/partial files, folders and
        symlinks leading outside all answer 404."""
        path = resolve_output_file(self.output_dir, file_path, request.scope.get("raw_path") or b"")
        return FileResponse(path)

    @json_errors
    async def codecs(self, refresh: Refresh = False) -> Any:
        """Video encoders that really open on this machine (hardware first), with the containers each fits."""
        if refresh or self._codecs is None:
            infos = await run_in_threadpool(self.service.codecs)
            self._codecs = CodecList(codecs=[CodecInfo.model_validate(info, from_attributes=True) for info in infos])
        return self._codecs

    @json_errors
    async def plan(self, request: Request) -> Any:
        """The plan of a request without running it: bucket size, sections, exact frame count, per-section
        prompts and generation order. Checks images and encoder settings like a submit would; loads no model."""
        generate_request = await read_generate_request(request, self.max_body_bytes, self.uploads)
        result = await run_in_threadpool(self.service.plan, generate_request, True)  # the service's defaults
        return PlanResponse(summary=result.summary(), plan=result, estimated_seconds=result.estimated_seconds)

    @json_errors
    async def enhance(self, request: Request) -> Any:
        """Each distinct section prompt of a request (the prompt joined with each section line) rewritten by the
        prompt enhancer, seeing the image its section starts from; no video is made. Every prompt is enhanced anew,
        whatever the request's `enhance` and `enhanced_prompts` say; `enhancer`, `enhance_instructions`,
        `enhance_seed` (-1: the request's seed), `enhance_max_tokens` and `enhance_quantize` apply. Put the
        answer's `enhanced_prompts` into a request to generate with those texts. It runs on the server's device
        after any running job. The enhancer not on the server: 503 `model_unavailable` naming `enhancer`."""
        generate_request = await read_generate_request(request, self.max_body_bytes, self.uploads)
        return await run_in_threadpool(self.service.enhance, generate_request)

    # ------------------------------------------------------------------------------------------- helpers

    async def _submit(self, request: Request) -> Job:
        """Read, validate and queue a request (in the threadpool: the queue touches the disk). A filename that a
        queued or running job or an existing output has taken is a 409 from the service, as for every face."""
        generate_request = await read_generate_request(request, self.max_body_bytes, self.uploads)
        return await run_in_threadpool(self.service.submit, generate_request)

    async def _wait_until_ended(self, job_id: str) -> Job:
        while True:
            job = await run_in_threadpool(self.service.wait, job_id, WAIT_SLICE_SECONDS)
            if job.state.ended:
                return job
            await asyncio.sleep(0)

    def _file_url(self, relative: str) -> str:
        return f"{self.prefix}/files/{quote(relative)}"

    def _generate_response(self, job: Job) -> GenerateResponse:
        filename = main_output(job)
        total = job.timings.get("total")
        took = f" in {total:.1f} s" if total is not None else ""
        return GenerateResponse(
            id=job.id,
            filename=filename,
            url=self._file_url(filename) if filename else None,
            message=f"finished{took}: {job.summary or ''}".strip(),
            state=job.state,
            summary=job.summary,
            plan=job.plan,
            outputs=job.outputs,
            urls=[self._file_url(rel) for rel in job.outputs if (self.output_dir / rel).is_file()],
            timings=job.timings,
            resumed_sections=job.resumed_sections,
        )


def _png(pixels: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _parse_states(text: str | None) -> tuple[JobState, ...] | None:
    """'queued,running' -> the states; None for none given; ApiError 422 naming "state" for an unknown one."""
    if text is None:
        return None
    states = []
    for name in (part.strip() for part in text.split(",")):
        try:
            states.append(JobState(name))
        except ValueError:
            allowed = ", ".join(state.value for state in JobState)
            raise ApiError(422, "invalid", f"{name!r} is not a job state; allowed: {allowed}", "state") from None
    return tuple(states)


def _patch_body_openapi() -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": JobPatch.model_json_schema()}},
        }
    }


def _batch_body_openapi() -> dict[str, Any]:
    """The batch body: an object of requests and defaults, or JSON lines of requests."""
    request = GenerateRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    request.pop("$defs", None)
    batch = {
        "type": "object",
        "required": ["requests"],
        "additionalProperties": False,
        "properties": {"requests": {"type": "array", "minItems": 1, "items": request}, "defaults": request},
    }
    lines = {"type": "string", "description": "one request object (JSON) per line"}
    return {
        "requestBody": {
            "required": True,
            "description": "The requests of the batch, each as the body of POST .../jobs (see there); a request's "
            "fields go over `defaults`. Or JSON lines: one request per line.",
            "content": {"application/json": {"schema": batch}, "application/x-ndjson": {"schema": lines}},
        }
    }


def _failure_response(job: Job) -> Response:
    """A failed or cancelled job as the error shape with its status and id."""
    error = job.error
    kind = error.kind if error else ("cancelled" if job.state == JobState.CANCELLED else "internal")
    message = f"job {job.id} {job.state.value}: {error.message if error else 'no reason recorded'}"
    return error_response(STATUS.get(kind, 500), kind, message, error.field if error else None, job_id=job.id)


def _event_stream() -> dict[str, Any]:
    """The OpenAPI 200 response of the events route: text/event-stream whose items (OpenAPI 3.2's `itemSchema`)
    carry one of the event models as data. The route's response model (`JobEvent`) puts the models in the
    document's schemas; the route answers a stream, so nothing is validated against it."""
    events = [{"$ref": f"#/components/schemas/{model.__name__}"} for model in EVENT_MODELS.values()]
    item = {
        "type": "object",
        "required": ["event", "data"],
        "properties": {"event": {"enum": list(EVENT_MODELS)}, "data": {"anyOf": events}},
    }
    stream = {"schema": {"type": "string"}, "itemSchema": item}
    return {"description": EVENTS_DOC, "content": {"text/event-stream": stream}}


def _binary(media_type: str, description: str) -> dict[str, Any]:
    """The OpenAPI 200 response of a route that answers bytes of `media_type`."""
    return {"content": {media_type: {"schema": {"type": "string", "format": "binary"}}}, "description": description}


def _route(
    method: str,
    path: str,
    endpoint: Callable[..., Any],
    summary: str,
    response_model: Any = None,
    *,
    errors: tuple[int, ...] = (),
    body: bool | dict[str, Any] = False,
    ok: dict[str, Any] | None = None,
    **options: Any,
) -> RouteSpec:
    """One route: `errors` are its error statuses beyond the common ones (`error_responses`), `body` declares
    the request body (read by hand): True for a generation request, else its OpenAPI description; `ok` its 200
    response when that is not `response_model`."""
    responses = error_responses(*errors)
    if ok is not None:
        responses[200] = ok
    spec = {"tags": ["framepack"], "summary": summary, "responses": responses, **options}
    if response_model is not None:
        spec["response_model"] = response_model
    if body:
        spec["openapi_extra"] = body if isinstance(body, dict) else _request_body_openapi()
    return RouteSpec(path, endpoint, [method], spec)


def route_table(
    service: JobService,
    output_dir: Path | str | None = None,
    *,
    prefix: str = PREFIX,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_streams: int = DEFAULT_MAX_STREAMS,
    uploads: UploadStore | None = None,
) -> list[RouteSpec]:
    """The routes of a new `FramePackRoutes` over `service` (see there)."""
    routes = FramePackRoutes(
        service, output_dir, prefix=prefix, max_body_bytes=max_body_bytes, max_streams=max_streams, uploads=uploads
    )
    return routes.table()


def create_router(
    service: JobService,
    output_dir: Path | str | None = None,
    *,
    dependencies: list[Any] | None = None,
    **options: Any,
) -> APIRouter:
    """An APIRouter with every route of `route_table` (options: prefix, max_body_bytes, max_streams, uploads)."""
    router = APIRouter(dependencies=dependencies or [])
    for spec in route_table(service, output_dir, **options):
        router.add_api_route(spec.path, spec.endpoint, methods=spec.methods, **spec.options)
    return router
