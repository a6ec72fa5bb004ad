"""Seconds and frames of the window decode: every window decoded whole (before) vs shared temporal tiles decoded once.

A job's latents (seeded random normal values: the start frame plus `sections` sections of window 9 at the 1:1 bucket
of `--resolution`) are decoded into frames in time order by the engine's overlap windows and joiner, three ways:

    per-window   each window through `vae.decode` (diffusers' temporal tiles, as the engine did before)
    tiles-once   `VaeDecoder.window`: the same tiles, and those the previous window decoded are reused
    whole-once   one `vae.decode` of the whole latent sequence, no windows (each latent decoded once; another
                 output, measured here as the alternative that was not taken)

Per case it prints the seconds of each way (the best of --repeat runs), the decoder calls (temporal tiles), and how
far the frames of tiles-once and whole-once are from per-window's (mean and max absolute difference in levels of
255, PSNR). With --tiling it also decodes one latent frame at the bucket untiled and in the default spatial tiles
(256 px, 64 px overlap) and prints the difference. With --profile it prints where one window's decode spends its
time (torch.profiler, by operator). The VAE is the tiny self-test model's, or with --vae mid a wider random one
(32/64/64/64 channels, one layer per block).

    python benches/decode_windows.py --sections 2 4 8 --resolution 128
    python benches/decode_windows.py --sections 4 --resolution 256 --variant bidirectional f1 --tiling 384
    python benches/decode_windows.py --sections 0 --resolution 256 --profile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framepack.generate import START, latent_start, window_keys  # noqa: E402
from framepack.images import to_uint8  # noqa: E402
from framepack.plan import bucket_size  # noqa: E402
from framepack.video.decode import OverlapJoiner, overlap_frames  # noqa: E402
from framepack.video.vae_tiles import TileSettings, VaeDecoder  # noqa: E402

WINDOW = 9


def load_vae(kind: str, folder: Path):
    from diffusers import AutoencoderKLHunyuanVideo

    if kind == "tiny":
        from framepack.models.tiny import write_vae

        write_vae(folder / "vae", seed=3)
        return AutoencoderKLHunyuanVideo.from_pretrained(folder / "vae").eval()
    torch.manual_seed(3)
    return AutoencoderKLHunyuanVideo(
        latent_channels=4, block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=8,
        mid_block_add_attention=False,
    ).eval()  # fmt: skip


def job_latents(vae, sections: int, height: int, width: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    channels = vae.config.latent_channels
    shape = (1, channels, WINDOW, height // 8, width // 8)
    latents = {START: torch.randn((1, channels, 1, height // 8, width // 8), generator=generator)}
    latents.update({index: torch.randn(shape, generator=generator) for index in range(sections)})
    return latents


def joined(windows, overlap: int) -> np.ndarray:
    chunks: list[np.ndarray] = []
    joiner = OverlapJoiner(overlap, chunks.append)
    for pixels in windows:
        joiner.add(pixels)
    joiner.finish()
    return np.concatenate(chunks)


def per_window(vae, latents: dict, variant: str, sections: int) -> np.ndarray:
    def windows():
        for index in range(sections):
            window = torch.cat([latents[key] for key in window_keys(variant, index, sections)], dim=2)
            yield vae.decode(window / vae.config.scaling_factor, return_dict=False)[0].float()

    return joined(windows(), overlap_frames(WINDOW))


def tiles_once(vae, latents: dict, variant: str, sections: int, height: int, width: int) -> np.ndarray:
    decoder = VaeDecoder(vae, "cpu", "off", TileSettings(), height, width)

    def windows():
        for index in range(sections):
            keys = window_keys(variant, index, sections)
            window = torch.cat([latents[key] for key in keys], dim=2)
            yield decoder.window(window, latent_start(keys[0], WINDOW), latent_start(keys[-1], WINDOW))

    return joined(windows(), overlap_frames(WINDOW))


def whole_once(vae, latents: dict, sections: int) -> np.ndarray:
    sequence = torch.cat([latents[START]] + [latents[index] for index in range(sections)], dim=2)
    pixels = vae.decode(sequence / vae.config.scaling_factor, return_dict=False)[0].float()
    return to_uint8(pixels[0].transpose(0, 1))


def difference(frames: np.ndarray, reference: np.ndarray) -> dict:
    delta = np.abs(frames.astype(np.int64) - reference.astype(np.int64))
    mse = float((delta**2).mean())
    return {
        "mean": round(float(delta.mean()), 3),
        "max": int(delta.max()),
        "psnr_db": round(10 * np.log10(255**2 / mse), 2) if mse > 0 else None,
    }


class Calls:
    """Counts the decoder's forward calls (one per temporal tile, or per spatial tile when tiled)."""

    def __init__(self, vae):
        self.count = 0
        vae.decoder.register_forward_hook(self._count)

    def _count(self, *_args) -> None:
        self.count += 1


def timed(function, calls: Calls, repeat: int) -> tuple[np.ndarray, float, float, int]:
    """(result, best wall seconds, best process CPU seconds, decoder calls) over `repeat` runs."""
    best, best_cpu, result, count = float("inf"), float("inf"), None, 0
    for _ in range(repeat):
        calls.count = 0
        started, started_cpu = time.perf_counter(), time.process_time()
        result = function()
        best = min(best, time.perf_counter() - started)
        best_cpu = min(best_cpu, time.process_time() - started_cpu)
        count = calls.count
    return result, round(best, 2), round(best_cpu, 2), count


