"""Transformer caches (TeaCache, MagCache, FirstBlockCache) that work across FramePack sections.

All three skip the transformer blocks on calls whose result can be predicted from an earlier call: the blocks'
residual (output minus input hidden states) of the last computed call is added to the new input instead.
FramePack samples a video as many short sections, each a complete denoising run over a different window, so a
cache must start every section from scratch: a residual from the end of section A is no prediction for the
start of section B (and may not even have its shape). Diffusers' hooks keep their state per cache context
("cond"/"uncond") until told otherwise, so `TransformerCache.start_section` drops every context before each
section, and `TransformerCache.call` opens the branch's context around each transformer call.

TeaCache follows the original FramePack (lllyasviel/FramePack, hunyuan_video_packed.py) but is written as
diffusers hooks on the blocks; MagCache and FirstBlockCache are diffusers' own hooks.

Under context parallelism (framepack/models/parallel.py) every rank must make the same skip decision on every call,
or some ranks would enter the next collective and the others never would (a hang). The cache hooks are added after
the parallel ones, so they wrap them and see the whole, unsplit sequence at the first block's input and the gathered
one at the last block's output. MagCache decides from its calibrated ratios and the step alone: the same everywhere.
TeaCache measures its relative L1 change as a ratio of two sums that are all-reduced over the ranks (right for a
whole tensor and for a shard alike, and identical bits on every rank). FirstBlockCache is refused: diffusers' hook
measures the first block's output, which each rank holds only a shard of, and neither gathers nor all-reduces it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy
import torch
import torch.distributed as dist
from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager
from diffusers.utils.torch_utils import unwrap_module

from framepack.models.offload import invalidate_registry_cache
from framepack.models.parallel import is_parallel_hook, parallel_group
from framepack.models.recipe import VARIANTS  # the loaded transformer's variants; recipe.py is their source
from framepack.request import Cache

logger = logging.getLogger(__name__)

# the request's `cache` choices (framepack/request.py is their one source), in its order
CACHE_METHODS: tuple[str, ...] = get_args(Cache)
DEFAULT_THRESHOLDS = {"teacache": 0.15, "magcache": 0.06, "fbc": 0.05}
BRANCHES = ("cond", "uncond")

# TeaCache's rescale polynomial for HunyuanVideo, as the original FramePack uses it: it maps the relative L1
# change of the first block's modulated input to an estimate of the change of the model output.
TEACACHE_COEFFICIENTS = (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02)

# cache methods that cannot run under context parallelism, and why (framepack/models/parallel.py)
PARALLEL_REFUSED = {
    "fbc": "fbc cannot run with context parallelism: diffusers' FirstBlockCache decides from the first block's "
    "output, which each rank holds only a shard of (it neither gathers nor all-reduces it), so the ranks would "
    "decide differently and wait on each other forever; use teacache, magcache or none"
}

RATIOS_FILE = "magcache_ratios.json"
PACKAGED_RATIOS = Path(__file__).with_name(RATIOS_FILE)

_TEACACHE_HEAD_HOOK = "framepack_teacache_head"
_TEACACHE_BLOCK_HOOK = "framepack_teacache_block"
_BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


@dataclass
class CacheStats:
    """Counts of TransformerCache.call: how much work the cache saved (for progress, logs and tests)."""

    calls: int = 0  # transformer calls made
    skipped: int = 0  # of those, calls whose blocks were skipped (output from the cache)


# --------------------------------------------------------------------------------------------------------------
# TeaCache as diffusers hooks


class TeaCacheState(BaseState):
    """What TeaCache remembers for one branch within one section."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.step = 0  # index of the next call within the section (wraps at `steps`, like the original)
        self.accumulated = 0.0  # rescaled relative L1 change since the last computed call
        self.previous_modulated: torch.Tensor | None = None
        self.previous_residual: torch.Tensor | None = None
        self.head_input: torch.Tensor | None = None  # hidden states entering the head block of a computed call
        self.should_compute = True


