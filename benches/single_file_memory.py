"""Peak host RAM of loading the FramePack transformer from one .safetensors file, against other ways to load it.

A random-weight FramePack transformer with the real head size (128, so its config is inferred from the file as
for the community's files) is written once as a bf16 single file, an fp8 single file (Linear weights in
float8_e4m3fn, norms and biases in bf16, as the community's fp8 file) and a diffusers folder. Each load then runs
in a fresh process, which reports its resident memory before loading (after imports) and its peak during the load
(VmHWM, reset after the imports; Linux only):
- `single-file`: ours, `load_transformer_file` (bf16 file, bf16 model);
- `single-file-fp8`: ours on the fp8 file (the Linear weights stay float8, upcast per call);
- `from-pretrained`: diffusers' `from_pretrained` of the folder (memory-mapped safetensors);
- `load-file`: the naive way, `safetensors.torch.load_file` then `load_state_dict` into a model built in memory,
  which holds the weights twice (the dict and the model) at its peak.

    python benches/single_file_memory.py                        # hidden 1024, 2 + 4 blocks (about 280 MB in bf16)
    python benches/single_file_memory.py --heads 4 --layers 1 2 --json   # small (tests/test_single_file.py)
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
WAYS = ("single-file", "single-file-fp8", "from-pretrained", "load-file")


def current_rss_mb() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
    """Reset the kernel's peak RSS of this process (VmHWM) to its current RSS (Linux 4.0+), so that the peak of
    the imports does not hide the peak of the load."""
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")


def peak_rss_mb() -> float:
    """VmHWM: the peak RSS since the last reset (ru_maxrss cannot be reset)."""
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(folder: Path, heads: int, layers: tuple[int, int]) -> dict:
    """Write the folder, the bf16 file and the fp8 file; return their sizes."""
    import torch
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    from framepack.models.single_file import write_transformer_file

    torch.manual_seed(0)
    model = HunyuanVideoFramepackTransformer3DModel(
        in_channels=16,
        out_channels=16,
        num_attention_heads=heads,
        attention_head_dim=128,
        num_layers=layers[0],
        num_single_layers=layers[1],
        num_refiner_layers=1,
        text_embed_dim=256,
        pooled_projection_dim=128,
        has_image_proj=True,
        image_proj_dim=256,
        has_clean_x_embedder=True,
    ).to(torch.bfloat16)
    model.save_pretrained(folder / "folder")
    write_transformer_file(model, folder / "model-bf16.safetensors", with_config=False)
    write_transformer_file(model, folder / "model-fp8.safetensors", float8=True, with_config=False)
    return {
        name: round((folder / name).stat().st_size / 2**20, 1)
        for name in ("model-bf16.safetensors", "model-fp8.safetensors")
    }


def child(way: str, folder: Path) -> dict:
    import torch
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    from framepack.models.quantize import module_bytes
    from framepack.models.single_file import load_transformer_file

    reset_peak_rss()
    before = current_rss_mb()
    started = time.perf_counter()
    if way == "single-file":
        model = load_transformer_file(folder / "model-bf16.safetensors", torch.bfloat16)
    elif way == "single-file-fp8":
        model = load_transformer_file(folder / "model-fp8.safetensors", torch.bfloat16)
    elif way == "from-pretrained":
        model = HunyuanVideoFramepackTransformer3DModel.from_pretrained(folder / "folder", torch_dtype=torch.bfloat16)
    else:
        from safetensors.torch import load_file

        config = HunyuanVideoFramepackTransformer3DModel.load_config(folder / "folder")
        model = HunyuanVideoFramepackTransformer3DModel.from_config(config).to(torch.bfloat16)
        model.load_state_dict(load_file(str(folder / "model-bf16.safetensors")))
    seconds = time.perf_counter() - started
    model_mb = module_bytes(model) / 2**20
    peak = peak_rss_mb()
    return {
        "way": way,
        "model_mb": round(model_mb, 1),
        "before_mb": round(before, 1),
        "peak_mb": round(peak, 1),
        "added_mb": round(peak - before, 1),
        "ratio": round((peak - before) / model_mb, 3),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=8, help="attention heads of 128 (hidden = 128 x heads)")
    parser.add_argument("--layers", type=int, nargs=2, default=[2, 4], metavar=("DUAL", "SINGLE"))
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        print(json.dumps(child(args.child, args.folder)))
        return

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        sizes = build(folder, args.heads, tuple(args.layers))
        results = []
        for way in args.ways:
            command = [sys.executable, __file__, "--child", way, "--folder", str(folder)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps({"files_mb": sizes, "results": results}))
        return
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}, CPU only")
    print(
        f"command: python benches/single_file_memory.py --heads {args.heads} --layers {' '.join(map(str, args.layers))}"
    )
    print(f"files: {sizes}")
    print(f"{'way':<16} {'model MB':>9} {'RSS before':>11} {'peak RSS':>9} {'added':>8} {'added/model':>12} {'s':>6}")
    for row in results:
        print(
            f"{row['way']:<16} {row['model_mb']:>9.1f} {row['before_mb']:>11.1f} {row['peak_mb']:>9.1f} "
            f"{row['added_mb']:>8.1f} {row['ratio']:>12.2f} {row['seconds']:>6.2f}"
        )


if __name__ == "__main__":
    main()
