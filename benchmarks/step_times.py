"""Where a batch's time goes, step by step: vLLM's no-speculation engine against
TriSpec's default section, as `bench_speed.py` runs them (a diagnostic).

    python benchmarks/step_times.py --rounds 3 --out benchmarks/results/step_times_b8.json

Each round starts one engine of each kind, interleaved, each in a process of its
own, with bench_speed's prompts, warm-up and batches (2 requests at batch 1, then
8 at batch 8, 128 greedy tokens each). The engines run as users run them, their
model runner in a worker process of its own; timers are put into that worker
through `LLM.collective_rpc` (`--in-process`: the engine in the benchmark's process,
VLLM_ENABLE_V1_MULTIPROCESSING=0, where the worker's inter-process calls are gone).
Every engine step is split into the target's forward pass (the model's `forward`),
the rest of `execute_model` (inputs, logits, TriSpec's routing), `sample_tokens`
(sampling, bookkeeping, the drafter and the cost-aware choice) and the time from
the end of one step's `sample_tokens` to the start of the next step (the engine
core's scheduling and its calls to the worker). Printed per batch: the total of its
prefill steps (steps over 3x the median step: with a worker process the first
requests can start a step before the others have reached the engine, and at batch
1 each request has its own) and medians over the other, decoding steps, each a
median over rounds with its min-max.
Never run it beside the test suite or a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ENGINES = {"plain": "no speculation", "default": "TriSpec default (ngram k=3)"}
BATCHES = [(1, 2), (8, 8)]
PARTS = ("forward", "rest of execute_model", "sample_tokens", "between steps")


def install_timers(worker) -> None:
    """(Run in the worker.) Log every step's parts into `worker.step_log` as
    (tag, start, end): "F" a model's forward pass (the target's, the proxy's),
    "E" execute_model, "S" sample_tokens. The runner's own instance attributes are
    wrapped, so only the outermost call counts (TriSpec's runner calls vLLM's
    `execute_model` inside its own)."""
    log = worker.step_log = []
    runner = worker.model_runner

    def timed(owner, name: str, tag: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                log.append((tag, t, time.perf_counter()))

        setattr(owner, name, wrapper)

    timed(runner, "execute_model", "E")
    timed(runner, "sample_tokens", "S")
    for model in (runner.model, getattr(runner, "trispec_proxy", None)):
        if model is not None:
            timed(model, "forward", "F")


def mark_batch(worker) -> list:
    """(Run in the worker.) A measured batch starts or ends ("B"); the log's entries
    since the previous mark (each crosses the process boundary once)."""
    t = time.perf_counter()
    worker.step_log.append(("B", t, t))
    sent = getattr(worker, "step_log_sent", 0)
    worker.step_log_sent = len(worker.step_log)
    return worker.step_log[sent:]


def record_steps(logs: list) -> None:
    """Put the timers into each engine bench_speed starts and mark its measured
    batches (bench_speed snapshots the metrics before and after each); `logs` gets
    each engine's log up to its latest mark."""
    import bench_speed

    start_engine, snapshot = bench_speed.start_engine, bench_speed.snapshot

    def started(*args, **kwargs):
        llm = start_engine(*args, **kwargs)
        llm.collective_rpc(install_timers)
        logs.append([])
        return llm

    def marked(llm, *args, **kwargs):
        logs[-1].extend(llm.collective_rpc(mark_batch)[0])
        return snapshot(llm, *args, **kwargs)

    bench_speed.start_engine, bench_speed.snapshot = started, marked


def steps_of(log: list) -> list[list[dict]]:
    """Per measured batch, its steps as {forward, rest of execute_model, sample_tokens,
    between steps} in seconds (the last step has no "between steps")."""
    marks = [i for i, (tag, *_) in enumerate(log) if tag == "B"]
    batches = []
    for start, end in zip(marks[::2], marks[1::2], strict=True):  # snapshots before/after
        steps, forward, last_end = [], 0.0, None
        for tag, t0, t1 in log[start + 1 : end]:
            if tag == "F":
                forward += t1 - t0
            elif tag == "E":
                if steps and last_end is not None:
                    steps[-1]["between steps"] = t0 - last_end
                steps.append({"forward": forward, "rest of execute_model": t1 - t0 - forward})
                forward = 0.0
            elif tag == "S":  # (passes inside it, a proxy's drafting, count here)
                forward, last_end = 0.0, t1
                if steps:
                    steps[-1]["sample_tokens"] = t1 - t0
        batches.append(steps)
    return batches


