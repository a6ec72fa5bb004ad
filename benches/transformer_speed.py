"""Speed and memory of FramePack sampling per offload mode, quantization and cache.

`--config full` builds the full-size FramePack transformer (HunyuanVideo 13B with FramePack's image projection
and history embedder) and the full HunyuanVideo VAE with RANDOM weights: the real model's cost, nothing to
download. Each case samples `--sections` bi-directional sections of window 9 at the 640x608 bucket with 25
UniPC steps (a full history of clean, 2x and 4x latents, as in the middle of a long video), then decodes each
section with the VAE. `--config small` is the same code on the tiny self-test sizes, for CPUs and CI.

Each case runs in a fresh process, so peak memory is its own. Reported per case: seconds per step, seconds per
output frame (sampling + decode, per generated frame of a section), peak VRAM (torch.cuda.max_memory_allocated)
and the model calls the cache skipped. With random weights the caches' skip decisions do not match the real
model's (they depend on how the activations change between steps); the time of a computed and of a skipped
call does. Text encoders are left out: they run once per job, not per section.

    python benches/transformer_speed.py --config full --out bench.json          # every case, on a GPU
    python benches/transformer_speed.py --config full --cases none teacache float8
    python benches/transformer_speed.py --config small --device cpu             # the CI smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# case name -> (offload mode, transformer quantization, cache)
CASES: dict[str, tuple[str, str | None, str]] = {
    "none": ("none", None, "none"),
    "model": ("model", None, "none"),
    "balanced": ("balanced", None, "none"),
    "blocks": ("blocks", None, "none"),
    "float8": ("none", "float8", "none"),
    "int8": ("none", "int8", "none"),
    "teacache": ("none", None, "teacache"),
    "magcache": ("none", None, "magcache"),
    "fbc": ("none", None, "fbc"),
}
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


def random_init_(module, seed: int) -> None:
    """Weights N(0, 0.02), biases 0, norm scales 1: activations stay finite through all 60 blocks."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
            elif parameter.ndim == 1:
                parameter.fill_(1.0)
            else:
                values = torch.randn(parameter.shape, generator=generator, dtype=torch.float32) * 0.02
                parameter.copy_(values.to(parameter.dtype))


def build_models(config: dict, dtype, tiny_folder: Path):
    """(transformer, vae) on the CPU: random full-size ones, or the tiny self-test model's."""
    import torch
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel

    if config["transformer"] == "tiny":
        transformer = HunyuanVideoFramepackTransformer3DModel.from_pretrained(tiny_folder / "transformer", torch_dtype=dtype)
        vae = AutoencoderKLHunyuanVideo.from_pretrained(tiny_folder / "vae", torch_dtype=dtype)
        return transformer.eval().requires_grad_(False), vae.eval().requires_grad_(False)
    with torch.device("meta"):
        transformer = HunyuanVideoFramepackTransformer3DModel(**config["transformer"])
        vae = AutoencoderKLHunyuanVideo(**config["vae"])
    models = []
    for seed, model in enumerate((transformer, vae)):
        model = model.to_empty(device="cpu").to(dtype)
        random_init_(model, seed)
        models.append(model.eval().requires_grad_(False))
    return tuple(models)


