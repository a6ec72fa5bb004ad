"""Peak host RAM for 2 vs 12 sections: our streaming section loop vs diffusers' HunyuanVideoFramepackPipeline.

Both run I2V on the tiny self-test model at the 1:1 bucket of resolution 256 (256x240), window 9, with the same
image and seed; each measurement is a fresh subprocess, since peak RSS (ru_maxrss) is per process. Ours writes
an H.264 file through the PyAV sink; the pipeline returns its frames as numpy (it holds the whole video).

    python benches/memory_sections.py              # 2 and 12 sections, prints a table
    python benches/memory_sections.py --sections 2 6 12 --steps 2
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


def run_ours(sections: int, steps: int, folder: Path) -> dict:
    from framepack.request import GenerateRequest
    from framepack.runner import Runner

    request = GenerateRequest(
        prompt="a paper boat on a pond",
        init_image=make_image(folder),
        resolution=256,
        duration=sections * 4 * WINDOW / FPS,
        fps=FPS,
        steps=steps,
        seed=SEED,
        model="tiny",
        output_dir=str(folder),
        filename="bench",
    )
    runner = Runner(device="cpu", home=folder / "home")
    baseline = None

    def on_event(event):
        nonlocal baseline
        if baseline is None and type(event).__name__ == "StageStarted" and event.stage == "encode prompts":
            baseline = peak_rss_mb()

    result = runner.run(request, on_event=on_event)
    assert result.plan.num_sections == sections
    return {"frames": result.frames, "size": f"{result.plan.width}x{result.plan.height}", "baseline_mb": baseline}


def run_diffusers(sections: int, steps: int, folder: Path) -> dict:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoFramepackPipeline
    from PIL import Image

    from framepack.encoders import PROMPT_TEMPLATE, template_crop_start
    from framepack.models.loader import load_components
    from framepack.models.recipe import tiny_recipe
    from framepack.models.tiny import write_tiny_model

    c = load_components(tiny_recipe(write_tiny_model(folder / "tiny")))
    pipe = HunyuanVideoFramepackPipeline(
        text_encoder=c.text_encoder,
        tokenizer=c.tokenizer,
        transformer=c.transformer,
        vae=c.vae,
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
        text_encoder_2=c.text_encoder_2,
        tokenizer_2=c.tokenizer_2,
        image_encoder=c.image_encoder,
        feature_extractor=c.feature_extractor,
    )
    pipe.set_progress_bar_config(disable=True)
    baseline = peak_rss_mb()
    frames = pipe(
        image=Image.open(make_image(folder)),
        prompt="a paper boat on a pond",
        height=256,
        width=240,
        num_frames=sections * ((WINDOW - 1) * 4 + 1),
        latent_window_size=WINDOW,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(SEED),
        prompt_template={"template": PROMPT_TEMPLATE, "crop_start": template_crop_start(c.tokenizer)},
        output_type="np",
    ).frames[0]
    return {"frames": int(frames.shape[0]), "size": "240x256", "baseline_mb": baseline}


def child(which: str, sections: int, steps: int) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = (run_ours if which == "ours" else run_diffusers)(sections, steps, Path(folder))
        result.update(seconds=round(time.perf_counter() - started, 1), peak_mb=round(peak_rss_mb(), 1))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", type=int, nargs="+", default=[2, 12])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", choices=["ours", "diffusers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.sections[0], args.steps)
        return

    print(f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}, CPU only")
    sections = " ".join(map(str, args.sections))
    print(f"command: python benches/memory_sections.py --sections {sections} --steps {args.steps}")
    print(f"{'engine':<10} {'sections':>8} {'frames':>7} {'peak RSS MB':>12} {'seconds':>8}")
    peaks: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for which in ("ours", "diffusers"):
        for sections in args.sections:
            command = [
                sys.executable,
                __file__,
                "--child",
                which,
                "--sections",
                str(sections),
                "--steps",
                str(args.steps),
            ]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            result = json.loads(output)
            peaks[which].append(result["peak_mb"])
            print(
                f"{which:<10} {sections:>8} {result['frames']:>7} {result['peak_mb']:>12.1f} {result['seconds']:>8.1f}"
            )
    for which, values in peaks.items():
        growth = (values[-1] - values[0]) / values[0] * 100
        print(
            f"{which}: peak RSS {values[0]:.0f} -> {values[-1]:.0f} MB ({growth:+.1f}%) "
            f"from {args.sections[0]} to {args.sections[-1]} sections"
        )


if __name__ == "__main__":
    main()
