"""Seconds between consecutive scheduler calls of one engine, by the tokens each step
scheduled: what a one-token decoding step costs in vLLM's no-speculation engine, in its
ngram SD engine (steps where ngram found no draft) and in a TriSpec engine (a
diagnostic, not a benchmark: one engine per process, the engine in this process).

    python benchmarks/step_periods.py "no speculation" --requests 2 --max-tokens 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speed import in_process_engines  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="a bench_speed configuration label")
    ap.add_argument("--requests", type=int, default=2, help="chat prompts, one at a time")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--async-scheduling", choices=("default", "on", "off"), default="default")
    args = ap.parse_args()
    in_process_engines()
    from bench_speed import chat_prompts, configurations, start_engine
    from vllm import SamplingParams
    from vllm.v1.core.sched.scheduler import Scheduler

    from trispec_vllm.fetch import fetch_pair

    pair = fetch_pair()
    cfg = next(c for c in configurations(pair.proxy, False) if c.label == args.config)
    periods: list[tuple[int, float]] = []
    last: list = [None, 0]
    schedule = Scheduler.schedule

    def timed_schedule(self, *a, **kw):
        out = schedule(self, *a, **kw)
        now = time.perf_counter()
        if last[0] is not None:
            periods.append((last[1], now - last[0]))
        last[0], last[1] = now, out.total_num_scheduled_tokens
        return out

    Scheduler.schedule = timed_schedule
    more = {}
    if args.async_scheduling != "default":
        more["async_scheduling"] = args.async_scheduling == "on"
    llm = start_engine(cfg, pair.target, True, **more)
    prompts = [p for p in chat_prompts(2 * args.requests) if "def " not in str(p)]
    periods.clear()
    t0 = time.perf_counter()
    n = 0
    for p in prompts[: args.requests]:
        last[0] = None
        out = llm.chat([p], SamplingParams(temperature=0, max_tokens=args.max_tokens))
        n += len(out[0].outputs[0].token_ids)
    wall = time.perf_counter() - t0
    by: dict[int, list[float]] = {}
    for tokens, seconds in periods:
        by.setdefault(tokens, []).append(seconds)
    print(f"{args.config}: {n} tokens in {wall:.2f} s, {n / wall:.2f} tok/s")
    for tokens in sorted(by):
        s = by[tokens]
        if len(s) >= 3:
            print(f"  {tokens:4d} tokens: {len(s):4d} steps, median {statistics.median(s):.4f} s")


if __name__ == "__main__":
    main()
