"""The host adapter: what FramePack takes from the program it runs in, behind one small interface.

Two hosts exist: `SDNextHost` (the SD.Next extension, `scripts/framepack_extension.py`) and `StandaloneHost`
(`python -m framepack serve`, and what `detect_host()` returns outside SD.Next); `framepack.compose` builds the job
service over either. Apart from SD.Next's entry itself (`scripts/`, which registers its callbacks with
`modules.script_callbacks` and finds the host's log and API in `modules.shared`), this is the only module of the
project that touches SD.Next's `modules.*`, and only inside `SDNextHost` methods: importing it imports nothing of
SD.Next, so it is safe everywhere.

What a host provides:

- `name`, `logger`, `shows_tasks` (whether jobs appear as the host's tasks, through `job_hooks`)
- `output_dir()`: where videos go (SD.Next: `shared.opts.outdir_video`, else `outputs/video`)
- `data_dir()`: FramePack's own data (self-test model, RIFE weights, job database)
- `gpu_lock()`: a reusable context manager held while a job uses the GPU (SD.Next: `modules.call_queue.queue_lock`,
  so FramePack never runs while the host generates an image; standalone: a lock the host object owns)
- `device()`: the torch device to run on (SD.Next: `modules.devices.device`); `devices()`: one queue worker per
  device (standalone: `serve --gpus`; SD.Next: its "GPUs" setting, else its device)
- `hub_cache()`, `lora_dirs()`: where models and LoRAs are kept (SD.Next: `opts.hfcache_dir` with
  `opts.offline_mode`, and `cmd_opts.lora_dir`), handed to the `Runner`
- `request_defaults()`: the values a request takes for the fields it leaves out (SD.Next: its "FramePack"
  settings section, registered by `register_settings()`)
- `retention()`: how many ended jobs the job store keeps (standalone: `serve --keep-jobs/--keep-days/
  --prune-outputs`; SD.Next: its "FramePack" settings)
- `begin(title, task_id)`, `end(task_id)`, `progress(done, total, text)`, `outputs(paths)`, `interrupted()`,
  `interrupt_mark()` / `interrupted_since(mark)`: the host's task state (SD.Next: `shared.state`; its Interrupt
  and Skip buttons mean "cancel the FramePack job")
- `balanced_offload()`: the host's own balanced offload as a function of the model's modules, or None to use
  FramePack's (SD.Next: `apply_balanced_offload` when its offload mode setting is "balanced")
- `job_hooks(on_interrupt)`: all of the task state around the jobs, as the `JobHooks` that
  `JobManager(host_hooks=...)` takes.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from framepack.home import data_home
from framepack.jobs.hooks import JobHooks
from framepack.jobs.models import Retention

INTERRUPT_POLL_SECONDS = 0.25  # how often a running job looks at the host's interrupt flag
JOB_TITLE = "FramePack"  # the task title the host shows (SD.Next: progress `state.job`, history `job`)
SETTINGS_SECTION = ("framepack", "FramePack")  # SD.Next settings page section (id, title)
SETTING_MODEL = "framepack_default_model"
SETTING_CACHE = "framepack_default_cache"
SETTING_OFFLOAD = "framepack_default_offload"
SETTING_KEEP_JOBS = "framepack_keep_jobs"
SETTING_KEEP_DAYS = "framepack_keep_days"
SETTING_PRUNE_OUTPUTS = "framepack_prune_outputs"
SETTING_GPUS = "framepack_gpus"
MODEL_CHOICES = ("published", "self-test")  # or a recipe file path, typed into the same field


class Host(ABC):
    """The services FramePack takes from its host (see the module docstring)."""

    name: str = "host"
    shows_tasks: bool = False  # jobs are the host's tasks: its progress, history and Interrupt (see job_hooks)

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

    def devices(self) -> list[Any]:
        """The devices of the queue's workers, one worker each (each keeps its model loaded); by default the one
        `device()`."""
        return [self.device()]

    def hub_cache(self) -> Any:
        """Where hub models are looked for (`framepack.models.loader.HubCache`); None: huggingface_hub's own."""
        return None

    def lora_dirs(self) -> list[Path]:
        """The host's LoRA folders, searched after FramePack's own."""
        return []

    def request_defaults(self) -> Mapping[str, Any]:
        """Values for the request fields a request leaves out (`framepack.defaults`)."""
        from framepack.defaults import env_defaults

        return env_defaults()

    def retention(self) -> Retention:
        """How many ended jobs to keep (read before every pruning); by default all of them."""
        return Retention()

    def begin(self, title: str, task_id: str) -> None:
        """A job starts (host task state); `task_id` is the FramePack job id."""

    def end(self, task_id: str, outputs: list[str]) -> None:
        """The job ended (host task state); `outputs` are the files it wrote (none when it failed)."""

    def progress(self, done: int, total: int, text: str) -> None:
        """The running job's progress for the host's display: `done` of `total` units (denoising steps, then
        frames written), and a line of text."""

    def outputs(self, paths: list[str]) -> None:
        """Files the running job wrote, for the host's history."""

    def interrupted(self) -> bool:
        """Whether the host asked the running job to stop (SD.Next's Interrupt/Skip)."""
        return False

    def interrupt_mark(self) -> Any:
        """A snapshot taken when a job is queued, so that `interrupted_since` can tell an Interrupt pressed after
        it (before the job began) from an old one."""
        return None

    def interrupted_since(self, mark: Any) -> bool:
        """Whether the host asked to interrupt after `mark` was taken, with no other task begun since."""
        return False

    def balanced_offload(self) -> Callable[[dict[str, Any]], None] | None:
        """The host's balanced offload over {component name: module}; None means FramePack's own."""
        return None

    def job_hooks(self, on_interrupt: Callable[[str], Any] | None = None) -> HostJobHooks:
        """The `JobHooks` showing FramePack jobs to this host; `on_interrupt(job_id)` cancels a job when the host
        interrupts it (while it runs, or pressed after it was queued and before it began)."""
        return HostJobHooks(self, on_interrupt)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def progress_line(job: Any) -> tuple[int, int, str]:
    """(done, total, text) of a job for a host's progress bar: denoising steps, then the frames written, so the
    bar keeps moving through the decode phase. The text names the job and its stage."""
    progress = job.progress
    frames = int((job.plan or {}).get("generated_frames") or 0)
    done = progress.done_steps + min(progress.frames_written, frames)
    total = progress.total_steps + frames
    text = f"{JOB_TITLE} {job.id}: {progress.stage}"
    if progress.stage == "sample" and progress.total_steps:
        text += f", step {progress.done_steps}/{progress.total_steps}"
        if progress.sections:
            text += f", {progress.sections_done}/{progress.sections} sections"
    elif progress.frames_written or progress.stage in ("decode", "finish"):
        text += f", {progress.frames_written}/{frames} frames written"
    return done, max(total, done, 1), text


