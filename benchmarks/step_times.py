"""Where a batch's time goes, step by step: vLLM's no-speculation engine against
TriSpec's default section, as `bench_speed.py` runs them (a diagnostic).

    python benchmarks/step_times.py --rounds 3 --out benchmarks/results/step_times_b8.json

Each round starts one engine of each kind, interleaved, each in a process of its
own (the engine runs inside it, VLLM_ENABLE_V1_MULTIPROCESSING=0, so that the
runner's methods can be timed), with bench_speed's prompts, warm-up and batches
(2 requests at batch 1, then 8 at batch 8, 128 greedy tokens each). Every engine
step is split into the target's forward pass (vLLM's `_model_forward`), the rest of
`execute_model` (inputs, logits, TriSpec's routing) and `sample_tokens` (sampling,
bookkeeping, the drafter and the cost-aware choice). Printed per batch: the prefill
step (the time to first token, as every prompt is prefilled in one step here) and
medians over the decoding steps, each a median over rounds with its min-max.
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
PARTS = ("forward", "rest of execute_model", "sample_tokens")


def record_steps(log: list) -> None:
    """Time every step's parts into `log` ("F": a model's forward pass, "E":
    execute_model, "S": sample_tokens, "B": a batch starts); only the outermost call
    of each counts (TriSpec's runner calls vLLM's inside its own)."""
    import bench_speed
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    from trispec_vllm.engine.model_runner import TriSpecRunnerMixin

    depth = dict.fromkeys("FES", 0)

    def timed(owner, name: str, tag: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args, **kwargs):
            depth[tag] += 1
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                depth[tag] -= 1
                if not depth[tag]:
                    log.append((tag, time.perf_counter() - t))

        setattr(owner, name, wrapper)

    def time_forwards(owner) -> None:
        load_model = owner.load_model

        def load_and_time(self, *args, **kwargs):
            load_model(self, *args, **kwargs)
            for model in (self.model, getattr(self, "trispec_proxy", None)):  # target, proxy
                if model is not None and not getattr(type(model).forward, "timed", False):
                    timed(type(model), "forward", "F")
                    type(model).forward.timed = True

        owner.load_model = load_and_time

    for cls in (CPUModelRunner, TriSpecRunnerMixin):
        timed(cls, "execute_model", "E")
        timed(cls, "sample_tokens", "S")
        time_forwards(cls)
    snapshot = bench_speed.snapshot

    def marked(*args, **kwargs):
        log.append(("B", 0.0))
        return snapshot(*args, **kwargs)

    bench_speed.snapshot = marked


def steps_of(log: list) -> list[list[dict]]:
    """Per measured batch, its steps as {forward, rest of execute_model, sample_tokens}."""
    marks = [i for i, (tag, _) in enumerate(log) if tag == "B"]
    batches = []
    for start, end in zip(marks[::2], marks[1::2], strict=True):  # snapshots before/after
        steps, forward = [], 0.0
        for tag, secs in log[start + 1 : end]:
            if tag == "F":
                forward += secs
            elif tag == "E":
                steps.append({"forward": forward, "rest of execute_model": secs - forward})
                forward = 0.0
            elif tag == "S":  # (passes inside it, a proxy's drafting, count here)
                forward = 0.0
                if steps:
                    steps[-1]["sample_tokens"] = secs
        batches.append(steps)
    return batches


def child(engine: str, part: Path) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    log: list = []
    record_steps(log)
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
        "steps": steps_of(log),
    }
    part.write_text(json.dumps(out))


def summary(parts: list[dict]) -> list[dict]:
    """Per engine and batch: medians over rounds of each round's prefill step and of
    its decoding steps' medians."""
    rows = []
    for engine in ENGINES:
        runs = [p for p in parts if p["engine"] == engine]
        for i, (batch, _) in enumerate(BATCHES):
            row = {"engine": engine, "batch": batch}
            per_round = {
                "tok/s": [r["tokens_per_s"][i] for r in runs],
                "TTFT s": [r["ttft_s"][i] for r in runs],
                "prefill step s": [sum(r["steps"][i][0].values()) for r in runs],
                "prefill forward s": [r["steps"][i][0]["forward"] for r in runs],
            }
            for name in PARTS:
                per_round[f"decode {name} ms"] = [
                    1000 * statistics.median(s.get(name, 0.0) for s in r["steps"][i][1:])
                    for r in runs
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
    ap.add_argument("--child", choices=tuple(ENGINES), help=argparse.SUPPRESS)
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.part))
        return
    from trispec_vllm import cpu_runtime

    env = {**os.environ, **cpu_runtime.recommended(os.environ)}
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
        payload = {"hardware": hardware, "runtime": cpu_runtime.recommended({}), "rows": rows}
        Path(args.out).write_text(json.dumps({**payload, "rounds": parts}, indent=1))


if __name__ == "__main__":
    main()
