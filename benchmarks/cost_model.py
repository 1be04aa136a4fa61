"""A cost model: tokens/s of every configuration from per-pass costs and routing counts.

    python benchmarks/cost_model.py --measure                 # time the passes here
    python benchmarks/cost_model.py --speed results/speed_rounds.json
    python benchmarks/cost_model.py --costs gpu_costs.json   # projection (other device)
    python benchmarks/cost_model.py --speed results/speed_headline.json \
        --costs results/pass_costs_h200_graphs.json \
        --costs-trispec results/pass_costs_h200_eager.json

A decode step of each configuration is a sum of forward passes whose sizes the
routing counts of a `bench_speed.py` run give (per engine step: how often the
proxy and the target ran, over how many tokens, how many tokens came out):

    plain          T(B) + o(B)
    SD, ngram k    T(B + d) + o(B)      (d: draft tokens per step, from vLLM's counters)
    SD, draft k    T(B(k+1)) + P(B(k+1)) + (k-1) P(B) + o(B)
    TriSpec        p_P P(B(k+1) + c_P) + p_T T(n_T) + o(B)   (+ the drafter's passes)

T(n) and P(n) are the target's and proxy's forward times over n tokens (B
requests x t tokens after a short cached context, `--context`), timed here with plain torch
(transformers) on the real models, or read from a JSON timed elsewhere;
o(B) is vLLM's per-step cost outside the forward (scheduling, sampling, output),
fitted once per batch size from the plain rows (measured TPOT minus T(B)).
p_P, p_T, c_P and n_T come from the run's counters. The check prints predicted
against measured decode speed (B / TPOT) for every row of a speed run; with
`--costs` from another device the same counters give a projection, labelled so;
`--costs-trispec` gives TriSpec's rows their own pass costs there (its routed
steps run without CUDA graphs: benchmarks/gpu_passes.py times both).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class PassCosts:
    """Forward seconds per model, by tokens in the pass: {model: {tokens: seconds}}."""

    device: str
    seconds: dict[str, dict[int, float]] = field(default_factory=dict)

    def cost(self, model: str, n: float) -> float:
        """Piecewise-linear in tokens between measured sizes, linear past the ends."""
        pts = sorted(self.seconds[model].items())
        if n <= 0:
            return 0.0
        if len(pts) == 1:
            return pts[0][1] * n / pts[0][0]
        i = 0
        while i < len(pts) - 2 and n > pts[i + 1][0]:
            i += 1
        (n0, s0), (n1, s1) = pts[i], pts[i + 1]
        return s0 + (s1 - s0) * (n - n0) / (n1 - n0)

    def to_json(self) -> dict:
        return {"device": self.device, "seconds": self.seconds}

    @classmethod
    def from_json(cls, d: dict) -> PassCosts:
        secs = {m: {int(n): float(s) for n, s in v.items()} for m, v in d["seconds"].items()}
        return cls(d["device"], secs)


@dataclass
class StepShape:
    """One configuration at one batch size, as its counters describe an average step."""

    kind: str  # "plain", "ngram", "draft_model", "trispec"
    batch: int
    k: int
    tokens_per_step: float  # output tokens per decode engine step, whole batch
    proxy_share: float = 0.0  # TriSpec: share of steps the proxy ran
    proxy_catchup: float = 0.0  # TriSpec: proxy catch-up tokens per proxy step
    target_share: float = 1.0  # share of steps the target ran
    target_tokens: float = 0.0  # TriSpec: tokens per target pass
    drafter: str = "ngram"  # TriSpec: its drafter ("ngram", "draft_model", "learned")
    draft_tokens: float | None = None  # ngram SD: drafts verified per step (None: B k)


def step_seconds(shape: StepShape, costs: PassCosts, overhead: float) -> float:
    """Predicted seconds of one average decode step."""
    b, k = shape.batch, shape.k
    T = lambda n: costs.cost("target", n)  # noqa: E731
    P = lambda n: costs.cost("proxy", n)  # noqa: E731
    if shape.kind == "plain":
        return T(b) + overhead
    if shape.kind == "ngram":  # ngram finds no draft in many steps: those are plain
        d = b * k if shape.draft_tokens is None else shape.draft_tokens
        return T(b + d) + overhead
    if shape.kind == "draft_model":
        return T(b * (k + 1)) + P(b * (k + 1)) + (k - 1) * P(b) + overhead
    if shape.kind != "trispec":
        raise ValueError(f"unknown kind {shape.kind!r}")
    s = shape.proxy_share * P(b * (k + 1) + shape.proxy_catchup)
    s += shape.target_share * T(shape.target_tokens)
    if shape.drafter == "draft_model":  # k autoregressive passes of a separate drafter
        s += P(b * (k + 1)) + (k - 1) * P(b)
    return s + overhead


def tokens_per_s(shape: StepShape, costs: PassCosts, overhead: float) -> float:
    return shape.tokens_per_step / step_seconds(shape, costs, overhead)


def shape_of(row: dict) -> StepShape:
    """The average decode step of a `bench_speed.py` result row, from its counters."""
    label, b, raw = row["config"], row["batch"], row["raw"]
    m = re.search(r"k=(\d+)", label)
    k = int(m.group(1)) if m else 3
    groups = max(1, round(raw["vllm:request_success"] / b))
    decode_steps = max(1, raw["engine_steps"] - groups)  # one prefill step per group
    tokens = (raw["vllm:generation_tokens"] - raw["vllm:request_success"]) / decode_steps
    if row.get("trispec") is None:
        kind = "ngram" if "ngram" in label else "draft_model"
        kind = "plain" if label.startswith("no speculation") else kind
        drafted = raw.get("vllm:spec_decode_num_draft_tokens")
        d = None if drafted is None else drafted / decode_steps
        return StepShape(kind, b, k, tokens, draft_tokens=d)
    steps = max(1, raw["engine_steps"])
    ts = raw.get("worker:target_steps", 0)
    ps = raw.get("worker:proxy_steps", 0)
    esc = raw.get("worker:escalations", 0)
    n_t = (esc * (k + 1) + raw.get("worker:catchup_tokens", 0)) / max(1, ts) if ts else 0.0
    drafter = "learned" if "learned" in label else "ngram"
    drafter = "draft_model" if "draft" in label and "learned" not in label else drafter
    return StepShape(
        "trispec",
        b,
        k,
        tokens,
        proxy_share=ps / steps,
        proxy_catchup=raw.get("worker:proxy_catchup_tokens", 0) / max(1, ps),
        target_share=ts / steps,
        target_tokens=min(n_t, b * (k + 1)) if n_t else b * (k + 1),
        drafter=drafter,
    )


def fit_overheads(rows: list[dict], costs: PassCosts) -> dict[int, float]:
    """o(B) = measured TPOT - T(B) of the plain rows, per batch size (never below 0)."""
    return {
        r["batch"]: max(0.0, r["tpot_s"] - costs.cost("target", r["batch"]))
        for r in rows
        if r["config"] == "no speculation"
    }


def check(
    rows: list[dict],
    costs: PassCosts,
    other: PassCosts | None = None,
    other_trispec: PassCosts | None = None,
) -> list[dict]:
    """Predicted against measured decode tok/s for every row (and a projection, with
    TriSpec's rows on `other_trispec` where given)."""
    overheads = fit_overheads(rows, costs)
    out = []
    for r in rows:
        shape = shape_of(r)
        o = overheads.get(r["batch"], statistics.median(overheads.values() or [0.0]))
        measured = r["batch"] / r["tpot_s"] if r.get("tpot_s") else None
        pred = tokens_per_s(shape, costs, o)
        entry = {
            "config": r["config"],
            "batch": r["batch"],
            "measured_decode_tok_s": measured,
            "predicted_decode_tok_s": pred,
            "error": pred / measured - 1 if measured else None,
            "target_share": shape.target_share,
            "tokens_per_step": shape.tokens_per_step,
        }
        if other is not None:  # vLLM's per-step cost scales like a small target pass
            o2 = o * other.cost("target", 1) / costs.cost("target", 1)
            there = other_trispec if other_trispec and shape.kind == "trispec" else other
            entry["projected_tok_s"] = tokens_per_s(shape, there, o2)
        out.append(entry)
    for b in {e["batch"] for e in out}:
        same = [e for e in out if e["batch"] == b]
        for key in ("predicted_decode_tok_s", "projected_tok_s"):
            best = max(
                (e[key] for e in same if key in e and e["config"].startswith("vLLM")),
                default=None,
            )
            for e in same:
                if best and key in e:
                    e[key.replace("_tok_s", "_vs_best_sd")] = e[key] / best
    return out


def measure(
    models: dict[str, str],
    sizes: list[tuple[int, int]],
    context: int,
    reps: int,
    random_weights: bool,
) -> PassCosts:
    """Time each model's forward over B requests x t new tokens after `context` cached."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

    device = "cuda" if torch.cuda.is_available() else "cpu"
    costs = PassCosts(device_name(device))
    for name, path in models.items():
        if random_weights:
            cfg = AutoConfig.from_pretrained(path)
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
        model = model.to(device).eval()
        vocab = model.config.vocab_size
        costs.seconds[name] = {}
        for b in sorted({b for b, _ in sizes}):
            with torch.inference_mode():
                cache = DynamicCache()  # one prefill per batch size, cropped after each pass
                model(torch.randint(0, vocab, (b, context), device=device), past_key_values=cache)
                for t in sorted(t for bb, t in sizes if bb == b):
                    new = torch.randint(0, vocab, (b, t), device=device)
                    times = []
                    for _ in range(reps + 1):
                        sync(device)
                        t0 = time.perf_counter()
                        model(new, past_key_values=cache, use_cache=True)
                        sync(device)
                        times.append(time.perf_counter() - t0)
                        cache.crop(-t)
                    sec = statistics.median(times[1:])
                    # Several (B, t) with the same tokens: keep the mean.
                    prev = costs.seconds[name].get(b * t)
                    costs.seconds[name][b * t] = sec if prev is None else (prev + sec) / 2
                    print(f"  {name:<6} B={b:<3} t={t}: {sec * 1e3:8.1f} ms", flush=True)
        del model
    return costs


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    from bench_speed import cpu_model

    return cpu_model()


def table(entries: list[dict], hardware: str, projection: str | None) -> str:
    head = "| configuration | batch | measured decode tok/s | predicted | error | target share |"
    sep = "|---|---|---|---|---|---|"
    if projection:
        head += f" projected on {projection} (tok/s, vs best SD) |"
        sep += "---|"
    lines = [f"Hardware: {hardware}", "", head, sep]
    for e in entries:
        meas = f"{e['measured_decode_tok_s']:.2f}" if e["measured_decode_tok_s"] else "-"
        err = f"{100 * e['error']:+.0f}%" if e["error"] is not None else "-"
        line = (
            f"| {e['config']} | {e['batch']} | {meas} | {e['predicted_decode_tok_s']:.2f} | "
            f"{err} | {e['target_share']:.2f} |"
        )
        if projection:
            line += f" {e['projected_tok_s']:.1f} ({e.get('projected_vs_best_sd', 0):.2f}x) |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--measure", action="store_true", help="time the passes on this machine")
    ap.add_argument("--target", default=None, help="target model folder (default: fetched pair)")
    ap.add_argument("--proxy", default=None, help="proxy model folder (default: fetched pair)")
    ap.add_argument("--random-weights", action="store_true", help="configs only (GPU timing)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 2, 4, 5])
    ap.add_argument("--context", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--here",
        default=str(RESULTS / "pass_costs_cpu.json"),
        help="pass costs of the machine the speed run ran on (read or written)",
    )
    ap.add_argument("--speed", default=str(RESULTS / "speed_rounds.json"))
    ap.add_argument("--costs", default=None, help="another device's pass costs: a projection")
    ap.add_argument(
        "--costs-trispec", default=None, help="that device's pass costs for TriSpec's rows"
    )
    ap.add_argument("--out", default=str(RESULTS / "cost_model.json"))
    args = ap.parse_args()
    if args.measure:
        target, proxy = args.target, args.proxy
        if target is None or proxy is None:
            from trispec_vllm.fetch import fetch_pair

            pair = fetch_pair()
            target, proxy = target or pair.target, proxy or pair.proxy
        sizes = [(b, t) for b in args.batches for t in args.tokens]
        costs = measure(
            {"target": target, "proxy": proxy}, sizes, args.context, args.reps, args.random_weights
        )
        Path(args.here).write_text(json.dumps(costs.to_json(), indent=1) + "\n")
        print(f"wrote {args.here}")
        if args.random_weights:
            return
    here = PassCosts.from_json(json.loads(Path(args.here).read_text()))
    speed = json.loads(Path(args.speed).read_text())
    other = PassCosts.from_json(json.loads(Path(args.costs).read_text())) if args.costs else None
    tri = args.costs_trispec
    other_tri = PassCosts.from_json(json.loads(Path(tri).read_text())) if tri else None
    entries = check(speed["results"], here, other, other_tri)
    print(table(entries, speed.get("machine", here.device), other.device if other else None))
    Path(args.out).write_text(
        json.dumps(
            {
                "speed_run": args.speed,
                "pass_costs": here.to_json(),
                "projection_costs": other.to_json() if other else None,
                "projection_costs_trispec": other_tri.to_json() if other_tri else None,
                "rows": entries,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
