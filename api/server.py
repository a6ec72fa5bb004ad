"""The standalone FramePack API server: the routes plus error handlers, the body limit, optional auth, and a
lifespan that starts and stops the job manager. `serve` is what `python -m framepack serve` runs.

SD.Next does not use this module: it registers `api.routes.route_table` on its own app.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.routing import Mount

from .auth import Credentials, auth_dependency
from .errors import install_error_handlers
from .limits import DEFAULT_MAX_BODY_BYTES, BodySizeLimit
from .routes import PREFIX, create_router
from .streams import DEFAULT_MAX_STREAMS
from .tab_gate import TabGate

logger = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 10.0
GRACEFUL_SHUTDOWN_SECONDS = 5  # open event streams and blocking requests are cut after this on Ctrl-C

API_DESCRIPTION = """FramePack video generation (HunyuanVideo, next-frame-section prediction).

`POST /sdapi/v1/framepack` blocks until the video exists (SD.Next's route); `POST /sdapi/v1/framepack/jobs`
queues and answers 202 at once. Every error is JSON `{"error": {"kind", "field", "message"}}` with a 4xx/5xx
status: 401 credentials, 404 unknown job/file, 409 conflict or cancelled, 413 body over the limit, 422 bad
input (field named), 429 queue full or too many open event streams (Retry-After), 503 model not available,
500 bug.
"""


def create_app(
    manager: Any,
    output_dir: Path | str,
    auth: Credentials | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_streams: int = DEFAULT_MAX_STREAMS,
    manage_lifecycle: bool = True,
    close_on_shutdown: bool = False,
) -> FastAPI:
    """The standalone app over `manager` (a JobManager) whose runner writes to `output_dir`.

    With `auth`, every route (the OpenAPI schema and docs included) needs the credentials. At most `max_streams`
    event streams are open at once. With `manage_lifecycle` (the default) the app's lifespan starts the manager
    and stops it on shutdown; with `close_on_shutdown` as well it closes it for good (database checkpointed and
    closed), for a process that ends with the app.
    """

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            manager.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                shutdown = manager.close if close_on_shutdown else manager.stop
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
        create_router(manager, output_dir, prefix=PREFIX, max_body_bytes=max_body_bytes, max_streams=max_streams)
    )

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_schema() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="FramePack API")

    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def mount_tab(app: FastAPI, manager: Any, output_dir: Path, data_dir: Path, auth: Credentials | None = None) -> FastAPI:
    """The Gradio tab at "/" of the same app (the REST routes stay where they are); skipped without gradio.
    The tab has its own login (Gradio's) with --auth; with a bearer token only, the tab is not served.

    `api.tab_gate.TabGate` stands in front of it: the API's error shape for unknown paths, nothing but the login
    page without a session, a limit on failed logins, and no hidden or temporary file through Gradio's file
    route."""
    if auth is not None and auth.basic is None:
        logger.warning("--token protects the REST API only; the Gradio tab is not served (use --auth to get it)")
        return app
    try:
        from framepack.ui import compat
        from framepack.ui.tab import create_tab
    except ImportError as error:
        logger.warning("gradio is not installed (%s): serving the REST API only", error)
        return app
    blocks = compat.enable_queue(create_tab(manager, output_dir, data_dir / "presets.json"))
    own_routes = list(app.routes)
    app = compat.mount(app, blocks, "/", allowed_paths=[str(output_dir)], auth=auth.basic if auth else None)
    mount = next(route for route in app.routes if isinstance(route, Mount) and route not in own_routes)
    gradio_app = mount.app
    mount.app = TabGate(
        gradio_app,
        routes=lambda: gradio_app.routes,
        other_routes=lambda: own_routes,
        session_user=compat.session_user_reader(gradio_app) if auth else None,
        file_roots=[output_dir],
    )
    return app


def serve_defaults(args: argparse.Namespace) -> dict[str, str]:
    """The values requests take for the fields they leave out: `--model`, else FRAMEPACK_MODEL."""
    from framepack.defaults import env_defaults, model_default

    model = model_default(getattr(args, "model", None), "--model")
    return {"model": model} if model is not None else env_defaults()


def serve(args: argparse.Namespace) -> int:
    """Run the server until interrupted (the `serve` CLI command)."""
    credentials = Credentials.from_options(args.auth, args.token)  # bad values fail before the heavy imports
    defaults = serve_defaults(args)

    import uvicorn

    from framepack.defaults import SELF_TEST_NOTICE, uses_self_test
    from framepack.home import server_data_dir
    from framepack.jobs.manager import JobManager
    from framepack.runner import Runner

    data_dir = server_data_dir(args.data_dir)
    output_dir = Path(args.output_dir) if args.output_dir else data_dir / "outputs"
    data_dir.mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    if credentials is None and not _is_loopback(args.host):
        logger.warning("serving on %s without --auth or --token: anyone who can reach it can use it", args.host)

    runner = Runner(device=args.device, output_dir=output_dir)
    manager = JobManager(data_dir, runner, max_queued=args.max_queued, defaults=lambda: defaults)
    # The lifespan closes the store: after SIGTERM uvicorn re-raises the signal, so no code after run() runs.
    app = create_app(manager, output_dir, credentials, max_streams=args.max_streams, close_on_shutdown=True)
    app = mount_tab(app, manager, output_dir, data_dir, credentials)
    logger.info("FramePack API on http://%s:%d (data %s, outputs %s)", args.host, args.port, data_dir, output_dir)
    if "model" in defaults:
        logger.info("requests that name no model use %r", defaults["model"])
    if uses_self_test(defaults):
        logger.warning("%s; requests that name no model get noise", SELF_TEST_NOTICE)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="debug" if getattr(args, "verbose", False) else "info",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    return 0
