"""Two engines side by side in one process, interleaved: what a TriSpec engine costs
over vLLM's no-speculation engine when its steps are plain.

    python benchmarks/ab_engines.py --trispec all-plain --batch 16 --tokens 48 --rounds 6
    python benchmarks/ab_engines.py --trispec default --batch 64 --tokens 48 --rounds 5
    python benchmarks/ab_engines.py --trispec vllm-sync --batch 32 --tokens 48 --rounds 5

Both engines (the real 1.5B target; TriSpec's with the 0.5B proxy and vLLM's ngram
k=3 drafter) load once and stay up, so each round costs only its generation, and a
round runs them back to back, in alternating order, on the same chat prompts (128
greedy tokens by default, `ignore_eos`, so every request decodes every token).
"all-plain" is `disable_by_batch_size: 1` (every step vLLM's own, the proxy loaded
and never run); "default" is the section with only `proxy_model` set (the
cost-aware step, which measures and explores in the first rounds and keeps
choosing afterwards: a long-lived server, not bench_speed's fresh engine per round).
"vllm-sync" is no TriSpec engine at all: vLLM's no-speculation engine with
`async_scheduling=False`, which every TriSpec engine runs with (and vLLM's ngram
SD too), against the same engine with vLLM's default (async scheduling on).
Prints each round and the median tok/s and ratio with its min-max; writes
benchmarks/results/ab_<mode>_b<batch>.json and a plot of the rounds beside it.
Never run it beside the test suite or another benchmark: two engines share the
cores only because one idles while the other runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trispec", choices=("all-plain", "default", "vllm-sync"), default="all-plain")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--no-prefix-caching",
        action="store_true",
        help="both engines without vLLM's prefix cache, so every round prefills its prompts",
    )
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # two engines in 24 GiB
    cost_dir = tempfile.mkdtemp(prefix="trispec-ab-costs-")  # removed at the end
    os.environ["TRISPEC_COST_DIR"] = cost_dir
    from trispec_vllm import cpu_runtime

    cpu_runtime.apply()
    from bench_speed import ENGINE_ARGS, WARMUP_CHAT, chat_prompts, cpu_model, ngram
    from vllm import LLM, SamplingParams

    from trispec_vllm.fetch import fetch_pair

    pair = fetch_pair()
    section = {"proxy_model": pair.proxy}
    if args.trispec == "all-plain":
        section["disable_by_batch_size"] = 1
    common = {**ENGINE_ARGS, "enforce_eager": True}
    if args.no_prefix_caching:
        common["enable_prefix_caching"] = False
    engines = {"no speculation": LLM(model=pair.target, **common)}
    if args.trispec == "vllm-sync":
        engines["no speculation, no async scheduling"] = LLM(
            model=pair.target, async_scheduling=False, **common
        )
    else:
        engines[f"TriSpec {args.trispec}"] = LLM(
            model=pair.target,
            speculative_config=ngram(3),
            additional_config={"trispec": section},
            **common,
        )
    prompts = chat_prompts(args.batch)
    warm = SamplingParams(temperature=0, max_tokens=4)
    params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    for llm in engines.values():  # not on a measured prompt (the prefix cache keeps it)
        llm.chat([WARMUP_CHAT], warm, use_tqdm=False)
    names = list(engines)
    rates: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            engines[name].chat(prompts, params, use_tqdm=False)
            rates[name].append(args.batch * args.tokens / (time.perf_counter() - start))
            line = f"round {r + 1}/{args.rounds}  {name:24s} {rates[name][-1]:7.2f} tok/s"
            print(line, flush=True)
    base, other = names
    ratios = [a / b for a, b in zip(rates[other], rates[base], strict=True)]

    def summary(xs: list[float]) -> str:
        return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"

    machine = cpu_model()
    print(f"\n{machine}; batch {args.batch}, {args.tokens} tokens, {args.rounds} rounds")
    print("| engine | tok/s median (min-max) |\n|---|---|")
    for name in names:
        print(f"| {name} | {summary(rates[name])} |")
    print(f"| {other} over {base}, per round | {summary(ratios)} |")
    tag = "_no_prefix_cache" if args.no_prefix_caching else ""
    out = args.out or RESULTS / f"ab_{args.trispec.replace('-', '_')}_b{args.batch}{tag}.json"
    out.write_text(
        json.dumps(
            {
                "machine": machine,
                "batch": args.batch,
                "tokens": args.tokens,
                "rounds": args.rounds,
                "prefix_caching": not args.no_prefix_caching,
                "tok_s": rates,
                "ratios": ratios,
            },
            indent=1,
        )
        + "\n"
    )
    plot(rates, out.with_suffix(".png"), f"{machine}; batch {args.batch}")
    print(f"wrote {out} and its plot")
    for llm in engines.values():  # each saves its cost file at shutdown: then remove them
        llm.llm_engine.engine_core.shutdown()
    shutil.rmtree(cost_dir, ignore_errors=True)


def plot(rates: dict[str, list[float]], out: Path, title: str) -> None:
    """tok/s per round of each engine: the drift both share, and their gap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, xs in rates.items():
        ax.plot(range(1, len(xs) + 1), xs, marker="o", label=name)
    ax.set_xlabel("round")
    ax.set_ylabel("tok/s")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
