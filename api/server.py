"""The standalone FramePack API app: the routes plus error handlers, the body limit, optional auth, and a
lifespan that starts and stops the job service. `framepack.serve` builds the service and runs this app (with the
tab mounted beside it) for `python -m framepack serve`.

SD.Next does not use this module: it registers `api.routes.route_table` on its own app.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from framepack.jobs.service import JobService
from framepack.uploads import UploadStore

from .auth import Credentials, auth_dependency
from .errors import install_error_handlers
from .limits import DEFAULT_MAX_BODY_BYTES, BodySizeLimit
from .routes import PREFIX, create_router
from .streams import DEFAULT_MAX_STREAMS

logger = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 10.0
GRACEFUL_SHUTDOWN_SECONDS = 5  # open event streams and blocking requests are cut after this on Ctrl-C

API_DESCRIPTION = """FramePack video generation (HunyuanVideo, next-frame-section prediction).

`POST /sdapi/v1/framepack` blocks until the video exists (SD.Next's route); `POST /sdapi/v1/framepack/jobs`
queues and answers 202 at once. Every error is JSON `{"error": {"kind", "field", "message"}}` with a 4xx/5xx
status: 401 credentials, 404 unknown job/file, 409 conflict or cancelled, 413 body over the limit, 415 an upload
that is no image or video, 422 bad input (field named), 429 queue full or too many open event streams
(Retry-After), 503 model not available, 500 bug. `POST /sdapi/v1/framepack/uploads` takes an image or video once;
requests then name it as `upload:<id>`.
"""


def create_app(
    service: JobService,
    output_dir: Path | str,
    auth: Credentials | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_streams: int = DEFAULT_MAX_STREAMS,
    manage_lifecycle: bool = True,
    close_on_shutdown: bool = False,
    uploads: UploadStore | None = None,
) -> FastAPI:
    """The standalone app over `service`, whose jobs write to `output_dir`.

    With `auth`, every route (the OpenAPI schema and docs included) needs the credentials. At most `max_streams`
    event streams are open at once. With `manage_lifecycle` (the default) the app's lifespan starts the service
    and stops it on shutdown; with `close_on_shutdown` as well it closes it for good (database checkpointed and
    closed), for a process that ends with the app. Uploads go to `uploads` (default: the default limits, in the
    service's jobs folder); their route is bounded by the store's limit instead of `max_body_bytes`.
    """

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            service.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                shutdown = service.close if close_on_shutdown else service.stop
                await run_in_threadpool(lambda: shutdown(timeout=STOP_TIMEOUT_SECONDS))

    dependencies = [Depends(auth_dependency(auth))] if auth else []
    app = FastAPI(
        title="FramePack API",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        dependencies=dependencies,
        openapi_url=None,  # served below as a route, so the auth dependency covers it too
        docs_url=None,
        redoc_url=None,
    )
    app.include_router(
        create_router(
            service,
            output_dir,
            prefix=PREFIX,
            max_body_bytes=max_body_bytes,
            max_streams=max_streams,
            uploads=uploads,
        )
    )

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_schema() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="FramePack API")

    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes, exempt=(f"{PREFIX}/uploads",))
    return app
