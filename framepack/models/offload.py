"""Where the loaded FramePack components live between uses: offload modes none, model, balanced and blocks.

One `Offloader` places the five weighted components (`Components.modules()`) and is the only thing that moves
them. It works through hooks: each component gets a hook whose `pre_forward` makes the component resident on
the execution device (evicting others as the mode requires) and sends the call's inputs there, so callers that
leave inputs on the CPU still work. The text encoders, SigLIP and the VAE get an accelerate `ModelHook`
(`add_hook_to_module`); diffusers' `apply_forward_hook` runs its `pre_forward` for `vae.encode` / `vae.decode`,
but passes no inputs, so the VAE's `encode` and `decode` are also wrapped (instance attributes, taken off by
`remove`) to send their inputs to the execution device. The transformer's hook sits in diffusers' hook registry
instead, beside group offload, which diffusers takes off and puts back by itself (`ModelMixin.unload_lora`):
an accelerate wrapper around it would be cut out of the call chain.

- none: every component on the execution device.
- model: components rest on the offload device (the CPU); the one in use is moved in and every other one out
  (diffusers' model CPU offload).
- balanced: as many components stay on the execution device as the budget (device memory, less what others
  hold, minus `preserved_memory_gb`: the original FramePack's "GPU memory preservation") allows; a component
  that does not fit evicts the least recently used others. A transformer larger than the whole budget is
  streamed block by block (as in blocks) instead of failing. A host (SD.Next) may do balanced offload
  itself: `apply_host_offload`.
- blocks: the transformer is streamed block by block with diffusers' group offload (low VRAM); the other
  components use model offload.

On a CPU execution device there is nothing to offload to, so every mode places everything on the CPU
("none"), unless `budget_bytes` is given: then the hooks and the residency bookkeeping run with the offload
device equal to the execution device, which is how the tests check the policy without a GPU.
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import get_args

import torch
from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module
from accelerate.utils import send_to_device
from diffusers.hooks import HookRegistry
from diffusers.hooks import ModelHook as DiffusersModelHook

from framepack.models.components import Components
from framepack.models.quantize import format_bytes, module_bytes
from framepack.request import Offload

logger = logging.getLogger(__name__)

# the request's `offload` choices (framepack/request.py is their one source), in its order
OFFLOAD_MODES: tuple[str, ...] = get_args(Offload)
GiB = 1024**3
HostOffload = Callable[[dict[str, torch.nn.Module]], None]

# diffusers' hook names for group offloading (diffusers.hooks.group_offloading), and ours on the transformer
_GROUP_OFFLOAD_HOOKS = ("group_offloading", "lazy_prefetch_group_offloading", "layer_execution_tracker")
PLACEMENT_HOOK = "framepack_offload"
_REGISTRY_HOOKS = (PLACEMENT_HOOK, *_GROUP_OFFLOAD_HOOKS)
_VAE_METHODS = ("encode", "decode")
_WRAPPED = "_framepack_offload_wrapped"
_HOST = "host"  # effective mode when the host's balanced offload is used


# ------------------------------------------------------------------------------------------- pure helpers


def memory_budget(total_bytes: int, preserved_memory_gb: float) -> int:
    """Bytes of device memory balanced offload may fill with weights: the total minus the preserved GB (GiB,
    as the original FramePack counts them), never negative."""
    if preserved_memory_gb < 0:
        raise ValueError(f"preserved_memory_gb must be >= 0, got {preserved_memory_gb}")
    return max(0, int(total_bytes) - int(preserved_memory_gb * GiB))


def _block_lists(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The children group offload streams ("block_level": every ModuleList / Sequential child)."""
    return [child for child in module.children() if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential))]


def streaming_working_set(transformer: torch.nn.Module, prefetch: bool = True) -> int:
    """Device bytes a block-streamed transformer needs while it runs: every non-block weight (embedders, norms,
    projections: they stay on the device for the whole call) plus the largest block, twice when the next block
    is prefetched on a side stream."""
    blocks = [block for blocks in _block_lists(transformer) for block in blocks]
    in_blocks = sum(module_bytes(block) for block in blocks)
    largest = max((module_bytes(block) for block in blocks), default=0)
    return module_bytes(transformer) - in_blocks + largest * (2 if prefetch else 1)


