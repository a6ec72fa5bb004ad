"""The composition root of the job service: a host's folders, device, caches, lock and task display wired into
one `JobManager`, handed to the faces as a `JobService`.

The standalone server (`framepack.serve`, over `StandaloneHost`) and SD.Next's entry (`scripts/`, over
`SDNextHost`) both build their service here; no face sees the runner, the loader or the store behind it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from framepack.host import Host
from framepack.jobs.executor import Executor, LocalExecutor
from framepack.jobs.farm import FarmSettings, check_devices, same_device
from framepack.jobs.manager import JobManager
from framepack.jobs.models import JobConflict, JobNotFound
from framepack.models.loader import DEFAULT_HUB
from framepack.runner import Runner


def build_job_service(
    host: Host,
    jobs_dir: Path,
    *,
    max_queued: int = 100,
    request_defaults: Callable[[], Mapping[str, Any]] | None = None,
    farm: FarmSettings | None = None,
) -> JobManager:
    """The job service over `host`, its database and checkpoints in `jobs_dir`; not started.

    Outputs go to `host.output_dir()`; the self-test model, MagCache ratios and FramePack's own LoRA folder live in
    `host.data_dir()` (the host's LoRA folders are searched after it). Jobs run on `host.devices()` (one worker
    per device, each keeping its model loaded; `farm.devices` instead when given), the one on the host's own device
    under `host.gpu_lock()`, with the host's balanced offload and model cache; with `farm.executor` "ray" they run
    on Ray render workers instead (`framepack.jobs.ray_executor`, imported only then). A host that `shows_tasks`
    sees each job as its task, and its Interrupt cancels the job. Requests take `request_defaults()` (default: the
    host's) for the fields they leave out; ended jobs are kept as `host.retention()` says.
    """
    farm = farm or FarmSettings()
    farm.check()
    output_dir, data_dir = host.output_dir(), host.data_dir()
    output_dir.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    devices = list(farm.devices or host.devices())
    if farm.devices is not None:
        check_devices(farm.devices, "--gpus")

    def runner_on(device: Any) -> Runner:
        return Runner(
            device=device,
            output_dir=output_dir,
            home=data_dir,
            lora_dir=[data_dir / "loras", *host.lora_dirs()],
            host_offload=host.balanced_offload(),
            hub=host.hub_cache() or DEFAULT_HUB,
        )

    runner = runner_on(devices[0])
    executors: list[Executor]
    on_close = None
    if farm.executor == "ray":
        from framepack.jobs.ray_executor import RayFarm, WorkerConfig

        ray_farm = RayFarm(farm, WorkerConfig.of(runner))
        executors, on_close = ray_farm.start(), ray_farm.close
    elif len(devices) == 1:
        executors = [LocalExecutor(runner, host.gpu_lock())]
    else:  # one worker per device; the one on the host's own device shares the host's GPU lock
        runners = [runner, *(runner_on(device) for device in devices[1:])]
        executors = [
            LocalExecutor(each, host.gpu_lock() if same_device(each.device, host.device()) else None)
            for each in runners
        ]

    def cancel(job_id: str) -> None:  # the host's Interrupt; the job may have ended meanwhile
        with contextlib.suppress(JobConflict, JobNotFound):
            service.cancel(job_id)

    service = JobManager(
        jobs_dir,
        runner,
        max_queued=max_queued,
        executors=executors,
        max_attempts=farm.max_attempts,
        on_close=on_close,
        host_hooks=host.job_hooks(on_interrupt=cancel) if host.shows_tasks else None,
        request_defaults=request_defaults or host.request_defaults,
        retention=host.retention,
    )
    where = ", ".join(str(folder) for folder in runner.lora_dir)
    offline = " (offline)" if runner.hub.offline else ""
    workers = ", ".join(worker.name for worker in service.workers())
    host.logger.info(
        f"FramePack: jobs in {jobs_dir}, videos in {output_dir}, models in {runner.hub.cache_dir()}{offline}, "
        f"LoRAs in {where}; workers: {workers}"
    )
    return service
