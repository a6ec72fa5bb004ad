"""Peak host RAM of a source video (init_video) as it grows: encoding a long video must cost what a short one does.

A synthetic source (a drifting gradient, 320x240, H.264) is made once per length. Each measurement is then a fresh
subprocess, since peak RSS (ru_maxrss) is per process and never goes down; it loads the tiny self-test model first
and reports its RSS then as the baseline:

    encode    the source read with PyAV and fitted to the bucket (`framepack.video.source.read_frames`), VAE-encoded
              in chunks (`encode_frames`), exactly as `generate` does for init_video; the latents are kept
    generate  a whole job that continues the source with keep_source: encoded as above while its frames are written
              on (`HoldBack`) into a sink that counts them, then one new section (1 step) joined to it

The script exits non-zero if a long source's peak passes a short one's by more than --limit (15%).

    python benches/video_source_memory.py                                  # 121 and 1801 frames, both steps
    python benches/video_source_memory.py --frames 121 3601 --resolution 320 --steps encode
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
FPS, WIDTH, HEIGHT = 30, 320, 240


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_video(path: Path, frames: int) -> None:
    """A gradient drifting across the picture with a pulsing blue, made and encoded frame by frame."""
    import math

    import av
    import numpy as np

    ramp = np.arange(max(WIDTH, HEIGHT))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        frame = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
        for t in range(frames):
            frame[:, :, 0] = ((ramp[:WIDTH] + t) % WIDTH * 255 // WIDTH)[None, :]
            frame[:, :, 1] = ((ramp[:HEIGHT] + 2 * t) % HEIGHT * 255 // HEIGHT)[:, None]
            frame[:, :, 2] = round(127.5 + 127.5 * math.sin(t / 15))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


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


def request_for(video: Path, resolution: int, **fields):
    from framepack.request import GenerateRequest

    return GenerateRequest(
        prompt="a gradient drifts", init_video=str(video), resolution=resolution, latent_window_size=9, steps=1,
        duration=36 / FPS, fps=FPS, model="tiny", preview=False, cache="none", **fields,
    )  # fmt: skip


def measure(step: str, video: Path, resolution: int, folder: Path) -> dict:
    from framepack.generate import generate
    from framepack.models.loader import load_components
    from framepack.models.recipe import tiny_recipe
    from framepack.models.tiny import write_tiny_model
    from framepack.planning import plan_request
    from framepack.video.source import encode_frames, read_frames

    components = load_components(tiny_recipe(write_tiny_model(folder / "tiny")))
    request = request_for(video, resolution, keep_source=step == "generate", variant="f1")
    plan = plan_request(request)
    baseline = peak_rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    if step == "encode":
        source = plan.source
        frames = read_frames(str(video), plan.width, plan.height, source.first_used + source.used_frames)
        for _ in range(source.first_used):
            next(frames)
        latents = encode_frames(components.vae, frames, source.used_frames)
        written = source.used_frames
        latent_mb = latents.numel() * latents.element_size() / 2**20
    else:
        sink = CountingSink()
        generate(components, request, plan, [sink])
        written = sink.frames
        assert written == plan.generated_frames
        latent_mb = None
    return {
        "step": step, "source_frames": plan.source.frames, "frames": written, "size": f"{plan.width}x{plan.height}",
        "latent_mb": None if latent_mb is None else round(latent_mb, 2), "baseline_mb": round(baseline, 1),
        "peak_mb": round(peak_rss_mb(), 1), "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[121, 1801], help="source lengths, short first")
    parser.add_argument("--resolution", type=int, default=256, help="bucket resolution (default 256)")
    parser.add_argument("--steps", nargs="+", choices=["encode", "generate"], default=["encode", "generate"])
    parser.add_argument("--limit", type=float, default=0.15, help="largest allowed growth of the peak (0.15 = 15%%)")
    parser.add_argument("--child", nargs=3, metavar=("STEP", "VIDEO", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        step, video, folder = args.child
        print(json.dumps(measure(step, Path(video), args.resolution, Path(folder))))
        return 0

    print(f"# {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        videos = {}
        for frames in args.frames:
            videos[frames] = folder / f"source-{frames}.mp4"
            make_video(videos[frames], frames)
        print("| step | source frames | frames | size | latents MB | baseline MB | peak RSS MB | seconds | CPU s |")
        print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        for step in args.steps:
            peaks = []
            for frames in args.frames:
                command = [sys.executable, __file__, "--resolution", str(args.resolution)]
                command += ["--child", step, str(videos[frames]), str(folder)]
                output = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
                row = json.loads(output.strip().splitlines()[-1])
                peaks.append(row["peak_mb"])
                latents = "-" if row["latent_mb"] is None else row["latent_mb"]
                print(
                    f"| {step} | {row['source_frames']} | {row['frames']} | {row['size']} | {latents} | "
                    f"{row['baseline_mb']} | {row['peak_mb']} | {row['seconds']} | {row['cpu_seconds']} |",
                    flush=True,
                )
            growth = max(peaks) / peaks[0] - 1
            failed |= growth > args.limit
            print(f"# {step}: the longest source's peak is {growth:+.1%} of the shortest's (limit {args.limit:.0%})")
    print(f"# load average {os.getloadavg()[0]:.1f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
