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

    plain          T(B)
    SD, ngram k    T(B + d)      (d: draft tokens per step, from vLLM's counters)
    SD, draft k    T(B(k+1)) + P(B(k+1)) + (k-1) P(B)
    TriSpec        p_P P(B(k+1) + c_P) + p_0 T(B) + p_T T(n_T)   (+ the drafter's passes)

T(n) and P(n) are the target's and proxy's forward times over n tokens (B
requests x t tokens after a cached context, `--context`), timed here with plain
torch (transformers) on the real models, or read from a JSON timed elsewhere.
p_P, p_0, p_T, c_P and n_T come from the run's counters: the shares of engine
steps with a proxy pass, with vLLM's own plain step (the cost-aware step's plain
choice), and with a routed target pass, the proxy's catch-up tokens per pass and
the tokens per routed target pass.

Calibration: vLLM's own forward is not transformers', and a step also costs
scheduling, sampling and output. The plain rows of the speed run give vLLM's
plain step time per batch size (its TPOT); each pass at batch B is scaled by
TPOT(B) / T(B x 1), interpolated between the measured batch sizes (both models
alike, as they run on the same kernels). The plain rows are then the fit
("fit" in the error column) and every other row is the check. A projection
(`--costs` from another device) uses that device's pass costs unscaled, with no
per-step cost outside the forward; `--costs-trispec` gives TriSpec's rows the
device's eager pass costs (TriSpec's engine runs without CUDA graphs:
benchmarks/gpu_passes.py times both), and the graph-replayed ones are shown too,
as what its rows would reach with CUDA graphs. The routing counts are the speed
run's, i.e. this machine's choices of step kinds.
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


def interpolate(pts: list[tuple[float, float]], x: float) -> float:
    """Piecewise-linear through sorted (x, y) points, linear past the ends."""
    if len(pts) == 1:
        return pts[0][1] * x / pts[0][0]
    i = 0
    while i < len(pts) - 2 and x > pts[i + 1][0]:
        i += 1
    (x0, y0), (x1, y1) = pts[i], pts[i + 1]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass
class PassCosts:
    """Forward seconds per model: by tokens in the pass ({model: {tokens: s}}) and,
    where timed so, by batch x tokens per request ({model: {(B, t): s}}). A pass
    over B requests x t tokens reads B contexts: 32 tokens as 8 x 4 and as 32 x 1
    cost different times, so the shapes are used where present."""

    device: str
    seconds: dict[str, dict[int, float]] = field(default_factory=dict)
    shapes: dict[str, dict[tuple[int, int], float]] = field(default_factory=dict)

    def cost(self, model: str, n: float) -> float:
        """Seconds of a pass over n tokens, from the by-tokens table."""
        if n <= 0:
            return 0.0
        return interpolate(sorted(self.seconds[model].items()), n)

    def pass_seconds(self, model: str, b: float, t: float) -> float:
        """Seconds of a pass over b requests x t tokens: bilinear in (B, t) over the
        timed shapes, or the by-tokens table where none were timed."""
        if b <= 0 or t <= 0:
            return 0.0
        shapes = self.shapes.get(model)
        if not shapes:
            return self.cost(model, b * t)
        by_b: dict[int, list[tuple[int, float]]] = {}
        for (bb, tt), s in shapes.items():
            by_b.setdefault(bb, []).append((tt, s))
        per_b = [(bb, interpolate(sorted(v), t)) for bb, v in sorted(by_b.items())]
        return interpolate(per_b, b)

    def to_json(self) -> dict:
        d: dict = {"device": self.device, "seconds": self.seconds}
        if self.shapes:
            d["shapes"] = {
                m: {f"{b}x{t}": s for (b, t), s in sorted(v.items())}
                for m, v in self.shapes.items()
            }
        return d

    @classmethod
    def from_json(cls, d: dict) -> PassCosts:
        secs = {m: {int(n): float(s) for n, s in v.items()} for m, v in d["seconds"].items()}
        shapes = {
            m: {tuple(int(x) for x in k.split("x")): float(s) for k, s in v.items()}
            for m, v in d.get("shapes", {}).items()
        }
        return cls(d["device"], secs, shapes)


