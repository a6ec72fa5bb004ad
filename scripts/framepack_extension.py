"""SD.Next entry of the FramePack extension: registers the "FramePack" tab, the REST routes and the "FramePack"
settings section, nothing more.

SD.Next imports this file with the extension root first on `sys.path` (restored afterwards), and modules imported
then stay in `sys.modules` under their bare names. So:

- the project's `api` package is loaded under a private name (`API_PACKAGE`) from its folder, because another
  extension (or an installed package) may own the name `api`; its modules import each other relatively;
- the `framepack` package is imported now, and must be this extension's;
- the requirements are verified now (`install.problems()`, no import of them). If one is missing, or anything
  above fails, the extension runs degraded: the tab and the routes say what is wrong and how to fix it
  (`framepack.degraded`), and SD.Next's log says it too.

Everything the host offers comes through `framepack.host.SDNextHost`; the tab and the routes share one job
service (`framepack.compose.build_job_service`), built on first use (never at import time, which neither
downloads nor loads anything).
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import logging
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from modules import script_callbacks  # the host's callback registry

if TYPE_CHECKING:
    from framepack.jobs.service import JobService

EXTENSION_ROOT = Path(__file__).resolve().parent.parent
API_PACKAGE = "framepack_extension_api"  # the project's `api/` folder, under a name no one else uses
INSTALL_MODULE = "framepack_extension_install"
DEGRADED_MODULE = "framepack_extension_degraded"
TAB_TITLE = "FramePack"
TAB_ELEM_ID = "framepack_studio_tab"  # not the host's built-in names (its JS defines submit_framepack)
STOP_TIMEOUT_SECONDS = 10.0


def host_log() -> Any:
    """SD.Next's log (what its console and log file show), else the `framepack` logger."""
    from modules import shared

    return getattr(shared, "log", None) or logging.getLogger("framepack")


def load_package(name: str, folder: Path) -> ModuleType:
    """The package in `folder` imported as `name` (its submodules then import as `name.<module>`)."""
    return load_module(name, folder / "__init__.py", package_folder=folder)


def load_module(name: str, path: Path, package_folder: Path | None = None) -> ModuleType:
    """The single file `path` imported as module `name` (as a package's `__init__.py` with `package_folder`)."""
    if name in sys.modules:
        return sys.modules[name]
    package = {} if package_folder is None else {"submodule_search_locations": [str(package_folder)]}
    spec = importlib.util.spec_from_file_location(name, path, **package)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


# The degraded mode (standard library only) must work whatever else fails, so it is loaded from its file.
degraded = load_module(DEGRADED_MODULE, EXTENSION_ROOT / "framepack" / "degraded.py")


def startup_problems() -> list[str]:
    """What keeps the extension from starting: unusable requirements (one line each, with the fix), a foreign
    `framepack` package, an import that fails. Empty when all is well. The packages are imported now, while the
    extension root is on sys.path, even when a requirement is missing (the settings section needs them)."""
    try:
        install = load_module(INSTALL_MODULE, EXTENSION_ROOT / "install.py")
        found = [problem.line() for problem in install.problems(host=install.find_host())]
    except Exception as error:  # noqa: BLE001 - the check itself must not hide the extension
        found = [f"the requirement check failed ({type(error).__name__}: {error})"]
    try:
        import framepack

        if Path(framepack.__file__).resolve().parent.parent != EXTENSION_ROOT:
            return [*found, f"another package named 'framepack' ({framepack.__file__}) was imported first"]
        import framepack.host  # noqa: F401

        load_package(API_PACKAGE, EXTENSION_ROOT / "api")
        importlib.import_module(f"{API_PACKAGE}.routes")
    except Exception as error:  # noqa: BLE001
        found.append(f"importing the extension failed: {type(error).__name__}: {error}")
    return found


class _Extension:
    """Holds the one job service of this process, built lazily over the SD.Next host adapter."""

    def __init__(self, problems: list[str]) -> None:
        self._lock = threading.Lock()
        self._host: Any = None
        self._service: JobService | None = None
        self.problems = list(problems)

    @property
    def host(self) -> Any:
        with self._lock:
            if self._host is None:
                from framepack.host import SDNextHost

                self._host = SDNextHost()
            return self._host

    def fail(self, what: str, error: BaseException) -> None:
        """Run degraded from now on, saying why."""
        host_log().error(f"FramePack: {what} failed; the tab and routes say why", exc_info=error)
        self.problems.append(f"{what} failed: {type(error).__name__}: {error}")

    def service(self) -> JobService:
        """The job service the tab and the routes share (built and started on first use)."""
        host = self.host
        with self._lock:
            if self._service is None:
                from framepack.compose import build_job_service
                from framepack.defaults import SELF_TEST_NOTICE, uses_self_test

                service = build_job_service(host, host.data_dir() / "jobs")
                service.start()
                atexit.register(service.close, STOP_TIMEOUT_SECONDS)  # stop, checkpoint and close jobs.db
                if uses_self_test(host.request_defaults()):
                    host.logger.warning(f"FramePack: {SELF_TEST_NOTICE}")
                self._service = service
            return self._service


extension = _Extension(startup_problems())
for _line in extension.problems:
    host_log().error(f"FramePack: {_line}")


def on_ui_tabs() -> list[tuple[Any, str, str]]:
    if not extension.problems:
        try:
            from framepack.ui.tab import create_tab

            service = extension.service()
            presets = extension.host.data_dir() / "presets.json"
            blocks = create_tab(service, service.output_dir, presets)
            return [(blocks, TAB_TITLE, TAB_ELEM_ID)]
        except Exception as error:  # noqa: BLE001 - a tab that says why, never no tab
            extension.fail("building the FramePack tab", error)
    return [(degraded.degraded_tab(extension.problems), TAB_TITLE, TAB_ELEM_ID)]


def on_app_started(demo: Any, app: Any) -> None:
    from modules import shared

    host_api = getattr(shared, "api", None)
    add = host_api.add_api_route if host_api is not None and hasattr(host_api, "add_api_route") else app.add_api_route
    how = "the host API (its auth applies)" if add is not app.add_api_route else "the app directly (no host auth)"
    if not extension.problems:
        try:
            routes = importlib.import_module(f"{API_PACKAGE}.routes")
            for spec in routes.route_table(extension.service()):
                add(spec.path, spec.endpoint, methods=spec.methods, **spec.options)
            extension.host.logger.info(f"FramePack: REST routes registered on {how}")
            return
        except Exception as error:  # noqa: BLE001 - routes that say why, never no routes
            extension.fail("registering the FramePack routes", error)
    message = degraded.unavailable_message(extension.problems)
    for path, endpoint, methods in degraded.degraded_routes(message):
        add(path, endpoint, methods=methods)
    host_log().error(f"FramePack: REST routes answer 503 on {how}: {message}")


def on_ui_settings() -> None:
    try:
        extension.host.register_settings()
    except Exception as error:  # noqa: BLE001
        host_log().error(f"FramePack: registering the settings failed ({error})", exc_info=error)


script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_app_started(on_app_started)
script_callbacks.on_ui_settings(on_ui_settings)
