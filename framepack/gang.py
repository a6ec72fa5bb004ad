"""One video on several devices of this machine: `generate --cp-size N` runs the job as a gang of N ranks.

This process is rank 0: it checks and plans the job, enhances its prompts, writes every file and emits every
event, as a one-device job does. Ranks 1..N-1 are spawned processes ("followers") that load the same model and run
the same section loop on the same seeded inputs (they are handed the plan and the request, enhanced texts included),
with no sinks: they write nothing and report nothing. The transformer is context-parallel across the ranks
(`framepack.models.parallel`); the rest (text and image encoders, sampler, VAE) runs on every rank alike.

The ranks meet at a TCP store on 127.0.0.1 (its port chosen by the OS) and talk over NCCL for CUDA tensors and gloo
for CPU ones on a GPU machine, over gloo alone on the CPU (where a gang is for tests: it is not faster). On CUDA, rank
r uses visible GPU r (choose them with CUDA_VISIBLE_DEVICES).
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from framepack.errors import FieldError, UserError
from framepack.events import Cancelled, EventCallback, ignore_events
from framepack.generate import GenerationResult, LatentCallback, generate
from framepack.models.attention import ATTENTION_BACKENDS
from framepack.models.caches import PARALLEL_REFUSED
from framepack.models.loader import DEFAULT_HUB, HubCache, cached_transformer_config
from framepack.models.parallel import degree_problem, enable_context_parallel, is_context_parallel
from framepack.models.recipe import Recipe
from framepack.outputs import OutputExists, existing_names
from framepack.plan import Plan
from framepack.planning import resolve_recipe
from framepack.request import GenerateRequest
from framepack.runner import Runner, output_path, planned_outputs

logger = logging.getLogger(__name__)

FLAG = "--cp-size"
TIMEOUT = timedelta(minutes=30)  # the longest a rank waits for the others in one collective (model loads included)
EXIT_SECONDS = 120.0  # how long rank 0 waits for the followers to end after the job
# the architecture's head count, for a transformer whose config is not on this machine yet (the published model)
DEFAULT_HEADS = 24


class GangError(UserError, RuntimeError):
    """A follower rank failed (its own error is in the log, under its rank), so the job stopped."""


@dataclass(frozen=True)
class Gang:
    """The ranks of one job: the device of each (rank 0 first) and the model they load."""

    devices: tuple[str, ...]
    recipe: Recipe

    @property
    def size(self) -> int:
        return len(self.devices)


def gang_devices(size: int, device: str | None) -> tuple[str, ...]:
    """The device of each rank: visible GPUs 0..N-1 on CUDA, the CPU for every rank on a CPU (for tests)."""
    if size < 2:
        raise FieldError(FLAG, f"must be 1 (one device) or more, got {size}")
    kind = torch.device(device).type if device else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return ("cpu",) * size
    if kind != "cuda":
        raise FieldError(FLAG, f"runs on CUDA GPUs (or the CPU, for tests), not on {kind}")
    if device and torch.device(device).index is not None:
        raise FieldError(
            "--device", f"with {FLAG} the ranks use cuda:0 to cuda:N-1; choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    visible = torch.cuda.device_count()
    if size > visible:
        raise FieldError(FLAG, f"{size} ranks need {size} GPUs, {visible} visible here (one rank per GPU)")
    return tuple(f"cuda:{rank}" for rank in range(size))


def transformer_heads(recipe: Recipe, hub: HubCache = DEFAULT_HUB) -> int:
    """The transformer's attention heads from its config on this machine (no weights loaded), else the published
    architecture's; `enable_context_parallel` checks the loaded model again."""
    config = cached_transformer_config(recipe.transformer, hub)
    return int((config or {}).get("num_attention_heads", DEFAULT_HEADS))