def _relative_l1(current: torch.Tensor, previous: torch.Tensor, group: dist.ProcessGroup | None = None) -> float:
    """mean|current - previous| / mean|previous|, in float32 so bf16 inputs do not round the decision. With a
    context-parallel `group`, the two sums are all-reduced first (the counts cancel), so every rank gets the same
    value, whether it holds the whole tensor or a shard of it."""
    previous = previous.float()
    sums = torch.stack([(current.float() - previous).abs().sum(), previous.abs().sum()])
    if group is not None:
        if "cpu" in str(dist.get_backend(group)):
            sums = sums.cpu()
        dist.all_reduce(sums, group=group)
    return float(sums[0] / sums[1])


def _weights_may_be_elsewhere(block: torch.nn.Module) -> bool:
    """Whether some other hook wraps the block (diffusers group offload, an accelerate offload hook): then its
    weights may only be on the compute device while the block itself runs."""
    registry = getattr(block, "_diffusers_hook", None)
    others = [name for name in registry.hooks if not is_parallel_hook(name)] if registry is not None else []
    return hasattr(block, "_hf_hook") or len(others) > 1  # context parallelism's hooks move no weights


def _block_outputs(metadata, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> tuple:
    """A block's return value built from its two streams, in the order the block class returns them."""
    output: list[Any] = [None, None]
    output[metadata.return_hidden_states_index] = hidden_states
    output[metadata.return_encoder_hidden_states_index] = encoder_hidden_states
    return tuple(output)


class _TeaCacheHook(ModelHook):
    """What both TeaCache hooks share: the branch states and the block's registry metadata (argument order)."""

    def __init__(self, state_manager: StateManager, is_tail: bool = False) -> None:
        super().__init__()
        self.state_manager = state_manager
        self.is_tail = is_tail  # the last block: it stores the new residual
        self._metadata = None

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self._metadata = TransformerBlockRegistry.get(unwrap_module(module).__class__)
        return module


class TeaCacheHeadHook(_TeaCacheHook):
    """On the first block: decides per call whether the blocks run, and answers skipped calls from the cache."""

    _is_stateful = True

    def __init__(
        self,
        state_manager: StateManager,
        threshold: float,
        steps: int,
        is_tail: bool = False,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__(state_manager, is_tail)
        self.threshold = threshold
        self.steps = steps
        self.group = group  # the context-parallel ranks, which must agree on every decision
        self.rescale = numpy.poly1d(TEACACHE_COEFFICIENTS)

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        metadata = self._metadata
        hidden_states = metadata._get_parameter_from_args_kwargs("hidden_states", args, kwargs)
        state: TeaCacheState = self.state_manager.get_state()

        output = None
        if _weights_may_be_elsewhere(module):
            # Another hook (group offload, accelerate) may bring the block's weights in only when the block
            # runs, so the block runs first and its own norm1 output is the decision input; a skip then
            # discards the output, which keeps the result the same as in the cheap path below.
            captured: list[torch.Tensor] = []
            handle = module.norm1.register_forward_hook(lambda _module, _inputs, out: captured.append(out[0]))
            try:
                output = self.fn_ref.original_forward(*args, **kwargs)
            finally:
                handle.remove()
            modulated = captured[0]
        else:
            temb = metadata._get_parameter_from_args_kwargs("temb", args, kwargs)
            modulated = module.norm1(hidden_states, emb=temb)[0]

        if not self._decide(state, modulated, hidden_states):
            encoder_hidden_states = metadata._get_parameter_from_args_kwargs("encoder_hidden_states", args, kwargs)
            return _block_outputs(metadata, hidden_states + state.previous_residual, encoder_hidden_states)

        if output is None:
            output = self.fn_ref.original_forward(*args, **kwargs)
        if self.is_tail:
            state.previous_residual = output[metadata.return_hidden_states_index] - hidden_states
        else:
            state.head_input = hidden_states
        return output

    def _decide(self, state: TeaCacheState, modulated: torch.Tensor, hidden_states: torch.Tensor) -> bool:
        """The original's rule: first and last step compute; otherwise compute once the rescaled relative L1
        change of the modulated input, accumulated since the last computed call, reaches the threshold."""
        step = state.step
        comparable = (
            state.previous_modulated is not None
            and state.previous_modulated.shape == modulated.shape
            and state.previous_residual is not None
            and state.previous_residual.shape == hidden_states.shape
        )
        if step == 0 or step == self.steps - 1 or not comparable:
            compute = True
            state.accumulated = 0.0
        else:
            state.accumulated += float(self.rescale(_relative_l1(modulated, state.previous_modulated, self.group)))
            compute = state.accumulated >= self.threshold
            if compute:
                state.accumulated = 0.0
        state.previous_modulated = modulated
        state.step = (step + 1) % self.steps
        state.should_compute = compute
        return compute

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        return module


class TeaCacheBlockHook(_TeaCacheHook):
    """On every other block: passes the streams through on skipped calls; the tail stores the new residual."""

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        metadata = self._metadata
        state: TeaCacheState = self.state_manager.get_state()
        if not state.should_compute:
            return _block_outputs(
                metadata,
                metadata._get_parameter_from_args_kwargs("hidden_states", args, kwargs),
                metadata._get_parameter_from_args_kwargs("encoder_hidden_states", args, kwargs),
            )
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.is_tail:
            state.previous_residual = output[metadata.return_hidden_states_index] - state.head_input
            state.head_input = None
        return output


def _transformer_blocks(transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, block) for the dual-stream then the single-stream blocks, in the order forward runs them."""
    blocks = []
    for list_name in _BLOCK_LISTS:
        for index, block in enumerate(getattr(transformer, list_name, None) or []):
            blocks.append((f"{list_name}.{index}", block))
    if not blocks:
        raise ValueError(f"{type(transformer).__name__} has no transformer_blocks / single_transformer_blocks")
    return blocks


def apply_teacache(transformer: torch.nn.Module, threshold: float, steps: int) -> StateManager:
    """Install TeaCache hooks on the transformer's blocks; returns their shared StateManager."""
    state_manager = StateManager(TeaCacheState)
    blocks = _transformer_blocks(transformer)
    (_, head), rest = blocks[0], blocks[1:]
    for _, block in rest:
        hook = TeaCacheBlockHook(state_manager, is_tail=block is blocks[-1][1])
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, _TEACACHE_BLOCK_HOOK)
    head_hook = TeaCacheHeadHook(state_manager, threshold, steps, is_tail=not rest, group=parallel_group(transformer))
    HookRegistry.check_if_exists_or_initialize(head).register_hook(head_hook, _TEACACHE_HEAD_HOOK)
    invalidate_registry_cache(HookRegistry.check_if_exists_or_initialize(transformer))
    return state_manager


def remove_teacache(transformer: torch.nn.Module) -> None:
    """Take the TeaCache hooks off every block."""
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.remove_hook(_TEACACHE_HEAD_HOOK, recurse=True)
    registry.remove_hook(_TEACACHE_BLOCK_HOOK, recurse=True)
    invalidate_registry_cache(registry)


def _has_teacache(transformer: torch.nn.Module) -> bool:
    return any(
        getattr(module, "_diffusers_hook", None) is not None and _TEACACHE_HEAD_HOOK in module._diffusers_hook.hooks
        for module in transformer.modules()
    )


def _stateful_managers(transformer: torch.nn.Module) -> list[StateManager]:
    """The StateManagers of every stateful hook under the transformer (each once)."""
    managers: list[StateManager] = []
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None:
            continue
        for hook in registry.hooks.values():
            if not hook._is_stateful:
                continue
            for value in vars(hook).values():
                if isinstance(value, StateManager) and all(value is not known for known in managers):
                    managers.append(value)
    return managers


# --------------------------------------------------------------------------------------------------------------
# The per-job cache


class TransformerCache:
    """One cache method on the transformer for one job; every section starts from a fresh cache state.

    Use: `start_section()` before each section (also before the T2V start-frame pass), and
    `with cache.call("cond" | "uncond"): transformer(...)` around every transformer call; `remove()` at the end
    (or use the object as a context manager). The transformer may carry no other diffusers cache meanwhile.
    """

    def __init__(
        self,
        transformer: torch.nn.Module,
        method: str,
        steps: int,
        threshold: float = 0.0,
        mag_ratios: Sequence[float] | None = None,
        calibrate: bool = False,
    ) -> None:
        if method not in CACHE_METHODS:
            raise ValueError(f"Unknown cache method {method!r}; allowed: {', '.join(CACHE_METHODS)}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not math.isfinite(threshold) or threshold < 0:
            raise ValueError(f"cache threshold must be >= 0 (0 = the method's default), got {threshold}")
        if calibrate and method != "magcache":
            raise ValueError("calibrate=True measures MagCache ratios; it needs method 'magcache'")
        if getattr(transformer, "is_cache_enabled", False) or _has_teacache(transformer):
            raise ValueError("the transformer already carries a cache; remove() it before installing another")
        if method in PARALLEL_REFUSED and parallel_group(transformer) is not None:
            raise ValueError(PARALLEL_REFUSED[method])

        if method == "magcache" and not calibrate:
            if mag_ratios is None:
                raise ValueError("MagCache needs mag_ratios (e.g. load_mag_ratios(variant)) unless calibrate=True")
            mag_ratios = _checked_ratios(mag_ratios)

        self.transformer = transformer
        self.method = method
        self.steps = steps
        self.threshold = (threshold or DEFAULT_THRESHOLDS[method]) if method != "none" else 0.0
        self.calibrate = calibrate
        self.stats = CacheStats()
        self.section_stats = CacheStats()
        self.calibration: list[list[float]] = []
        self.sections = 0

        self._computed = 0  # tail-block attention runs: counts the calls whose blocks really computed
        self._branch: str | None = None
        self._removed = False
        self._calibration_input: torch.Tensor | None = None
        self._calibration_previous: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._managers: list[StateManager] = []

        blocks = _transformer_blocks(transformer)
        head, tail = blocks[0][1], blocks[-1][1]
        if method == "teacache":
            self._managers = [apply_teacache(transformer, self.threshold, steps)]
        elif method == "fbc":
            transformer.enable_cache(FirstBlockCacheConfig(threshold=self.threshold))
            self._managers = _stateful_managers(transformer)
        elif method == "magcache" and calibrate:
            # Measured by our own probes, not diffusers' calibrate mode: that one print()s the ratios and drops
            # them at the end of the run, and would write into stdout that may carry machine-readable output.
            self._handles.append(head.register_forward_pre_hook(self._on_head_input, with_kwargs=True))
            self._handles.append(tail.register_forward_hook(self._on_tail_output))
        elif method == "magcache":
            config = MagCacheConfig(threshold=self.threshold, num_inference_steps=steps, mag_ratios=list(mag_ratios))
            transformer.enable_cache(config)
            self._managers = _stateful_managers(transformer)
        # the probe sits inside the last block, which `compile: blocks` compiles: kept out of the graph (a graph
        # break), since a traced `self._computed += 1` would be a guard that fails, and recompiles, on every call
        self._handles.append(tail.attn.register_forward_hook(torch.compiler.disable(self._on_tail_attention)))
        logger.info(
            "transformer cache %s: threshold %g, %d steps per section%s",
            method, self.threshold, steps, " (calibrating)" if calibrate else "",
        )  # fmt: skip

    # -- section and call bookkeeping --------------------------------------------------------------------------

    def start_section(self) -> None:
        """Begin a section: every cache context (both branches) is dropped, with the tensors it held."""
        self._check_live()
        for manager in self._managers:
            manager.reset()
        self.section_stats = CacheStats()
        self.sections += 1
        if self.calibrate:
            self.calibration.append([])
            self._calibration_input = self._calibration_previous = None
        logger.debug("cache %s: section %d starts", self.method, self.sections)

    @contextmanager
    def call(self, branch: str) -> Iterator[None]:
        """Wrap ONE transformer call of `branch` ("cond" or "uncond"); each branch keeps its own cache state."""
        if branch not in BRANCHES:
            raise ValueError(f"Unknown branch {branch!r}; allowed: {', '.join(BRANCHES)}")
        self._check_live()
        if self.sections == 0:
            self.start_section()
        before = self._computed
        self._branch = branch
        try:
            if self._managers:
                with self.transformer.cache_context(branch):
                    yield
            else:
                yield
        finally:
            self._branch = None
        skipped = self._computed == before
        for stats in (self.stats, self.section_stats):
            stats.calls += 1
            stats.skipped += int(skipped)

    @property
    def live_contexts(self) -> int:
        """Cache contexts currently holding state (0 right after start_section)."""
        return sum(len(manager._state_cache) for manager in self._managers)

    def remove(self) -> None:
        """Take every hook off; the transformer then computes exactly as before the cache was installed."""
        if self._removed:
            return
        for manager in self._managers:
            manager.reset()
        if self.method == "teacache":
            remove_teacache(self.transformer)
        elif getattr(self.transformer, "is_cache_enabled", False):  # fbc, magcache (not while calibrating)
            self.transformer.disable_cache()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._managers = []
        self._calibration_input = self._calibration_previous = None
        self._removed = True
        if self.method != "none":
            logger.info(
                "transformer cache %s: skipped %d of %d transformer calls",
                self.method,
                self.stats.skipped,
                self.stats.calls,
            )

    def __enter__(self) -> TransformerCache:  # noqa: PYI034 - no typing.Self on Python 3.10 hosts
        return self

    def __exit__(self, *_exc) -> None:
        self.remove()

    def _check_live(self) -> None:
        if self._removed:
            raise RuntimeError("this TransformerCache was removed; make a new one")

    # -- probes ------------------------------------------------------------------------------------------------

    def _on_tail_attention(self, _module, _args, _output) -> None:
        """The last block's attention runs only when the blocks really compute (never on a cache hit)."""
        self._computed += 1

    def _on_head_input(self, _module, args, kwargs) -> None:
        if self._branch == "cond":
            self._calibration_input = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def _on_tail_output(self, _module, _args, output) -> None:
        """MagCache's calibration: mean over tokens of |residual_t| / |residual_t-1| (1.0 for the first call)."""
        if self._branch != "cond" or self._calibration_input is None:
            return
        residual = (output[0] - self._calibration_input).float()
        previous = self._calibration_previous
        if previous is None or previous.shape != residual.shape:
            ratio = 1.0
        else:
            norms = torch.linalg.norm(residual, dim=-1) / (torch.linalg.norm(previous, dim=-1) + 1e-8)
            ratio = float(norms.mean())
        self.calibration[-1].append(ratio)
        self._calibration_previous = residual
        self._calibration_input = None


# --------------------------------------------------------------------------------------------------------------
# MagCache ratios


def _checked_ratios(ratios: Sequence[float]) -> list[float]:
    values = [float(value) for value in ratios]
    if len(values) < 2 or not all(math.isfinite(value) and value > 0 for value in values):
        raise ValueError(f"MagCache ratios must be at least 2 positive finite numbers, got {list(ratios)[:8]}...")
    return values


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")


def _read_json(path: Path) -> dict:
    with path.open(encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise TypeError(f"{path} does not hold a JSON object")
    return data


def load_mag_ratios(variant: str, home: Path | None = None) -> list[float]:
    """MagCache ratios for `variant`: the user's calibration in <home>/magcache_ratios.json if it has one
    (a broken user file is logged and ignored), else the packaged ratios (see their "source" note)."""
    _check_variant(variant)
    if home is not None:
        user_file = Path(home) / RATIOS_FILE
        if user_file.is_file():
            try:
                user = _read_json(user_file)
                if variant in user:
                    return _checked_ratios(user[variant])
            except (OSError, ValueError, TypeError) as error:
                logger.warning("ignoring MagCache ratios in %s: %s", user_file, error)
    return _checked_ratios(_read_json(PACKAGED_RATIOS)[variant])


def save_mag_ratios(variant: str, ratios: Sequence[float], home: Path) -> Path:
    """Store a calibration for `variant` in <home>/magcache_ratios.json (other variants there are kept)."""
    _check_variant(variant)
    values = _checked_ratios(ratios)
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    path = home / RATIOS_FILE
    data: dict = {}
    if path.is_file():
        try:
            data = _read_json(path)
        except (OSError, ValueError, TypeError) as error:
            logger.warning("replacing unreadable MagCache ratios file %s: %s", path, error)
    data[variant] = values
    descriptor, temporary = tempfile.mkstemp(prefix=".magcache_ratios.", suffix=".json", dir=home)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("saved %d MagCache ratios for %s to %s", len(values), variant, path)
    return path
