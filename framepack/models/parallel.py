"""Context parallelism (Ulysses) for the FramePack transformer: one transformer call computed by N ranks.

diffusers 0.42 ships context parallelism (`ModelMixin.enable_parallelism`) but no plan for
`HunyuanVideoFramepackTransformer3DModel` (its `_cp_plan` is None). The usual plan (split the model's inputs, gather
at `proj_out`) cannot work for it: `forward()` packs the clean, 2x and 4x history tokens and their RoPE inline, not
in a submodule, hands the whole RoPE to every block, and slices the new latents off before `norm_out`. The plan
here (`context_parallel_plan`) therefore

- splits both token streams (latent and condition, dim 1) at the inputs of the first block,
- splits RoPE cos/sin (dim 0) at the inputs of EVERY block (`freqs_cis` of the dual-stream blocks,
  `image_rotary_emb` of the single-stream ones), since `forward()` passes the full RoPE to each,

and `enable_context_parallel` passes it to `enable_parallelism` unchanged (no fork or patch of diffusers' model
code), then gathers both streams at the last block's output with a hook of ours (`TokenGatherHook`). Between the
split and the gather, each rank holds 1/N of the tokens; Ulysses attention exchanges them (all-to-all) so that each
rank attends over all tokens with 1/N of the heads. The small token refiner runs replicated on every rank.

Token counts the degree does not divide: the condition stream is 729 image tokens plus the prompt's tokens, so
half of all prompts give an odd count, and latent counts need not divide by 8 either. diffusers' "Ulysses
anything" mode (always on here) splits such a stream into shards that differ by one token and exchanges them with
uneven all-to-alls, so attention sees exactly the real tokens: nothing is padded there and no mask is needed
(which keeps flash and sage attention usable). Only the final gather pads: gloo refuses the uneven all-gather
diffusers would use, so `gather_tokens` pads each rank's shard with zeros to the longest shard, all-gathers equal
sizes, and trims every shard back to its real length before joining them. The padding lives only inside that one
collective and is cut off before any value reaches the model, so it cannot change a result.

Limits: batch 1 (the batch>1 attention mask is not split; real CFG runs its two branches as two calls), Ulysses
only (ring needs a kernel that returns the log-sum-exp; plain SDPA does not), the degree must divide the attention
heads, and every rank holds the whole model (weights are not sharded).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from diffusers.hooks.hooks import HookRegistry, ModelHook
from diffusers.models._modeling_parallel import (
    ContextParallelConfig,
    ContextParallelInput,
    ContextParallelModelPlan,
)

logger = logging.getLogger(__name__)

DUAL_BLOCKS = "transformer_blocks"
SINGLE_BLOCKS = "single_transformer_blocks"
ROPE_ARGUMENTS = {DUAL_BLOCKS: "freqs_cis", SINGLE_BLOCKS: "image_rotary_emb"}  # the blocks' names for the RoPE
GATHER_HOOK = "framepack_cp_gather"
BATCH_HOOK = "framepack_cp_batch"
# diffusers names its split and gather hooks "cp_input---<module id>" / "cp_output---<module id>"
DIFFUSERS_HOOK_PREFIXES = ("cp_input---", "cp_output---")


class ContextParallelError(ValueError):
    """A context-parallel setting that cannot work with this model or process group."""


def _token_split() -> ContextParallelInput:
    return ContextParallelInput(split_dim=1)  # [B, tokens, width]


def _rope_split() -> list[ContextParallelInput]:
    return [ContextParallelInput(split_dim=0), ContextParallelInput(split_dim=0)]  # cos, sin: [tokens, dim]


def context_parallel_plan(num_layers: int, num_single_layers: int) -> dict[str, ContextParallelModelPlan]:
    """The split plan for a FramePack transformer with `num_layers` dual-stream and `num_single_layers`
    single-stream blocks: both streams at the first block's inputs, RoPE cos/sin at every block's inputs.

    No `expected_dims` is given on purpose: diffusers skips a split (with only a warning) when a tensor's rank
    differs from it, which would run every rank on all tokens; without it a changed layout fails loudly instead.
    The gather is not in the plan (see `TokenGatherHook`)."""
    if num_layers < 0 or num_single_layers < 0 or num_layers + num_single_layers == 0:
        raise ContextParallelError(
            f"a FramePack transformer needs at least one block; got {num_layers} dual-stream and "
            f"{num_single_layers} single-stream blocks"
        )
    blocks = [(DUAL_BLOCKS, index) for index in range(num_layers)]
    blocks += [(SINGLE_BLOCKS, index) for index in range(num_single_layers)]
    plan: dict[str, ContextParallelModelPlan] = {}
    for position, (kind, index) in enumerate(blocks):
        entry: dict = {ROPE_ARGUMENTS[kind]: _rope_split()}
        if position == 0:
            entry = {"hidden_states": _token_split(), "encoder_hidden_states": _token_split(), **entry}
        plan[f"{kind}.{index}"] = entry
    return plan


def last_block_name(num_layers: int, num_single_layers: int) -> str:
    """The module id of the block whose output is gathered: the last single-stream block (else the last dual one)."""
    return f"{SINGLE_BLOCKS}.{num_single_layers - 1}" if num_single_layers else f"{DUAL_BLOCKS}.{num_layers - 1}"


def degree_problem(degree: int, heads: int) -> str | None:
    """Why `degree` ranks cannot share a transformer with `heads` attention heads, or None when they can."""
    if degree < 2:
        return f"context parallelism needs at least 2 ranks, got {degree}"
    if heads % degree:
        allowed = ", ".join(str(n) for n in range(2, heads + 1) if heads % n == 0) or "none"
        return (
            f"{degree} ranks do not divide the transformer's {heads} attention heads (Ulysses gives each rank "
            f"heads/N of them); allowed: {allowed}"
        )
    return None


def is_context_parallel(transformer: torch.nn.Module) -> bool:
    """Whether `enable_context_parallel` (or any diffusers parallelism) was applied to this transformer."""
    return getattr(transformer, "_parallel_config", None) is not None


def parallel_group(transformer: torch.nn.Module) -> dist.ProcessGroup | None:
    """The process group the transformer's ranks share (the default group), or None when it is not
    context-parallel; for the caches, whose skip decisions must agree across the ranks."""
    return dist.group.WORLD if is_context_parallel(transformer) else None


def is_parallel_hook(name: str) -> bool:
    """Whether a block's hook (by registry name) belongs to context parallelism (diffusers' splits or our gather)."""
    return name.startswith(DIFFUSERS_HOOK_PREFIXES) or name in (GATHER_HOOK, BATCH_HOOK)


@contextmanager
def _accelerator_count_at_least_one() -> Iterator[None]:
    """diffusers 0.42.1's `_resolve_parallel_config` picks the mesh device as `rank % torch.accelerator.device_count()`,
    which divides by zero on a machine without an accelerator. Only there, and only while `enable_parallelism` runs,
    the count reads 1 (the CPU); the device it names is not used on the CPU (the mesh is built with device type "cpu"
    and the collectives run on gloo). Nothing of diffusers is changed, and on a machine with a GPU this does nothing."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    real = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = real


