"""vLLM's CPU linear layers against the rows they are given: seconds of one decoding
pass's matmuls (the real pair's layer shapes, bf16 weights streamed from memory as in
decoding) for 1 to 16 rows, as they are and padded to `cpu_gemm.MIN_ROWS` rows.

    python benchmarks/cpu_gemm.py [--rounds 5] [--out benchmarks/results/cpu_gemm.json]
    python benchmarks/cpu_gemm.py --dtypes bfloat16 float32 --rows 1 2 4 8 16 32 \
        --out benchmarks/results/cpu_gemm_dtypes.json

Shows where `TRISPEC_CPU_GEMM_MIN_ROWS` pays (`trispec_vllm.engine.cpu_gemm`), and with
`--dtypes` what the weights' dtype changes (`cpu_runtime.preferred_dtype`). Runs
vLLM's own dispatch (`dispatch_cpu_unquantized_gemm`), so it measures the kernel an
engine on this machine would use. Never run it beside the test suite or a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def layer_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(out, in) of one decoder layer's matmuls and of the LM head."""
    h, i = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    d = h // heads
    return {
        "qkv": ((heads + 2 * kv) * d, h),
        "o": (h, heads * d),
        "gate_up": (2 * i, h),
        "down": (h, i),
        "lm_head": (config["vocab_size"], h),
    }


def build(shapes: dict[str, tuple[int, int]], layers: int, dtype: torch.dtype = torch.bfloat16):
    from trispec_vllm.engine.cpu_gemm import linear_layer

    return [
        linear_layer(shape, dtype)
        for name, shape in shapes.items()
        for _ in range(1 if name == "lm_head" else layers)
    ]


def pass_seconds(mods, rows: int, pad: int) -> float:
    from trispec_vllm.engine.cpu_gemm import padded_linear

    t0 = time.perf_counter()
    for mod in mods:
        x = torch.randn(rows, mod.weight.shape[1], dtype=mod.weight.dtype)
        run = padded_linear(mod.cpu_linear, pad) if pad > rows else mod.cpu_linear
        run(x, mod.weight, None)
    return time.perf_counter() - t0


def main() -> None:
    from bench_speed import cpu_model

    from trispec_vllm.engine.cpu_gemm import MIN_ROWS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--layers", type=int, default=8, help="decoder layers per pass")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 8, 12, 16])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16"], help="weights' dtypes")
    ap.add_argument("--out", type=Path, default=RESULTS / "cpu_gemm.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {
        "machine": f"{cpu_model()}, {args.threads} threads",
        "layers": args.layers,
        "min_rows": MIN_ROWS,
        "models": {},
    }
    runs = [(m, d) for m in ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b") for d in args.dtypes]
    for model, dtype in runs:
        config = json.loads((HERE / "model_configs" / f"{model}.json").read_text())
        mods = build(layer_shapes(config), args.layers, getattr(torch, dtype))
        variants = [(r, r) for r in args.rows]
        if dtype == "bfloat16":  # the padding pads bf16 inputs only
            variants += [(r, MIN_ROWS) for r in args.rows if r < MIN_ROWS]
        if len(args.dtypes) > 1:
            model = f"{model} {dtype}"
        times: dict[tuple[int, int], list[float]] = {v: [] for v in variants}
        for _ in range(args.rounds + 1):  # the first round warms up, interleaved
            for rows, pad in variants:
                times[(rows, pad)].append(pass_seconds(mods, rows, pad))
        rows_out = []
        for (rows, pad), ts in times.items():
            ms = 1e3 * statistics.median(ts[1:])
            rows_out.append(
                {
                    "rows": rows,
                    "padded_to": pad,
                    "ms": ms,
                    "ms_range": [1e3 * min(ts[1:]), 1e3 * max(ts[1:])],
                }
            )
            label = f"{rows} padded to {pad}" if pad > rows else f"{rows}"
            print(f"{model}: {label:>14} rows  {ms:7.2f} ms ({args.layers} layers + LM head)")
        out["models"][model] = rows_out
        del mods
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