def check_request(size: int, request: GenerateRequest, recipe: Recipe, hub: HubCache = DEFAULT_HUB) -> None:
    """What the request asks that a gang of `size` ranks cannot do, refused before any model loads."""
    problem = degree_problem(size, transformer_heads(recipe, hub))
    if problem is not None:
        raise FieldError(FLAG, problem)
    if request.cache in PARALLEL_REFUSED:
        raise FieldError("cache", PARALLEL_REFUSED[request.cache])
    if request.compile != "none":
        raise FieldError(
            "compile", f"'{request.compile}' cannot be combined with {FLAG}: the block compile needs blocks no hook "
            "wraps, and context parallelism wraps every block; use compile 'none'"
        )  # fmt: skip
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    backend = AttentionBackendName(ATTENTION_BACKENDS[request.attention][0])
    if not _AttentionBackendRegistry._is_context_parallel_available(backend):
        usable = [
            name
            for name, (value, _package, _how) in ATTENTION_BACKENDS.items()
            if _AttentionBackendRegistry._is_context_parallel_available(AttentionBackendName(value))
        ]
        raise FieldError(
            "attention", f"{request.attention} has no context-parallel kernel in diffusers; with {FLAG} use "
            f"{', '.join(usable)}"
        )  # fmt: skip


def plan_gang(size: int, device: str | None, request: GenerateRequest, hub: HubCache = DEFAULT_HUB) -> Gang:
    """The gang for `generate --cp-size size`, every check done before any model loads."""
    devices = gang_devices(size, device)
    recipe = resolve_recipe(request.model, request.variant)
    check_request(size, request, recipe, hub)
    return Gang(devices, recipe)