def gather_tokens(tensors: list[torch.Tensor], group: dist.ProcessGroup | None = None) -> list[torch.Tensor]:
    """All-gather [B, tokens, width] shards along dim 1 whose token counts may differ by rank (pad-gather-trim).

    Every rank pads its shards with zeros to the longest shard of their stream, the padded shards (all streams in
    one tensor) are all-gathered with equal sizes, and each rank's piece is trimmed back to its real length before
    the pieces are joined in rank order. The zeros never leave this function."""
    world = dist.get_world_size(group)
    head = tensors[0]
    size_device = torch.device("cpu") if "cpu" in str(dist.get_backend(group)) else head.device
    local = torch.tensor([tensor.shape[1] for tensor in tensors], dtype=torch.int64, device=size_device)
    sizes = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(sizes, local, group=group)
    sizes_by_rank = [size.tolist() for size in sizes]
    longest = [max(rank_sizes[stream] for rank_sizes in sizes_by_rank) for stream in range(len(tensors))]
    padded = torch.cat(
        [torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1])) for t, width in zip(tensors, longest)], dim=1
    ).contiguous()
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded, group=group)
    gathered = []
    for stream in range(len(tensors)):
        start = sum(longest[:stream])
        parts = [piece[:, start : start + rank_sizes[stream]] for piece, rank_sizes in zip(pieces, sizes_by_rank)]
        gathered.append(torch.cat(parts, dim=1))
    return gathered


