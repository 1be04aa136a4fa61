"""The learned drafter's learning curve: acceptance over a stream of requests.

    python benchmarks/bench_learning.py                      # 200 requests, cold start
    python benchmarks/bench_learning.py --warm PATH.pt       # from a train-drafter head

One engine per arm (real 1.5B / 0.5B pair, the learned drafter k=4, lambda 0.5,
the TriSpec step in every step) serves the same stream: ShareGPT first turns (up to 300
characters) and HumanEval problems alternating, as chat, greedy, submitted in groups of
`--batch`. The arms differ only in `drafter_learning` (on, and off as the
control). After every group the script reads the counters: the proxy's
acceptance length per decode step (tau_a, the drafts the proxy accepted:
what the head learns towards), the target-verified acceptance vLLM's
`vllm:spec_decode_*` counters record, optimiser steps and mean training loss,
tokens/s, and the share of the step each phase took (the drafter's learning
included). Writes benchmarks/results/learning*.json and a plot. Never run it
beside the test suite or another benchmark.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench_speed import cpu_model, cpu_runtime_env, metrics_delta, snapshot

RESULTS = Path(__file__).resolve().parent / "results"


def stream(n: int) -> list[list[dict]]:
    """n chat prompts, ShareGPT and HumanEval alternating (file order)."""
    from trispec_vllm.prompts import humaneval_chat_prompts, sharegpt_conversations

    convs = sharegpt_conversations(n, max_chars=300)
    chat = [[{"role": "user", "content": c["prompt"]}] for c in convs]
    code = humaneval_chat_prompts((n + 1) // 2)
    out = []
    for i in range(n):
        src = chat if i % 2 == 0 else code
        out.append(src[(i // 2) % len(src)])
    return out


def group_row(delta: dict, served: int, seconds: float) -> dict:
    steps = delta.get("worker:decode_request_steps", 0)
    updates = delta.get("worker:drafter_updates", 0)
    drafts = delta.get("vllm:spec_decode_num_drafts", 0)
    times = {
        k.removeprefix("worker:seconds:"): v
        for k, v in delta.items()
        if k.startswith("worker:seconds:")
    }
    total = sum(times.values()) or 1.0
    return {
        "requests_served": served,
        "tokens": delta.get("vllm:generation_tokens", 0),
        "tokens_per_s": delta.get("vllm:generation_tokens", 0) / seconds,
        "proxy_acceptance_length": delta.get("worker:proxy_accepted_tokens", 0) / max(1, steps),
        "target_accepted_per_draft": (
            delta.get("vllm:spec_decode_num_accepted_tokens", 0) / drafts if drafts else None
        ),
        "drafter_updates": updates,
        "mean_loss": delta.get("worker:drafter_loss_sum", 0) / updates if updates else None,
        "time_shares": {k: v / total for k, v in times.items()},
    }


def run_arm(label, target, proxy, prompts, args, learning: bool) -> list[dict]:
    from vllm import LLM, SamplingParams

    section = {
        "proxy_model": proxy,
        "margin_threshold": args.lam,
        "cost_aware": False,
        "drafter_learning": learning,
        "drafter_update_every": args.update_every,
    }
    if args.warm:  # every arm starts from its own copy (learning saves back into it)
        copy = Path(tempfile.mkdtemp()) / args.warm.name
        shutil.copyfile(args.warm, copy)
        section["drafter_checkpoint"] = str(copy)
    llm = LLM(
        model=target,
        dtype=args.dtype,
        max_model_len=2048,
        seed=0,
        enforce_eager=True,
        disable_log_stats=False,
        speculative_config={
            "method": "custom_class",
            "model": "trispec_vllm.drafter.LearnedDrafter",
            "num_speculative_tokens": args.k,
        },
        additional_config={"trispec": section},
    )
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    rows = []
    for i in range(0, len(prompts), args.batch):
        before = snapshot(llm, True)
        t0 = time.perf_counter()
        llm.chat(prompts[i : i + args.batch], params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        row = group_row(metrics_delta(before, snapshot(llm, True)), i + args.batch, seconds)
        rows.append(row)
        print(
            f"  {label:<12} {row['requests_served']:>4} requests: tau_a/step "
            f"{row['proxy_acceptance_length']:.2f}, updates {row['drafter_updates']:>3}, "
            f"{row['tokens_per_s']:.2f} tok/s",
            flush=True,
        )
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return rows


def plot(arms: dict[str, list[dict]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, rows in arms.items():
        xs = [r["requests_served"] for r in rows]
        ax.plot(xs, [r["proxy_acceptance_length"] for r in rows], marker="o", label=label)
    ax.set_xlabel("requests served")
    ax.set_ylabel("proxy acceptance length per step (tau_a)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--update-every", type=int, default=4, help="drafter_update_every")
    ap.add_argument(
        "--dtype",
        default="bfloat16",
        help="model dtype (float32 prefills about 4x faster on AVX2-only CPUs)",
    )
    ap.add_argument("--warm", type=Path, default=None, help="train-drafter checkpoint")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    from trispec_vllm.fetch import fetch_pair

    pair = fetch_pair()
    prompts = stream(args.requests)
    start = f"warm ({args.warm.name})" if args.warm else "cold"
    hardware = f"{cpu_model()}, vllm-cpu 0.32.0"
    print(f"{args.requests} requests, batch {args.batch}, {start} start; {hardware}")
    arms = {}
    with cpu_runtime_env("tuned"):
        for label, learning in (("learning on", True), ("learning off", False)):
            arms[label] = run_arm(label, pair.target, pair.proxy, prompts, args, learning)
    out = args.out or RESULTS / f"learning_{'warm' if args.warm else 'cold'}.json"
    out.write_text(
        json.dumps(
            {
                "machine": hardware,
                "start": start,
                "requests": args.requests,
                "batch": args.batch,
                "max_tokens": args.max_tokens,
                "k": args.k,
                "lambda": args.lam,
                "dtype": args.dtype,
                "drafter_update_every": args.update_every,
                "arms": arms,
            },
            indent=1,
        )
        + "\n"
    )
    title = (
        f"learned drafter k={args.k}, {start} start, lambda {args.lam}, batch {args.batch}, "
        f"{args.max_tokens} tokens, {args.dtype}, update every {args.update_every} steps\n"
        f"{hardware}"
    )
    plot(arms, out.with_suffix(".png"), title)
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