def run_case(vae, calls: Calls, variant: str, sections: int, resolution: int, repeat: int, seed: int) -> dict:
    height, width = bucket_size(1.0, 1.0, resolution)
    latents = job_latents(vae, sections, height, width, seed)
    whole_once(vae, latents, 1)  # warm-up: the first convolutions at a size set up their kernels
    before, before_s, before_cpu, before_calls = timed(
        lambda: per_window(vae, latents, variant, sections), calls, repeat
    )
    after, after_s, after_cpu, after_calls = timed(
        lambda: tiles_once(vae, latents, variant, sections, height, width), calls, repeat
    )
    whole, whole_s, whole_cpu, whole_calls = timed(lambda: whole_once(vae, latents, sections), calls, repeat)
    assert before.shape == after.shape == whole.shape, (before.shape, after.shape, whole.shape)
    return {
        "variant": variant,
        "sections": sections,
        "size": f"{width}x{height}",
        "frames": before.shape[0],
        "per_window_s": before_s,
        "tiles_once_s": after_s,
        "whole_once_s": whole_s,
        "per_window_cpu_s": before_cpu,
        "tiles_once_cpu_s": after_cpu,
        "whole_once_cpu_s": whole_cpu,
        "per_window_calls": before_calls,
        "tiles_once_calls": after_calls,
        "whole_once_calls": whole_calls,
        "tiles_once_vs_per_window": difference(after, before),
        "whole_once_vs_per_window": difference(whole, before),
    }


def run_tiling(vae, calls: Calls, resolution: int, repeat: int, seed: int) -> dict:
    height, width = bucket_size(1.0, 1.0, resolution)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((1, vae.config.latent_channels, 1, height // 8, width // 8), generator=generator)
    rows = {}
    for mode in ("off", "on"):
        decoder = VaeDecoder(vae, "cpu", mode, TileSettings(), height, width)
        decoder.frames(latents)  # warm-up
        pixels, seconds, _cpu, count = timed(lambda decoder=decoder: decoder.frames(latents), calls, repeat)
        rows[mode] = (to_uint8(pixels[0].transpose(0, 1)), seconds, count)
    return {
        "case": "spatial tiling, 1 latent frame",
        "size": f"{width}x{height}",
        "untiled_s": rows["off"][1],
        "tiled_s": rows["on"][1],
        "tiled_calls": rows["on"][2],
        "tiled_vs_untiled": difference(rows["on"][0], rows["off"][0]),
    }


def profile_window(vae, resolution: int, seed: int) -> str:
    """The operators one 18-latent-frame window decode (two sections) spends its time in."""
    from torch.profiler import ProfilerActivity, profile

    height, width = bucket_size(1.0, 1.0, resolution)
    latents = job_latents(vae, 2, height, width, seed)
    window = torch.cat([latents[0], latents[1]], dim=2) / vae.config.scaling_factor
    vae.decode(window[:, :, :2], return_dict=False)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        vae.decode(window, return_dict=False)
    return profiler.key_averages().table(sort_by="cpu_time_total", row_limit=14)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--variant", nargs="+", default=["bidirectional"], choices=["bidirectional", "f1"])
    parser.add_argument("--vae", choices=["tiny", "mid"], default="tiny")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiling", type=int, default=0, help="also compare spatial tiling at this resolution")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true", help="profile one window's decode by operator")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__},"
        f" {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at start"
    )
    print(machine, file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        vae = load_vae(args.vae, Path(folder))
        calls = Calls(vae)
        for variant in args.variant:
            for sections in (count for count in args.sections if count > 0):
                row = run_case(vae, calls, variant, sections, args.resolution, args.repeat, args.seed)
                row["vae"] = args.vae
                print(json.dumps(row), flush=True)
                results.append(row)
        if args.profile:
            print(profile_window(vae, args.resolution, args.seed), flush=True)
        if args.tiling:
            row = run_tiling(vae, calls, args.tiling, args.repeat, args.seed)
            row["vae"] = args.vae
            print(json.dumps(row), flush=True)
            results.append(row)
    print(f"\n{machine}, load average {os.getloadavg()[0]:.1f} at end\n")
    print("| VAE | variant | sections | size | frames | decoder calls | per-window s (CPU s) | tiles-once s (CPU s) "
          "| CPU saved | tiles-once max diff | whole-once s | whole-once mean / max diff, PSNR |")  # fmt: skip
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for row in results:
        if "sections" not in row:
            print(f"\n{json.dumps(row)}")
            continue
        whole = row["whole_once_vs_per_window"]
        saved = 1 - row["tiles_once_cpu_s"] / row["per_window_cpu_s"]
        print(
            f"| {row['vae']} | {row['variant']} | {row['sections']} | {row['size']} | {row['frames']} | "
            f"{row['per_window_calls']} -> {row['tiles_once_calls']} | "
            f"{row['per_window_s']:.2f} ({row['per_window_cpu_s']:.2f}) | "
            f"{row['tiles_once_s']:.2f} ({row['tiles_once_cpu_s']:.2f}) | {saved:.0%} | "
            f"{row['tiles_once_vs_per_window']['max']} | {row['whole_once_s']:.2f} | "
            f"{whole['mean']} / {whole['max']}, {whole['psnr_db']} dB |"
        )
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "rows": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