class TokenGatherHook(ModelHook):
    """On the last block: gathers both streams of its output (pad-gather-trim, see `gather_tokens`), so that
    `forward()` slices the new latents off the whole sequence as in one process."""

    def post_forward(self, module: torch.nn.Module, output):
        hidden_states, encoder_hidden_states = output
        return tuple(gather_tokens([hidden_states, encoder_hidden_states]))


class BatchOneHook(ModelHook):
    """On the transformer: context parallelism here is for batch 1 (the batch>1 attention mask is not split)."""

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if hidden_states.shape[0] != 1:
            raise ContextParallelError(
                f"context parallelism runs batch 1 only, got a batch of {hidden_states.shape[0]} (the batch>1 "
                "attention mask is not split); call the transformer once per item, as real CFG does"
            )
        return args, kwargs


def enable_context_parallel(
    transformer: torch.nn.Module, degree: int, plan: dict[str, ContextParallelModelPlan] | None = None
) -> None:
    """Run `transformer` with Ulysses context parallelism over `degree` ranks: the whole default process group
    (diffusers builds its device mesh over it), initialized with exactly `degree` ranks, each calling this on an
    identical model.

    `plan` defaults to `context_parallel_plan` for the model's block counts (tests pass broken plans). Apply it
    before any cache or compile: their hooks must wrap the split and gather hooks, not sit inside them."""
    config = transformer.config
    problem = degree_problem(degree, config.num_attention_heads)
    if problem is not None:
        raise ContextParallelError(problem)
    if not dist.is_available() or not dist.is_initialized():
        raise ContextParallelError("context parallelism needs torch.distributed initialized (one process per rank)")
    if dist.get_world_size() != degree:
        raise ContextParallelError(
            f"the process group has {dist.get_world_size()} ranks, context parallelism asked for {degree}"
        )
    if is_context_parallel(transformer):
        raise ContextParallelError("this transformer is context-parallel already")
    if getattr(transformer, "is_cache_enabled", False) or getattr(transformer, "framepack_compile", "none") != "none":
        raise ContextParallelError("enable context parallelism before a cache or compile wraps the blocks")
    layers, single_layers = config.num_layers, config.num_single_layers
    plan = context_parallel_plan(layers, single_layers) if plan is None else plan
    # diffusers warns on every call that this API is experimental: the warning says nothing to a user
    diffusers_logger = logging.getLogger("diffusers.models.modeling_utils")
    level = diffusers_logger.level
    diffusers_logger.setLevel(logging.ERROR)
    try:
        with _accelerator_count_at_least_one():
            transformer.enable_parallelism(
                config=ContextParallelConfig(ulysses_degree=degree, ulysses_anything=True), cp_plan=plan
            )
    finally:
        diffusers_logger.setLevel(level)
    last = transformer.get_submodule(last_block_name(layers, single_layers))
    HookRegistry.check_if_exists_or_initialize(last).register_hook(TokenGatherHook(), GATHER_HOOK)
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(BatchOneHook(), BATCH_HOOK)
    logger.info(
        "context parallelism: rank %d of %d (Ulysses), %d heads per rank",
        dist.get_rank(),
        degree,
        config.num_attention_heads // degree,
    )


__all__ = [
    "ContextParallelError",
    "TokenGatherHook",
    "context_parallel_plan",
    "degree_problem",
    "enable_context_parallel",
    "gather_tokens",
    "is_context_parallel",
    "is_parallel_hook",
    "parallel_group",
]
