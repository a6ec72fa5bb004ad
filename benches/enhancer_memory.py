"""Memory and time of the enhance stage, and that its model is gone afterwards.

Runs the job's enhance stage (`framepack.enhancer.stage.enhance_stage`) for a request with three sections and two
distinct prompts on --device, with the self-test enhancer (`--enhancer tiny`, the default) or a real one from the
Hugging Face cache (`--enhancer Qwen/Qwen3-VL-2B-Instruct`), and reports: the enhancer's weight bytes, on CUDA the
peak memory allocated during the stage and what stays allocated after it (the enhancer must be freed before the
FramePack transformer is placed: after == before), on the CPU the process's resident memory before and after; the
stage's seconds; and the texts.

    python benches/enhancer_memory.py --device cuda
    python benches/enhancer_memory.py --device cuda --enhancer Qwen/Qwen3-VL-2B-Instruct --quantize int8

Prints one JSON object; exits 1 when memory stays allocated on CUDA after the stage.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from framepack.enhancer.stage import enhance_stage  # noqa: E402
from framepack.models.loader import DEFAULT_HUB  # noqa: E402
from framepack.plan import make_plan  # noqa: E402
from framepack.request import GenerateRequest  # noqa: E402


def resident_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - a figure the report can do without
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--enhancer", default="tiny")
    parser.add_argument("--quantize", default="none", choices=["none", "int8", "float8", "int4"])
    parser.add_argument("--max-tokens", type=int, default=120)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "start.png"
        Image.new("RGB", (832, 480), (40, 110, 190)).save(image)
        request = GenerateRequest(
            prompt="a paper boat on a pond",
            section_prompts="drifts left\nspins slowly\ndrifts left",
            init_image=str(image),
            duration=4.0,
            enhance="require",
            enhancer=args.enhancer,
            enhance_quantize=args.quantize,
            enhance_max_tokens=args.max_tokens,
        )
        plan = make_plan(request, (832, 480))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else resident_bytes()
        start = time.perf_counter()
        enhanced, event = enhance_stage(request, plan, device, DEFAULT_HUB, Path(folder) / "home")
        seconds = time.perf_counter() - start
        after = torch.cuda.memory_allocated(device) if device.type == "cuda" else resident_bytes()
    report = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "enhancer": args.enhancer,
        "quantize": args.quantize,
        "sections": plan.num_sections,
        "prompts": len(enhanced.enhanced_prompts),
        "seconds": round(seconds, 3),
        "weight_bytes": event.weight_bytes,
        "peak_bytes": event.peak_bytes,
        "allocated_before" if device.type == "cuda" else "resident_before": before,
        "allocated_after" if device.type == "cuda" else "resident_after": after,
        "texts": enhanced.enhanced_prompts,
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 1 if device.type == "cuda" and after != before else 0


if __name__ == "__main__":
    sys.exit(main())
