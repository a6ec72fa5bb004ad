"""The render farm: queue workers that are Ray actors (`serve --executor ray`; docs/farm.md).

Imported only when that executor is chosen: Ray is an optional extra (`requirements-farm.txt`), never installed into
SD.Next. The process that serves the API stays the head: its SQLite store is the only record of jobs and its queue
decides what runs where (`framepack.jobs.manager`); Ray only runs the work.

- `RayFarm` connects to a cluster ("local": one started on this machine, on 127.0.0.1 only) and starts the render
  workers: one `RenderWorker` actor per GPU (`num_gpus=1`; on a cluster without GPUs a share of a CPU), each with
  a `Runner` that keeps its model loaded between jobs. Actors restart when they die (`max_restarts=-1`) but never
  retry a call (`max_task_retries=0`): the head decides what runs again. Each serves two calls at once
  (`max_concurrency=2`), so a poll, a ping or a cancel reaches it while it renders. A worker that Ray cannot place
  within `--placement-timeout` seconds stops the start with the resources it lacked: nothing waits forever.
- `RayWorker` is the queue's `Executor` for one actor. While a job runs it polls the actor every `POLL_SECONDS` for
  the engine's events and each section's latents and hands them to the head's `RunSink` (progress, the event bus,
  checkpoints in the head's data folder), and passes a cancel on within one poll (the engine stops at its next
  step). Unless the output folder is shared (`--shared-outputs`: the same path on every machine), the worker writes
  into a staging folder of its own and the head streams each output back in `CHUNK_BYTES` pieces into its output
  folder, where they appear together (`OutputCommit`); image files a request names are sent inside it. When the
  actor dies (SIGKILL, a lost machine) the calls raise `WorkerLost` and the queue gives the job to another worker,
  which resumes it from the head's checkpoints.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from framepack.events import CancelToken, Event, PromptsEnhanced, StepProgress
from framepack.generate import KeptLatents
from framepack.images import is_file_path
from framepack.jobs.checkpoints import SectionKey
from framepack.jobs.executor import LocalExecutor, RunResult, RunSink, WorkerLost
from framepack.jobs.farm import LOCAL_ADDRESS, FarmError, FarmSettings
from framepack.jobs.names import output_folder
from framepack.jobs.prepare import PreparedJob
from framepack.models.loader import HubCache
from framepack.models.recipe import Recipe
from framepack.outputs import OutputCommit, disk_full, partial_path
from framepack.plan import Plan
from framepack.record import SIDECAR_SUFFIX
from framepack.request import IMAGE_FIELDS, GenerateRequest
from framepack.runner import Runner

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often the head asks a rendering worker for its events (and passes a cancel on)
CALL_TIMEOUT_SECONDS = 120.0  # a worker that does not answer a short call (poll, ping) in this long is lost
CHUNK_BYTES = 8 * 1024 * 1024  # outputs come back to the head in pieces of this size
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024  # a local cluster's object store: latents and chunks are small
CPU_SHARE = 0.5  # CPUs a worker reserves on a cluster without GPUs (so two fit on each core pair)
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0" before Ray's import: a local cluster stays on 127.0.0.1


def import_ray(local: bool) -> Any:
    """Ray, imported now (FarmError saying how to install it when it is not). For a local cluster Ray is told,
    before its import, to use 127.0.0.1 for the node's address and servers (else they listen on the network)."""
    if local:
        if "ray" in sys.modules and os.environ.get(LOOPBACK_ENV) != "0":
            logger.warning(
                "Ray was imported before %s=0 was set: the local cluster may listen beyond 127.0.0.1", LOOPBACK_ENV
            )
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        import ray
    except ImportError:
        raise FarmError("--executor ray needs Ray: pip install -r requirements-farm.txt") from None
    return ray


@dataclass(frozen=True)
class WorkerConfig:
    """What each render worker builds its `Runner` from (sent to its actor; paths as on the head, which must be
    the same on every machine: models, LoRAs, the self-test model's folder)."""

    output_dir: str  # the head's output folder (workers write there only with shared_outputs)
    home: str | None
    lora_dirs: tuple[str, ...]
    hub: HubCache
    shared_outputs: bool = False  # set by the farm from --shared-outputs
    device: str | None = None  # None: "cuda" when Ray gave the actor a GPU, else "cpu"

    @classmethod
    def of(cls, runner: Runner) -> WorkerConfig:
        """The head's runner's folders and model cache, for workers."""
        return cls(
            output_dir=str(Path(runner.output_dir).resolve()),
            home=str(runner.home) if runner.home is not None else None,
            lora_dirs=tuple(str(folder) for folder in runner.lora_dir),
            hub=runner.hub,
        )


