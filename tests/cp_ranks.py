"""The rank side of tests/test_parallel.py: each spawned process joins a gloo group through the test's TCP store,
builds the same seeded fp32 FramePack transformer and runs the cases; rank 0 saves what the test compares.

Kept out of the test module so that the spawned processes import only this (and torch, diffusers, framepack).
"""

from __future__ import annotations

import gc
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers import HunyuanVideoFramepackTransformer3DModel

HEADS = 4
TIMEOUT = timedelta(seconds=60)


def build_transformer(layers: int = 2, single_layers: int = 2) -> HunyuanVideoFramepackTransformer3DModel:
    """A small FramePack transformer, identical in every process (seeded), fp32 on the CPU."""
    torch.manual_seed(0)
    model = HunyuanVideoFramepackTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=HEADS,
        attention_head_dim=8,
        num_layers=layers,
        num_single_layers=single_layers,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 2, 4),
        has_image_proj=True,
        image_proj_dim=12,
        has_clean_x_embedder=True,
    )
    return model.eval()


def transformer_inputs(text_tokens: int, image_tokens: int, frames: int = 2, size: int = 4) -> dict:
    """Seeded inputs for one call: `frames` new latent frames at size x size latents plus clean, 2x and 4x history;
    `text_tokens` prompt tokens (the mask keeps them all) and `image_tokens` SigLIP tokens."""
    generator = torch.Generator().manual_seed(text_tokens * 1000 + image_tokens * 100 + frames * 10 + size)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    return {
        "hidden_states": randn(1, 4, frames, size, size),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": randn(1, text_tokens + 3, 16),
        "encoder_attention_mask": torch.arange(text_tokens + 3)[None] < text_tokens,  # 3 padding tokens cut off
        "pooled_projections": randn(1, 8),
        "image_embeds": randn(1, image_tokens, 12),
        "indices_latents": torch.arange(frames),
        "latents_clean": randn(1, 4, 1, size, size),
        "indices_latents_clean": torch.tensor([frames]),
        "latents_history_2x": randn(1, 4, 2, size, size),
        "indices_latents_history_2x": torch.tensor([frames + 1, frames + 2]),
        "latents_history_4x": randn(1, 4, 4, size, size),
        "indices_latents_history_4x": torch.arange(frames + 3, frames + 7),
        "guidance": torch.tensor([10000.0]),
        "return_dict": False,
    }


# (text tokens, image tokens, new latent frames, latent size): condition tokens 8+4=12, 7+4=11, 8+5=13; latent
# tokens (2x2 patches of the new frames, the clean frame, one 2x and one 4x history token group): 4x4 latents with 2
# frames give 8+4+1+1=14, 6x6 latents with 3 frames 27+9+4+1=41
CASES = {"even": (8, 4, 2, 4), "odd_condition": (7, 4, 2, 4), "odd_both": (8, 5, 3, 6)}


CACHE_STEPS = 8


def cache_calls(model: torch.nn.Module, method: str) -> tuple[list[torch.Tensor], int]:
    """One section of CACHE_STEPS calls through a cache at its default threshold, the latents drifting a little
    from call to call: the outputs and how many calls the cache skipped."""
    from framepack.models.caches import TransformerCache, load_mag_ratios

    inputs = transformer_inputs(*CASES["odd_both"])
    drift = torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(1))
    ratios = load_mag_ratios("bidirectional") if method == "magcache" else None
    cache = TransformerCache(model, method, CACHE_STEPS, 0.0, ratios)
    outputs = []
    with torch.no_grad(), cache:
        cache.start_section()
        for step in range(CACHE_STEPS):
            call = {**inputs, "hidden_states": inputs["hidden_states"] + 0.05 * step * drift}
            call["timestep"] = torch.tensor([1000.0 - 100.0 * step])
            with cache.call("cond"):
                outputs.append(model(**call)[0])
    return outputs, cache.stats.skipped


def join(rank: int, world: int, port: int) -> None:
    store = dist.TCPStore("127.0.0.1", port, world_size=None, is_master=False, timeout=TIMEOUT)
    dist.init_process_group("cpu:gloo", store=store, rank=rank, world_size=world, timeout=TIMEOUT)


def transformer_cases(world: int) -> dict:
    """Every case on a context-parallel transformer and the token counts its attention saw; TeaCache's and
    MagCache's outputs and skips over one section; the errors of FirstBlockCache and of the broken plan (None where
    nothing failed)."""
    from framepack.models.caches import TransformerCache
    from framepack.models.parallel import context_parallel_plan, enable_context_parallel

    results: dict = {"outputs": {}, "attention_tokens": {}, "broken": None, "fbc": None}
    model = build_transformer()
    enable_context_parallel(model, world)
    seen: list[tuple[int, int]] = []  # (latent tokens, condition tokens) entering the first block's attention
    probe = model.transformer_blocks[0].attn.register_forward_pre_hook(
        lambda _module, _args, kwargs: seen.append(
            (kwargs["hidden_states"].shape[1], kwargs["encoder_hidden_states"].shape[1])
        ),
        with_kwargs=True,
    )
    with torch.no_grad():
        for name, case in CASES.items():
            results["outputs"][name] = model(**transformer_inputs(*case))[0]
            results["attention_tokens"][name] = seen.pop()
    probe.remove()

    results["caches"] = {}
    for method in ("teacache", "magcache"):
        cached = build_transformer()
        enable_context_parallel(cached, world)
        results["caches"][method] = cache_calls(cached, method)
    try:
        TransformerCache(cached, "fbc", CACHE_STEPS)
    except ValueError as error:
        results["fbc"] = str(error)

    broken = build_transformer()
    plan = context_parallel_plan(2, 2)
    for key in plan:  # keep the stream split, drop every per-block RoPE split
        plan[key] = {arg: split for arg, split in plan[key].items() if arg not in ("freqs_cis", "image_rotary_emb")}
    enable_context_parallel(broken, world, plan)
    try:
        with torch.no_grad():
            broken(**transformer_inputs(*CASES["even"]))
    except RuntimeError as error:
        results["broken"] = str(error)
    return results


def transformer_ranks(rank: int, world: int, port: int, folder: str) -> None:
    """A spawned rank: `transformer_cases`, saved as rank<N>.pt (or the traceback as rank<N>.error)."""
    join(rank, world, port)
    try:
        torch.save(transformer_cases(world), Path(folder) / f"rank{rank}.pt")
    except BaseException:
        (Path(folder) / f"rank{rank}.error").write_text(traceback.format_exc())
        raise
    finally:
        gc.collect()  # the models hold the device mesh: freed before the group ends (see framepack.gang._leave)
        dist.destroy_process_group()