def child(engine: str, part: Path) -> None:
    logs: list = []
    record_steps(logs)
    import bench_speed as bench

    from trispec_vllm.fetch import fetch_pair

    pair = fetch_pair()
    configs = bench.configurations(pair.proxy, False, None, pair.target)
    cfg = next(c for c in configs if c.label == ENGINES[engine])
    rows = bench.run_config(cfg, pair.target, bench.chat_prompts(8), BATCHES, 128, True)
    out = {
        "engine": engine,
        "tokens_per_s": [r.tps for r in rows],
        "ttft_s": [bench.hist_mean(r.m, bench.TTFT) for r in rows],
        "steps": steps_of([tuple(x) for x in logs[0]]),
    }
    part.write_text(json.dumps(out))


def seconds(step: dict) -> float:
    """A step's time in the worker (its parts but the wait for the next step)."""
    return sum(v for k, v in step.items() if k != "between steps")


PREFILL_OVER_MEDIAN = 3.0  # a step this many times the median step reads prompts


def prefill_and_decode(steps: list[dict]) -> tuple[list[dict], list[dict]]:
    """A batch's prefill steps (over PREFILL_OVER_MEDIAN x its median step) and its
    decoding steps; steps that ran no model (nothing scheduled) are neither."""
    steps = [s for s in steps if s["forward"] > 0]
    cut = PREFILL_OVER_MEDIAN * statistics.median(map(seconds, steps))
    return [s for s in steps if seconds(s) > cut], [s for s in steps if seconds(s) <= cut]


def summary(parts: list[dict]) -> list[dict]:
    """Per engine and batch: medians over rounds of each round's prefill steps' total
    and of its decoding steps' medians."""
    rows = []
    for engine in ENGINES:
        runs = [p for p in parts if p["engine"] == engine]
        for i, (batch, _) in enumerate(BATCHES):
            row = {"engine": engine, "batch": batch}
            split = [prefill_and_decode(r["steps"][i]) for r in runs]  # per round
            per_round = {
                "tok/s": [r["tokens_per_s"][i] for r in runs],
                "TTFT s": [r["ttft_s"][i] for r in runs],
                "prefill steps s (total)": [sum(map(seconds, pre)) for pre, _ in split],
                "prefill forward s": [sum(s["forward"] for s in pre) for pre, _ in split],
            }
            for name in PARTS:
                per_round[f"decode {name} ms"] = [
                    1000 * statistics.median(s[name] for s in dec if name in s) for _, dec in split
                ]
            for key, values in per_round.items():  # as bench_speed.summarise keeps them
                row[key] = statistics.median(values)
                row[key + "_range"] = [min(values), max(values)]
            rows.append(row)
    return rows


def table(rows: list[dict], hardware: str) -> str:
    from bench_speed import spread

    keys = [k for k in rows[0] if k not in ("engine", "batch") and not k.endswith("_range")]
    lines = [
        f"Hardware: {hardware}",
        "",
        "| engine | batch | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for r in rows:
        cells = [spread(r, k, "{:.3f}" if k.endswith(" s") else "{:.2f}") for k in keys]
        lines.append(f"| {ENGINES[r['engine']]} | {r['batch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="JSON with every round's steps")
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="run each engine in its benchmark process (no worker process)",
    )
    ap.add_argument("--child", choices=tuple(ENGINES), help=argparse.SUPPRESS)
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.part))
        return
    from trispec_vllm import cpu_runtime

    env = {**os.environ, **cpu_runtime.recommended(os.environ)}
    env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # the timers travel to the worker
    if args.in_process:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    env.setdefault("TRISPEC_COST_DIR", tempfile.mkdtemp(prefix="trispec-costs-"))
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(ENGINES) if r % 2 == 0 else list(reversed(ENGINES))
            for engine in order:
                part = Path(tmp) / f"{engine}-{r}.json"
                cmd = [sys.executable, __file__, "--child", engine, "--part", str(part)]
                subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
                parts.append(json.loads(part.read_text()))
                print(f"round {r + 1}: {engine} {parts[-1]['tokens_per_s']}", flush=True)
    hardware = f"{cpu_runtime.cpu_name()}, {os.cpu_count()} cores"
    rows = summary(parts)
    print(table(rows, hardware))
    if args.out:
        payload = {
            "hardware": hardware,
            "runtime": cpu_runtime.recommended({}),
            "worker_process": not args.in_process,
            "rows": rows,
        }
        Path(args.out).write_text(json.dumps({**payload, "rounds": parts}, indent=1))


if __name__ == "__main__":
    main()