def device_memory(device: torch.device | str) -> tuple[int | None, int | None]:
    """(free, total) memory of an accelerator in bytes; None where torch cannot tell (always for the CPU).
    Free memory counts what other processes and other models hold as used; torch's cache is emptied first."""
    device = torch.device(device)
    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            free, total = torch.cuda.mem_get_info(device)
            return int(free), int(total)
        if device.type == "xpu":
            total = int(torch.xpu.get_device_properties(device).total_memory)
            free = int(torch.xpu.mem_get_info(device)[0]) if hasattr(torch.xpu, "mem_get_info") else None
            return free, total
        if device.type == "mps":
            return None, int(torch.mps.recommended_max_memory())
    except (RuntimeError, AttributeError, AssertionError) as error:
        logger.warning("cannot read the memory size of %s: %s", device, error)
    return None, None


def available_host_memory() -> int | None:
    """Free host RAM in bytes (psutil, which accelerate depends on), None when it cannot be read."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - an unreadable RAM size only changes a speed/memory trade-off
        return None


def group_offload_kwargs(
    onload_device: torch.device | str,
    offload_device: torch.device | str = "cpu",
    transformer_bytes: int = 0,
    available_ram: int | None = None,
    low_cpu_mem_usage: bool | None = None,
) -> dict:
    """Arguments of `transformer.enable_group_offload` for streaming the transformer block by block.

    - block_level with one block per group: one block (~0.3-0.7 GB of the 13B model in bf16) plus the next,
      prefetched, are on the device at a time; with the non-block weights that fits in ~6 GB with activations.
    - use_stream on CUDA/XPU: the next block is copied on a side stream while the current one computes
      (diffusers requires one block per group for this). On other devices (and the CPU) the copies are plain.
    - record_stream with use_stream: a finished block's memory is released when the compute stream is done
      with it instead of synchronizing before every offload (faster; at most about one block more memory).
    - low_cpu_mem_usage: streaming copies from pinned host memory. Pinning the whole transformer once
      (False) is fastest but needs a second host copy of it while the pinned copies are made (~25 GB for the
      13B model), and pinned RAM cannot be swapped; so the copies are pinned up front only when the free RAM is
      at least twice the transformer, and pinned block by block on the fly otherwise (True). Pass a bool to
      force either.
    """
    onload = torch.device(onload_device)
    backend = getattr(torch, onload.type, None)
    use_stream = onload.type in ("cuda", "xpu") and hasattr(backend, "Stream")
    if low_cpu_mem_usage is None:
        low_cpu_mem_usage = available_ram is None or available_ram < 2 * transformer_bytes
    return dict(
        onload_device=onload,
        offload_device=torch.device(offload_device),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=use_stream,
        record_stream=use_stream,
        low_cpu_mem_usage=bool(low_cpu_mem_usage) if use_stream else False,
    )


def offload_hooks(module: torch.nn.Module) -> list[str]:
    """Names of the offloading hooks under a module: accelerate hooks as "path:_hf_hook", diffusers hooks
    (group offload, our transformer hook) as "path:<hook name>"; other diffusers hooks, such as caches, are not
    offloading hooks."""
    found = []
    for path, sub in module.named_modules():
        if hasattr(sub, "_hf_hook") or hasattr(sub, "_old_forward"):
            found.append(f"{path}:_hf_hook")
        found.extend(f"{path}:{name}" for name in sorted(_registry_hooks(sub) & set(_REGISTRY_HOOKS)))
    return found


def _registry_hooks(module: torch.nn.Module) -> set[str]:
    registry = getattr(module, "_diffusers_hook", None)
    return set(registry.hooks) if registry is not None else set()


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "xpu" and hasattr(torch, "xpu"):
        torch.xpu.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def _normalize(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


# ------------------------------------------------------------------------------------------------ hooks


class _PlacesBeforeForward:
    """What both placement hooks do, written once: before a component computes, the offloader makes it
    resident, and its inputs go to the execution device. A mixin listed before the hook base class, so that
    `super().__init__()` still runs the base's `__init__` (diffusers' sets `fn_ref`)."""

    def __init__(self, offloader: Offloader, name: str) -> None:
        super().__init__()
        self.offloader, self.name = offloader, name

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs) -> tuple[tuple, dict]:
        self.offloader.use(self.name)
        device = self.offloader.execution_device
        return send_to_device(args, device), send_to_device(kwargs, device)


class _PlacementHook(_PlacesBeforeForward, ModelHook):
    """Placement as an accelerate hook (text encoders, SigLIP, the VAE).

    Also run (with no inputs) by diffusers' `apply_forward_hook` for `vae.encode` / `vae.decode`."""