@dataclass
class StepShape:
    """One configuration at one batch size, as its counters describe an average step."""

    kind: str  # "plain", "ngram", "draft_model", "trispec"
    batch: int
    k: int
    tokens_per_step: float  # output tokens per decode engine step, whole batch
    proxy_share: float = 0.0  # TriSpec: share of steps the proxy ran
    proxy_catchup: float = 0.0  # TriSpec: proxy catch-up tokens per proxy step
    target_share: float = 1.0  # share of steps the target ran (TriSpec: routed passes)
    target_tokens: float = 0.0  # TriSpec: tokens per routed target pass
    target_reqs: float = 0.0  # TriSpec: requests per routed target pass (0: the batch)
    plain_share: float = 0.0  # TriSpec: share of steps that were vLLM's own plain step
    drafter: str = "ngram"  # TriSpec: its drafter ("ngram", "draft_model", "learned")
    draft_tokens: float | None = None  # ngram SD: drafts verified per step (None: B k)


def step_seconds(shape: StepShape, costs: PassCosts) -> float:
    """Predicted seconds of one average decode step."""
    b, k = shape.batch, shape.k
    T = lambda r, t: costs.pass_seconds("target", r, t)  # noqa: E731
    P = lambda r, t: costs.pass_seconds("proxy", r, t)  # noqa: E731
    if shape.kind == "plain":
        return T(b, 1)
    if shape.kind == "ngram":  # ngram finds no draft in many steps: those are plain
        d = b * k if shape.draft_tokens is None else shape.draft_tokens
        return T(b, 1 + d / b)
    if shape.kind == "draft_model":
        return T(b, k + 1) + P(b, k + 1) + (k - 1) * P(b, 1)
    if shape.kind != "trispec":
        raise ValueError(f"unknown kind {shape.kind!r}")
    s = shape.proxy_share * P(b, k + 1 + shape.proxy_catchup / b)
    r = shape.target_reqs or b
    s += shape.plain_share * T(b, 1) + shape.target_share * T(r, shape.target_tokens / r)
    if shape.drafter == "draft_model":  # k autoregressive passes of a separate drafter
        s += P(b, k + 1) + (k - 1) * P(b, 1)
    return s


def tokens_per_s(shape: StepShape, costs: PassCosts) -> float:
    return shape.tokens_per_step / step_seconds(shape, costs)


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
    plain = raw.get("worker:plain_steps", 0)  # vLLM's own step: one target pass over B
    ts = raw.get("worker:target_steps", 0) - plain
    ps = raw.get("worker:proxy_steps", 0)
    esc = raw.get("worker:escalations", 0)
    n_t = (esc * (k + 1) + raw.get("worker:catchup_tokens", 0)) / max(1, ts) if ts > 0 else 0.0
    drafter = "learned" if "learned" in label else "ngram"
    drafter = "draft_model" if "draft" in label and "learned" not in label else drafter
    return StepShape(
        "trispec",
        b,
        k,
        tokens,
        proxy_share=ps / steps,
        proxy_catchup=raw.get("worker:proxy_catchup_tokens", 0) / max(1, ps),
        target_share=max(0, ts) / steps,
        target_tokens=min(n_t, b * (k + 1)) if n_t else b * (k + 1),
        target_reqs=min(b, esc / ts) if ts > 0 and esc else 0.0,
        plain_share=plain / steps,
        drafter=drafter,
    )


