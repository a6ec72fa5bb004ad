"""Seconds per section and peak host RAM as the video grows: our engine against diffusers'
HunyuanVideoFramepackPipeline, doing the same work on the same small random model.

Both run I2V on the tiny self-test model at the 1:1 bucket of resolution 256 (256x240), window 9, with the same
image, prompt and seed; each measurement is a fresh subprocess, since peak RSS (ru_maxrss) is per process.

- `--mode equal` (default): the same work. Ours runs `framepack.generate.generate` with the Euler sampler (the
  pipeline's FlowMatchEulerDiscreteScheduler, with the same dynamic shift), no cache and no section previews, into
  a sink that only counts the frames; the pipeline returns its frames as numpy (it holds the whole video, ours
  keeps none). The time is that of the generation call alone (prompt and image encoding, sampling, VAE decode),
  after the models are loaded; it is divided by the number of sections. With these settings our frames equal the
  pipeline's within 1 level of 255 (tests/test_parity.py).

Each run reports wall seconds and CPU seconds (the process's user + system time) of the generation call: on a
machine shared with other work the wall time swings with the load, the CPU time much less. The engines take
turns for each section count, and the load average after each run is printed.
- `--mode runner`: ours through the Runner with the request's defaults (UniPC, TeaCache, section previews) writing
  an H.264 file, as a user runs it; the pipeline as above.

    python benches/memory_sections.py                                   # 1 2 4 8 16 sections, equal work
    python benches/memory_sections.py --sections 2 12 --mode runner    # the earlier comparison
    python benches/memory_sections.py --json out.json --plot out.png   # also save the numbers and a plot
    python benches/memory_sections.py --plot-from out.json --plot out.png   # only the plot (needs matplotlib)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINDOW, FPS, SEED = 9, 30, 7
PROMPT = "a paper boat on a pond"
ENGINES = ("ours", "diffusers")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_image(folder: Path) -> str:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:256, 0:240].astype(np.float32)
    pixels = np.stack([x / 240, y / 256, 0.5 + 0.5 * np.sin((x + y) / 9)], axis=-1)
    path = folder / "start.png"
    Image.fromarray((pixels * 255).astype("uint8")).save(path)
    return str(path)


def request_for(sections: int, steps: int, folder: Path, **fields):
    from framepack.request import GenerateRequest

    return GenerateRequest(
        prompt=PROMPT,
        init_image=make_image(folder),
        resolution=256,
        duration=sections * 4 * WINDOW / FPS,
        fps=FPS,
        steps=steps,
        seed=SEED,
        model="tiny",
        output_dir=str(folder),
        filename="bench",
        **fields,
    )


class CountingSink:
    """Counts the frames it is given and keeps none of them."""

    def __init__(self) -> None:
        self.frames = 0

    def write(self, frames) -> None:
        self.frames += len(frames)

    def close(self) -> None:
        return None

    def abort(self) -> None:
        return None


def run_ours_equal(sections: int, steps: int, folder: Path) -> dict:
    from framepack.generate import generate
    from framepack.models.loader import load_components
    from framepack.models.recipe import tiny_recipe
    from framepack.models.tiny import write_tiny_model
    from framepack.planning import plan_request

    components = load_components(tiny_recipe(write_tiny_model(folder / "tiny")))
    request = request_for(sections, steps, folder, sampler="euler", cache="none", preview=False)
    plan = plan_request(request)
    assert plan.num_sections == sections
    sink = CountingSink()
    baseline = peak_rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    result = generate(components, request, plan, [sink])
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert sink.frames == result.frames == plan.generated_frames
    return {"frames": sink.frames, "baseline_mb": baseline, "seconds": seconds, "cpu_seconds": cpu}


def run_ours_runner(sections: int, steps: int, folder: Path) -> dict:
    from framepack.runner import Runner

    request = request_for(sections, steps, folder)
    runner = Runner(device="cpu", home=folder / "home")
    baseline = started = cpu = None

    def on_event(event):
        nonlocal baseline, started, cpu
        if baseline is None and type(event).__name__ == "StageStarted" and event.stage == "encode prompts":
            baseline, started, cpu = peak_rss_mb(), time.perf_counter(), time.process_time()

    result = runner.run(request, on_event=on_event)
    assert result.plan.num_sections == sections
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"frames": result.frames, "baseline_mb": baseline, "seconds": seconds, "cpu_seconds": cpu}


def run_diffusers(sections: int, steps: int, folder: Path) -> dict:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoFramepackPipeline
    from PIL import Image

    from framepack.encoders import PROMPT_TEMPLATE, template_crop_start
    from framepack.models.loader import load_components
    from framepack.models.recipe import tiny_recipe
    from framepack.models.tiny import write_tiny_model

    c = load_components(tiny_recipe(write_tiny_model(folder / "tiny")))
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.15
    )
    pipe = HunyuanVideoFramepackPipeline(
        text_encoder=c.text_encoder,
        tokenizer=c.tokenizer,
        transformer=c.transformer,
        vae=c.vae,
        scheduler=scheduler,
        text_encoder_2=c.text_encoder_2,
        tokenizer_2=c.tokenizer_2,
        image_encoder=c.image_encoder,
        feature_extractor=c.feature_extractor,
    )
    pipe.set_progress_bar_config(disable=True)
    image = Image.open(make_image(folder))
    baseline = peak_rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    frames = pipe(
        image=image,
        prompt=PROMPT,
        height=256,
        width=240,
        num_frames=sections * ((WINDOW - 1) * 4 + 1),
        latent_window_size=WINDOW,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(SEED),
        prompt_template={"template": PROMPT_TEMPLATE, "crop_start": template_crop_start(c.tokenizer)},
        output_type="np",
    ).frames[0]
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"frames": int(frames.shape[0]), "baseline_mb": baseline, "seconds": seconds, "cpu_seconds": cpu}


def child(engine: str, mode: str, sections: int, steps: int) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    run = {"diffusers": run_diffusers, "ours": run_ours_equal if mode == "equal" else run_ours_runner}[engine]
    with tempfile.TemporaryDirectory() as folder:
        result = run(sections, steps, Path(folder))
    result.update(
        engine=engine,
        sections=sections,
        seconds=round(result["seconds"], 2),
        cpu_seconds=round(result["cpu_seconds"], 2),
        per_section=round(result["seconds"] / sections, 3),
        cpu_per_section=round(result["cpu_seconds"] / sections, 3),
        peak_mb=round(peak_rss_mb(), 1),
    )
    print(json.dumps(result))


def load_average() -> str:
    try:
        return " ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return "?"


def summary(results: list[dict], sections: list[int]) -> dict:
    """Overhead of ours over diffusers (wall and CPU time) per section count and over all runs, and each engine's
    peak RSS growth from the first section count to the last."""
    by = {(row["engine"], row["sections"]): row for row in results}
    both = [count for count in sections if ("ours", count) in by and ("diffusers", count) in by]
    result: dict = {}
    for key in ("seconds", "cpu_seconds"):
        result[f"overhead_{key}"] = {
            count: round(by["ours", count][key] / by["diffusers", count][key] - 1.0, 4) for count in both
        }
        totals = [sum(by[engine, count][key] for count in both) for engine in ENGINES]
        if totals[1]:
            result[f"overhead_{key}_total"] = round(totals[0] / totals[1] - 1.0, 4)
    result["rss_growth"] = {
        engine: round(by[engine, sections[-1]]["peak_mb"] / by[engine, sections[0]]["peak_mb"] - 1.0, 4)
        for engine in ENGINES
        if (engine, sections[0]) in by and (engine, sections[-1]) in by
    }
    return result


def plot(data: dict, path: Path) -> None:
    """Seconds per section and peak RSS against the number of sections, both engines (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (speed, memory) = plt.subplots(1, 2, figsize=(10, 4))
    for engine, marker, color in (("ours", "o", "C0"), ("diffusers", "s", "C1")):
        rows = sorted((row for row in data["results"] if row["engine"] == engine), key=lambda row: row["sections"])
        counts = [row["sections"] for row in rows]
        speed.plot(counts, [row["per_section"] for row in rows], marker + "-", color=color, label=f"{engine}, wall")
        speed.plot(counts, [row["cpu_per_section"] for row in rows], marker + ":", color=color, label=f"{engine}, CPU")
        memory.plot(counts, [row["peak_mb"] for row in rows], marker + "-", color=color, label=engine)
    for axes, label in ((speed, "seconds per section"), (memory, "peak RSS (MB)")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(data["sections"], [str(count) for count in data["sections"]])
        axes.set_xlabel("sections")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
        axes.legend()
    speed.set_ylim(bottom=0)
    memory.set_ylim(bottom=0)
    figure.suptitle(f"FramePack on the CPU, tiny model, 256x240, {data['steps']} Euler steps, no cache")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--mode", choices=["equal", "runner"], default="equal")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--plot", type=Path, help="also draw them as a PNG here (needs matplotlib)")
    parser.add_argument("--plot-from", type=Path, help="only draw the plot of a JSON written by --json")
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.mode, args.sections[0], args.steps)
        return
    if args.plot_from:
        plot(json.loads(args.plot_from.read_text()), args.plot or args.plot_from.with_suffix(".png"))
        return

    sections = " ".join(map(str, args.sections))
    command = f"python benches/memory_sections.py --sections {sections} --steps {args.steps} --mode {args.mode}"
    machine = f"{platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}, CPU only"
    print(f"machine: {machine}; load average at start {load_average()}")
    print(f"command: {command}")
    print(
        f"{'engine':<10} {'sections':>8} {'frames':>7} {'seconds':>8} {'s/section':>10} {'CPU s/section':>14} "
        f"{'peak RSS MB':>12} {'load':>5}"
    )
    results = []
    for count in args.sections:  # the engines alternate, so that both meet the same load on a shared machine
        for engine in ENGINES if count % 2 else reversed(ENGINES):
            run = [sys.executable, __file__, "--child", engine, "--mode", args.mode, "--sections", str(count)]
            run += ["--steps", str(args.steps)]
            output = subprocess.run(run, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            row = json.loads(output)
            row["load_average"] = round(os.getloadavg()[0], 1)
            results.append(row)
            print(
                f"{engine:<10} {count:>8} {row['frames']:>7} {row['seconds']:>8.1f} {row['per_section']:>10.2f} "
                f"{row['cpu_per_section']:>14.2f} {row['peak_mb']:>12.1f} {row['load_average']:>5.1f}",
                flush=True,
            )
    numbers = summary(results, args.sections)
    for count in numbers["overhead_seconds"]:
        wall, cpu = numbers["overhead_seconds"][count], numbers["overhead_cpu_seconds"][count]
        print(f"overhead of ours at {count} sections: {wall * 100:+.1f}% wall time, {cpu * 100:+.1f}% CPU time")
    if "overhead_seconds_total" in numbers:
        print(
            f"overhead of ours over all runs: {numbers['overhead_seconds_total'] * 100:+.1f}% wall time, "
            f"{numbers['overhead_cpu_seconds_total'] * 100:+.1f}% CPU time"
        )
    for engine, value in numbers["rss_growth"].items():
        print(f"{engine}: peak RSS {value * 100:+.1f}% from {args.sections[0]} to {args.sections[-1]} sections")
    print(f"load average at the end {load_average()}")
    data = {
        "machine": machine,
        "command": command,
        "steps": args.steps,
        "mode": args.mode,
        "sections": args.sections,
        "results": results,
        "summary": numbers,
        "load_average_end": load_average(),
    }
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    if args.plot:
        plot(data, args.plot)


if __name__ == "__main__":
    main()