class GangRunner(Runner):
    """A Runner whose transformer is context-parallel over the gang's ranks (made so right after loading, before a
    cache wraps its blocks)."""

    def __init__(self, size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.size = size

    def components_for(self, request: GenerateRequest, recipe: Recipe, on_event: EventCallback = ignore_events):
        components = super().components_for(request, recipe, on_event)
        if not is_context_parallel(components.transformer):
            enable_context_parallel(components.transformer, self.size)
        return components

    def record_speed(self, request: GenerateRequest, result: GenerationResult) -> None:
        """Nothing: the time estimates are per single device, and a gang's speed would mislead them."""

    def follow(
        self, request: GenerateRequest, plan: Plan, recipe: Recipe, finished_sections: dict | None = None
    ) -> None:
        """A follower's part of the job: the same model, LoRAs, attention and cache as rank 0, the same section
        loop (from the same restored sections), and no outputs or events."""
        components, cache = self.prepare_model(request, plan, recipe)
        with cache:
            generate(components, request, plan, [], cache=cache, finished_sections=finished_sections)


def _join(rank: int, size: int, port: int, device: str, store: dist.Store | None = None) -> None:
    """Join the gang's process group (rank 0 passes the store it serves)."""
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if store is None:
        store = dist.TCPStore("127.0.0.1", port, world_size=None, is_master=False, timeout=TIMEOUT)
    backend = "cpu:gloo,cuda:nccl" if device.startswith("cuda") else "cpu:gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=TIMEOUT)


def _leave(runner: Runner | None) -> None:
    """Leave the process group. The model is dropped first: it is bound to this group (so it cannot serve another
    job), and process-group objects that outlive `destroy_process_group` can abort the process when they are
    freed later (seen with gloo and the device mesh's subgroups)."""
    if runner is not None:
        runner.unload()
    gc.collect()
    dist.destroy_process_group()


def _threads_per_rank(size: int) -> int:
    """CPU threads for each rank of a CPU gang: the cores shared out, so the ranks do not fight over them."""
    return max(1, (os.cpu_count() or 1) // size)


def _follow(
    rank: int, gang: Gang, port: int, request: GenerateRequest, plan: Plan, finished: dict | None, log_level: int
) -> None:
    """A follower process: join, run the job without outputs, leave (exit code 1 after logging any error)."""
    import diffusers
    import huggingface_hub
    import transformers

    logging.basicConfig(level=log_level, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    for library in (diffusers.utils.logging, transformers.utils.logging):  # rank 0 shows the progress
        library.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    device = gang.devices[rank]
    if device == "cpu":
        torch.set_num_threads(_threads_per_rank(gang.size))
    try:
        _join(rank, gang.size, port, device)
        runner = None
        try:
            runner = GangRunner(gang.size, device=device)
            runner.follow(request, plan, gang.recipe, finished)
        finally:
            _leave(runner)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception:
        logger.exception("rank %d of the gang failed", rank)
        raise SystemExit(1) from None


def run_gang(
    gang: Gang,
    request: GenerateRequest,
    plan: Plan,
    output_dir: str = "outputs",
    on_event: EventCallback = ignore_events,
    finished_sections: dict | None = None,
    on_section_latents: LatentCallback | None = None,
) -> GenerationResult:
    """Run the job on the gang, this process as rank 0 (files, events, the result); the followers are started
    here after the checks and the prompt enhancer, and stopped before this returns, whatever happens. The model is
    loaded for this job and dropped after it. `finished_sections` / `on_section_latents` as in `Runner.run` (every
    rank resumes from the same sections; rank 0 reports the new ones)."""
    device = gang.devices[0]
    runner = GangRunner(gang.size, device=device, output_dir=output_dir)
    runner.preflight(request, plan)
    runner.check_recipe(gang.recipe)
    path = output_path(request, plan, runner.output_dir)  # refused here, before N-1 processes load the model
    taken = existing_names(path.parent, [planned.name for planned in planned_outputs(request, path)])
    if taken:
        raise OutputExists(path.parent, taken)
    request, _event = runner.enhance(request, plan, on_event)  # every rank must encode the same texts
    store = dist.TCPStore("127.0.0.1", 0, world_size=None, is_master=True, wait_for_workers=False, timeout=TIMEOUT)
    context = mp.get_context("spawn")
    log_level = logging.getLogger().getEffectiveLevel()
    followers = [
        context.Process(
            target=_follow,
            args=(rank, gang, store.port, request, plan, finished_sections, log_level),
            name=f"framepack-rank{rank}",
        )
        for rank in range(1, gang.size)
    ]
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(_threads_per_rank(gang.size))
    for follower in followers:
        follower.start()
    try:
        _join(0, gang.size, store.port, device, store)
        try:
            result = runner.run(
                request, on_event, plan=plan, recipe=gang.recipe, checked=True,
                finished_sections=finished_sections, on_section_latents=on_section_latents,
            )  # fmt: skip
        finally:
            _leave(runner)
    except Exception as error:
        failed = _stop(followers, wait=5.0)
        # rank 0's own refusals and a cancel stand as they are (the followers then fail only because it left)
        if failed and not isinstance(error, (UserError, Cancelled)):
            ranks = ", ".join(f"{rank} (exit code {code})" for rank, code in failed)
            raise GangError(
                f"rank {ranks} of the gang stopped, so the job did (a rank's own error is logged above under "
                "[rank N]); nothing was kept"
            ) from error
        raise
    except BaseException:
        _stop(followers, wait=5.0)
        raise
    finally:
        torch.set_num_threads(threads)
    _stop(followers, wait=EXIT_SECONDS)
    return result


def _stop(followers: list, wait: float) -> list[tuple[int, int]]:
    """Wait up to `wait` seconds for the followers to end, then end the ones still running; returns (rank, exit
    code) of those that ended by themselves with an error."""
    failed = []
    for follower in followers:
        follower.join(wait)
        if follower.is_alive():
            logger.warning("%s did not end; stopping it", follower.name)
            follower.terminate()
            follower.join(5.0)
        elif follower.exitcode:
            logger.warning("%s ended with exit code %s", follower.name, follower.exitcode)
            failed.append((int(follower.name.removeprefix("framepack-rank")), follower.exitcode))
    return failed


__all__ = ["FLAG", "Gang", "GangRunner", "check_request", "gang_devices", "plan_gang", "run_gang"]
