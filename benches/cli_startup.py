"""Wall time of CLI commands that need no model: `plan` and the errors of bad flags.

Each case runs `python -m framepack ...` as a fresh process --runs times (after one unmeasured warm-up run that
fills the OS file cache) in an empty temporary folder with its own FRAMEPACK_HOME, and the wall time from start
to exit is measured here. The cases:

    plan T2V            plan --prompt ... --duration 5
    plan I2V            plan --init-image start.png (a 640x480 PNG, read for its size) --duration 5
    bad flag value      generate --steps 0 (exit 2: "steps: Input should be greater than or equal to 1")
    missing image       generate --init-image missing.png (exit 2: "init_image: not an existing file path ...")

    python benches/cli_startup.py                                  # this checkout
    python benches/cli_startup.py --root /path/to/other/checkout   # the same cases on another version

Prints one JSON object per case and a Markdown table (min and median seconds); exits 1 when a case's median is
over --target-s or a case ends with an unexpected exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a paper boat drifts across a pond"
CASES = {  # name: (arguments after `python -m framepack`, expected exit code)
    "plan T2V": (["plan", "--prompt", PROMPT, "--duration", "5"], 0),
    "plan I2V": (["plan", "--prompt", PROMPT, "--init-image", "start.png", "--duration", "5"], 0),
    "bad flag value": (["generate", "--prompt", PROMPT, "--steps", "0"], 2),
    "missing image": (["generate", "--prompt", PROMPT, "--init-image", "missing.png"], 2),
}


def run_once(python: str, root: Path, arguments: list[str], folder: Path) -> tuple[float, int, str]:
    env = {**os.environ, "PYTHONPATH": str(root), "FRAMEPACK_HOME": str(folder / "home"), "HF_HUB_OFFLINE": "1"}
    env.pop("FRAMEPACK_MODEL", None)
    started = time.perf_counter()
    done = subprocess.run([python, "-m", "framepack", *arguments], cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    lines = done.stderr.strip().splitlines()
    return seconds, done.returncode, lines[-1] if lines else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to time (default: this one)")
    parser.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")
    parser.add_argument("--runs", type=int, default=7, help="measured runs per case (default: %(default)s)")
    parser.add_argument(
        "--target-s", type=float, default=1.5, help="median a case must stay under (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    rows, failed = [], False
    with tempfile.TemporaryDirectory(prefix="framepack-cli-bench-") as temporary:
        folder = Path(temporary)
        Image.new("RGB", (640, 480), (90, 140, 200)).save(folder / "start.png")
        for name, (arguments, expected) in CASES.items():
            run_once(args.python, args.root, arguments, folder)  # warm-up: the OS file cache, .pyc files
            times, codes, last = [], set(), ""
            for _ in range(args.runs):
                seconds, code, last = run_once(args.python, args.root, arguments, folder)
                times.append(seconds)
                codes.add(code)
            row = {
                "case": name,
                "command": "python -m framepack " + " ".join(arguments),
                "runs": args.runs,
                "min_s": round(min(times), 3),
                "median_s": round(statistics.median(times), 3),
                "exit_codes": sorted(codes),
                "stderr_last_line": last,
            }
            print(json.dumps(row))
            rows.append(row)
            failed |= codes != {expected} or row["median_s"] > args.target_s
    print()
    print(f"root: {args.root}, {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs")
    print("| case | min s | median s | exit |")
    print("| --- | ---: | ---: | --- |")
    for row in rows:
        print(
            f"| {row['case']} | {row['min_s']:.2f} | {row['median_s']:.2f} | {','.join(map(str, row['exit_codes']))} |"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
