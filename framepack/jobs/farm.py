"""Where the queue's jobs run: one worker per local GPU (`serve --gpus 0,1`, SD.Next's setting "GPUs"), or Ray render
workers (`serve --executor ray`, `framepack.jobs.ray_executor`), as `FarmSettings` checked before anything starts.

`parse_devices` reads a GPU list: GPU numbers ("0,1" -> cuda:0, cuda:1), torch device names ("cuda:2", "mps") or
"cpu"; "cpu" may repeat ("cpu,cpu": two CPU workers, what tests and the throughput benchmark use), a GPU may not (two
workers on one GPU would each hold the whole model). Nothing here imports torch or Ray, except `check_devices`
(torch, to count the GPUs).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from framepack.errors import UserError

EXECUTORS = ("local", "ray")
DEVICE_NAME = re.compile(r"^(cpu|mps|cuda(:\d+)?|xpu(:\d+)?)$")
LOCAL_ADDRESS = "local"  # --ray-address local: start a Ray cluster on this machine (127.0.0.1 only)


class FarmError(UserError):
    """A worker setting that cannot work; the message names the flag or setting and what is allowed."""


def parse_devices(text: str | None, source: str) -> tuple[str, ...] | None:
    """The devices of a GPU list ("0,1", "cuda:0,cuda:1", "cpu,cpu"); None for None or blank. FarmError naming
    `source` for an entry that is no device or a GPU named twice."""
    if text is None or not text.strip():
        return None
    devices = []
    for entry in (part.strip().lower() for part in text.split(",")):
        device = f"cuda:{entry}" if entry.isdigit() else "cuda:0" if entry == "cuda" else entry
        if not DEVICE_NAME.match(device):
            raise FarmError(
                f"{source} is {text!r}: {entry!r} is no device; allowed: GPU numbers (0,1), cuda:N, mps or cpu, "
                "separated by commas"
            )
        if device != "cpu" and device in devices:
            raise FarmError(f"{source} is {text!r}: {device} is named twice (one worker per GPU)")
        devices.append(device)
    return tuple(devices)


def check_devices(devices: tuple[str, ...], source: str) -> None:
    """Every CUDA device of `devices` exists on this machine (FarmError naming `source` otherwise)."""
    cuda = [device for device in devices if device.startswith("cuda")]
    if not cuda:
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [device for device in cuda if int(device.partition(":")[2] or 0) >= count]
    if missing:
        have = f"cuda:0 to cuda:{count - 1}" if count else "no CUDA GPU"
        raise FarmError(f"{source}: {', '.join(missing)} not on this machine (it has {have})")


def same_device(first: Any, second: Any) -> bool:
    """Whether two device names (or torch devices) are one device: "cuda" is cuda:0."""

    def normal(device: Any) -> str:
        name = str(device)
        return "cuda:0" if name == "cuda" else name

    return first is not None and second is not None and normal(first) == normal(second)


@dataclass(frozen=True)
class FarmSettings:
    """The workers of `serve` (see `framepack.cli.add_serve_flags` for each flag's help)."""

    devices: tuple[str, ...] | None = None  # local workers, one per device (None: one on the host's device)
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # "local" (a cluster on this machine) or the address of a running one
    ray_workers: int | None = None  # render workers (None: one per GPU of the cluster, or 1 without GPUs)
    ray_worker_gpus: float | None = None  # GPUs each worker reserves (None: 1 when the cluster has GPUs, else 0)
    ray_worker_cpus: float | None = None  # CPUs each reserves (None: 1 beside a GPU, 0.5 on a CPU-only cluster)
    max_attempts: int = 3  # runs of a job whose worker is lost before it fails
    placement_timeout: float = 60.0  # seconds to wait for Ray to place (start) a worker before giving up
    shared_outputs: bool = False  # the output folder is the same path on every machine: no streaming back

    def check(self) -> None:
        """FarmError naming the flag for a setting that cannot work, before anything starts."""
        if self.executor not in EXECUTORS:
            raise FarmError(f"--executor is {self.executor!r}; allowed: {', '.join(EXECUTORS)}")
        if self.max_attempts < 1:
            raise FarmError(f"--max-attempts is {self.max_attempts}: a job needs at least 1 attempt")
        if not math.isfinite(self.placement_timeout) or self.placement_timeout <= 0:
            raise FarmError(f"--placement-timeout is {self.placement_timeout}: give a positive number of seconds")
        ray_flags = {
            "--ray-address": self.ray_address,
            "--ray-workers": self.ray_workers,
            "--ray-worker-gpus": self.ray_worker_gpus,
            "--ray-worker-cpus": self.ray_worker_cpus,
        }
        if self.executor == "local":
            given = [flag for flag, value in ray_flags.items() if value is not None]
            if given or self.shared_outputs:
                flags = ", ".join(given + (["--shared-outputs"] if self.shared_outputs else []))
                raise FarmError(f"{flags} need --executor ray")
            return
        if self.devices is not None:
            raise FarmError("--gpus is for local workers; with --executor ray the cluster's GPUs are used")
        if not self.ray_address:
            raise FarmError("--executor ray needs --ray-address: 'local' or the address of a running Ray cluster")
        if self.ray_workers is not None and self.ray_workers < 1:
            raise FarmError(f"--ray-workers is {self.ray_workers}: at least 1")
        for flag, value in (("--ray-worker-gpus", self.ray_worker_gpus), ("--ray-worker-cpus", self.ray_worker_cpus)):
            if value is not None and (not math.isfinite(value) or value < 0):
                raise FarmError(f"{flag} is {value}: 0 or more")