def calibrate(rows: list[dict], costs: PassCosts) -> PassCosts:
    """`costs` scaled to vLLM's measured plain step: at batch B the factor is TPOT(B) /
    T(B x 1), piecewise-linear in B between the measured batch sizes and constant past
    them (by-tokens entries: the same in n = B x t)."""
    anchors = sorted(
        (r["batch"], r["tpot_s"] / costs.pass_seconds("target", r["batch"], 1))
        for r in rows
        if r["config"] == "no speculation" and r.get("tpot_s")
    )
    if not anchors:
        return costs

    def f(x: float) -> float:
        if x <= anchors[0][0]:
            return anchors[0][1]
        return anchors[-1][1] if x >= anchors[-1][0] else interpolate(anchors, x)

    seconds = {m: {n: s * f(n) for n, s in v.items()} for m, v in costs.seconds.items()}
    shapes = {m: {bt: s * f(bt[0]) for bt, s in v.items()} for m, v in costs.shapes.items()}
    return PassCosts(costs.device, seconds, shapes)


def check(
    rows: list[dict],
    costs: PassCosts,
    other: PassCosts | None = None,
    other_trispec: PassCosts | None = None,
) -> list[dict]:
    """Predicted against measured decode tok/s for every row (and a projection, with
    TriSpec's rows on `other_trispec` where given, and on `other` as well)."""
    here = calibrate(rows, costs)
    out = []
    for r in rows:
        shape = shape_of(r)
        measured = r["batch"] / r["tpot_s"] if r.get("tpot_s") else None
        pred = tokens_per_s(shape, here)
        fit = r["config"] == "no speculation"
        entry = {
            "config": r["config"],
            "batch": r["batch"],
            "measured_decode_tok_s": measured,
            "predicted_decode_tok_s": pred,
            "error": None if fit or not measured else pred / measured - 1,
            "fit": fit,
            "target_share": shape.target_share + shape.plain_share,
            "tokens_per_step": shape.tokens_per_step,
        }
        if other is not None:
            tri = shape.kind == "trispec"
            there = other_trispec if other_trispec and tri else other
            entry["projected_tok_s"] = tokens_per_s(shape, there)
            if other_trispec and tri:
                entry["projected_graphs_tok_s"] = tokens_per_s(shape, other)
        out.append(entry)
    for b in {e["batch"] for e in out}:
        same = [e for e in out if e["batch"] == b]
        # vLLM's rows have no graphs/eager split: their projection is the reference.
        for key, ref in (
            ("predicted_decode_tok_s", "predicted_decode_tok_s"),
            ("projected_tok_s", "projected_tok_s"),
            ("projected_graphs_tok_s", "projected_tok_s"),
        ):
            vllm_rows = [e[ref] for e in same if ref in e and e["config"].startswith("vLLM")]
            best = max(vllm_rows, default=None)
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
                    costs.shapes.setdefault(name, {})[(b, t)] = sec
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
    graphs = any("projected_graphs_tok_s" in e for e in entries)
    if projection:
        head += " projected tok/s (vs best SD) |"
        sep += "---|"
        if graphs:
            head += " TriSpec with CUDA graphs |"
            sep += "---|"
    lines = [f"Hardware: {hardware}"]
    if projection:
        lines.append(f"Projection on: {projection}")
    lines += ["", head, sep]

    def cell(e: dict, key: str) -> str:
        if key not in e:
            return "-"
        return f"{e[key]:.1f} ({e.get(key.replace('_tok_s', '_vs_best_sd'), 0):.2f}x)"

    for e in entries:
        meas = f"{e['measured_decode_tok_s']:.2f}" if e["measured_decode_tok_s"] else "-"
        err = "fit" if e.get("fit") else "-"
        if e["error"] is not None:
            err = f"{100 * e['error']:+.0f}%"
        line = (
            f"| {e['config']} | {e['batch']} | {meas} | {e['predicted_decode_tok_s']:.2f} | "
            f"{err} | {e['target_share']:.2f} |"
        )
        if projection:
            line += f" {cell(e, 'projected_tok_s')} |"
            if graphs:
                line += f" {cell(e, 'projected_graphs_tok_s')} |"
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
