"""The host adapter: what FramePack takes from the program it runs in, behind one small interface.

Two hosts exist: `SDNextHost` (the SD.Next extension, `scripts/framepack_extension.py`) and `StandaloneHost`
(what `detect_host()` returns outside SD.Next; the `python -m framepack` server and CLI build their `JobManager`
without a host). This is the ONLY module of the project that touches SD.Next's `modules.*`, and only inside
`SDNextHost` methods: importing it imports nothing of SD.Next, so it is safe everywhere.

What a host provides:

- `name`, `logger`
- `output_dir()`: where videos go (SD.Next: `shared.opts.outdir_video`, else `outputs/video`)
- `data_dir()`: FramePack's own data (self-test model, RIFE weights, job database)
- `gpu_lock()`: a reusable context manager held while a job uses the GPU (SD.Next: `modules.call_queue.queue_lock`,
  so FramePack never runs while the host generates an image; standalone: a lock the host object owns)
- `device()`: the torch device to run on (SD.Next: `modules.devices.device`)
- `begin(title)`, `end()`, `interrupted()`: the host's progress state (SD.Next: `shared.state`; its Interrupt
  and Skip buttons mean "cancel the FramePack job")
- `progress(done, total)`: the job's denoising steps for the host's progress bar (SD.Next: `shared.state`)
- `balanced_offload()`: the host's own balanced offload as a function of the model's modules, or None to use
  FramePack's (SD.Next: `apply_balanced_offload` when its offload mode setting is "balanced")
- `job_scope(on_interrupt)`: all of the above around one job, as the reusable context manager that
  `JobManager(gpu_lock=...)` takes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from framepack.home import data_home

INTERRUPT_POLL_SECONDS = 0.25  # how often a running job looks at the host's interrupt flag
JOB_TITLE = "FramePack"


class Host(ABC):
    """The services FramePack takes from its host (see the module docstring)."""

    name: str = "host"

    @property
    @abstractmethod
    def logger(self) -> Any:
        """A logging.Logger-like object (debug/info/warning/error/exception)."""

    @abstractmethod
    def output_dir(self) -> Path:
        """The folder videos are written to."""

    @abstractmethod
    def data_dir(self) -> Path:
        """FramePack's data folder: self-test model, interpolation weights, job database."""

    @abstractmethod
    def gpu_lock(self) -> contextlib.AbstractContextManager:
        """A reusable (non-reentrant) lock held while a job runs on the GPU."""

    @abstractmethod
    def device(self) -> Any:
        """The torch device (or its name) jobs run on; None lets the engine choose."""

    def begin(self, title: str = JOB_TITLE) -> None:
        """A job starts (host progress state)."""

    def end(self) -> None:
        """The job ended (host progress state)."""

    def interrupted(self) -> bool:
        """Whether the host asked the running job to stop (SD.Next's Interrupt/Skip)."""
        return False

    def balanced_offload(self) -> Callable[[dict[str, Any]], None] | None:
        """The host's balanced offload over {component name: module}; None means FramePack's own."""
        return None

    def progress(self, done: int, total: int) -> None:
        """Denoising steps done of the running job's total, for the host's own progress display."""

    def job_scope(self, on_interrupt: Callable[[], None] | None = None) -> JobScope:
        """GPU lock + begin/end + interrupt watch around a job: pass it as `JobManager(gpu_lock=...)`."""
        return JobScope(self, on_interrupt)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class JobScope:
    """A reusable context manager for one job at a time: takes the host's GPU lock, tells the host a job began,
    watches the host's interrupt flag (calling `on_interrupt` once when it is raised) and, on exit, ends the
    host state, stops the watcher and releases the lock. Re-entered for every job."""

    def __init__(self, host: Host, on_interrupt: Callable[[], None] | None = None):
        self.host = host
        self.on_interrupt = on_interrupt
        self._lock = host.gpu_lock()
        self._stop: threading.Event | None = None
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> JobScope:  # noqa: PYI034
        self._lock.__enter__()
        try:
            self.host.begin(JOB_TITLE)
            if self.on_interrupt is not None:
                self._stop = threading.Event()
                self._watcher = threading.Thread(
                    target=self._watch, args=(self._stop,), name="framepack-host-interrupt", daemon=True
                )
                self._watcher.start()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._stop is not None:
                self._stop.set()
            if self._watcher is not None:
                self._watcher.join(timeout=2 * INTERRUPT_POLL_SECONDS + 1)
            self._stop = self._watcher = None
            try:
                self.host.end()
            except Exception:
                self.host.logger.exception("FramePack: the host's end-of-job hook failed")
        finally:
            self._lock.__exit__(*exc_info)

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(INTERRUPT_POLL_SECONDS):
            try:
                interrupted = self.host.interrupted()
            except Exception:  # noqa: BLE001
                interrupted = False
            if interrupted:
                self.host.logger.info("FramePack: the host interrupted the job; cancelling it")
                try:
                    self.on_interrupt()  # type: ignore[misc]
                except Exception:
                    self.host.logger.exception("FramePack: cancelling the job after a host interrupt failed")
                return