class HostJobHooks(JobHooks):
    """FramePack jobs as host tasks: `begin(title, job id)` when a job starts, progress (steps, then frames) and
    its text, its output files, `end` when it ends; the host's Interrupt cancels the job, whether it is pressed
    while the job runs or after it was queued and before it began (the host's `begin` clears its interrupt flag,
    so that press would be lost otherwise)."""

    def __init__(self, host: Host, on_interrupt: Callable[[str], Any] | None = None):
        self.host = host
        self.on_interrupt = on_interrupt
        self._lock = threading.Lock()
        self._marks: dict[str, Any] = {}  # queued job id -> the host's interrupt mark at submit
        self._tasks: dict[str, _HostTask] = {}  # running job id -> its task

    def submitted(self, job: Any) -> None:
        mark = self.host.interrupt_mark()
        with self._lock:
            self._marks[job.id] = mark

    def running(self, job: Any) -> _HostTask:
        with self._lock:
            mark = self._marks.pop(job.id, None)
            task = self._tasks[job.id] = _HostTask(self, job, mark)
        return task

    def progress(self, job: Any) -> None:
        self.host.progress(*progress_line(job))

    def outputs(self, job: Any, paths: list[str]) -> None:
        with self._lock:
            task = self._tasks.get(job.id)
        if task is not None:
            task.outputs = list(paths)
        self.host.outputs(list(paths))

    def interrupt(self, job_id: str) -> None:
        """Cancel `job_id` for a host interrupt. The press is used up: jobs still queued take a new mark, so
        the same press does not cancel them too when they begin."""
        with self._lock:
            for queued in self._marks:
                self._marks[queued] = self.host.interrupt_mark()
        if self.on_interrupt is not None:
            self.on_interrupt(job_id)


