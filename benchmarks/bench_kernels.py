"""TriSpec's kernels vs plain torch: time and achieved memory bandwidth.

python benchmarks/bench_kernels.py [--n 256] [--vocab 151936] [--json out.json]
Margins (fused softmax top-1/top-2) vs torch softmax + topk, and PyramidSD's
divergence (fused JS of two logits rows) vs the torch reference; GB/s counts one
read of the input logits. On a GPU it times the Triton kernels and torch;
elsewhere the torch references only.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from trispec_vllm.kernels import margins
from trispec_vllm.kernels.divergence import divergence_reference, divergence_triton


def timeit(fn, device: str, iters: int) -> float:
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def torch_softmax_topk(x: torch.Tensor):
    p = torch.softmax(x.float(), dim=-1)
    top = p.topk(2, dim=-1)
    return top.indices[:, 0], top.values[:, 0], top.values[:, 0] - top.values[:, 1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[1, 32, 256])
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak = None
    rows = []
    print(f"device={device} vocab={args.vocab}")
    print(f"{'N':>5} {'dtype':>9} {'impl':>14} {'time_us':>10} {'GB/s':>8}")
    for n in args.n:
        for dtype in (torch.bfloat16, torch.float32):
            x = torch.randn(n, args.vocab, device=device).to(dtype)
            nbytes = x.numel() * x.element_size()
            impls = {"torch_softmax": lambda x=x: torch_softmax_topk(x)}
            if device == "cuda":
                impls["triton_margin"] = lambda x=x: margins.top2_margins_triton(x)
            else:
                impls["reference"] = lambda x=x: margins.top2_margins_reference(x)
            for name, fn in impls.items():
                iters = args.iters if device == "cuda" else max(2, args.iters // 10)
                sec = timeit(fn, device, iters)
                gbs = nbytes / sec / 1e9
                rows.append(dict(n=n, dtype=str(dtype), impl=name, seconds=sec, gbps=gbs))
                print(f"{n:>5} {str(dtype)[6:]:>9} {name:>14} {sec * 1e6:>10.1f} {gbs:>8.1f}")
            y = torch.randn(n, args.vocab, device=device).to(dtype)
            impls = {"torch_js": lambda x=x, y=y: divergence_reference(x, y)}
            if device == "cuda":
                impls["triton_js"] = lambda x=x, y=y: divergence_triton(x, y)
            for name, fn in impls.items():
                iters = args.iters if device == "cuda" else max(2, args.iters // 10)
                sec = timeit(fn, device, iters)
                gbs = 2 * nbytes / sec / 1e9
                rows.append(dict(n=n, dtype=str(dtype), impl=name, seconds=sec, gbps=gbs))
                print(f"{n:>5} {str(dtype)[6:]:>9} {name:>14} {sec * 1e6:>10.1f} {gbs:>8.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=device, peak_gbps=peak, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
