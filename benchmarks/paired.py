"""Several configurations side by side, interleaved request by request: the tightest
comparison this noisy machine allows.

    python benchmarks/paired.py --batch 1 --rounds 6 \
        --only "vLLM ngram k=3" "vLLM ngram k=5" "TriSpec default (ngram k=3)"

`bench_speed.py` starts a fresh engine per configuration and round, so configurations
of one round run minutes apart, and on this machine plain decoding's speed moved by
up to 40% within a round. Here every engine (one per `bench_speed` configuration,
named by label; the first is the reference) loads once and stays up, as a server
would, and each group of `--batch` requests (bench_speed's chat prompts, greedy,
`--tokens` each) runs on every engine back to back, in an order that rotates from
group to group, so drift over more than a few seconds hits all alike. A round is
every prompt once; per round, each engine's tok/s over all its groups and its ratio
to the reference's, and each TriSpec engine's decoding steps by kind; printed and
written (after every round) as the median with its min-max, and the per-group
ratios as well. Engines idle while another runs, so never run this beside
the test suite or another benchmark. Each engine holds its weights and a 1 GiB KV
cache: on 24 GiB, vLLM's two ngram SD engines and one TriSpec engine fit; two TriSpec
engines and a third did not (a worker was killed while the third loaded), nor did a
fourth engine (no speculation) beside the three that fit (its KV cache found 0.65 GiB).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"


def summary(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"


def table(d: dict) -> str:
    """Markdown: each configuration's tok/s and its ratio to the reference (the first),
    per round and per group of requests, as medians with their min-max."""
    names, rounds = d["configurations"], d["rounds"]
    lines = [
        f"{d['machine']}; batch {d['batch']}, {d['requests']} requests x {d['tokens']} tokens "
        f"a round, {len(rounds)} rounds, interleaved request group by group; ratios to {names[0]}",
        "",
        "| configuration | tok/s | ratio per round | ratio per group |",
        "|---|---|---|---|",
    ]
    for n in names:
        rates = [x["tok_s"][n] for x in rounds]
        ratios = [x["ratio"][n] for x in rounds]
        per_group = summary(d["group_ratios"][n]) if n != names[0] else "-"
        lines.append(f"| {n} | {summary(rates)} | {summary(ratios)} | {per_group} |")
    kinds = [n for n in names if all(n in x.get("steps", {}) for x in rounds)]
    if kinds:
        lines.append("")
    for n in kinds:
        per_round = "; ".join(
            ", ".join(f"{v} {k}" for k, v in x["steps"][n].items() if v) or "none" for x in rounds
        )
        lines.append(f"{n}, decoding steps per round by kind: {per_round}.")
    return "\n".join(lines) + "\n"


STEP_KINDS = ("plain", "sd", "trispec", "draft")


def step_counts(llm) -> tuple[dict[str, int], dict]:
    """A TriSpec engine's decoding steps so far by the kind the cost-aware step ran,
    and per batch-size class the regret its learning was charged and its decoding
    seconds (`cost_learning`)."""
    counters = llm.collective_rpc("trispec_counters")[0]
    kinds = {k: int(counters.get(f"{k}_kind_steps", 0)) for k in STEP_KINDS}
    return kinds, counters.get("cost_learning", {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", required=True, help="bench_speed labels; first: reference")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--requests", type=int, default=4, help="requests per round")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--dtype", default="auto", help="as bench_speed's --dtype")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if len(args.only) < 2:
        raise SystemExit("name at least two configurations")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # several engines in 24 GiB
    os.environ.setdefault("TRISPEC_COST_DIR", tempfile.mkdtemp(prefix="costs-"))
    from trispec_vllm import cpu_runtime

    cpu_runtime.apply()
    from bench_speed import chat_prompts, configurations, cpu_model, set_dtype, start_engine
    from vllm import SamplingParams

    from trispec_vllm.fetch import fetch_pair

    pair = fetch_pair()
    by_label = {c.label: c for c in configurations(pair.proxy, False, target=pair.target)}
    missing = [label for label in args.only if label not in by_label]
    if missing:
        raise SystemExit(f"unknown configuration labels: {missing}")
    # Each warmed up on a prompt outside the measured set (start_engine).
    engines = {label: start_engine(by_label[label], pair.target, True) for label in args.only}
    counted = [label for label in args.only if by_label[label].trispec]
    params = SamplingParams(temperature=0, max_tokens=args.tokens)
    prompts = chat_prompts(args.requests)
    groups = [prompts[i : i + args.batch] for i in range(0, len(prompts), args.batch)]
    names = list(engines)
    ref = names[0]
    machine = f"{cpu_model()}, {set_dtype(args.dtype)}"
    print(f"{machine}; batch {args.batch}, {args.requests} requests x {args.tokens} tokens")
    rounds: list[dict[str, dict[str, float]]] = []
    group_ratios: dict[str, list[float]] = {n: [] for n in names[1:]}
    turn = 0
    out = args.out or RESULTS / f"paired_b{args.batch}.json"
    before = {n: step_counts(engines[n])[0] for n in counted}  # then each round's end
    for r in range(args.rounds):
        secs = dict.fromkeys(names, 0.0)
        toks = dict.fromkeys(names, 0)
        for group in groups:
            order = names[turn % len(names) :] + names[: turn % len(names)]
            turn += 1
            rate = {}
            for name in order:
                t0 = time.perf_counter()
                outs = engines[name].chat(group, params, use_tqdm=False)
                dt = time.perf_counter() - t0
                n = sum(len(o.outputs[0].token_ids) for o in outs)
                secs[name] += dt
                toks[name] += n
                rate[name] = n / dt
            for name in names[1:]:
                group_ratios[name].append(rate[name] / rate[ref])
        tok_s = {n: toks[n] / secs[n] for n in names}
        after = {n: step_counts(engines[n]) for n in counted}
        steps = {n: {k: v - before[n][k] for k, v in after[n][0].items()} for n in counted}
        before = {n: after[n][0] for n in counted}
        rounds.append(
            {
                "tok_s": tok_s,
                "ratio": {n: tok_s[n] / tok_s[ref] for n in names},
                "steps": steps,
                "learning": {n: after[n][1] for n in counted},  # (totals so far)
            }
        )
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n} {tok_s[n]:.2f} ({tok_s[n] / tok_s[ref]:.3f}x)" for n in names)
            + "".join(f"; {n} steps {steps[n]}" for n in counted),
            flush=True,
        )
        d = {
            "machine": machine,
            "batch": args.batch,
            "requests": args.requests,
            "tokens": args.tokens,
            "configurations": names,
            "rounds": rounds,
            "group_ratios": group_ratios,
            "command": " ".join(sys.argv),
        }
        out.write_text(json.dumps(d, indent=1) + "\n")  # each round: a cut-short run keeps it
    print("\n" + table(d))
    print(f"wrote {out}")
    for llm in engines.values():
        llm.llm_engine.engine_core.shutdown()
    engines.clear()
    gc.collect()


if __name__ == "__main__":
    main()