class _HostTask:
    """One job as a host task (see HostJobHooks): begin, interrupt watcher, end."""

    def __init__(self, hooks: HostJobHooks, job: Any, mark: Any):
        self.hooks, self.job, self.mark = hooks, job, mark
        self.outputs: list[str] = []
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def host(self) -> Host:
        return self.hooks.host

    def __enter__(self) -> _HostTask:
        early = self.mark is not None and self.host.interrupted_since(self.mark)
        self.host.begin(JOB_TITLE, self.job.id)
        if early:
            self.host.logger.info(f"FramePack: the host interrupted job {self.job.id} before it began; cancelling it")
            self._cancel()
        elif self.hooks.on_interrupt is not None:
            self._watcher = threading.Thread(target=self._watch, name="framepack-host-interrupt", daemon=True)
            self._watcher.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=2 * INTERRUPT_POLL_SECONDS + 1)
        with self.hooks._lock:
            self.hooks._tasks.pop(self.job.id, None)
        try:
            self.host.end(self.job.id, self.outputs)
        except Exception:  # noqa: BLE001
            self.host.logger.exception("FramePack: the host's end-of-task hook failed")

    def _cancel(self) -> None:
        try:
            self.hooks.interrupt(self.job.id)
        except Exception:  # noqa: BLE001
            self.host.logger.exception("FramePack: cancelling the job after a host interrupt failed")

    def _watch(self) -> None:
        while not self._stop.wait(INTERRUPT_POLL_SECONDS):
            try:
                interrupted = self.host.interrupted()
            except Exception:  # noqa: BLE001
                interrupted = False
            if interrupted:
                self.host.logger.info(f"FramePack: the host interrupted job {self.job.id}; cancelling it")
                self._cancel()
                return


class StandaloneHost(Host):
    """The standalone program: plain logging, its own folders and a lock of its own."""

    name = "standalone"

    def __init__(
        self,
        output_dir: Path | str | None = None,
        data_dir: Path | str | None = None,
        device: Any = None,
        retention: Retention | None = None,
        devices: list[Any] | None = None,
    ):
        self._data_dir = Path(data_dir) if data_dir else data_home()
        self._output_dir = Path(output_dir) if output_dir else Path("outputs")
        self._device = device
        self._devices = list(devices) if devices else None
        self._retention = retention or Retention()
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

    def devices(self) -> list[Any]:
        return list(self._devices) if self._devices else [self._device]

    def retention(self) -> Retention:
        return self._retention


def _accepts(function: Callable[..., Any], parameter: str) -> bool:
    try:
        return parameter in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