def run_case(name: str, config_name: str, device_name: str, sections: int, steps: int | None, tiny_folder: Path) -> dict:
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

    offload, quantize, cache_method = CASES[name]
    config = CONFIGS[config_name]
    steps = steps or config["steps"]
    device = torch.device(device_name)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cuda = device.type == "cuda"

    encoders = load_components(tiny_recipe(tiny_folder).with_dtype("float32"), device="cpu")
    clock = time.perf_counter()
    transformer, vae = build_models(config, dtype, tiny_folder)
    build_seconds = time.perf_counter() - clock
    if quantize:
        from framepack.models.quantize import quantize_module

        quantize_module(transformer, quantize, "transformer")
    components = Components(
        transformer=transformer, vae=vae, text_encoder=encoders.text_encoder, tokenizer=encoders.tokenizer,
        text_encoder_2=encoders.text_encoder_2, tokenizer_2=encoders.tokenizer_2, image_encoder=encoders.image_encoder,
        feature_extractor=encoders.feature_extractor,
    )  # fmt: skip
    offloader = Offloader(device, offload)
    offloader.apply(components)
    if cuda:
        torch.cuda.synchronize()
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
    positive = Conditioning(prompt, randn(1, config["image_tokens"], transformer.config.image_proj_dim).to(device, dtype))
    start, history = randn(1, channels, 1, height, width), randn(1, channels, 2 + 16 + 1, height, width)
    context = bidirectional_context(start, history, 1, window)
    seq_len = sequence_length(window, height, width)
    sigmas = flow_sigmas(steps, None, seq_len).to(device)
    sample = get_sampler("unipc")
    mag_ratios = load_mag_ratios("bidirectional") if cache_method == "magcache" else None
    cache = TransformerCache(transformer, cache_method, steps, mag_ratios=mag_ratios)
    velocity = make_velocity_fn(transformer, context, positive, None, 10.0, device=device, cache=cache)

    def section() -> tuple[float, float]:
        cache.start_section()
        clock = time.perf_counter()
        latents = sample(velocity, randn(1, channels, window, height, width).to(device), sigmas)
        if cuda:
            torch.cuda.synchronize()
        sampled = time.perf_counter() - clock
        clock = time.perf_counter()
        scaled = latents.to(dtype) / vae.config.scaling_factor
        frames = vae.decode(scaled.to(device), return_dict=False)[0]
        if cuda:
            torch.cuda.synchronize()
        del frames
        return sampled, time.perf_counter() - clock

    with torch.no_grad():
        section()  # warm-up: kernels, allocator, first moves
        cache.stats.calls = cache.stats.skipped = 0
        timings = [section() for _ in range(sections)]
    sample_seconds = sum(t[0] for t in timings)
    decode_seconds = sum(t[1] for t in timings)
    frames = sections * (window * 4 - 3)
    return {
        "case": name,
        "offload": offload,
        "quantize": quantize or "none",
        "cache": cache_method,
        "sections": sections,
        "steps": steps,
        "seconds_per_step": round(sample_seconds / (sections * steps), 4),
        "seconds_per_frame": round((sample_seconds + decode_seconds) / frames, 4),
        "decode_seconds_per_section": round(decode_seconds / sections, 3),
        "peak_vram_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "model_calls": cache.stats.calls,
        "skipped_calls": cache.stats.skipped,
        "build_seconds": round(build_seconds, 1),
    }


def machine(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30
        return f"{name} ({memory:.0f} GB), torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{platform.machine()} CPU, torch {torch.__version__}"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| case | offload | quantize | cache | s/step | s/frame | peak VRAM GB | skipped calls |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['case']} | failed: {row['error']} | | | | | | |")
            continue
        vram = "-" if row["peak_vram_gb"] is None else f"{row['peak_vram_gb']:.2f}"
        lines.append(
            f"| {row['case']} | {row['offload']} | {row['quantize']} | {row['cache']} | {row['seconds_per_step']:.3f} | "
            f"{row['seconds_per_frame']:.3f} | {vram} | {row['skipped_calls']}/{row['model_calls']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="full")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--sections", type=int, default=2, help="sections measured per case (after one warm-up)")
    parser.add_argument("--steps", type=int, default=None, help="default: 25 (full) / 4 (small)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    # internal: run one case in this process, with the tiny model (encoders, small config) written by the parent
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--tiny-folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.case:
        print(json.dumps(run_case(args.case, args.config, device, args.sections, args.steps, args.tiny_folder)))
        return 0
    from framepack.models.tiny import write_tiny_model

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        tiny_folder = write_tiny_model(Path(scratch) / "tiny")
        for name in args.cases:
            command = [sys.executable, __file__, "--case", name, "--config", args.config, "--device", device,
                       "--sections", str(args.sections), "--tiny-folder", str(tiny_folder),
                       ] + (["--steps", str(args.steps)] if args.steps else [])  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                error = (done.stderr.strip().splitlines() or ["exit code %d" % done.returncode])[-1]
                rows.append({"case": name, "error": error[:200]})
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    header = f"{machine(device)}; config {args.config}; command: python benches/transformer_speed.py {' '.join(argv or sys.argv[1:])}"
    print(header)
    print(markdown(rows))
    if args.out:
        args.out.write_text(json.dumps({"machine": machine(device), "config": args.config, "rows": rows}, indent=2))
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
