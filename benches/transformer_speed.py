"""Speed and memory of FramePack sampling per offload mode, quantization and cache.

`--config full` builds the full-size FramePack transformer (HunyuanVideo 13B with FramePack's image projection
and history embedder) and the full HunyuanVideo VAE with RANDOM weights: the real model's cost, nothing to
download. Each case samples `--sections` bi-directional sections of window 9 at the 640x608 bucket with 25
UniPC steps (a full history of clean, 2x and 4x latents, as in the middle of a long video), then decodes each
section with the VAE. `--config small` is the same code on the tiny self-test sizes, for CPUs and CI.

Each case runs in a fresh process, so peak memory is its own; one short warm-up section (`--warmup-steps`
steps and a decode) comes first. Reported per case: seconds per step, seconds per output frame (sampling +
decode, per generated frame of a section), peak VRAM (torch.cuda.max_memory_allocated) over the whole case and
separately while sampling and while decoding, the model calls the cache skipped, and model-FLOPs utilisation:
the matmul FLOPs of the computed transformer calls (`transformer_flops`) over the sampling time and the
device's matmul peak, measured once per run on an 8192^3 matmul in the compute dtype (bf16 on a GPU). With
random weights the caches' skip decisions do not match the real model's (they depend on how the activations
change between steps); the time of a computed and of a skipped call does. Text encoders are left out: they run
once per job, not per section.

    python benches/transformer_speed.py --config full --out bench.json          # every case, on a GPU
    python benches/transformer_speed.py --config full --cases none teacache float8 blocks-tiled
    python benches/transformer_speed.py --config full --cases compile float8-dynamic fast   # compiled, float8 compute
    python benches/transformer_speed.py --config small --device cpu             # the CI smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Case(NamedTuple):
    offload: str
    quantize: str | None
    cache: str
    tiled_decode: bool = False  # diffusers' VAE tiling (enable_tiling, its default tile sizes) for the decode
    compile: str = "none"  # "blocks": torch.compile on the repeated blocks (framepack/models/compile.py)


# the cases run by default, in this order
CASES: dict[str, Case] = {
    "none": Case("none", None, "none"),
    "model": Case("model", None, "none"),
    "balanced": Case("balanced", None, "none"),
    "blocks": Case("blocks", None, "none"),
    "float8": Case("none", "float8", "none"),
    "int8": Case("none", "int8", "none"),
    "teacache": Case("none", None, "teacache"),
    "magcache": Case("none", None, "magcache"),
    "fbc": Case("none", None, "fbc"),
}
# cases run only when named in --cases
EXTRA_CASES: dict[str, Case] = {
    "blocks-tiled": Case("blocks", None, "none", tiled_decode=True),
    "compile": Case("none", None, "none", compile="blocks"),
    "float8-dynamic": Case("none", "float8-dynamic", "none"),  # torchao float8 compute: CUDA, capability 8.9+
    "fast": Case("none", "float8-dynamic", "magcache", compile="blocks"),  # the fastest settings together
}
ALL_CASES = {**CASES, **EXTRA_CASES}
CONFIGS = {
    # the published FramePack transformer and HunyuanVideo VAE (diffusers' defaults are the real sizes)
    "full": {
        "transformer": {"has_image_proj": True, "has_clean_x_embedder": True},
        "vae": {},
        "width": 640, "height": 608, "window": 9, "steps": 25, "text_tokens": 64, "image_tokens": 729,
    },
    # the tiny self-test sizes (framepack/models/tiny.py)
    "small": {
        "transformer": "tiny",
        "vae": "tiny",
        "width": 64, "height": 64, "window": 3, "steps": 4, "text_tokens": 8, "image_tokens": 4,
    },
}  # fmt: skip
# history slots of a bi-directional section in the middle of a long video (framepack/sampling/context.py):
# the start frame and one frame at 1x, 2 frames at 2x, 16 frames at 4x compression
CLEAN_FRAMES, FRAMES_2X, FRAMES_4X = 1 + 1, 2, 16
# the history embedder's kernels (frames, height, width) in latent pixels, per slot
KERNEL_1X, KERNEL_2X, KERNEL_4X = (1, 2, 2), (2, 4, 4), (4, 8, 8)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ FLOPs


def _slot_tokens(frames: int, height: int, width: int, kernel: tuple[int, int, int]) -> int:
    """Tokens of one history slot: the embedder pads each dimension up to a multiple of its kernel."""
    return math.prod(math.ceil(size / k) for size, k in zip((frames, height, width), kernel))


def sequence_tokens(window: int, latent_height: int, latent_width: int, text_tokens: int, image_tokens: int) -> dict:
    """Token counts of one transformer call of a bi-directional section with a full history (batch 1).

    `window`, `clean`, `history_2x`, `history_4x`: the latent tokens (noisy window, then the history slots);
    `text` and `image`: the condition tokens (the Llama prompt tokens the mask keeps, the SigLIP tokens)."""
    return {
        "window": _slot_tokens(window, latent_height, latent_width, KERNEL_1X),
        "clean": _slot_tokens(CLEAN_FRAMES, latent_height, latent_width, KERNEL_1X),
        "history_2x": _slot_tokens(FRAMES_2X, latent_height, latent_width, KERNEL_2X),
        "history_4x": _slot_tokens(FRAMES_4X, latent_height, latent_width, KERNEL_4X),
        "text": text_tokens,
        "image": image_tokens,
    }


def transformer_flops(config: Mapping[str, Any], tokens: Mapping[str, int]) -> dict[str, float]:
    """Matmul FLOPs of one FramePack transformer call at batch 1 (one multiply-add = 2 FLOPs), by part.

    `config`: the transformer's config (heads, head size, block counts, MLP ratio, channels, patch size, text,
    pooled and image embedding sizes); `tokens`: `sequence_tokens(...)`. With D = heads x head size,
    M = D x mlp_ratio, N = latent + condition tokens (the joint sequence every block sees):

    - `blocks`: the Linear layers of the dual-stream blocks (per token: Q, K, V and output projections, D x D
      each, and the MLP, D x M and M x D; latent and condition tokens have their own weights of the same shapes,
      so 24 N D^2 per block) and of the single-stream blocks (Q, K, V, D x D each, the MLP input D x M and the
      fused output projection (D + M) x D: also 24 N D^2 per block).
    - `attention`: QK^T and AV over the joint sequence, 2 N^2 D each, so 4 N^2 D per block, in every block.
    - `embedders`: the patch embedder of the noisy window and the three history embedders (Conv3d as matmuls),
      the text token refiner (input projection and its blocks, attention included), the SigLIP image
      projection, the final proj_out, and the per-call AdaLN modulation Linears of every block and of the
      timestep/guidance/pooled-text embedding (one row each, so tiny).
    Not counted: norms, RoPE, softmax, activations, residual adds and gates (elementwise work).
    """
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    d = heads * head_dim
    m = int(d * config["mlp_ratio"])
    channels, patch, patch_t = config["in_channels"], config["patch_size"], config["patch_size_t"]
    latent = tokens["window"] + tokens["clean"] + tokens["history_2x"] + tokens["history_4x"]
    text, image = tokens["text"], tokens["image"]
    n = latent + text + image
    dual, single = config["num_layers"], config["num_single_layers"]

    linear_per_token = 2 * (3 * d * d + d * d + 2 * d * m)  # both block kinds: 24 D^2 when M = 4 D
    single_per_token = 2 * (3 * d * d + d * m + (d + m) * d)
    blocks = dual * n * linear_per_token + single * n * single_per_token
    attention = (dual + single) * 4 * n * n * d

    conv = 2 * d * channels * (
        tokens["window"] * patch_t * patch * patch + tokens["clean"] * math.prod(KERNEL_1X)
        + tokens["history_2x"] * math.prod(KERNEL_2X) + tokens["history_4x"] * math.prod(KERNEL_4X)
    )  # fmt: skip
    refiner_mlp = int(d * 4.0)  # HunyuanVideoTokenRefiner's MLP ratio
    refiner = 2 * text * config["text_embed_dim"] * d + config.get("num_refiner_layers", 2) * (
        2 * text * (4 * d * d + 2 * d * refiner_mlp) + 4 * text * text * d + 2 * d * 2 * d
    )
    image_proj = 2 * image * (config["image_proj_dim"] * 3 * d + 3 * d * d) if config.get("has_image_proj") else 0
    proj_out = 2 * tokens["window"] * d * patch_t * patch * patch * config["out_channels"]
    modulation = dual * 2 * 2 * d * 6 * d + single * 2 * d * 3 * d + 2 * d * 2 * d
    condition_embed = 2 * (256 * d + d * d) * 2 + 2 * (config["pooled_projection_dim"] * d + d * d)
    embedders = conv + refiner + image_proj + proj_out + modulation + condition_embed
    return {
        "total": float(blocks + attention + embedders),
        "blocks": float(blocks),
        "attention": float(attention),
        "embedders": float(embedders),
    }


def matmul_peak(device_name: str, size: int | None = None, repeats: int = 30) -> dict:
    """Measured matmul rate of the device in the bench's compute dtype: the median over `repeats` timed
    size^3 products of random matrices (after a warm-up); bf16 and 8192 on CUDA, float32 and 1024 on a CPU."""
    import torch

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    size = size or (8192 if cuda else 1024)
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, device=device, dtype=dtype, generator=generator) for _ in range(2))
    out = torch.empty(size, size, device=device, dtype=dtype)
    for _ in range(5):
        torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.mm(a, b, out=out)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            clock = time.perf_counter()
            torch.mm(a, b, out=out)
            times.append(time.perf_counter() - clock)
    seconds = sorted(times)[len(times) // 2]
    if not torch.isfinite(out).all():
        raise RuntimeError("the peak matmul produced non-finite values")
    return {
        "matmul_size": size,
        "matmul_dtype": str(dtype).removeprefix("torch."),
        "matmul_seconds": seconds,
        "peak_tflops": 2 * size**3 / seconds / 1e12,
        "machine": machine(device_name),
    }


# ---------------------------------------------------------------------------------------- one case


def random_init_(module, seed: int) -> None:
    """Weights N(0, 0.02), biases 0, norm scales 1: activations stay finite through all 60 blocks.
    Drawn where the module is (on a GPU: seconds for 13B parameters, against minutes on a CPU)."""
    import torch

    device = next(module.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
            elif parameter.ndim == 1:
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)


def build_models(config: dict, dtype, tiny_folder: Path, device):
    """(transformer, vae): random full-size ones made directly on `device` in `dtype`, or the tiny self-test
    model's on the CPU. The offloader then places them per the case's mode."""
    import torch
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel

    if config["transformer"] == "tiny":
        transformer = HunyuanVideoFramepackTransformer3DModel.from_pretrained(
            tiny_folder / "transformer", torch_dtype=dtype
        )
        vae = AutoencoderKLHunyuanVideo.from_pretrained(tiny_folder / "vae", torch_dtype=dtype)
        return transformer.eval().requires_grad_(False), vae.eval().requires_grad_(False)
    with torch.device("meta"):
        transformer = HunyuanVideoFramepackTransformer3DModel(**config["transformer"])
        vae = AutoencoderKLHunyuanVideo(**config["vae"])
    models = []
    for seed, model in enumerate((transformer, vae)):
        model = model.to(dtype).to_empty(device=device)
        random_init_(model, seed)
        models.append(model.eval().requires_grad_(False))
    return tuple(models)


def run_case(
    name: str, config_name: str, device_name: str, sections: int, steps: int | None, warmup_steps: int,
    tiny_folder: Path, peak_tflops: float | None,
) -> dict:  # fmt: skip
    """One case in this process; returns its measurements."""
    import torch

    from framepack.encoders import PromptEmbeds
    from framepack.models.caches import TransformerCache, load_mag_ratios
    from framepack.models.components import Components
    from framepack.models.loader import load_components
    from framepack.models.offload import Offloader
    from framepack.models.recipe import tiny_recipe
    from framepack.sampling.context import bidirectional_context
    from framepack.sampling.denoise import Conditioning, make_velocity_fn
    from framepack.sampling.samplers import get_sampler
    from framepack.sampling.schedule import flow_sigmas, sequence_length

    case = ALL_CASES[name]
    config = CONFIGS[config_name]
    steps = steps or config["steps"]
    device = torch.device(device_name)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cuda = device.type == "cuda"

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    encoders = load_components(tiny_recipe(tiny_folder).with_dtype("float32"), device="cpu")
    clock = time.perf_counter()
    transformer, vae = build_models(config, dtype, tiny_folder, device)
    synchronize()
    build_seconds = time.perf_counter() - clock
    parameters = sum(parameter.numel() for parameter in transformer.parameters())
    log(f"{name}: built the transformer ({parameters / 1e9:.2f}B parameters) and VAE in {build_seconds:.1f} s")
    quantize_seconds = 0.0
    if case.quantize:
        from framepack.models.quantize import quantize_module

        clock = time.perf_counter()
        quantize_module(transformer, case.quantize, "transformer", device=device)
        synchronize()
        quantize_seconds = time.perf_counter() - clock
        log(f"{name}: quantized to {case.quantize} in {quantize_seconds:.1f} s")
    if case.tiled_decode:
        vae.enable_tiling()
    from framepack.models.compile import compile_seconds, set_compile

    set_compile(transformer, case.compile)  # before offloading hooks wrap the blocks; compiles in the warm-up
    compiled_before = compile_seconds()
    components = Components(
        transformer=transformer, vae=vae, text_encoder=encoders.text_encoder, tokenizer=encoders.tokenizer,
        text_encoder_2=encoders.text_encoder_2, tokenizer_2=encoders.tokenizer_2, image_encoder=encoders.image_encoder,
        feature_extractor=encoders.feature_extractor,
    )  # fmt: skip
    clock = time.perf_counter()
    offloader = Offloader(device, case.offload)
    offloader.apply(components)
    synchronize()
    offload_seconds = time.perf_counter() - clock
    log(f"{name}: offload {case.offload} applied in {offload_seconds:.1f} s")
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    generator = torch.Generator("cpu").manual_seed(0)
    channels = transformer.config.in_channels
    height, width, window = config["height"] // 8, config["width"] // 8, config["window"]

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    prompt = PromptEmbeds(
        randn(1, config["text_tokens"], transformer.config.text_embed_dim),
        torch.ones(1, config["text_tokens"]),
        randn(1, transformer.config.pooled_projection_dim),
    ).to(device, dtype)
    positive = Conditioning(
        prompt, randn(1, config["image_tokens"], transformer.config.image_proj_dim).to(device, dtype)
    )
    start, history = randn(1, channels, 1, height, width), randn(1, channels, 2 + 16 + 1, height, width)
    context = bidirectional_context(start, history, 1, window)
    seq_len = sequence_length(window, height, width)
    sample = get_sampler("unipc")
    mag_ratios = load_mag_ratios("bidirectional") if case.cache == "magcache" else None
    cache = TransformerCache(transformer, case.cache, steps, mag_ratios=mag_ratios)
    velocity = make_velocity_fn(transformer, context, positive, None, 10.0, device=device, cache=cache)

    tokens = sequence_tokens(window, height, width, config["text_tokens"], config["image_tokens"])
    seen: dict[str, int] = {}

    def count_tokens(_module, args, kwargs):  # the joint sequence as the first block receives it
        hidden = args[0] if args else kwargs["hidden_states"]
        encoder = args[1] if len(args) > 1 else kwargs["encoder_hidden_states"]
        seen.update(latent=hidden.shape[1], condition=encoder.shape[1])

    handle = transformer.transformer_blocks[0].register_forward_pre_hook(count_tokens, with_kwargs=True)
    peaks = {"sampling": 0.0, "decode": 0.0}

    def peak_since_reset(phase: str) -> None:
        if cuda:
            peaks[phase] = max(peaks[phase], torch.cuda.max_memory_allocated() / 2**30)
            torch.cuda.reset_peak_memory_stats()

    def section(sigmas) -> tuple[float, float]:
        cache.start_section()
        peak_since_reset("decode")  # whatever ran before counts with the last decode
        clock = time.perf_counter()
        latents = sample(velocity, randn(1, channels, window, height, width).to(device), sigmas)
        synchronize()
        sampled = time.perf_counter() - clock
        peak_since_reset("sampling")
        clock = time.perf_counter()
        scaled = latents.to(dtype) / vae.config.scaling_factor
        frames = vae.decode(scaled.to(device), return_dict=False)[0]
        synchronize()
        del frames
        decoded = time.perf_counter() - clock
        peak_since_reset("decode")
        return sampled, decoded

    with torch.no_grad():
        warmup_steps = min(warmup_steps, steps)
        warm = section(flow_sigmas(warmup_steps, None, seq_len))  # kernels, allocator, first moves
        log(f"{name}: warm-up section of {warmup_steps} steps: {warm[0]:.1f} s sampling, {warm[1]:.1f} s decode")
        compiled_seconds = compile_seconds() - compiled_before
        handle.remove()
        expected = {"latent": sum(tokens[key] for key in ("window", "clean", "history_2x", "history_4x")),
                    "condition": tokens["text"] + tokens["image"]}  # fmt: skip
        if seen != expected:
            raise RuntimeError(f"the FLOPs count assumes tokens {expected}, the transformer saw {seen}")
        cache.stats.calls = cache.stats.skipped = 0
        sigmas = flow_sigmas(steps, None, seq_len)
        timings = []
        for index in range(sections):
            timings.append(section(sigmas))
            sampled, decoded = timings[-1]
            log(f"{name}: section {index + 1}/{sections}: {sampled:.1f} s sampling, {decoded:.1f} s decode")
    sample_seconds = sum(t[0] for t in timings)
    decode_seconds = sum(t[1] for t in timings)
    frames = sections * (window * 4 - 3)
    flops = transformer_flops(transformer.config, tokens)
    computed_calls = cache.stats.calls - cache.stats.skipped
    achieved = computed_calls * flops["total"] / sample_seconds
    return {
        "case": name,
        "offload": case.offload,
        "quantize": case.quantize or "none",
        "cache": case.cache,
        "tiled_decode": case.tiled_decode,
        "compile": case.compile,
        "compile_seconds": round(compiled_seconds, 1),
        "compile_seconds_measured": round(compile_seconds() - compiled_before - compiled_seconds, 1),
        "sections": sections,
        "steps": steps,
        "seconds_per_step": round(sample_seconds / (sections * steps), 4),
        "seconds_per_frame": round((sample_seconds + decode_seconds) / frames, 4),
        "sample_seconds_per_section": round(sample_seconds / sections, 3),
        "decode_seconds_per_section": round(decode_seconds / sections, 3),
        "peak_vram_gb": round(max(peaks.values()), 2) if cuda else None,
        "peak_vram_sampling_gb": round(peaks["sampling"], 2) if cuda else None,
        "peak_vram_decode_gb": round(peaks["decode"], 2) if cuda else None,
        "model_calls": cache.stats.calls,
        "skipped_calls": cache.stats.skipped,
        "tokens": {"latent": expected["latent"], "condition": expected["condition"]},
        "tflop_per_call": round(flops["total"] / 1e12, 3),
        "flops_per_call": {key: value for key, value in flops.items()},
        "achieved_tflops": round(achieved / 1e12, 1),
        "mfu": round(achieved / (peak_tflops * 1e12), 4) if peak_tflops else None,
        "build_seconds": round(build_seconds, 1),
        "quantize_seconds": round(quantize_seconds, 1),
        "offload_seconds": round(offload_seconds, 1),
    }


# ------------------------------------------------------------------------------------------ report


def machine(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30
        driver = "?"
        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            done = subprocess.run(query, capture_output=True, text=True)
            driver = done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "?"
        return f"{name} ({memory:.0f} GB), driver {driver}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{platform.machine()} CPU, torch {torch.__version__}"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| case | offload | quantize | cache | s/step | s/frame | MFU | peak VRAM GB (sampling / decode) "
        "| skipped calls |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if "error" in row:
            error = row["error"] if row["error"].startswith("not run") else f"failed: {row['error']}"
            lines.append(f"| {row['case']} | {error} | | | | | | | |")
            continue
        vram = "-"
        if row["peak_vram_gb"] is not None:
            vram = f"{row['peak_vram_gb']:.2f} ({row['peak_vram_sampling_gb']:.2f} / {row['peak_vram_decode_gb']:.2f})"
        mfu = "-" if row["mfu"] is None else f"{row['mfu']:.1%}"
        lines.append(
            f"| {row['case']} | {row['offload']} | {row['quantize']} | {row['cache']} | "
            f"{row['seconds_per_step']:.3f} | {row['seconds_per_frame']:.3f} | {mfu} | {vram} | "
            f"{row['skipped_calls']}/{row['model_calls']} |"
        )
    return "\n".join(lines)


def run_child(arguments: list[str], timeout: float | None) -> tuple[dict | None, str]:
    """Run this script with `arguments` in a fresh process (its stderr goes to ours, as it comes); returns
    (the JSON of its last stdout line or None, an error message or "")."""
    command = [sys.executable, __file__, *arguments]
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"stopped at the deadline, after {timeout:.0f} s"
    lines = done.stdout.strip().splitlines()
    result = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
    if done.returncode != 0 or result is None:
        error = result.get("error") if isinstance(result, dict) else None
        return None, (error or f"exit code {done.returncode}")[:300]
    return result, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="full")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--cases", nargs="+", choices=list(ALL_CASES), default=list(CASES),
                        help=f"default: {' '.join(CASES)}; also: {' '.join(EXTRA_CASES)}")  # fmt: skip
    parser.add_argument("--sections", type=int, default=2, help="sections measured per case (after one warm-up)")
    parser.add_argument("--steps", type=int, default=None, help="default: 25 (full) / 4 (small)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps of the warm-up section (default 3)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds for the whole run: cases not started by then are reported as not run, and a "
                             "case still running then is stopped")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here (after every case)")
    # internal: run one case in this process, with the tiny model (encoders, small config) written by the parent
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--tiny-folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--peak-tflops", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--measure-peak", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for field in ("sections", "warmup_steps", "steps"):
        value = getattr(args, field)
        if value is not None and value < 1:
            parser.error(f"--{field.replace('_', '-')} must be >= 1, got {value}")
    started = time.perf_counter()
    if args.case or args.measure_peak:
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            if args.measure_peak:
                result = matmul_peak(device)
            else:
                result = run_case(args.case, args.config, device, args.sections, args.steps, args.warmup_steps,
                                  args.tiny_folder, args.peak_tflops)  # fmt: skip
        except BaseException as error:  # reported as the case's row; the traceback goes to stderr
            import traceback

            traceback.print_exc()
            print(json.dumps({"case": args.case, "error": f"{type(error).__name__}: {error}"[:300]}), flush=True)
            return 1
        print(json.dumps(result), flush=True)
        return 0

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    common = ["--config", args.config, "--device", device]
    peak, error = run_child([*common, "--measure-peak"], timeout=300)
    if peak is None:
        log(f"matmul peak not measured ({error}); MFU is left out")
        peak = {"peak_tflops": None, "machine": f"{device} (peak matmul failed: {error})"}
    else:
        log(f"matmul peak: {peak['peak_tflops']:.1f} TFLOP/s ({peak['matmul_size']}^3 {peak['matmul_dtype']}, "
            f"{peak['matmul_seconds'] * 1000:.2f} ms); {peak['machine']}")  # fmt: skip
    command = "python benches/transformer_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows: list[dict] = []

    def write() -> None:
        if args.out:
            report = {"machine": peak["machine"], "config": args.config, "command": command, "peak": peak, "rows": rows}
            args.out.write_text(json.dumps(report, indent=2))

    with tempfile.TemporaryDirectory() as scratch:
        from framepack.models.tiny import write_tiny_model

        tiny_folder = write_tiny_model(Path(scratch) / "tiny")
        for name in args.cases:
            timeout = None
            if args.deadline is not None:
                timeout = args.deadline - (time.perf_counter() - started)
                # a case is started only when it can finish: no sooner than the quickest case so far took
                shortest = min((row["case_seconds"] for row in rows if "error" not in row), default=30.0)
                if timeout < max(30.0, shortest):
                    rows.append({"case": name, "error": "not run: the deadline came first"})
                    print(json.dumps(rows[-1]), flush=True)
                    write()
                    continue
            arguments = [*common, "--case", name, "--sections", str(args.sections), "--tiny-folder",
                         str(tiny_folder), "--warmup-steps", str(args.warmup_steps)]  # fmt: skip
            arguments += ["--steps", str(args.steps)] if args.steps else []
            arguments += ["--peak-tflops", str(peak["peak_tflops"])] if peak["peak_tflops"] else []
            clock = time.perf_counter()
            row, error = run_child(arguments, timeout)
            rows.append(row if row is not None else {"case": name, "error": error})
            rows[-1]["case_seconds"] = round(time.perf_counter() - clock, 1)
            print(json.dumps(rows[-1]), flush=True)
            write()
    print(f"{peak['machine']}; matmul peak {peak['peak_tflops'] or 0:.1f} TFLOP/s; config {args.config}; "
          f"command: {command}")  # fmt: skip
    print(markdown(rows))
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
