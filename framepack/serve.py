"""`python -m framepack serve`: the standalone server, one process with the REST API and the tab at "/".

This module is the standalone composition root: it builds the job service over `StandaloneHost`
(`framepack.compose`), the API app over it (`api.server.create_app`) and mounts the Gradio tab beside the routes
(`mount_tab`). The faces (`api/`, `framepack.ui`) only ever see the service.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from api.auth import Credentials
from framepack.defaults import SELF_TEST_NOTICE, env_defaults, model_default, uses_self_test
from framepack.home import server_data_dir
from framepack.jobs.farm import FarmError, FarmSettings
from framepack.jobs.models import Retention

if TYPE_CHECKING:
    from fastapi import FastAPI

    from framepack.jobs.service import JobService
    from framepack.uploads import UploadLimits

logger = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_SECONDS = 5  # open event streams and blocking requests are cut after this on Ctrl-C


@dataclass(frozen=True)
class ServeSettings:
    """What `serve` is told (the CLI's flags; see `framepack.cli.add_serve_flags` for each one's help)."""

    host: str = "127.0.0.1"
    port: int = 7860
    data_dir: Path | None = None  # job database and checkpoints (default: FRAMEPACK_HOME/server)
    output_dir: Path | None = None  # default: <data_dir>/outputs
    auth: str | None = None  # USER:PASSWORD for HTTP Basic
    token: str | None = None  # a bearer token
    device: str | None = None
    model: str | None = None  # the model of requests that name none (else FRAMEPACK_MODEL)
    max_queued: int = 100
    max_streams: int = 128
    verbose: bool = False
    keep_jobs: int = 0  # ended jobs kept in the store (0: all)
    keep_days: float = 0.0  # days ended jobs are kept (0: forever)
    prune_outputs: bool = False  # delete the outputs of pruned jobs too
    farm: FarmSettings = FarmSettings()  # the workers: --gpus, --executor and the Ray flags
    upload_max_mb: float = 512.0  # the largest upload, in MiB
    upload_hours: float = 24.0  # how long an upload can be named

    def retention(self) -> Retention:
        """The retention these settings ask for; ValueError naming the flag for a negative or non-finite value."""
        if self.keep_jobs < 0:
            raise ValueError(f"--keep-jobs {self.keep_jobs}: must be 0 (keep all) or more")
        if not math.isfinite(self.keep_days) or self.keep_days < 0:
            raise ValueError(f"--keep-days {self.keep_days}: must be 0 (forever) or a positive number of days")
        if self.prune_outputs and not (self.keep_jobs or self.keep_days):
            raise ValueError("--prune-outputs needs --keep-jobs or --keep-days (otherwise no job is ever pruned)")
        return Retention(self.keep_jobs or None, self.keep_days or None, self.prune_outputs)

    def upload_limits(self) -> UploadLimits:
        """The upload limits these settings ask for; ValueError naming the flag for a value out of range."""
        from framepack.uploads import MiB, UploadLimits

        if not math.isfinite(self.upload_max_mb) or self.upload_max_mb * MiB < 1:
            raise ValueError(f"--upload-max-mb {self.upload_max_mb}: must be a positive number of MiB")
        if not math.isfinite(self.upload_hours) or self.upload_hours <= 0:
            raise ValueError(f"--upload-hours {self.upload_hours}: must be a positive number of hours")
        max_bytes = int(self.upload_max_mb * MiB)
        default = UploadLimits()
        return UploadLimits(
            max_bytes=max_bytes,
            max_image_bytes=min(default.max_image_bytes, max_bytes),
            expire_seconds=self.upload_hours * 3600,
        )


def serve_defaults(model: str | None) -> dict[str, str]:
    """The values requests take for the fields they leave out: `--model`, else FRAMEPACK_MODEL."""
    chosen = model_default(model, "--model")
    return {"model": chosen} if chosen is not None else env_defaults()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def mount_tab(
    app: FastAPI, service: JobService, output_dir: Path, data_dir: Path, auth: Credentials | None = None
) -> FastAPI:
    """The Gradio tab at "/" of the same app (the REST routes stay where they are); skipped without gradio.
    The tab has its own login (Gradio's) with --auth; with a bearer token only, the tab is not served.

    `api.tab_gate.TabGate` stands in front of it: the API's error shape for unknown paths, nothing but the login
    page without a session, a limit on failed logins, and no hidden or temporary file through Gradio's file
    route."""
    from starlette.routing import Mount

    from api.tab_gate import TabGate

    if auth is not None and auth.basic is None:
        logger.warning("--token protects the REST API only; the Gradio tab is not served (use --auth to get it)")
        return app
    try:
        from framepack.ui import compat
        from framepack.ui.tab import create_tab
    except ImportError as error:
        logger.warning("gradio is not installed (%s): serving the REST API only", error)
        return app
    blocks = compat.enable_queue(create_tab(service, output_dir, data_dir / "presets.json"))
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


def serve(settings: ServeSettings) -> int:
    """Run the server until interrupted."""
    credentials = Credentials.from_options(settings.auth, settings.token)  # bad values fail before heavy imports
    retention = settings.retention()
    upload_limits = settings.upload_limits()
    defaults = serve_defaults(settings.model)
    if settings.device and settings.farm.devices:
        raise FarmError("give --device (one worker) or --gpus (one worker per device), not both")
    settings.farm.check()

    import uvicorn

    from api.server import create_app
    from framepack.compose import build_job_service
    from framepack.host import StandaloneHost
    from framepack.uploads import UploadStore, uploads_folder

    data_dir = server_data_dir(settings.data_dir)
    output_dir = Path(settings.output_dir) if settings.output_dir else data_dir / "outputs"
    if credentials is None and not _is_loopback(settings.host):
        logger.warning("serving on %s without --auth or --token: anyone who can reach it can use it", settings.host)

    host = StandaloneHost(output_dir=output_dir, device=settings.device, retention=retention)
    service = build_job_service(
        host, data_dir, max_queued=settings.max_queued, request_defaults=lambda: defaults, farm=settings.farm
    )
    # The lifespan closes the store: after SIGTERM uvicorn re-raises the signal, so no code after run() runs.
    uploads = UploadStore(uploads_folder(data_dir), upload_limits)
    app = create_app(
        service, output_dir, credentials, max_streams=settings.max_streams, close_on_shutdown=True, uploads=uploads
    )
    app = mount_tab(app, service, output_dir, data_dir, credentials)
    logger.info(
        "FramePack API on http://%s:%d (data %s, outputs %s)", settings.host, settings.port, data_dir, output_dir
    )
    if "model" in defaults:
        logger.info("requests that name no model use %r", defaults["model"])
    if retention.active:
        logger.info(
            "keeping %s ended jobs%s; their outputs are %s",
            retention.keep_jobs or "all",
            f" of the last {retention.keep_days:g} days" if retention.keep_days else "",
            "deleted with them" if retention.remove_outputs else "kept",
        )
    if uses_self_test(defaults):
        logger.warning("%s; requests that name no model get noise", SELF_TEST_NOTICE)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="debug" if settings.verbose else "info",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    return 0
