"""SD.Next entry of the FramePack extension: registers the "FramePack" tab and the REST routes, nothing more.

SD.Next imports this file with the extension root first on `sys.path`. Everything the host offers (logging,
output folder, progress state, GPU lock, device) comes through `framepack.host.SDNextHost`; this script only
wires the callbacks. The tab and the routes share one job manager, built on first use (never at import time,
which neither downloads nor clones anything).
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path
from typing import Any

from modules import script_callbacks  # the host's callback registry

# The host puts the extension root on sys.path only while it imports this file (then restores sys.path), so
# the extension's top-level packages are imported now; their submodules load later through the packages.
import api.routes  # noqa: F401
import framepack.host  # noqa: F401

TAB_TITLE = "FramePack"
TAB_ELEM_ID = "framepack_studio_tab"  # not the host's built-in names (its JS defines submit_framepack)
STOP_TIMEOUT_SECONDS = 10.0


class _Extension:
    """Holds the one JobManager of this process, built lazily over the SD.Next host adapter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._host: Any = None
        self._manager: Any = None

    @property
    def host(self) -> Any:
        with self._lock:
            if self._host is None:
                from framepack.host import SDNextHost

                self._host = SDNextHost()
            return self._host

    def manager(self) -> Any:
        host = self.host
        with self._lock:
            if self._manager is None:
                from framepack.jobs.manager import JobManager
                from framepack.runner import Runner

                output_dir = host.output_dir()
                data_dir = host.data_dir()
                output_dir.mkdir(parents=True, exist_ok=True)
                data_dir.mkdir(parents=True, exist_ok=True)
                runner = Runner(device=host.device(), output_dir=output_dir, home=data_dir, host_offload=host.balanced_offload())
                manager = JobManager(
                    data_dir / "jobs",
                    runner,
                    # the host's Interrupt/Skip; only called inside the scope, once `manager` is bound
                    gpu_lock=host.job_scope(on_interrupt=lambda: manager.cancel_running()),
                    on_progress=host.progress,
                )
                manager.start()
                atexit.register(manager.close, STOP_TIMEOUT_SECONDS)  # stop, checkpoint and close jobs.db
                host.logger.info(f"FramePack: jobs in {data_dir / 'jobs'}, videos in {output_dir}")
                self._manager = manager
            return self._manager

    def output_dir(self) -> Path:
        return Path(self.manager().runner.output_dir)


extension = _Extension()


def on_ui_tabs() -> list[tuple[Any, str, str]]:
    from framepack.ui.tab import create_tab

    manager = extension.manager()
    presets = extension.host.data_dir() / "presets.json"
    blocks = create_tab(manager, extension.output_dir(), presets, host_name=extension.host.name)
    return [(blocks, TAB_TITLE, TAB_ELEM_ID)]


def on_app_started(demo: Any, app: Any) -> None:
    from api.routes import create_router, route_table

    manager = extension.manager()
    try:
        from modules import shared

        host_api = getattr(shared, "api", None)
    except ImportError:
        host_api = None
    if host_api is not None and hasattr(host_api, "add_api_route"):
        for spec in route_table(manager, extension.output_dir()):
            host_api.add_api_route(spec.path, spec.endpoint, methods=spec.methods, **spec.options)
        how = "the host API (its auth applies)"
    else:
        app.include_router(create_router(manager, extension.output_dir()))
        how = "the app directly (SD.Next's API object is missing: no host auth)"
    extension.host.logger.info(f"FramePack: REST routes registered on {how}")


script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_app_started(on_app_started)
