"""Peak host RAM of raw frames: streaming a long video into a raw file, then out of it into H.264 and PNG frames.

Each step is a fresh subprocess, since peak RSS (ru_maxrss) is per process and never goes down:

    write   synthetic frames (a moving gradient, made chunk by chunk) -> RawFramesSink
    encode  RawFrames.iter_chunks -> VideoEncoderSink (PyAV libx264, yuv420p, crf 16, mp4)
    export  RawFrames.iter_chunks -> FrameExportSink (PNG)

The raw file of the default 2,000 frames at 256x256 is 375 MB (MiB, as all sizes here), so a process that
held it would show it; the script exits non-zero if any step's peak RSS passes --limit-mb.

    python benches/memory_raw.py
    python benches/memory_raw.py --frames 4000 --size 320 --chunk 32
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
FPS = 30


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def gradient_chunk(start: int, count: int, size: int):
    """Frames start..start+count of a gradient that drifts across the picture, with a pulsing blue.

    Built straight in uint8, frame by frame, so the generator itself adds only one chunk to the peak.
    """
    import math

    import numpy as np

    ramp = np.arange(size)
    frames = np.empty((count, size, size, 3), dtype=np.uint8)
    for i, t in enumerate(range(start, start + count)):
        frames[i, :, :, 0] = ((ramp + t) % size * 255 // size)[None, :]
        frames[i, :, :, 1] = ((ramp + 2 * t) % size * 255 // size)[:, None]
        frames[i, :, :, 2] = round(127.5 + 127.5 * math.sin(t / 15))
    return frames


def step_write(folder: Path, frames: int, size: int, chunk: int) -> dict:
    from framepack.video.raw import RawFramesSink

    path = folder / "bench.safetensors"
    sink = RawFramesSink(path, FPS, size, size, frames, metadata={"source": "benches/memory_raw.py"}, request={})
    for start in range(0, frames, chunk):
        sink.write(gradient_chunk(start, min(chunk, frames - start), size))
    sink.close()
    return {"output_mb": round(path.stat().st_size / 2**20, 1)}


def step_encode(folder: Path, chunk: int) -> dict:
    from framepack.video.encoder import VideoEncoderSink
    from framepack.video.raw import RawFrames

    with RawFrames(folder / "bench.safetensors") as raw:
        sink = VideoEncoderSink(folder / "bench.mp4", int(raw.fps), raw.width, raw.height, "libx264", "mp4", "crf:16")
        for frames in raw.iter_chunks(chunk):
            sink.write(frames)
        path = sink.close()
    return {"frames": sink.frames, "output_mb": round(path.stat().st_size / 2**20, 1)}


def step_export(folder: Path, chunk: int) -> dict:
    from framepack.video.frames import FrameExportSink
    from framepack.video.raw import RawFrames

    with RawFrames(folder / "bench.safetensors") as raw:
        sink = FrameExportSink(folder, "bench-frames", fmt="png")
        for frames in raw.iter_chunks(chunk):
            sink.write(frames)
        path = sink.close()
    size = sum(p.stat().st_size for p in path.iterdir())
    return {"frames": sink.frames, "output_mb": round(size / 2**20, 1)}


def child(step: str, folder: Path, frames: int, size: int, chunk: int) -> None:
    sys.path.insert(0, str(ROOT))
    import av  # noqa: F401  (imported up front so the baseline counts every library the steps load)
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401

    import framepack.video.encoder  # noqa: F401
    import framepack.video.frames  # noqa: F401
    import framepack.video.raw  # noqa: F401

    baseline = peak_rss_mb()
    started = time.perf_counter()
    if step == "write":
        result = step_write(folder, frames, size, chunk)
    elif step == "encode":
        result = step_encode(folder, chunk)
    else:
        result = step_export(folder, chunk)
    seconds = time.perf_counter() - started
    result.update(seconds=round(seconds, 1), baseline_mb=round(baseline, 1), peak_mb=round(peak_rss_mb(), 1))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256, help="width and height (even)")
    parser.add_argument("--chunk", type=int, default=64, help="frames per write / read")
    parser.add_argument("--limit-mb", type=float, default=500.0, help="fail when any step's peak RSS passes this")
    parser.add_argument("--child", choices=["write", "encode", "export"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.folder, args.frames, args.size, args.chunk)
        return

    raw_mb = args.frames * args.size * args.size * 3 / 2**20
    flags = f"--frames {args.frames} --size {args.size} --chunk {args.chunk} --limit-mb {args.limit_mb:g}"
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}, CPU only")
    print(f"command: python benches/memory_raw.py {flags}")
    video = f"{args.frames} frames {args.size}x{args.size} at {FPS} fps"
    print(f"video: {video} = {raw_mb:.0f} MB uint8 RGB, chunks of {args.chunk}")
    print(f"{'step':<8} {'frames':>7} {'output MB':>10} {'baseline MB':>12} {'peak RSS MB':>12} {'seconds':>8}")
    failed = []
    with tempfile.TemporaryDirectory() as folder:
        for step in ("write", "encode", "export"):
            command = [sys.executable, __file__, "--child", step, "--folder", folder]
            command += ["--frames", str(args.frames), "--size", str(args.size), "--chunk", str(args.chunk)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            result = json.loads(output)
            frames = result.get("frames", args.frames)
            sizes = f"{result['output_mb']:>10.1f} {result['baseline_mb']:>12.1f} {result['peak_mb']:>12.1f}"
            print(f"{step:<8} {frames:>7} {sizes} {result['seconds']:>8.1f}")
            if result["peak_mb"] > args.limit_mb:
                failed.append(f"{step} peaked at {result['peak_mb']:.0f} MB")
    if failed:
        print(f"FAIL: over the {args.limit_mb:g} MB limit: {'; '.join(failed)}")
        sys.exit(1)
    print(f"ok: every step stayed under {args.limit_mb:g} MB")


if __name__ == "__main__":
    main()
