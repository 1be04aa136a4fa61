"""Concurrent streaming load with aborts: TriSpec (lossless) vs stock vLLM ngram SD.

    python benchmarks/load_test.py [--requests 200]

starts a stock `vllm serve` with ngram speculative decoding and a TriSpec
server (lossless) on the tiny pair, one after the other on a free localhost
port, runs the same load on both (random prompts and max_tokens, a quarter
of the streams closed by the client), checks every completed answer, and
prints throughput and latency percentiles (JSON under benchmarks/results/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from trispec_vllm.testing.load import reference_answers, run_load


def main() -> None:
    from trispec_vllm.demo import cache_dir
    from trispec_vllm.testing import make_tiny_pair
    from trispec_vllm.testing.server import TINY_SERVER_ARGS, Server

    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/load_test.json")
    args = ap.parse_args()
    pair = make_tiny_pair(cache_dir() / "tiny-pair")
    common = TINY_SERVER_ARGS
    ngram = json.dumps(
        {
            "method": "ngram",
            "num_speculative_tokens": 3,
            "prompt_lookup_max": 3,
            "prompt_lookup_min": 1,
        }
    )
    configs = {
        "vLLM ngram SD": ["serve", pair.target, "--speculative-config", ngram, *common],
        "TriSpec lossless": [
            "serve",
            pair.target,
            "--proxy-model",
            pair.proxy,
            "--margin-threshold",
            "1.5",
            *common,
        ],
    }
    results = {}
    logs = Path(args.out).parent
    logs.mkdir(parents=True, exist_ok=True)
    for label, argv in configs.items():
        server = Server(argv, logs / "load_server.log")
        try:
            ref = asyncio.run(reference_answers(server.url, "tiny", 48))
            res = asyncio.run(run_load(server.url, "tiny", ref, args.requests))
        finally:
            server.stop()
        results[label] = res.summary()
    print(
        f"{'config':<18} {'done':>5} {'abort':>5} {'err':>4} {'wrong':>5} "
        f"{'tok/s':>8} {'p50 s':>7} {'p99 s':>7}"
    )
    for label, r in results.items():
        print(
            f"{label:<18} {r['completed']:>5} {r['aborted']:>5} {len(r['errors']):>4} "
            f"{len(r['mismatches']):>5} {r['tokens_per_s']:>8.1f} {r['p50_s']:>7.2f} "
            f"{r['p99_s']:>7.2f}"
        )
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