# ---------------------------------------------------------------------------------------------- the actor


class _QueueSink:
    """The worker side of a run: events and section latents wait in the worker until the head polls them."""

    def __init__(self, worker: RenderWorker, cancel: CancelToken):
        self._worker, self.cancel = worker, cancel

    def running(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def event(self, event: Event) -> None:
        self._worker._put(("event", event), done_steps=event.done_steps if isinstance(event, StepProgress) else None)

    def section_latents(self, key: SectionKey, latents: torch.Tensor) -> None:
        self._worker._put(("latents", key, latents.detach().to("cpu").clone()))

    def outputs(self, paths: list[str]) -> None:
        """The head places the outputs itself (streamed back, or already in the shared folder)."""


class RenderWorker:
    """A Ray actor that renders jobs with its own `Runner` (its model stays loaded between jobs). One render and
    one short call (poll, ping, cancel, read) run at once (`max_concurrency=2`)."""

    def __init__(self, config: WorkerConfig):
        import ray

        context = ray.get_runtime_context()
        self._actor_id = context.get_actor_id()
        device = config.device or ("cuda" if ray.get_gpu_ids() else "cpu")
        if config.shared_outputs:
            self._staging: Path | None = None
            output_dir = Path(config.output_dir)
        else:  # one folder per actor, emptied when it (re)starts: a killed worker's leftovers go
            self._staging = Path(tempfile.gettempdir()) / f"framepack-worker-{self._actor_id[:16]}"
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging.mkdir(parents=True)
            output_dir = self._staging
        self._runner = Runner(
            device=device,
            output_dir=output_dir,
            home=Path(config.home) if config.home else None,
            lora_dir=[Path(folder) for folder in config.lora_dirs] or None,
            hub=config.hub,
        )
        self._executor = LocalExecutor(self._runner)
        self._node_ip = ray.util.get_node_ip_address()
        self._lock = threading.Lock()
        self._events: list[tuple] = []
        self._token: CancelToken | None = None
        self._steps = 0

    def ping(self) -> dict[str, Any]:
        """Who and where it is, and the recipe of the model it holds."""
        return {
            "actor": self._actor_id,
            "pid": os.getpid(),
            "node_ip": self._node_ip,
            "device": str(self._runner.device),
            "recipe": self._runner.loaded_recipe,
        }

    def run(self, job: PreparedJob, restored: dict[SectionKey, torch.Tensor]) -> RunResult:
        token = CancelToken()
        with self._lock:
            self._token, self._steps, self._events = token, 0, []
        result = self._executor.run(job, restored, _QueueSink(self, token))
        if result.kept is not None:  # keep_latents: sent to the head, which keeps them (on its CPU)
            latents = {key: tensor.detach().to("cpu") for key, tensor in result.kept.latents.items()}
            result.kept = KeptLatents(latents, result.kept.stream_state.detach().to("cpu"))
        return result

    def _put(self, item: tuple, done_steps: int | None = None) -> None:
        with self._lock:
            self._events.append(item)
            if done_steps is not None:
                self._steps = done_steps

    def poll(self) -> list[tuple]:
        """The events and section latents of the running job since the last poll, in order."""
        with self._lock:
            items, self._events = self._events, []
        return items

    def cancel(self) -> int:
        """Cancel the running job (it stops at its next step); its steps done by then (the job's done_steps)."""
        with self._lock:
            if self._token is not None:
                self._token.cancel()
            return self._steps

    def listing(self, path: str) -> list[str]:
        """The files of an output in the staging folder: [""] for a file, the relative paths inside a folder."""
        output = self._staged(path)
        if output.is_dir():
            return sorted(str(file.relative_to(output)) for file in output.rglob("*") if file.is_file())
        return [""]

    def read(self, path: str, relative: str, offset: int, size: int) -> bytes:
        """`size` bytes of an output file (inside a staged folder: `relative`) from `offset`; b"" at its end."""
        output = self._staged(path)
        with open(output / relative if relative else output, "rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    def remove(self, paths: list[str]) -> None:
        """Staged outputs the head has copied."""
        for path in paths:
            output = self._staged(path)
            if output.is_dir():
                shutil.rmtree(output, ignore_errors=True)
            else:
                output.unlink(missing_ok=True)

    def _staged(self, path: str) -> Path:
        """A path inside the staging folder (ValueError for anything else)."""
        output = Path(path).resolve()
        if self._staging is None or not output.is_relative_to(self._staging.resolve()):
            raise ValueError(f"{path} is not a staged output of this worker")
        return output

    def close(self) -> None:
        """Remove the staging folder (the farm is closing)."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)

    def load_model(self, request: GenerateRequest) -> bool:
        return self._executor.load_model(request)

    def enhance(self, request: GenerateRequest, plan: Plan) -> PromptsEnhanced:
        return self._executor.enhance(request, plan)

    def unload_model(self) -> None:
        self._executor.unload_model()

    def free_memory(self) -> None:
        self._executor.free_memory()


# ---------------------------------------------------------------------------------------------- the head side


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def embedded_images(request: GenerateRequest) -> GenerateRequest:
    """The request with every image it names as a file (read here, on the head) sent inside it as a data URL, for a
    worker on another machine."""
    updates: dict[str, Any] = {}

    def inline(source: str) -> str:
        if not is_file_path(source):
            return source
        return "data:application/octet-stream;base64," + base64.b64encode(Path(source).read_bytes()).decode("ascii")

    for name in IMAGE_FIELDS:
        value = getattr(request, name)
        if value and is_file_path(value):
            updates[name] = inline(value)
    if any(is_file_path(source) for source in request.keyframes.values()):
        updates["keyframes"] = {index: inline(source) for index, source in request.keyframes.items()}
    return request.model_copy(update=updates) if updates else request


class RayWorker:
    """The queue's executor for one `RenderWorker` actor (see the module docstring)."""

    def __init__(self, ray: Any, actor: Any, info: dict[str, Any], config: WorkerConfig, settings: FarmSettings):
        self._ray, self._actor, self._config, self._settings = ray, actor, config, settings
        self.name = f"ray:{info['actor'][:8]}"
        self._resident: Recipe | None = info["recipe"]
        self._busy = threading.Lock()  # one long call (run, load, enhance...) at a time: the other slot answers polls
        self.info = info

    # ------------------------------------------------------------------------------------ calls

    def _call(self, method: str, *args: Any, timeout: float | None = CALL_TIMEOUT_SECONDS) -> Any:
        """A call to the actor; its exception as it was raised there, WorkerLost when the actor died or did not
        answer within `timeout` (it is then killed, and Ray restarts it)."""
        return self._get(getattr(self._actor, method).remote(*args), timeout)

    def _get(self, ref: Any, timeout: float | None = None) -> Any:
        exceptions = self._ray.exceptions
        try:
            return self._ray.get(ref, timeout=timeout)
        except exceptions.RayActorError as error:  # died (ActorDiedError) or unreachable (ActorUnavailableError)
            self._resident = None
            raise WorkerLost(self.name, _first_line(error)) from None
        except exceptions.GetTimeoutError:
            self._resident = None
            self._ray.kill(self._actor, no_restart=False)
            raise WorkerLost(self.name, f"it did not answer within {timeout:g} s; it was restarted") from None
        except exceptions.RayTaskError as error:  # the method raised: the engine's own exception
            cause = getattr(error, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise RuntimeError(_first_line(error)) from None

    def _refresh(self) -> None:
        """The recipe the actor holds now (after a run or a model call)."""
        with contextlib.suppress(WorkerLost):
            self._resident = self._call("ping")["recipe"]

    # ------------------------------------------------------------------------------------ the executor

    def run(self, job: PreparedJob, restored: dict[SectionKey, torch.Tensor], sink: RunSink) -> RunResult:
        with self._busy:
            sink.cancel.check()
            request = job.request
            if not self._config.shared_outputs:  # the worker writes into its staging folder, from images sent along
                request = embedded_images(request).model_copy(update={"output_dir": None})
            with sink.running():
                try:
                    result = self._render(dataclasses.replace(job, request=request), restored, sink)
                except WorkerLost:
                    raise
                except BaseException:
                    self._refresh()  # a failed or cancelled job may have loaded a model all the same
                    raise
                self._refresh()
                outputs = result.outputs if self._config.shared_outputs else self._fetch(result.outputs, job)
                sink.outputs(outputs)
        return RunResult(outputs, result.timings, result.kept)

    def _render(self, job: PreparedJob, restored: dict[SectionKey, torch.Tensor], sink: RunSink) -> RunResult:
        """Start the job on the actor and relay its events, latents and a cancel until it returns."""
        ref = self._actor.run.remote(job, restored)
        cancel_sent = False
        while True:
            done, _pending = self._ray.wait([ref], timeout=POLL_SECONDS)
            for item in self._call("poll"):
                if item[0] == "event":
                    sink.event(item[1])
                else:
                    sink.section_latents(item[1], item[2])
            if sink.cancel.cancelled and not cancel_sent:
                steps = self._call("cancel")
                logger.info("job %s: the cancel reached worker %s after step %d", job.id, self.name, steps)
                cancel_sent = True
            if done:
                return self._get(ref)

    def _fetch(self, remote_outputs: list[str], job: PreparedJob) -> list[str]:
        """Stream the worker's staged outputs into the job's output folder on the head (all appear together, the
        sidecar naming them where they are here), then remove the staged copies; the paths here."""
        folder = output_folder(job.request.model_dump(), Path(self._config.output_dir))
        folder.mkdir(parents=True, exist_ok=True)
        commit = OutputCommit()
        finals = {remote: folder / Path(remote).name for remote in remote_outputs}
        try:
            for remote, final in finals.items():
                temporary = partial_path(final)
                commit.stage(temporary, final)
                for relative in self._call("listing", remote):
                    target = temporary / relative if relative else temporary
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(target, "wb") as handle:
                        while chunk := self._call("read", remote, relative, handle.tell(), CHUNK_BYTES):
                            handle.write(chunk)
            for remote, final in finals.items():
                if Path(remote).suffix == SIDECAR_SUFFIX:
                    _relocate_sidecar(partial_path(final), finals)
            commit.commit()
        except OSError as error:
            commit.discard()
            full = disk_full(error, folder)
            if full is not None and full is not error:
                raise full from error
            raise
        except BaseException:
            commit.discard()
            raise
        with contextlib.suppress(WorkerLost):
            self._call("remove", list(remote_outputs))
        logger.info("job %s: %d outputs streamed back from worker %s", job.id, len(finals), self.name)
        return [str(final) for final in finals.values()]

    def _long(self, method: str, *args: Any) -> Any:
        """A call that may take long (a model load): the actor must answer a ping first, then it has all the time
        it needs."""
        with self._busy:
            self._call("ping", timeout=self._settings.placement_timeout)
            try:
                return self._call(method, *args, timeout=None)
            finally:
                self._refresh()

    def load_model(self, request: GenerateRequest) -> bool:
        return self._long("load_model", request)

    def enhance(self, request: GenerateRequest, plan: Plan) -> PromptsEnhanced:
        return self._long("enhance", embedded_images(request), plan)

    def unload_model(self) -> None:
        self._long("unload_model")

    def free_memory(self) -> None:
        with contextlib.suppress(WorkerLost):
            self._long("free_memory")

    def holds(self, recipe: Recipe) -> bool:
        return self._resident == recipe

    def recover(self) -> None:
        """Wait until the (restarted) actor answers, at most --placement-timeout seconds."""
        timeout = self._settings.placement_timeout
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerLost(self.name, f"Ray did not start it again within {timeout:g} s (--placement-timeout)")
            try:
                self.info = self._call("ping", timeout=left)
            except WorkerLost as lost:
                if "did not answer" in lost.reason:
                    raise WorkerLost(
                        self.name, f"Ray did not start it again within {timeout:g} s (--placement-timeout)"
                    ) from None
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                continue
            self._resident = self.info["recipe"]
            logger.info(
                "worker %s is back: pid %s on %s (%s)",
                self.name,
                self.info["pid"],
                self.info["node_ip"],
                self.info["device"],
            )
            return

    def kill(self) -> None:
        """End the actor for good (the farm closes), its staging folder removed first when it answers."""
        with contextlib.suppress(Exception):
            self._call("close", timeout=10)
        with contextlib.suppress(Exception):
            self._ray.kill(self._actor, no_restart=True)


def _relocate_sidecar(sidecar: Path, finals: dict[str, Path]) -> None:
    """The sidecar JSON written by the worker names the outputs where it wrote them; name them where they are."""
    record = json.loads(sidecar.read_text())
    if isinstance(record.get("outputs"), list):
        record["outputs"] = [str(finals.get(path, path)) for path in record["outputs"]]
        sidecar.write_text(json.dumps(record, indent=2))


# ---------------------------------------------------------------------------------------------- the farm


class RayFarm:
    """The Ray cluster of `serve --executor ray` and its render workers (see the module docstring). `num_cpus` is
    the CPUs a local cluster may use (default: all)."""

    def __init__(self, settings: FarmSettings, config: WorkerConfig, num_cpus: int | None = None):
        settings.check()
        if settings.executor != "ray" or not settings.ray_address:
            raise FarmError("a Ray farm needs --executor ray and --ray-address")
        self.config = dataclasses.replace(config, shared_outputs=settings.shared_outputs)
        self.settings, self.num_cpus = settings, num_cpus
        self._ray: Any = None
        self._started_ray = False
        self.workers: list[RayWorker] = []

    def start(self) -> list[RayWorker]:
        """Connect (or start a local cluster) and start the render workers; FarmError naming what they lacked when
        Ray cannot place them all within the placement timeout."""
        local = self.settings.ray_address == LOCAL_ADDRESS
        ray = self._ray = import_ray(local)
        if not ray.is_initialized():
            self._connect(ray, local)
        gpus, cpus = self._worker_resources(ray)
        total = ray.cluster_resources()
        count = self.settings.ray_workers or (max(1, int(total.get("GPU", 0) // gpus)) if gpus else 1)
        actor_class = ray.remote(RenderWorker)
        actors = [
            actor_class.options(
                num_gpus=gpus, num_cpus=cpus, max_restarts=-1, max_task_retries=0, max_concurrency=2
            ).remote(self.config)
            for _ in range(count)
        ]
        pings = [actor.ping.remote() for actor in actors]
        timeout = self.settings.placement_timeout
        ready, pending = ray.wait(pings, num_returns=len(pings), timeout=timeout)
        failures = []
        for ref in ready:
            try:
                ray.get(ref)
            except Exception as error:  # noqa: BLE001 - its constructor failed: said below, with the others
                failures.append(_first_line(error))
        if pending or failures:
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
            free = ray.available_resources()
            self.close()
            if failures:
                raise FarmError(f"{len(failures)} of {count} Ray render workers failed to start: {failures[0]}")
            needs = {"GPU": gpus, "CPU": cpus}
            raise FarmError(
                f"{len(pending)} of {count} Ray render workers could not be placed within {timeout:g} s "
                f"(--placement-timeout): each needs {_resources(needs)}; the cluster has {_resources(total)} in "
                f"all, {_resources(free)} free. Lower --ray-workers, --ray-worker-gpus or --ray-worker-cpus, or add "
                "machines (ray start --address=...)"
            )
        infos = ray.get(pings)
        self.workers = [RayWorker(ray, actor, info, self.config, self.settings) for actor, info in zip(actors, infos)]
        for worker in self.workers:
            info = worker.info
            logger.info("Ray worker %s: pid %s on %s (%s)", worker.name, info["pid"], info["node_ip"], info["device"])
        return self.workers

    def _connect(self, ray: Any, local: bool) -> None:
        if local:
            start_local_cluster(ray, self.num_cpus)
        else:
            try:
                ray.init(address=self.settings.ray_address, namespace="framepack", logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise FarmError(f"--ray-address {self.settings.ray_address}: cannot connect ({error})") from None
        self._started_ray = True
        logger.info("Ray %s: cluster at %s", ray.__version__, ray.get_runtime_context().gcs_address)

    def _worker_resources(self, ray: Any) -> tuple[float, float]:
        """(GPUs, CPUs) each worker reserves: the flags, else 1 GPU and 1 CPU where the cluster has GPUs, else a
        CPU_SHARE of a CPU."""
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        gpus = self.settings.ray_worker_gpus
        gpus = gpus if gpus is not None else (1.0 if has_gpus else 0.0)
        cpus = self.settings.ray_worker_cpus
        cpus = cpus if cpus is not None else (1.0 if gpus else CPU_SHARE)
        return gpus, cpus

    def close(self) -> None:
        """End the workers, and the connection (a local cluster with it) when this farm made it."""
        for worker in self.workers:
            worker.kill()
        self.workers = []
        if self._started_ray and self._ray is not None:
            self._ray.shutdown()
            self._started_ray = False


def start_local_cluster(ray: Any, num_cpus: int | None = None) -> None:
    """A Ray cluster on this machine only (`import_ray(local=True)` first: loopback), with a small object store and
    no memory monitor (which would kill a worker while a large model is staged in host memory)."""
    ray.init(
        address="local",
        num_cpus=num_cpus,
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        include_dashboard=False,
        namespace="framepack",
        logging_level=logging.WARNING,
        _system_config={"memory_monitor_refresh_ms": 0},
    )


def _resources(resources: dict[str, float]) -> str:
    """{'GPU': 1.0, 'CPU': 0.5} as "1 GPU, 0.5 CPU" (only GPUs and CPUs)."""
    shown = [f"{resources.get(name, 0):g} {name}" for name in ("GPU", "CPU")]
    return ", ".join(shown)