class StandaloneHost(Host):
    """The standalone program: plain logging, its own folders and a lock of its own."""

    name = "standalone"

    def __init__(self, output_dir: Path | str | None = None, data_dir: Path | str | None = None, device: Any = None):
        self._data_dir = Path(data_dir) if data_dir else data_home()
        self._output_dir = Path(output_dir) if output_dir else Path("outputs")
        self._device = device
        self._lock = threading.Lock()
        self._logger = logging.getLogger("framepack")

    @property
    def logger(self) -> logging.Logger:
        return self._logger

    def output_dir(self) -> Path:
        return self._output_dir

    def data_dir(self) -> Path:
        return self._data_dir

    def gpu_lock(self) -> threading.Lock:
        return self._lock

    def device(self) -> Any:
        return self._device


class SDNextHost(Host):
    """SD.Next: its logger, output folder, progress state, GPU queue lock and device.

    `modules.*` is imported inside the methods only, so constructing one outside SD.Next works (and fails only
    when a service is used)."""

    name = "sdnext"

    def __init__(self, data_dir: Path | str | None = None):
        self._data_dir = Path(data_dir) if data_dir else None

    @staticmethod
    def _shared() -> Any:
        from modules import shared  # the host's module; only this adapter imports it

        return shared

    def _state(self) -> Any:
        """SD.Next's progress state (`shared.state`), or None."""
        return getattr(self._shared(), "state", None)

    @property
    def logger(self) -> Any:
        try:
            log = getattr(self._shared(), "log", None)
        except ImportError:
            log = None
        return log if log is not None else logging.getLogger("framepack")

    def output_dir(self) -> Path:
        opts = getattr(self._shared(), "opts", None)
        folder = getattr(opts, "outdir_video", None) if opts is not None else None
        return Path(folder) if folder else Path("outputs") / "video"

    def data_dir(self) -> Path:
        """FRAMEPACK_HOME when set, else `<SD.Next data folder>/framepack` (modules.paths.data_path)."""
        if self._data_dir is not None:
            return self._data_dir
        if os.environ.get("FRAMEPACK_HOME"):
            return Path(os.environ["FRAMEPACK_HOME"])
        try:
            from modules import paths

            base = getattr(paths, "data_path", None)
        except ImportError:
            base = None
        return (Path(base) if base else Path("data")) / "framepack"

    def gpu_lock(self) -> contextlib.AbstractContextManager:
        from modules import call_queue

        lock = getattr(call_queue, "queue_lock", None)
        if lock is None:
            raise RuntimeError("SD.Next's modules.call_queue has no queue_lock: cannot share the GPU safely")
        return lock

    def device(self) -> Any:
        try:
            from modules import devices
        except ImportError:
            return None
        return getattr(devices, "device", None)

    def begin(self, title: str = JOB_TITLE) -> None:
        state = self._state()
        if state is not None and hasattr(state, "begin"):
            try:
                state.begin(job=title)
            except TypeError:  # older signatures take no keyword
                state.begin()

    def end(self) -> None:
        state = self._state()
        if state is not None and hasattr(state, "end"):
            state.end()

    def progress(self, done: int, total: int) -> None:
        """SD.Next's progress bar reads `state.sampling_step` / `state.sampling_steps`."""
        state = self._state()
        if state is not None:
            state.sampling_steps, state.sampling_step = total, done

    def interrupted(self) -> bool:
        state = self._state()
        return bool(state is not None and (getattr(state, "interrupted", False) or getattr(state, "skipped", False)))

    def balanced_offload(self) -> Callable[[dict[str, Any]], None] | None:
        """SD.Next's balanced offload when its setting says "balanced" (`modules.sd_offload` in current
        releases, `modules.sd_models` in older ones); it works on pipelines, so the modules are registered on
        an empty diffusers pipeline object for it."""
        opts = getattr(self._shared(), "opts", None)
        if getattr(opts, "diffusers_offload_mode", None) != "balanced":
            return None
        apply = None
        for name in ("sd_offload", "sd_models"):
            try:
                module = __import__(f"modules.{name}", fromlist=["apply_balanced_offload"])
            except ImportError:
                continue
            apply = getattr(module, "apply_balanced_offload", None)
            if apply is not None:
                break
        if apply is None:
            return None

        def offload(modules: dict[str, Any]) -> None:
            from diffusers import DiffusionPipeline

            class FramePackModules(DiffusionPipeline):
                """The loaded modules as a pipeline object: what the host's offload walks (config, components)."""

                @property
                def components(self) -> dict[str, Any]:
                    return {name: getattr(self, name) for name in self.config.keys() if not name.startswith("_")}

            pipeline = FramePackModules()
            pipeline.register_modules(**modules)
            apply(pipeline)

        return offload


def in_sdnext() -> bool:
    """Whether SD.Next's `modules.shared` is importable and has `opts` (imports it only when it is there)."""
    import importlib.util

    try:
        if importlib.util.find_spec("modules") is None or importlib.util.find_spec("modules.shared") is None:
            return False
    except (ImportError, ValueError):
        return False
    try:
        from modules import shared
    except Exception:  # noqa: BLE001 (a package named `modules` that is not SD.Next's)
        return False
    return hasattr(shared, "opts")


def detect_host() -> Host:
    """SD.Next when running inside it, else the standalone host."""
    return SDNextHost() if in_sdnext() else StandaloneHost()
