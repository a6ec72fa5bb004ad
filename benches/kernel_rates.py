"""Kernel rates at the full FramePack call's shapes (N = 18293 tokens, D = 3072, 24 heads of 128), bf16, on CUDA.

Times (CUDA events, median of 10 after 3 warm-ups) PyTorch's scaled_dot_product_attention over the joint sequence
with its default choice and with each backend forced, and the Linear shapes of the blocks; prints ms and TFLOP/s
as JSON. Together with `transformer_speed.py`'s FLOPs count this says how far a transformer call is from its
matmul and attention floor (docs/performance.md).

    python benches/kernel_rates.py
"""

import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

TOKENS, HEADS, HEAD_DIM = 18293, 24, 128  # the full config's joint sequence: 17,500 latent + 793 condition tokens
BACKENDS = {
    "default": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


def timed(fn, repeats: int = 10) -> float:
    """Median seconds of `fn` on the GPU (CUDA events), after 3 warm-up runs."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


def rate(seconds: float, flops: float) -> dict:
    return {"ms": round(seconds * 1000, 2), "tflops": round(flops / seconds / 1e12, 1)}


def main() -> None:
    n, d = TOKENS, HEADS * HEAD_DIM
    generator = torch.Generator("cuda").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=generator)

    results = {}
    q, k, v = (randn(1, HEADS, n, HEAD_DIM) for _ in range(3))
    for label, backend in BACKENDS.items():
        try:
            if backend is None:
                seconds = timed(lambda: F.scaled_dot_product_attention(q, k, v))
            else:
                with sdpa_kernel(backend):
                    seconds = timed(lambda: F.scaled_dot_product_attention(q, k, v))
            results[f"sdpa_{label}"] = rate(seconds, 4 * n * n * d)  # QK^T and AV
        except Exception as error:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
            results[f"sdpa_{label}"] = {"error": f"{type(error).__name__}: {str(error)[:150]}"}
    x = {width: randn(n, width) for width in (d, 4 * d, 5 * d)}
    shapes = {"qkv": (d, 3 * d), "mlp_in": (d, 4 * d), "mlp_out": (4 * d, d), "single_out": (5 * d, d)}
    for label, (inner, outer) in shapes.items():
        w = randn(outer, inner)
        results[f"linear_{label}"] = rate(timed(lambda x=x[inner], w=w: F.linear(x, w)), 2 * n * inner * outer)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
