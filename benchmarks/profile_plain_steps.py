"""Where plain decoding steps spend their time: vLLM's no-speculation engine against
a TriSpec engine whose every step is plain (`disable_by_batch_size: 1`).

    python benchmarks/profile_plain_steps.py plain --batch 64 --tokens 24
    python benchmarks/profile_plain_steps.py trispec --batch 64 --tokens 24

Runs the engine in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, so cProfile sees
the worker; vLLM then runs torch on one thread, so absolute times are not the
benchmarks') and prints the cumulative time of the step's phases. Run one engine at
a time, never beside the test suite or a benchmark.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PHASES = r"execute_model|sample_tokens|propose_draft|_sample\b|_model_forward"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", choices=("plain", "trispec"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=24)
    args = ap.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    from trispec_vllm import cpu_runtime

    cpu_runtime.apply()
    from bench_speed import ENGINE_ARGS, chat_prompts, ngram
    from vllm import LLM, SamplingParams

    from trispec_vllm.fetch import fetch_pair

    pair = fetch_pair()
    kwargs = {}
    if args.engine == "trispec":
        section = {"proxy_model": pair.proxy, "disable_by_batch_size": 1}
        kwargs = {"speculative_config": ngram(3), "additional_config": {"trispec": section}}
    kwargs.update(ENGINE_ARGS, enforce_eager=True)
    llm = LLM(model=pair.target, **kwargs)
    prompts = chat_prompts(args.batch)
    llm.chat(prompts[:8], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    llm.chat(prompts, params, use_tqdm=False)
    profile.disable()
    print(f"{args.engine}: {time.perf_counter() - start:.2f} s for batch {args.batch}")
    stats = pstats.Stats(profile).sort_stats("cumulative")
    stats.print_stats(PHASES, 12)
    stats.print_callees("sample_tokens")


if __name__ == "__main__":
    main()
