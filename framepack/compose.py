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
) -> JobManager:
    """The job service over `host`, its database and checkpoints in `jobs_dir`; not started.

    Outputs go to `host.output_dir()`; the self-test model, MagCache ratios and FramePack's own LoRA folder live in
    `host.data_dir()` (the host's LoRA folders are searched after it). Jobs run on `host.device()` under
    `host.gpu_lock()`, with the host's balanced offload and model cache. A host that `shows_tasks` sees each job
    as its task, and its Interrupt cancels the job. Requests take `request_defaults()` (default: the host's) for
    the fields they leave out; ended jobs are kept as `host.retention()` says.
    """
    output_dir, data_dir = host.output_dir(), host.data_dir()
    output_dir.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    runner = Runner(
        device=host.device(),
        output_dir=output_dir,
        home=data_dir,
        lora_dir=[data_dir / "loras", *host.lora_dirs()],
        host_offload=host.balanced_offload(),
        hub=host.hub_cache() or DEFAULT_HUB,
    )

    def cancel(job_id: str) -> None:  # the host's Interrupt; the job may have ended meanwhile
        with contextlib.suppress(JobConflict, JobNotFound):
            service.cancel(job_id)

    service = JobManager(
        jobs_dir,
        runner,
        max_queued=max_queued,
        gpu_lock=host.gpu_lock(),
        host_hooks=host.job_hooks(on_interrupt=cancel) if host.shows_tasks else None,
        request_defaults=request_defaults or host.request_defaults,
        retention=host.retention,
    )
    where = ", ".join(str(folder) for folder in runner.lora_dir)
    offline = " (offline)" if runner.hub.offline else ""
    host.logger.info(
        f"FramePack: jobs in {jobs_dir}, videos in {output_dir}, models in {runner.hub.cache_dir()}{offline}, "
        f"LoRAs in {where}"
    )
    return service