class SDNextHost(Host):
    """SD.Next: its logger, folders, settings, task state, GPU queue lock and device.

    `modules.*` is imported inside the methods only, so constructing one outside SD.Next works (and fails only
    when a service is used). The task state follows `modules.shared_state.State`: `begin(title="", task_id=0,
    api=None)` (which clears `interrupted`), `end(task_id=None, api=None)`, `outputs(results)` (paths that
    `/sdapi/v1/history` lists for the task), `sampling_step`/`sampling_steps`/`textinfo` (what
    `/sdapi/v1/progress` and the progress bar show)."""

    name = "sdnext"
    shows_tasks = True

    def __init__(self, data_dir: Path | str | None = None):
        self._data_dir = Path(data_dir) if data_dir else None

    @staticmethod
    def _shared() -> Any:
        from modules import shared  # the host's module; only this adapter imports it

        return shared

    def _state(self) -> Any:
        """SD.Next's task state (`shared.state`), or None."""
        return getattr(self._shared(), "state", None)

    def _opts(self) -> Any:
        return getattr(self._shared(), "opts", None)

    def _option(self, key: str) -> Any:
        """A setting's value, None when SD.Next does not know the key (yet)."""
        opts = self._opts()
        try:
            return getattr(opts, key, None) if opts is not None else None
        except Exception:  # noqa: BLE001 - an Options object that fails on an unknown key
            return None

    @property
    def logger(self) -> Any:
        try:
            log = getattr(self._shared(), "log", None)
        except ImportError:
            log = None
        return log if log is not None else logging.getLogger("framepack")

    def output_dir(self) -> Path:
        folder = self._option("outdir_video")
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

    def devices(self) -> list[Any]:
        """The setting "GPUs" of the "FramePack" section (`framepack_gpus`, e.g. "0,1": one worker per GPU; read
        when the job service is built, so a change applies after a restart); empty: SD.Next's own device. A bad
        value is a FarmError naming the setting."""
        from framepack.jobs.farm import parse_devices

        value = self._option(SETTING_GPUS)
        text = str(value) if value is not None and not isinstance(value, bool) else None
        parsed = parse_devices(text, f"SD.Next's setting FramePack -> GPUs ({SETTING_GPUS})")
        return list(parsed) if parsed else [self.device()]

    # ------------------------------------------------------------------------------------ models and settings

    def hub_cache(self) -> Any:
        """SD.Next's Hugging Face cache (`opts.hfcache_dir`, the `cache_dir=` it passes to from_pretrained) and
        its offline setting (`opts.offline_mode`, i.e. `local_files_only=True`)."""
        from framepack.models.loader import HubCache

        folder = self._option("hfcache_dir")
        return HubCache(Path(folder) if folder else None, bool(self._option("offline_mode")))

    def lora_dirs(self) -> list[Path]:
        """SD.Next's LoRA folder (`cmd_opts.lora_dir`, which SD.Next fills from its setting `lora_dir`)."""
        folder = getattr(getattr(self._shared(), "cmd_opts", None), "lora_dir", None) or self._option("lora_dir")
        return [Path(folder)] if folder else []

    def register_settings(self) -> None:
        """The "FramePack" section of SD.Next's settings page (call from `script_callbacks.on_ui_settings`):
        default model (published, self-test or a recipe file path; starts at FRAMEPACK_MODEL), default cache and
        default offload, for requests that leave them out; the history's retention; and the GPUs of the queue's
        workers."""
        import gradio as gr

        from framepack.defaults import MODEL_ENV
        from framepack.request import Cache, GenerateRequest, Offload

        shared = self._shared()

        def radio(field: str, choices: tuple[str, ...]) -> Any:
            """The option of a field whose default comes from the request model, one button per choice."""
            default = GenerateRequest.model_fields[field].default
            label = f"Default {field} when a request names none"
            return shared.OptionInfo(default, label, gr.Radio, {"choices": list(choices)}, section=SETTINGS_SECTION)

        initial_model = os.environ.get(MODEL_ENV, "").strip() or MODEL_CHOICES[0]
        options = {
            SETTING_MODEL: shared.OptionInfo(
                initial_model,
                "Default model when a request names none: published, self-test (random weights: noise) or the "
                "path of a recipe file",
                gr.Dropdown,
                {"choices": list(MODEL_CHOICES), "allow_custom_value": True},
                section=SETTINGS_SECTION,
            ),
            SETTING_CACHE: radio("cache", Cache.__args__),
            SETTING_OFFLOAD: radio("offload", Offload.__args__),
            SETTING_KEEP_JOBS: shared.OptionInfo(
                0,
                "Ended jobs to keep in the queue's history (0 = all; older ones are deleted after each job)",
                gr.Number,
                {"precision": 0, "minimum": 0},
                section=SETTINGS_SECTION,
            ),
            SETTING_KEEP_DAYS: shared.OptionInfo(
                0,
                "Days to keep ended jobs in the queue's history (0 = forever)",
                gr.Number,
                {"minimum": 0},
                section=SETTINGS_SECTION,
            ),
            SETTING_PRUNE_OUTPUTS: shared.OptionInfo(
                False,
                "Delete the videos of jobs removed from the history too (otherwise they are kept)",
                gr.Checkbox,
                {},
                section=SETTINGS_SECTION,
            ),
            SETTING_GPUS: shared.OptionInfo(
                "",
                "GPUs that run FramePack jobs, one job each at a time: GPU numbers separated by commas (0,1); empty = "
                "SD.Next's GPU. Applies after a restart",
                gr.Textbox,
                {},
                section=SETTINGS_SECTION,
            ),
        }
        for key, info in options.items():
            shared.opts.add_option(key, info)

    def request_defaults(self) -> dict[str, Any]:
        """The settings of the "FramePack" section (read at every submit: a change applies to the next job);
        before the settings page registered them, FRAMEPACK_MODEL. A bad model setting is a FieldError naming
        it."""
        from framepack.defaults import env_defaults, model_default

        defaults: dict[str, Any] = dict(env_defaults())
        model = self._option(SETTING_MODEL)
        if isinstance(model, str) and model.strip():
            defaults["model"] = model_default(model, f"SD.Next's setting FramePack -> default model ({SETTING_MODEL})")
        for field, key in (("cache", SETTING_CACHE), ("offload", SETTING_OFFLOAD)):
            value = self._option(key)
            if value:
                defaults[field] = value
        return defaults

    def retention(self) -> Retention:
        """The history settings of the "FramePack" section (0 or a value that is no number: no limit)."""

        def limit(key: str, kind: type) -> Any:
            value = self._option(key)
            try:
                number = kind(value) if value is not None and not isinstance(value, bool) else None
            except (TypeError, ValueError):
                return None
            return number if number is not None and number > 0 else None

        return Retention(
            keep_jobs=limit(SETTING_KEEP_JOBS, int),
            keep_days=limit(SETTING_KEEP_DAYS, float),
            remove_outputs=self._option(SETTING_PRUNE_OUTPUTS) is True,
        )

    # ------------------------------------------------------------------------------------ task state

    def begin(self, title: str, task_id: str) -> None:
        """`state.begin(title=..., task_id=job id)`: progress, status and history show the title and the FramePack
        job id as the task id (hosts whose `begin` takes no task id get the title only)."""
        state = self._state()
        if state is None or not hasattr(state, "begin"):
            return
        if _accepts(state.begin, "task_id"):
            state.begin(title=title, task_id=task_id)
        else:
            state.begin(title)

    def end(self, task_id: str, outputs: list[str]) -> None:
        """`state.end(task_id=job id)`. Then the outputs once more: SD.Next's `end()` clears the task id, and the
        older extension's create-video.py (what SD.Next users script with) asks `/sdapi/v1/progress` for the id
        after its blocking POST, gets none, and takes the outputs of the LAST history entry; the old extension
        recorded its files after `end()`, so this does too (an entry without id). The task's own entries (begin,
        output, end under the job id) come first."""
        state = self._state()
        if state is None or not hasattr(state, "end"):
            return
        if _accepts(state.end, "task_id"):
            state.end(task_id=task_id)
        else:
            state.end()
        if outputs:
            self.outputs(outputs)

    def progress(self, done: int, total: int, text: str) -> None:
        """`state.sampling_steps`, `sampling_step` (total first, so the step never exceeds it) and `textinfo`."""
        state = self._state()
        if state is not None:
            state.sampling_steps, state.sampling_step = total, done
            state.textinfo = text

    def outputs(self, paths: list[str]) -> None:
        """`state.outputs(paths)`: the task's history entry lists them (downloadable through `/file=`)."""
        state = self._state()
        if state is not None and hasattr(state, "outputs"):
            state.outputs(list(paths))

    def interrupted(self) -> bool:
        state = self._state()
        return bool(state is not None and (getattr(state, "interrupted", False) or getattr(state, "skipped", False)))

    def interrupt_mark(self) -> tuple[Any, bool]:
        """(tasks begun so far, interrupt flag). A flag left raised by an earlier task while SD.Next is idle is
        cleared first (its own next `begin` would clear it too), so a press after this is seen."""
        state = self._state()
        if state is None:
            return (None, False)
        if getattr(state, "interrupted", False) and not getattr(state, "job", ""):
            state.interrupted = False
        return (getattr(state, "job_history", None), bool(getattr(state, "interrupted", False)))

    def interrupted_since(self, mark: Any) -> bool:
        state = self._state()
        if state is None or mark is None:
            return False
        history, flag = mark
        return (
            bool(getattr(state, "interrupted", False)) and not flag and getattr(state, "job_history", None) == history
        )

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
