"""How the first steps of a batch split its prompts, and what they cost: vLLM's
no-speculation engine against TriSpec's default section, as `bench_speed.py` runs
them (a diagnostic of the later first tokens at batch 8).

    python benchmarks/first_steps.py --rounds 2 --out benchmarks/results/first_steps_b8.json

Each round starts one engine of each kind (alternating which goes first), with
bench_speed's engine arguments, warm-up and CPU runtime: the warm-up request, the
first two prompts one at a time (bench_speed's batch 1), then two groups of 8
prompts submitted together (the first is bench_speed's batch 8, the second a fresh
group in the same engine). The engine runs in its own process, as with `vllm serve`:
it starts stepping on the first request that reaches it, so a step can hold fewer
prompts than were submitted. For every request, from vLLM's own request stats
(engine-core clock, relative to the group's first request): when it was queued,
first scheduled and got its first token. Never run it beside the test suite or a
benchmark.
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

ENGINES = ("no speculation", "TriSpec default (ngram k=3)")
GROUP = 8  # requests per group
GROUPS = 2  # groups per engine
MAX_TOKENS = 128


def group_record(outs, secs: float) -> dict:
    """One group's per-request stamps, its steps (first scheduled, first token) and
    the mean time to first token."""
    stats = [o.metrics for o in outs]
    q0 = min(m.queued_ts for m in stats)
    rows = [
        {
            "queued": m.queued_ts - q0,
            "scheduled": m.scheduled_ts - q0,
            "first_token": m.first_token_ts - q0,
            "ttft": m.first_token_latency,
        }
        for m in stats
    ]
    steps = sorted({(round(r["scheduled"], 3), round(r["first_token"], 3)) for r in rows})
    return {
        "seconds": secs,
        "tokens_per_s": sum(len(o.outputs[0].token_ids) for o in outs) / secs,
        "ttft_mean": statistics.mean(r["ttft"] for r in rows),
        "requests": rows,
        # (start, end) of each step that gave a first token, and its prompts
        "prefill_steps": [
            {"start": s, "end": e, "prompts": sum(round(r["scheduled"], 3) == s for r in rows)}
            for s, e in steps
        ],
    }


def run_engine(label: str, target: str, cfg, prompts) -> list[dict]:
    import bench_speed as bs

    llm = bs.start_engine(cfg, target, eager=True)
    params = bs.sampling_params(GROUP, MAX_TOKENS, 0.0, 0)
    for i in range(2):  # bench_speed's batch 1
        llm.chat(prompts[i : i + 1], params[:1], use_tqdm=False)
    groups = []
    for g in range(GROUPS):
        t0 = time.perf_counter()
        outs = llm.chat(prompts[g * GROUP : (g + 1) * GROUP], params, use_tqdm=False)
        rec = group_record(outs, time.perf_counter() - t0)
        steps = ", ".join(
            f"{s['prompts']} prompts {s['end'] - s['start']:.3f} s" for s in rec["prefill_steps"]
        )
        print(
            f"  {label:<30} group {g + 1}: {rec['tokens_per_s']:6.2f} tok/s, "
            f"TTFT {rec['ttft_mean']:.3f} s; first-token steps: {steps}",
            flush=True,
        )
        groups.append(rec)
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/first_steps_b8.json"))
    args = ap.parse_args()

    import bench_speed as bs

    from trispec_vllm import cpu_runtime
    from trispec_vllm.fetch import fetch_pair

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    os.environ.setdefault("TRISPEC_COST_DIR", tempfile.mkdtemp(prefix="costs-"))
    cpu_runtime.apply()  # as bench_speed's "tuned" runtime: engine processes read it
    pair = fetch_pair()
    cfgs = {c.label: c for c in bs.configurations(pair.proxy, True, bs.WARM_HEAD, pair.target)}
    prompts = bs.chat_prompts(GROUP * GROUPS)
    results = []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        for label in ENGINES if r % 2 == 0 else ENGINES[::-1]:
            groups = run_engine(label, pair.target, cfgs[label], prompts)
            results.append({"round": r + 1, "engine": label, "groups": groups})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": bs.cpu_model(),
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "group": GROUP,
                "max_tokens": MAX_TOKENS,
                "results": results,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