class _RegistryPlacementHook(_PlacesBeforeForward, DiffusersModelHook):
    """The same for the transformer, in diffusers' hook registry: diffusers takes group offload off and puts it
    back on its own (`ModelMixin.unload_lora`, LoRA loading through a pipeline), rewriting `forward`, which
    would drop an accelerate wrapper around it; hooks in the registry are relinked and survive."""


def _wrap_vae_methods(vae: torch.nn.Module, device: torch.device) -> None:
    """`vae.encode` / `vae.decode` send their inputs to the execution device (apply_forward_hook does not)."""
    for method_name in _VAE_METHODS:
        method = getattr(vae, method_name, None)
        if method is None or getattr(method, _WRAPPED, False):
            continue

        def wrapper(*args, _method=method, **kwargs):
            return _method(*send_to_device(args, device), **send_to_device(kwargs, device))

        wrapper = functools.wraps(method)(wrapper)
        setattr(wrapper, _WRAPPED, True)
        object.__setattr__(vae, method_name, wrapper)


def _unwrap_vae_methods(vae: torch.nn.Module) -> None:
    for method_name in _VAE_METHODS:
        if getattr(vae.__dict__.get(method_name), _WRAPPED, False):
            del vae.__dict__[method_name]


def _remove_offload_hooks(module: torch.nn.Module) -> None:
    """Every accelerate hook (ours or a host's), diffusers' group offload hooks and our registry hook, on every
    submodule. Accelerate hooks go first, as each restores the forward it wrapped (a host's may wrap the
    registry's); the registry relinks its own chain whatever the order."""
    for sub in module.modules():
        if hasattr(sub, "_hf_hook") or hasattr(sub, "_old_forward"):
            remove_hook_from_module(sub)
    registries = [sub._diffusers_hook for sub in module.modules() if getattr(sub, "_diffusers_hook", None) is not None]
    for registry in registries:
        for name in _REGISTRY_HOOKS:
            registry.remove_hook(name, recurse=False)
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        if registry is not None and not registry.hooks:
            del sub._diffusers_hook  # an empty registry left by group offload only
        elif registry is not None:
            invalidate_registry_cache(registry)


def _remove_group_hooks(module: torch.nn.Module) -> None:
    """Diffusers' group offload hooks off the module and every submodule, as diffusers' own
    `_maybe_remove_and_reapply_group_offloading` takes them off; other hooks (ours, caches) stay."""
    registry = HookRegistry.check_if_exists_or_initialize(module)
    for name in _GROUP_OFFLOAD_HOOKS:
        registry.remove_hook(name, recurse=True)
    invalidate_registry_cache(registry)


def _enable_group_offload(transformer: torch.nn.Module, kwargs: dict) -> dict:
    """`enable_group_offload(**kwargs)`; if streams fail (a backend without them, weights that cannot be pinned),
    streaming goes on without them. Returns the arguments that worked."""
    try:
        transformer.enable_group_offload(**kwargs)
        return kwargs
    except Exception as error:  # noqa: BLE001 - retried once without streams, raised if that fails too
        if not kwargs["use_stream"]:
            raise
        logger.warning("group offload with streams failed (%r); streaming without them", error)
        _remove_group_hooks(transformer)
        plain = {**kwargs, "use_stream": False, "record_stream": False, "low_cpu_mem_usage": False}
        transformer.enable_group_offload(**plain)
        return plain


def invalidate_registry_cache(registry: HookRegistry) -> None:
    """After hooks were added or removed below `registry`: registries cache their children's registries
    (diffusers >= 0.37), so the cache is dropped. The one place for this, for offload and caches alike."""
    invalidate = getattr(registry, "invalidate_child_registries_cache", None)
    if invalidate is not None:
        invalidate()


# -------------------------------------------------------------------------------------------- offloader


class Offloader:
    """Places the components on the execution device per the offload mode; the one object that moves them.

    `resident`: names of the components on the execution device, least recently used first (a block-streamed
    transformer is never resident: only its current blocks are there, while it runs). `moves`: component moves
    made since `apply` (each move of one whole component in or out counts one; the initial placement by
    `apply` and block streaming do not count). `history`: the latest moves as ("load" | "offload", name).
    `budget`: the byte budget of balanced mode (None in other modes). `streaming`: the transformer is streamed
    block by block. `effective_mode`: what runs: the mode, "none" on a CPU without `budget_bytes`, "host" for
    balanced deferred to `apply_host_offload`.

    `apply_host_offload(modules)` (balanced only): a host's own balanced offload (SD.Next passes a wrapper of
    `modules.sd_models.apply_balanced_offload`); it gets `Components.modules()` and installs its own hooks,
    and our hooks and bookkeeping stay off (`resident` stays empty). `remove_host_offload(modules)`, when given,
    is called by `remove` before the hooks are taken off and the modules are moved.
    """

    def __init__(
        self,
        execution_device: torch.device | str,
        mode: str,
        preserved_memory_gb: float = 6.0,
        budget_bytes: int | None = None,
        offload_device: torch.device | str = "cpu",
        apply_host_offload: HostOffload | None = None,
        remove_host_offload: HostOffload | None = None,
        low_cpu_mem_usage: bool | None = None,
    ):
        if mode not in OFFLOAD_MODES:
            raise ValueError(f"unknown offload mode {mode!r}; allowed: {', '.join(OFFLOAD_MODES)}")
        if preserved_memory_gb < 0:
            raise ValueError(f"preserved_memory_gb must be >= 0, got {preserved_memory_gb}")
        if budget_bytes is not None and budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.execution_device = _normalize(execution_device)
        self.offload_device = _normalize(offload_device)
        self.mode = mode
        self.preserved_memory_gb = float(preserved_memory_gb)
        self.budget_bytes = budget_bytes
        self.apply_host_offload = apply_host_offload
        self.remove_host_offload = remove_host_offload
        self.low_cpu_mem_usage = low_cpu_mem_usage
        self.effective_mode: str | None = None
        self.budget: int | None = None
        self.streaming = False
        self.resident: list[str] = []
        self.moves = 0
        self.history: collections.deque[tuple[str, str]] = collections.deque(maxlen=256)
        self._modules: dict[str, torch.nn.Module] | None = None
        self._components: Components | None = None
        self._working_set = 0
        self._group_kwargs: dict | None = None
        self._warned_too_large: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"Offloader(mode={self.mode!r}, effective={self.effective_mode!r}, device={self.execution_device}, "
            f"budget={self.budget}, streaming={self.streaming}, resident={self.resident})"
        )

    # ------------------------------------------------------------------------------------------- public

    def choose_mode(self) -> str:
        """The mode that will run on this device: "none" on a CPU without an explicit budget, "host" for
        balanced with a host offload function, else the requested mode."""
        if self.mode == "none" or (self.execution_device.type == "cpu" and self.budget_bytes is None):
            return "none"
        if self.mode == "balanced" and self.apply_host_offload is not None:
            return _HOST
        return self.mode

    def measured_budget(self) -> int | None:
        """`budget_bytes` if given, else the device's memory minus the preserved memory (None: unknown).

        "The device's memory" is its free memory when torch can tell (measured by `apply` after our components
        went to the offload device, so it is the total less what other processes, other models and the CUDA
        context hold), else its total."""
        if self.budget_bytes is not None:
            return int(self.budget_bytes)
        free, total = device_memory(self.execution_device)
        if total is None:
            return None
        return memory_budget(free if free is not None else total, self.preserved_memory_gb)

    def apply(self, components: Components) -> None:
        """Install the mode on `components` (hooks, group offload, placement); sets `execution_device`."""
        if self._components is not None:
            raise RuntimeError("this Offloader is already applied; call remove() first")
        modules = components.modules()
        leftovers = [f"{name}/{hook}" for name, module in modules.items() for hook in offload_hooks(module)]
        if leftovers:
            raise RuntimeError(
                f"the components already carry offloading hooks ({', '.join(leftovers[:4])}); "
                "call remove() (of any Offloader) before applying another mode"
            )
        self.resident, self.moves, self.streaming, self.budget = [], 0, False, None
        self.history.clear()
        self._warned_too_large.clear()
        mode = self.effective_mode = self.choose_mode()
        self._modules, self._components = modules, components
        components.execution_device = self.execution_device
        try:
            if mode == "none":
                for name, module in modules.items():
                    module.to(self.execution_device)
                    self.resident.append(name)
            elif mode == _HOST:
                self.apply_host_offload(dict(modules))
                _wrap_vae_methods(components.vae, self.execution_device)
            else:
                self._apply_hooks(mode, modules, components)
        except BaseException:
            logger.exception("offload %s failed; every component goes back to %s", mode, self.offload_device)
            self.remove(components, device=self.offload_device)
            raise
        logger.info(
            "offload %s (as %s) on %s: budget=%s streaming=%s",
            self.mode,
            mode,
            self.execution_device,
            "-" if self.budget is None else format_bytes(self.budget),
            self.streaming,
        )

    def remove(self, components: Components, device: torch.device | str | None = None) -> None:
        """Take every offloading hook off (ours, group offload, a host's accelerate hooks) and put every
        component on `device` (default: the execution device, i.e. as mode none), so another mode can be
        applied next. Works on components any Offloader applied. `components.execution_device` is reset.

        Pass `device="cpu"` when switching between offload modes on a GPU that cannot hold every component
        at once: the default would move them all onto it."""
        target = _normalize(device) if device is not None else self.execution_device
        modules = components.modules()
        if self.effective_mode == _HOST and self.remove_host_offload is not None:
            self.remove_host_offload(dict(modules))
        _unwrap_vae_methods(components.vae)
        for module in modules.values():
            _remove_offload_hooks(module)
        for module in modules.values():
            module.to(target)
        components.execution_device = None
        if target.type != "cpu":
            _empty_cache(target)
        self._modules = self._components = self._group_kwargs = None
        self.effective_mode, self.budget, self.streaming = None, None, False
        self.resident = list(modules) if target == self.execution_device else []

    @contextmanager
    def regrouping(self) -> Iterator[None]:
        """Around a change of the transformer's layers while it streams (LoRA layers loaded or unloaded with
        PEFT: new weights must join their blocks' groups, and with streams the pinned host copies are per
        weight): group offload comes off before the change and goes back on once after it, also when the change
        fails. With the hooks off, diffusers' `unload_lora` finds no group offload to rebuild by itself, so the
        transformer is regrouped (and with streams re-pinned) once, not twice. Nothing happens unless
        `streaming`."""
        if not self.streaming or self._modules is None:
            yield
            return
        transformer = self._modules["transformer"]
        _remove_group_hooks(transformer)
        try:
            yield
        finally:
            self._group_kwargs = _enable_group_offload(transformer, self._group_kwargs)
            self._working_set = streaming_working_set(transformer, prefetch=self._group_kwargs["use_stream"])

    def use(self, name: str) -> None:
        """Make component `name` ready to compute on the execution device (the hooks call this before each
        use; a host may call it to place a component ahead of time)."""
        mode = self.effective_mode
        if self._modules is None or mode in ("none", _HOST):
            return
        if name not in self._modules:
            raise KeyError(f"unknown component {name!r}; components: {', '.join(self._modules)}")
        if name == "transformer" and self.streaming:
            self._make_room(self._working_set, keep=None, everything=mode == "blocks")
            return
        if name in self.resident:
            self.resident.remove(name)
            self.resident.append(name)
            return
        if mode == "balanced":
            need = module_bytes(self._modules[name])
            if need > self.budget and name not in self._warned_too_large:
                self._warned_too_large.add(name)
                logger.warning(
                    "%s (%s) is larger than the balanced offload budget (%s); loading it alone",
                    name,
                    format_bytes(need),
                    format_bytes(self.budget),
                )
            self._make_room(need, keep=name, everything=False)
        else:  # model, and the other components in blocks
            self._make_room(0, keep=name, everything=True)
        self._load(name)

    # ------------------------------------------------------------------------------------------ internals

    def _apply_hooks(self, mode: str, modules: dict[str, torch.nn.Module], components: Components) -> None:
        transformer = modules["transformer"]
        for name, module in modules.items():
            # blocks: group offload moves the transformer off block by block (from a GPU, without a second
            # host copy); balanced: everything off first, so that the budget is measured without our weights
            if not (mode == "blocks" and name == "transformer"):
                module.to(self.offload_device)
        if mode == "balanced":
            self.budget = self.measured_budget()
            if self.budget is None:
                logger.warning("the memory of %s is unknown: balanced offload keeps all there", self.execution_device)
                self.budget = sum(module_bytes(module) for module in modules.values())
        self.streaming = mode == "blocks" or (mode == "balanced" and module_bytes(transformer) > self.budget)
        if self.streaming:
            kwargs = group_offload_kwargs(
                self.execution_device,
                self.offload_device,
                module_bytes(transformer),
                available_host_memory(),
                self.low_cpu_mem_usage,
            )
            logger.info("streaming the transformer block by block: %s", kwargs)
            self._group_kwargs = kwargs = _enable_group_offload(transformer, kwargs)
            self._working_set = streaming_working_set(transformer, prefetch=kwargs["use_stream"])
        # after group offload, so that our hook runs first (it evicts the others before any block loads)
        for name, module in modules.items():
            if name == "transformer":
                hook = _RegistryPlacementHook(self, name)
                HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, PLACEMENT_HOOK)
            else:
                add_hook_to_module(module, _PlacementHook(self, name))
        _wrap_vae_methods(components.vae, self.execution_device)

    def _used(self) -> int:
        return sum(module_bytes(self._modules[name]) for name in self.resident)

    def _make_room(self, need: int, keep: str | None, everything: bool) -> None:
        """Offload resident components, least recently used first: all of them (`everything`), or until
        `need` more bytes fit in the budget."""
        for name in list(self.resident):
            if name == keep:
                continue
            if not everything and self._used() + need <= self.budget:
                break
            self._offload(name)

    def _load(self, name: str) -> None:
        module = self._modules[name]
        try:
            module.to(self.execution_device)
        except torch.cuda.OutOfMemoryError:
            others = [other for other in self.resident if other != name]
            if not others:
                raise
            logger.warning("out of memory loading %s: offloading %s and retrying", name, ", ".join(others))
            for other in others:
                self._offload(other)
            _empty_cache(self.execution_device)
            module.to(self.execution_device)
        self.resident.append(name)
        self.moves += 1
        self.history.append(("load", name))

    def _offload(self, name: str) -> None:
        self._modules[name].to(self.offload_device)
        self.resident.remove(name)
        self.moves += 1
        self.history.append(("offload", name))
