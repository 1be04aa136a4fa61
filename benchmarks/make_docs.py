"""Generate the benchmark tables of README.md and docs/*.md from benchmarks/results/*.json.

    python3 benchmarks/make_docs.py            # rewrite every generated block
    python3 benchmarks/make_docs.py --check    # exit 1 when a block differs from the results
    python3 benchmarks/make_docs.py --merge NEW.json INTO.json
                                               # add the rows of a bench_quality run made
                                               # with --baseline INTO.json to INTO.json

A generated block sits between `<!-- results:NAME -->` and `<!-- /results -->` in a
markdown file (NAME is a key of BLOCKS below); everything outside the markers is
written by hand and left alone. No table is copied by hand: change a results file,
run this script, commit both.

Standard library only. The full per-run tables are the benchmarks' own table code
(`bench_speed.table`, `bench_alignment.table`), so a table here reads exactly as the
`.md` a benchmark prints, and the paired pass@1 intervals are `bench_quality.paired_delta`
(those modules import no vLLM at their top level).

Results files (one per experiment, under benchmarks/results/):

- speed_headline.json the README's headline: default section vs plain and vLLM's SD,
                      batch 1 / 8 / 32 / 64, 128 tokens, 3 interleaved rounds, eager,
                      tcmalloc and Intel OpenMP preloaded, with a second no-speculation
                      engine as a control, small matmuls padded (AMD EPYC)
- speed_headline_before_padding.json the same before the padding of small matmuls
                      (batch 1 with 2 requests; AMD EPYC)
- speed_b1_amd_parts.json batch 1, 4 requests, 3 rounds, straight after the headline:
                      vLLM's ngram SD against the default and the TriSpec step in every
                      step, lossy (lambda 0.5) and lossless (AMD EPYC)
- ab_builds_b1_undrafted/ batch 1, 4 requests, 4 rounds: the default on a build that rated
                      the TriSpec step by its steps without drafts (ec0aa65, reverted)
                      against the headline's build, and vLLM's ngram k=3 SD (AMD EPYC)
- speed_b1_lossless_floor.json batch 1, 4 requests, 4 rounds: vLLM's ngram k=3 SD against
                      the default, its lossless form and the TriSpec step in every step
- speed_b1_fastest.json batch 1, 4 requests, 4 rounds: the default over ngram k=3 and k=8
                      and its lossless form against every built-in SD
- speed_b1_k5.json    batch 1, 4 requests, 4 rounds: vLLM's ngram k=5 SD against the
                      default and the TriSpec step in every step over k=5 (AMD EPYC)
- speed_b1_padding.json batch 1, 4 requests, 3 rounds: plain decoding, vLLM's ngram SD and
                      the default, each with and without the GEMM padding (AMD EPYC)
- speed_b1_padded.json batch 1, 4 requests, 4 rounds: every built-in SD against the default
                      and the TriSpec step in every step, all padded (AMD EPYC)
- speed_b1_proxy_vocab.json batch 1, 4 rounds: the TriSpec step and the default with
                      proxy_vocab 32768 and without (AMD EPYC)
- cpu_gemm.json       cpu_gemm.py: vLLM's CPU linear layers by rows, padded or not
- speed_headline_before_draft_call.json the headline before a step without drafts
                      skipped the engine core's draft call (Intel Xeon)
- speed_headline_before_drafted.json the headline before drafted TriSpec steps were
                      rated apart and retried on a joining request
- speed_headline_before_bar.json the headline before the bar on requests without drafts
                      and the waiting-for-a-slot rule
- speed_headline_before_sampler.json the headline before steps without drafts used
                      vLLM's plain sampler (tcmalloc preloaded)
- speed_headline_no_tcmalloc.json the headline before, Intel OpenMP preloaded only (no
                      tcmalloc on the machine), before the drift scaling
- speed_ngram_k5.json batch 1 and 8, 3 rounds: the headline's configurations and the
                      default section over ngram k=5
- speed_ngram_k8.json batch 1 and 8, 3 rounds: plain decoding, vLLM's ngram SD at k=5 and
                      k=8 and the default section over ngram k=8
- speed_ngram_k8_b32_b64.json the same at batch 32 and 64
- speed_bare_bar.json batch 8 and 64, 3 rounds: the default over ngram k=3 and k=8 with the
                      bar on requests without drafts, before the waiting-for-a-slot rule
- speed_drafting_tcmalloc.json batch 1 and 8, 3 rounds: the default with and without
                      proxy_drafting, tcmalloc preloaded
- speed_trusted_drafts.json batch 1 and 8, 3 rounds: the default with and without
                      proxy_drafting once the draft kind routes on its drafts' margins
                      (AMD EPYC)
- speed_b1_no_undrafted_trispec.json batch 1, 3 rounds: the same once the TriSpec step
                      is no candidate where ngram found no draft (AMD EPYC)
- paired_b1_no_undrafted.json paired.py at batch 1, 6 rounds: vLLM's ngram k=3 and k=5 SD
                      and the default (build 6ed4c7f), engines kept up (AMD EPYC)
- paired_b1_lossy_margin.json the same on the build with lossy_margin (57c9bbe)
- paired_b1_k5.json   the same build, 3 rounds: vLLM's ngram k=5 and k=3 SD and the default
                      over ngram k=5 (AMD EPYC, AVX2)
- paired_b1_budget.json the build with a fixed exploration budget (01bfb37), 3 rounds: vLLM's
                      ngram k=3 SD, no speculation and the default over ngram k=5
                      (AMD EPYC, AVX2)
- paired_b1_budget_halving.json the same with the halving budget (7cc626a)
- paired_b8_budget.json the same build at batch 8, 8 requests x 64 tokens, 3 rounds
- paired_b1_budget_k5.json the same build at batch 1, 4 rounds, against vLLM's ngram k=5 SD,
                      step kinds and learning regret per round (paired.py records them)
- paired_b1_run_cost.json the build whose learning runs start only where their expected
                      cost fits the budget (b877645), the same command
- paired_b8_run_cost.json that build at batch 8, 8 requests x 64 tokens, 3 rounds
- step_times_b8.json  step_times.py: plain decoding and the default step by step at
                      batch 1 and 8, 4 interleaved rounds
- step_times_b8_after_bar.json the same, 2 rounds, straight after the headline run
- step_times_b8_amd_worker.json the same with the engines' worker processes timed (as
                      users run them), 3 rounds, AMD EPYC
- first_steps_b8.json first_steps.py: how a fresh engine's first steps split a batch of 8
                      (plain decoding and the default, 2 rounds; linked from the docs)
- step_times_b8_before_sampler.json the same, 2 rounds, on the build before steps
                      without drafts used vLLM's plain sampler
- speed_headline_before_entry_charge.json the headline before the proxy's catch-up at
                      the start of a TriSpec run was booked on it (AMD EPYC)
- speed_headline_before_warmup.json the headline before the batch >= 8 warm-up rule and
                      the drafter skip
- speed_b64_repeat.json batch 64 again, plain decoding and the default only, more rounds
- speed_b1_repeat.json batch 1 again, vLLM's SD and the default only, more rounds and requests
- speed_b8_repeat.json batch 8 again, every headline configuration, more rounds and requests
- speed_b8_memory.json batch 8 again: the default with and without its kept measurements
- speed_target_share.json TriSpec steps only at batch 8 / 32: the target's share of the steps
- speed_hold.json     batch 8: lambda 0.5 with and without max_holds (the target's share)
- speed_hold_b32.json batch 32, one round: lambda 0.5 with and without max_holds=2
- speed_b8_proxy_drafting.json batch 8: the default with and without proxy_drafting
- speed_b8_rounds5.json batch 8 again, 5 rounds: the headline's configurations and the
                      default with proxy_drafting, without tcmalloc (as every run before it)
- speed_b8_rounds5_tcmalloc.json the same command with tcmalloc preloaded
- speed_b1_b32_tcmalloc.json the headline's configurations at batch 1 and 32, 3 rounds,
                      tcmalloc preloaded
- speed_b64_tcmalloc.json the same at batch 64
- ab_all_plain_b16.json, ab_default_b64.json, ab_*_b8_no_prefix_cache.json ab_engines.py:
                      vLLM's no-speculation engine and a TriSpec engine held side by side,
                      interleaved (linked from the docs)
- speed_avx512.json   the same harness over every main configuration, before the
                      cost-aware step's fixes
- speed.json          greedy, batch 1 / 8 / 32, 32 tokens, every engine compiled
- speed_policies.json greedy, batch 8, 192 tokens, eager: every policy
- speed_adaptive.json greedy, batch 8, 192 tokens, eager: fixed and adaptive lambda
- speed_t07.json      temperature 0.7, batch 8, 96 tokens, eager: every policy
- quality.json        greedy HumanEval pass@1 and MT-Bench agreement, 40 problems
- quality_t07.json    HumanEval pass@1 at temperature 0.7, 40 problems x 3 seeds
- quality_default.json the default section's own quality (target-alone rows reused)
- quality_default_b1.json the same at batch 1 (target-alone rows of the batch-8 run reused)
- quality_holds.json  lambda 0.5 with max_holds=2 (target-alone rows reused)
- quality_proxy_vocab.json lambda 0.5 with and without proxy_vocab (target-alone rows reused)
- cost_model.json     cost_model.py: predicted against measured speed, GPU projection
- pass_costs_cpu.json forward passes timed on the speed run's CPU (transformers)
- gpu_passes_h200.json forward passes timed on an H200 (plain torch), kernels_h200.json
- alignment.json      proxy / ngram agreement with the target (ShareGPT)
- load_test.json      200 concurrent streams with aborts (tiny pair)
- families.json       check_families.py: tiny targets of ten decoder families, TriSpec's
                      exact modes against vLLM's greedy output

A result may carry a "note" (shown after its label): what the row's label does
not say about how it was measured.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROOT = HERE.parent
MARKER = re.compile(r"(<!-- results:([a-z0-9-]+) -->)(.*?)(<!-- /results -->)", re.S)

SPEED = "speed.json"
SPEED_POLICIES = "speed_policies.json"
SPEED_ADAPTIVE = "speed_adaptive.json"
SPEED_T07 = "speed_t07.json"
QUALITY = "quality.json"
QUALITY_T07 = "quality_t07.json"
ALIGNMENT = "alignment.json"
LOAD = "load_test.json"
FAMILIES = "families.json"  # check_families.py: ten decoder families, exact modes
SPEED_AVX2 = "speed_avx2.json"
CPU_GEMM_DTYPES = "cpu_gemm_dtypes.json"
SPEED_B1_FLOAT32 = "speed_b1_float32.json"
SPEED_B8_FLOAT32 = "speed_b8_float32.json"
SPEED_AVX2_DEFAULT = "speed_avx2_default.json"
SPEED_AVX512 = "speed_avx512.json"  # every configuration, 3 rounds, before the cost fixes
HEADLINE = "speed_headline.json"  # the README's headline run
HEADLINE_BEFORE_PADDING = "speed_headline_before_padding.json"  # the one before, unpadded
# the one before, on the build before the draft call was skipped (Intel Xeon)
HEADLINE_BEFORE_DRAFT_CALL = "speed_headline_before_draft_call.json"
B1_PARTS = "speed_b1_amd_parts.json"  # batch 1: the default against its step kinds alone
B1_FLOOR = "speed_b1_lossless_floor.json"  # batch 1: the step choice without the proxy
B1_FASTEST = "speed_b1_fastest.json"  # batch 1: the default against every built-in SD
B1_K5 = "speed_b1_k5.json"  # batch 1: the default and the TriSpec step over ngram k=5
B1_PADDING = "speed_b1_padding.json"  # batch 1: with and without the GEMM padding
B1_PADDED = "speed_b1_padded.json"  # batch 1: every built-in SD and the default, padded
B1_PROXY_VOCAB = "speed_b1_proxy_vocab.json"  # batch 1: proxy_vocab 32768 against without
CPU_GEMM = "cpu_gemm.json"  # cpu_gemm.py: the linear layers' time by rows
HEADLINE_BEFORE_DRAFTED = "speed_headline_before_drafted.json"  # before the drafted rates
HEADLINE_BEFORE_BAR = "speed_headline_before_bar.json"  # the one before the bar
HEADLINE_NO_TCMALLOC = "speed_headline_no_tcmalloc.json"  # the one before, no tcmalloc
HEADLINE_BEFORE_SAMPLER = "speed_headline_before_sampler.json"  # before the plain sampler
NGRAM_K5 = "speed_ngram_k5.json"  # batch 1 and 8: the default section over ngram k=3 and k=5
NGRAM_K8 = "speed_ngram_k8.json"  # batch 1 and 8: the default section over ngram k=8
NGRAM_K8_BIG = "speed_ngram_k8_b32_b64.json"  # the same at batch 32 and 64
BARE_BAR = "speed_bare_bar.json"  # batch 8 and 64: the bar on requests without drafts
DRAFTING_TCMALLOC = "speed_drafting_tcmalloc.json"  # proxy_drafting again, with tcmalloc
TRUSTED_DRAFTS = "speed_trusted_drafts.json"  # the draft kind routing on its own margins
NO_UNDRAFTED = "speed_b1_no_undrafted_trispec.json"  # no TriSpec step without drafts
PAIRED_NO_UNDRAFTED = "paired_b1_no_undrafted.json"  # the same build, engines interleaved
PAIRED_LOSSY_MARGIN = "paired_b1_lossy_margin.json"  # the same with lossy_margin
PAIRED_K5 = "paired_b1_k5.json"  # the default over ngram k=5 against vLLM's k=5
PAIRED_BUDGET = "paired_b1_budget.json"  # the same with the exploration budget
PAIRED_BUDGET_HALVING = "paired_b1_budget_halving.json"  # ... that halves
PAIRED_B8_BUDGET = "paired_b8_budget.json"  # the same build at batch 8
PAIRED_BUDGET_K5 = "paired_b1_budget_k5.json"  # ... at batch 1 against vLLM's k=5
PAIRED_RUN_COST = "paired_b1_run_cost.json"  # runs held by their expected cost
PAIRED_B8_RUN_COST = "paired_b8_run_cost.json"  # ... at batch 8
STEP_TIMES = "step_times_b8.json"  # step_times.py: where a batch's time goes
STEP_TIMES_BEFORE = "step_times_b8_before_sampler.json"  # the same before the plain sampler
STEP_TIMES_AFTER_BAR = "step_times_b8_after_bar.json"  # the same after the headline run, 2 rounds
STEP_TIMES_WORKER = "step_times_b8_amd_worker.json"  # the same in the worker process (AMD)
HEADLINE_BEFORE_PREFILL = "speed_headline_before_prefill.json"  # before the prefill rule
# before the batch >= 8 warm-up rule and the drafter skip
HEADLINE_BEFORE_WARMUP = "speed_headline_before_warmup.json"
HEADLINE_BEFORE_ENTRY = "speed_headline_before_entry_charge.json"
B64_REPEAT = "speed_b64_repeat.json"  # batch 64 again: plain against the default, more rounds
B1_REPEAT = "speed_b1_repeat.json"  # batch 1 again: vLLM's SD against the default, more rounds
B8_REPEAT = "speed_b8_repeat.json"  # batch 8 again: every headline configuration, more rounds
B1_DRAFTED = "speed_b1_drafted_rates.json"  # batch 1, drafted TriSpec steps rated apart
B8_DRAFTED = "speed_b8_drafted_rates.json"  # batch 8 on the same build
# ab_builds.sh runs against the build before (188b5cb): (label, folder with summary.json)
AB_BUILDS = (
    ("drafted rates only (388dac6)", "ab_builds_b1_drafted"),
    ("with the retry on a joining request (0ff622a)", "ab_builds_b1_retry"),
)
# ... and against the headline's build (1f93285): tried, and reverted (defec08)
AB_UNDRAFTED = (("steps without drafts rated apart (ec0aa65, reverted)", "ab_builds_b1_undrafted"),)
B8_MEMORY = "speed_b8_memory.json"  # batch 8 again: the default with and without cost_memory
TARGET_SHARE = "speed_target_share.json"  # the target's share of the steps, batch 8 and 32
SPEED_HOLD = "speed_hold.json"  # lambda 0.5 with and without max_holds, batch 8
SPEED_HOLD_B32 = "speed_hold_b32.json"  # the same at batch 32, one round
B8_DRAFTING = "speed_b8_proxy_drafting.json"  # the default with and without proxy_drafting
B8_ROUNDS5 = "speed_b8_rounds5.json"  # batch 8 again, 5 rounds, no tcmalloc on the machine
B8_TCMALLOC = "speed_b8_rounds5_tcmalloc.json"  # the same command with tcmalloc preloaded
B1_B32_TCMALLOC = "speed_b1_b32_tcmalloc.json"  # batch 1 and 32, tcmalloc preloaded
B64_TCMALLOC = "speed_b64_tcmalloc.json"  # batch 64, tcmalloc preloaded
# the same run before the slowest-request objective
HEADLINE_THROUGHPUT = "speed_headline_throughput.json"
COST_MODEL = "cost_model.json"
QUALITY_DEFAULT = "quality_default.json"  # the default section's own quality
QUALITY_DEFAULT_B1 = "quality_default_b1.json"  # the same at batch 1 (target rows reused)
QUALITY_HOLDS = "quality_holds.json"  # lambda 0.5 with max_holds (target-alone rows reused)
QUALITY_PROXY_VOCAB = "quality_proxy_vocab.json"  # lambda 0.5 with and without proxy_vocab
GPU_PASSES = "gpu_passes_h200.json"  # gpu_passes.py's raw table
KERNELS_GPU = "kernels_h200.json"
PASS_COSTS = "pass_costs_cpu.json"
LEARNING = "learning_cold.json"
LEARNING_200 = "learning_200.json"  # the 200-request stream, cold start
SPEED_LEARNED = "speed_learned.json"  # the learned drafter next to the built-in drafters
# Plots the docs show (written by the benchmarks next to their JSON).
PLOTS = (
    "speed_vs_batch.png",
    "speed_adaptive_vs_lambda.png",
    "alignment_margins.png",
    "learning_cold.png",
)


def _bench(name: str):
    """Import a benchmark module from this folder (its top level is stdlib only)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return __import__(name)


_cache: dict[str, dict] = {}


def load(name: str) -> dict:
    if name not in _cache:
        _cache[name] = json.loads((RESULTS / name).read_text())
    return _cache[name]


def label(r: dict) -> str:
    return r["config"] + (f" ({r['note']})" if r.get("note") else "")


def fmt(v, spec: str = "{:.2f}") -> str:
    return "-" if v is None else spec.format(v)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def block(text: str) -> str:
    return "\n" + text.rstrip("\n") + "\n"


def paired_engines(name: str) -> str:
    """paired.py's table."""
    return block(_bench("paired").table(load(name)))


def step_times(name: str) -> str:
    """step_times.py's table: each part of a step, plain decoding against the default."""
    d = load(name)
    return block(_bench("step_times").table(d["rows"], d["hardware"]))


# ---------------------------------------------------------------------------- speed


def speed_results(name: str) -> list[dict]:
    return [dict(r, config=label(r)) for r in load(name)["results"]]


def speed_row(name: str, config: str, batch: int) -> dict | None:
    for r in load(name)["results"]:
        if r["config"] == config and r["batch"] == batch:
            return r
    return None


def speed_table(name: str) -> str:
    """The run's full table, as bench_speed.py writes it."""
    results = speed_results(name)
    batches = sorted({r["batch"] for r in results})
    return block(_bench("bench_speed").table(results, batches))


def runtime_effect(name: str) -> str:
    """Tuned over each other runtime of the run, per configuration (bench_speed.py)."""
    rows = [
        [
            e["config"],
            str(e["batch"]),
            e["against"],
            f"{e['tuned_over']:.2f}x ({e['range'][0]:.2f}-{e['range'][1]:.2f}x)",
        ]
        for e in load(name)["runtime_effect"]
    ]
    return block(md_table(["configuration", "batch", "tuned against", "tuned / it"], rows))


def cpu_gemm(name: str = CPU_GEMM) -> str:
    """cpu_gemm.py's table: one pass's matmuls by rows, as they are and padded."""
    d = load(name)
    models = list(d["models"])
    header = ["rows"] + [f"{m} (ms)" for m in models]
    by_rows: dict[str, dict[str, str]] = {}
    for model, rows in d["models"].items():
        for r in rows:
            key = (
                f"{r['rows']} padded to {r['padded_to']}"
                if r["padded_to"] > r["rows"]
                else str(r["rows"])
            )
            by_rows.setdefault(key, {})[model] = (
                f"{r['ms']:.1f} ({r['ms_range'][0]:.1f}-{r['ms_range'][1]:.1f})"
            )
    rows = [[k, *(v.get(m, "-") for m in models)] for k, v in by_rows.items()]
    return block(
        md_table(header, rows)
        + f"\n\n{d['machine']}; {d['layers']} decoder layers and the LM head per pass"
    )


DEFAULT = "TriSpec default (ngram k=3)"  # the section with only proxy_model set
DEFAULT_K8 = "TriSpec default (ngram k=8)"  # the same over ngram k=8
NO_MEMORY = "TriSpec default, no cost memory"  # the same, measuring afresh in every engine


def status() -> str:
    """One clause for the README's opening: where the default section stands against
    the fastest of plain decoding and vLLM's own SD, per batch size of the headline run."""
    d = load(HEADLINE)
    preload = (d.get("tuned_runtime_env") or {}).get("LD_PRELOAD", "")
    preloaded = ", tcmalloc preloaded" if "tcmalloc" in preload else ", without tcmalloc"

    def at(config: str) -> str:
        parts = [
            f"{vs_fastest(r)[0]} at batch {r['batch']}"
            for r in d["results"]
            if r["config"] == config
        ]
        return ", ".join(parts[:-1]) + f" and {parts[-1]}" if parts else ""

    k8 = at(DEFAULT_K8)
    return (
        f"with its default section over vLLM's ngram k=3 drafter TriSpec runs at {at(DEFAULT)} "
        + (f"(over ngram k=8: {k8}) " if k8 else "")
        + "the speed of the fastest of plain decoding and vLLM's own "
        f"speculative decoding (medians of {d['rounds']} interleaved rounds, min-max in "
        f"brackets, {d['max_tokens']}-token answers, 2-core CPU{preloaded})"
    )


def sampled_cost() -> str:
    """One clause for the README: what temperature 0.7 costs, in speed and quality."""
    rows = load(SPEED_T07)["results"]
    plain = next(r for r in rows if r["config"] == "no speculation")
    fastest = max(rows, key=lambda r: r["tokens_per_s"])
    lead = (
        "ahead of every speculative configuration"
        if fastest is plain
        else f"behind {fastest['config']} ({fastest['vs_best_sd']:.2f}x)"
    )
    deltas = {
        key: paired(QUALITY_T07, key)[0]
        for key in quality_results(QUALITY_T07)
        if key not in ("target", "lossless")
    }
    lossless = paired(QUALITY_T07, "lossless")
    worst, best = min(deltas.values()), max(deltas.values())
    text = (
        f"plain decoding ran at {plain['vs_best_sd']:.2f}x the best built-in SD at batch 8, "
        f"{lead}, "
        f"and every lossy mode cost {-best:.1f}-{-worst:.1f} points of HumanEval pass@1 "
        "against the target alone"
    )
    if lossless:
        text += (
            f" (lossless mode, which samples the target's own distribution, landed "
            f"{-lossless[0]:.1f} points below it: the noise of one such comparison)"
        )
    return text


def machine() -> str:
    """The measuring machine, as the results record it."""
    q = load(QUALITY)["machine"]
    return (
        f"{q['machine']} {q['processor']}, {q['cpu_count']} cores, "
        f"vLLM {load(QUALITY)['vllm_version']} (CPU wheel), bf16"
    )


# -------------------------------------------------------------------------- quality


def quality_results(name: str) -> dict[str, dict]:
    return {r["key"]: r for r in load(name)["results"]}


def paired(name: str, key: str) -> tuple[float, float | None] | None:
    """pass@1 change against the target alone in points, and its 95% half-width."""
    rs = quality_results(name)
    if key not in rs or key == "target":
        return None
    mean, se = _bench("bench_quality").paired_delta(rs["target"], rs[key])
    return mean, (1.96 * se if se else None)


def delta_cell(name: str, key: str | None) -> str:
    rs = quality_results(name)
    if key is None or key not in rs:
        return "-"
    if key == "target":
        r = rs[key]
        return f"{r['pass_at_1']:.1%} ({r['pass']}/{len(r['humaneval'])})"
    mean, ci = paired(name, key)
    return f"{mean:+.1f}" + (f" ± {ci:.1f}" if ci else "")


def adaptive_cells(m: dict) -> list[str]:
    count, trials = m.get("worker:lambda_count", 0), m.get("worker:adaptive_trials", 0)
    if not count:
        return ["-", "-"]
    mean = m["worker:lambda_sum"] / count
    fails = m.get("worker:adaptive_failures", 0)
    return [f"{mean:.3f}", f"{fails / trials:.1%} ({fails}/{trials})" if trials else "-"]


def completed_share(m: dict) -> str:
    steps = m.get("worker:decode_request_steps", 0)
    return f"{m.get('worker:proxy_completions', 0) / steps:.0%}" if steps else "-"


def quality_greedy(name: str = QUALITY) -> str:
    rows = []
    for key, r in quality_results(name).items():
        ag = r.get("mtbench_agreement")
        ident = f"{ag['identical_share']:.0%} ({ag['identical']}/{ag['total']})" if ag else "-"
        div = f"{fmt(ag['mean_first_divergence'], '{:.1f}')} ({ag['diverging']})" if ag else "-"
        m = r.get("metrics", {})
        rows.append(
            [
                label(r),
                f"{r['pass_at_1']:.1%} ({r['pass']}/{len(r['humaneval'])})",
                "-" if key == "target" else delta_cell(name, key),
                ident,
                div,
                fmt(r.get("mtbench_mean_length"), "{:.1f}"),
                fmt(r.get("target_steps_per_token"), "{:.3f}"),
                completed_share(m),
                *adaptive_cells(m),
            ]
        )
    header = [
        "configuration",
        "HumanEval pass@1",
        "vs target (points, 95% CI)",
        "MT-Bench identical to target",
        "first divergence: mean position (answers)",
        "MT-Bench mean length",
        "target steps/token",
        "request-steps completed by the proxy",
        "mean lambda",
        "failed trials",
    ]
    return block(md_table(header, rows))


def quality_sampled() -> str:
    d = load(QUALITY_T07)
    limit = d["settings"]["max_tokens"]
    rows = []
    for key, r in quality_results(QUALITY_T07).items():
        m = r.get("metrics", {})
        cut = sum(o.get("finish") == "length" for o in r["humaneval"])
        rows.append(
            [
                label(r),
                f"{r['pass_at_1']:.1%} ({r['pass']}/{len(r['humaneval'])})",
                "-" if key == "target" else delta_cell(QUALITY_T07, key),
                str(cut),
                fmt(r.get("target_steps_per_token"), "{:.3f}"),
                completed_share(m),
                *adaptive_cells(m),
            ]
        )
    header = [
        "configuration",
        "HumanEval pass@1",
        "vs target (points, 95% CI)",
        f"answers cut at {limit} tokens",
        "target steps/token",
        "request-steps completed by the proxy",
        "mean lambda",
        "failed trials",
    ]
    return block(md_table(header, rows))


# ------------------------------------------------------------------- summary tables


def vs_fastest(r: dict) -> tuple[str, list[float]]:
    """tok/s over the fastest of plain decoding and vLLM's own SD at the same batch
    size, per round ('median (min-max)', the per-round ratios)."""
    ratios = [
        min(x["vs_no_spec"], x["vs_best_sd"])
        for x in r["rounds"]
        if x.get("vs_no_spec") and x.get("vs_best_sd")
    ]
    if not ratios:
        return "-", []
    med = statistics.median(ratios)
    return f"{med:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}x)", ratios


def headline_rounds() -> str:
    """README headline: the repeated-rounds run, median (min-max) per batch size, its
    ratio to the fastest of plain decoding and vLLM's SD in the same round, and the
    target's share of the engine steps."""
    spread = _bench("bench_speed").spread
    results = load(HEADLINE)["results"]
    batches = sorted({r["batch"] for r in results})
    rows = []
    for config in dict.fromkeys(r["config"] for r in results):
        cells, shares = [], []
        for b in batches:
            r = speed_row(HEADLINE, config, b)
            if r is None:
                cells += ["-", "-"]
                shares.append("-")
                continue
            cells += [spread(r, "tokens_per_s", "{:.2f}"), vs_fastest(r)[0]]
            shares.append(fmt(r.get("target_step_share"), "{:.0%}"))
        rows.append([config, *cells, " / ".join(shares)])
    header = ["configuration"]
    for b in batches:
        header += [f"batch {b}: tok/s", "vs fastest"]
    header.append("steps with target (batch " + " / ".join(map(str, batches)) + ")")
    return block(md_table(header, rows))


def b64_repeat() -> str:
    """One clause: the batch-64 repeat of plain decoding against the default section."""
    d = load(B64_REPEAT)
    r = speed_row(B64_REPEAT, DEFAULT, 64)
    plain = speed_row(B64_REPEAT, "no speculation", 64)
    spread = _bench("bench_speed").spread
    return (
        f"a repeat of only these two rows at batch 64 in {d['rounds']} interleaved rounds "
        f"(`{B64_REPEAT}`) gave the default {spread(r, 'vs_no_spec', '{:.2f}x')} of plain "
        f"decoding ({spread(r, 'tokens_per_s', '{:.2f}')} against "
        f"{spread(plain, 'tokens_per_s', '{:.2f}')} tok/s)"
    )


def other_rates(d: dict, batch: int, exclude: tuple[str, ...]) -> tuple[list[dict], str]:
    """The run's rows at `batch` but those of `exclude`, and their tok/s as one clause."""
    spread = _bench("bench_speed").spread
    others = [x for x in d["results"] if x["batch"] == batch and x["config"] not in exclude]
    rates = ", ".join(f"{x['config']} {spread(x, 'tokens_per_s', '{:.2f}')}" for x in others)
    return others, rates


def repeat(name: str, batch: int) -> str:
    """One clause: a repeat of one batch size of the headline, the default against the
    fastest of the other configurations in it."""
    d = load(name)
    r = speed_row(name, DEFAULT, batch)
    requests = dict(map(tuple, d["plan"]))[batch]
    spread = _bench("bench_speed").spread
    others, rates = other_rates(d, batch, (DEFAULT,))
    plain = any(x["config"] == "no speculation" for x in others)
    versus = "of the fastest" if plain else "of the faster vLLM SD configuration"
    ratio = vs_fastest(r)[0] if plain else spread(r, "vs_best_sd", "{:.2f}x")
    return (
        f"a repeat at batch {batch} with {requests} requests in {d['rounds']} interleaved rounds "
        f"(`{name}`, {d['machine'].split(',')[0]}) gave the default {ratio} {versus} "
        f"({spread(r, 'tokens_per_s', '{:.2f}')} tok/s; {rates})"
    )


def memory(name: str, batch: int) -> str:
    """One clause: the default with its kept measurements (cost_memory; round 1 starts
    without any, later rounds from what earlier ones kept) against the fastest and
    against the same section measuring afresh in every engine."""
    d = load(name)
    r, cold = speed_row(name, DEFAULT, batch), speed_row(name, NO_MEMORY, batch)
    spread = _bench("bench_speed").spread
    text, ratios = vs_fastest(r)
    later = ratios[1:]
    own = [
        a["tokens_per_s"] / b["tokens_per_s"]
        for a, b in zip(r["rounds"], cold["rounds"], strict=True)
    ]
    _, rates = other_rates(d, batch, (DEFAULT, NO_MEMORY))
    return (
        f"at batch {batch} with {dict(map(tuple, d['plan']))[batch]} requests in {d['rounds']} "
        f"interleaved rounds (`{name}`, {d['machine'].split(',')[0]}) the default ran at {text} "
        f"of the fastest ({spread(r, 'tokens_per_s', '{:.2f}')} tok/s; {rates}); in rounds "
        f"2-{d['rounds']}, which started from the measurements earlier rounds kept, "
        f"{statistics.median(later):.2f}x ({min(later):.2f}-{max(later):.2f}x). The same section "
        f"measuring afresh in every engine (`cost_memory: false`) ran at {vs_fastest(cold)[0]} "
        f"({spread(cold, 'tokens_per_s', '{:.2f}')} tok/s); the default over it, round by round: "
        + ", ".join(f"{x:.2f}x" for x in own)
    )


def ab_builds(builds: tuple[tuple[str, str], ...] = AB_BUILDS) -> str:
    """ab_builds.sh's summaries: each build against the one before, and both against vLLM's
    ngram k=3 SD, ratios within rounds (median, min-max, round by round)."""

    def cell(vals: list[float], spec: str = "{:.3f}") -> str:
        med = statistics.median(vals)
        return f"{spec.format(med)} ({spec.format(min(vals))}-{spec.format(max(vals))})"

    rows = []
    for name, folder in builds:
        s = json.loads((RESULTS / folder / "summary.json").read_text())
        ratio, tps = s["ratios_within_rounds"], s["tokens_per_s"]
        rows.append(
            [
                name,
                cell(ratio["new / old default"]),
                ", ".join(f"{v:.3f}" for v in ratio["new / old default"]),
                cell(ratio["new default / vLLM"]),
                cell(ratio["old default / vLLM"]),
                cell(tps["new default"], "{:.2f}"),
                cell(tps["old default"], "{:.2f}"),
                cell(tps["vLLM ngram k=3"], "{:.2f}"),
            ]
        )
    header = [
        "build",
        "new / old default",
        "round by round",
        "new default / vLLM ngram k=3",
        "old default / vLLM ngram k=3",
        "new tok/s",
        "old tok/s",
        "vLLM ngram k=3 tok/s",
    ]
    return block(md_table(header, rows))


def headline_machine(name: str = HEADLINE) -> str:
    d = load(name)
    return (
        f"{d['machine']}; {d['max_tokens']} greedy tokens per request; (batch, requests) "
        f"{', '.join(f'({b}, {n})' for b, n in d['plan'])}; medians of {d['rounds']} "
        "interleaved rounds (min-max)"
    )


def quality_clause() -> str:
    """README: what the TriSpec step at lambda 0.5 costs in HumanEval pass@1."""
    n = len(quality_results(QUALITY)["target"]["humaneval"])
    return (
        f"with the TriSpec step in every step at lambda 0.5, HumanEval pass@1 moved by "
        f"{delta_cell(QUALITY, 'tri0.5')} points against the target alone (greedy, {n} "
        f"problems, paired 95% interval) and by {delta_cell(QUALITY_T07, 'tri0.5')} at "
        "temperature 0.7 (three seeded answers each)"
    )


def default_quality_clause(
    name: str = QUALITY_DEFAULT, subject: str = "the default section itself"
) -> str:
    """README: the default section's own quality cost, with its step kinds there."""
    rs = quality_results(name)
    d = rs["default"]
    n = len(d["humaneval"])
    ag = d.get("mtbench_agreement") or {}
    m = d.get("metrics", {})
    kinds = {k: m.get(f"worker:{k}_kind_steps", 0) for k in ("trispec", "sd", "plain")}
    share = {k: f"{v / (sum(kinds.values()) or 1):.0%}" for k, v in kinds.items()}
    batch = load(name)["settings"]["batch"]
    _, ci = paired(name, "default")
    same = [x["passed"] for x in d["humaneval"]] == [x["passed"] for x in rs["target"]["humaneval"]]
    delta = (
        f"{delta_cell(name, 'default')} points, paired 95% interval"
        if ci or not same
        else "the same problems passed"
    )
    return (
        f"{subject}, at batch {batch}, scored HumanEval pass@1 "
        f"{d['pass_at_1']:.1%} against the target alone's {rs['target']['pass_at_1']:.1%} "
        f"({delta}; greedy, {n} problems), and {ag.get('identical', 0)} of {ag.get('total', 0)} "
        "MT-Bench answers were "
        f"the target's to the token; it ran TriSpec steps in {share['trispec']} of its "
        f"decoding steps there (SD {share['sd']}, plain {share['plain']})"
    )


# docs/policies.md: each policy's speed (greedy and T=0.7, batch 8) and quality.
# (label, greedy speed (file, config), T=0.7 speed config, quality key)
POLICIES = [
    (
        "`trispec`, lambda 0.5",
        (SPEED_POLICIES, "TriSpec ngram lambda=0.5"),
        "TriSpec ngram lambda=0.5",
        "tri0.5",
    ),
    ("`trispec`, lambda 0.7", (SPEED_ADAPTIVE, "TriSpec ngram lambda=0.7"), None, "tri0.7"),
    (
        "`trispec`, ngram k=5, lambda 0.5",
        (SPEED_POLICIES, "TriSpec ngram k=5 lambda=0.5"),
        "TriSpec ngram k=5 lambda=0.5",
        None,
    ),
    (
        "`trispec`, adaptive lambda, goal 5%",
        (SPEED_ADAPTIVE, "TriSpec ngram adaptive lambda"),
        None,
        "adaptive",
    ),
    (
        "`trispec`, adaptive lambda, goal 10%",
        (SPEED_ADAPTIVE, "TriSpec ngram adaptive lambda goal=10% start=learned"),
        "TriSpec ngram adaptive lambda goal=10% start=learned",
        "adaptive10",
    ),
    (
        "`trispec`, the 0.5B as drafter and proxy, lambda 0.5",
        (SPEED, "TriSpec draft_model lambda=0.5"),
        "TriSpec draft_model lambda=0.5",
        "tridm0.5",
    ),
    ("`trispec`, lossless (lambda > 1)", (SPEED, "TriSpec ngram lossless"), None, "lossless"),
    (
        "`pyramid` PSD_F, tau_q 0.4, tau_t 0.5",
        (SPEED_POLICIES, "PyramidSD PSD_F ngram 0.4/0.5"),
        "PyramidSD PSD_F ngram 0.4/0.5",
        "psdf",
    ),
    ("`pyramid` PSD_F, tau_q 0.1, tau_t 0.1", None, None, "psdf0.1"),
    (
        "`pyramid` PSD_A, tau_t 0.1",
        (SPEED_POLICIES, "PyramidSD PSD_A ngram tau_t=0.1"),
        "PyramidSD PSD_A ngram tau_t=0.1",
        "psda",
    ),
]
SOURCE_MARK = {SPEED_POLICIES: "", SPEED_ADAPTIVE: " ᵃ", SPEED: " ᵇ"}


def policies() -> str:
    rows = []
    for name, greedy, sampled, key in POLICIES:
        g = speed_row(greedy[0], greedy[1], 8) if greedy else None
        t = speed_row(SPEED_T07, sampled, 8) if sampled else None
        rows.append(
            [
                name,
                "-" if g is None else f"{g['vs_best_sd']:.2f}x{SOURCE_MARK[greedy[0]]}",
                "-" if t is None else f"{t['vs_best_sd']:.2f}x",
                delta_cell(QUALITY, key),
                delta_cell(QUALITY_T07, key),
            ]
        )
    header = [
        "policy",
        "speed vs best SD, greedy",
        "speed vs best SD, T=0.7",
        "HumanEval vs target, greedy",
        "HumanEval vs target, T=0.7",
    ]
    return block(md_table(header, rows))


# ------------------------------------------------------------------ other benchmarks


def alignment() -> str:
    d = load(ALIGNMENT)
    return block(_bench("bench_alignment").table(d["summary"], d["ngram_sd_replay"]))


def load_test() -> str:
    rows = [
        [
            name,
            str(r["completed"]),
            str(r["aborted"]),
            str(len(r["errors"])),
            str(len(r["mismatches"])),
            f"{r['tokens_per_s']:.0f}",
            f"{r['p50_s']:.2f}",
            f"{r['p99_s']:.2f}",
        ]
        for name, r in load(LOAD).items()
    ]
    header = [
        "server",
        "completed",
        "aborted",
        "errors",
        "wrong answers",
        "tok/s",
        "p50 s",
        "p99 s",
    ]
    return block(md_table(header, rows))


def cost_model() -> str:
    """Predicted against measured decode speed (cost_model.py's check)."""
    d = load(COST_MODEL)
    proj = d["projection_costs"]["device"] if d.get("projection_costs") else None
    hardware = f"{d['pass_costs']['device']} (pass costs), speed run {Path(d['speed_run']).name}"
    return block(_bench("cost_model").table(d["rows"], hardware, proj))


def cost_model_reading() -> str:
    """The check in one sentence: the error range of the rows that were not fitted."""
    rows = [e for e in load(COST_MODEL)["rows"] if e.get("error") is not None]
    errs = [100 * e["error"] for e in rows]
    worst = max(rows, key=lambda e: abs(e["error"]))
    return (
        f"Against the measured decode speed the {len(rows)} checked rows are off by "
        f"{min(errs):+.0f}% to {max(errs):+.0f}% (median {statistics.median(errs):+.0f}%; the "
        f"largest miss: {worst['config']} at batch {worst['batch']})."
    )


def _vs_best(key: str) -> str:
    rows = [e for e in load(COST_MODEL)["rows"] if e["config"] == DEFAULT and key in e]
    ratio = key.replace("_tok_s", "_vs_best_sd")
    return ", ".join(f"{e[ratio]:.2f}x at batch {e['batch']}" for e in rows)


def projection_eager() -> str:
    return _vs_best("projected_tok_s") + " of the best vLLM SD configuration"


def projection_graphs() -> str:
    return _vs_best("projected_graphs_tok_s")


def pass_costs() -> str:
    """The speed-run machine's forward ms per model and B x t (cost_model.py's file)."""
    costs = _bench("cost_model").PassCosts.from_json(load(PASS_COSTS))
    shapes = sorted({bt for v in costs.shapes.values() for bt in v})
    rows = [
        [str(b), str(t)]
        + [fmt(1e3 * costs.shapes[m].get((b, t)), "{:.0f}") for m in ("target", "proxy")]
        for b, t in shapes
    ]
    head = f"Hardware: {costs.device}\n\n"
    return block(head + md_table(["B", "t", "target ms", "proxy ms"], rows))


def gpu_passes() -> str:
    """Forward ms of each model on the GPU, eager and from a CUDA graph, per B x t."""
    d = load(GPU_PASSES)
    by = {m: {(r["batch"], r["tokens"]): r for r in rows} for m, rows in d["rows"].items()}
    rows = []
    for b, t in sorted(by["target"]):
        cells = [str(b), str(t)]
        for m in ("target", "proxy"):
            r = by[m][(b, t)]
            cells += [f"{1e3 * r['eager_s']:.2f}", f"{1e3 * r['graph_s']:.2f}"]
        rows.append(cells)
    head = f"Hardware: {d['device']} ({d['setup']})\n\n"
    header = ["B", "t", "target eager ms", "target graph ms", "proxy eager ms", "proxy graph ms"]
    return block(head + md_table(header, rows))


def kernels_gpu() -> str:
    """bench_kernels.py on the GPU: microseconds and GB/s per implementation."""
    d = load(KERNELS_GPU)
    rows = [
        [str(r["n"]), r["dtype"].replace("torch.", ""), r["impl"], f"{1e6 * r['seconds']:.1f}"]
        + [f"{r['gbps']:.0f}"]
        for r in d["rows"]
    ]
    return block(md_table(["rows", "dtype", "implementation", "µs", "GB/s"], rows))


def learning(name: str = LEARNING, per: int = 1) -> str:
    """The learned drafter's learning curve, learning on against off, `per` groups of
    requests to a row (means of the groups' figures; updates summed)."""
    d = load(name)
    on, off = d["arms"]["learning on"], d["arms"]["learning off"]

    def mean(rows: list[dict], key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    rows = []
    for i in range(0, len(on), per):
        a, b = on[i : i + per], off[i : i + per]
        rows.append(
            [
                f"{a[0]['requests_served'] - d['batch'] + 1}-{a[-1]['requests_served']}",
                fmt(mean(a, "proxy_acceptance_length")),
                fmt(mean(b, "proxy_acceptance_length")),
                str(sum(r["drafter_updates"] for r in a)),
                fmt(mean(a, "mean_loss"), "{:.3f}"),
                fmt(mean(a, "tokens_per_s")),
                fmt(mean(b, "tokens_per_s")),
            ]
        )
    head = (
        f"Hardware: {d['machine']}; {d['requests']} requests, batch {d['batch']}, "
        f"{d['max_tokens']} tokens, k={d['k']}, lambda {d['lambda']}, {d.get('dtype')}, "
        f"update every {d.get('drafter_update_every')} steps, {d['start']} start\n\n"
    )
    header = [
        "requests",
        "tau_a/step, learning on",
        "tau_a/step, off",
        "updates",
        "mean loss",
        "tok/s on",
        "tok/s off",
    ]
    return block(head + md_table(header, rows))


BLOCKS: dict[str, Callable[[], str]] = {
    "status": status,
    "machine": machine,
    "sampled-cost": sampled_cost,
    "quality-clause": quality_clause,
    "default-quality": default_quality_clause,
    "default-quality-b1": lambda: default_quality_clause(QUALITY_DEFAULT_B1, "the same section"),
    "speed-headline": headline_rounds,
    "speed-headline-machine": headline_machine,
    "speed-avx512": lambda: speed_table(SPEED_AVX512),
    "speed-headline-full": lambda: speed_table(HEADLINE),
    "speed-headline-before-padding-full": lambda: speed_table(HEADLINE_BEFORE_PADDING),
    "speed-headline-before-padding-machine": lambda: headline_machine(HEADLINE_BEFORE_PADDING),
    "speed-b1-amd-parts": lambda: speed_table(B1_PARTS),
    "speed-b1-lossless-floor": lambda: speed_table(B1_FLOOR),
    "speed-b1-fastest": lambda: speed_table(B1_FASTEST),
    "speed-b1-k5": lambda: speed_table(B1_K5),
    "speed-b1-padding": lambda: speed_table(B1_PADDING),
    "speed-b1-padding-effect": lambda: runtime_effect(B1_PADDING),
    "speed-b1-padded": lambda: speed_table(B1_PADDED),
    "speed-b1-proxy-vocab": lambda: speed_table(B1_PROXY_VOCAB),
    "cpu-gemm": cpu_gemm,
    "speed-headline-before-draft-call-full": lambda: speed_table(HEADLINE_BEFORE_DRAFT_CALL),
    "speed-headline-before-draft-call-machine": lambda: headline_machine(
        HEADLINE_BEFORE_DRAFT_CALL
    ),
    "speed-headline-before-drafted-full": lambda: speed_table(HEADLINE_BEFORE_DRAFTED),
    "speed-headline-no-tcmalloc-full": lambda: speed_table(HEADLINE_NO_TCMALLOC),
    "speed-headline-before-sampler-full": lambda: speed_table(HEADLINE_BEFORE_SAMPLER),
    "speed-headline-before-bar-full": lambda: speed_table(HEADLINE_BEFORE_BAR),
    "speed-headline-before-bar-machine": lambda: headline_machine(HEADLINE_BEFORE_BAR),
    "speed-ngram-k5": lambda: speed_table(NGRAM_K5),
    "speed-ngram-k8": lambda: speed_table(NGRAM_K8),
    "speed-ngram-k8-b32-b64": lambda: speed_table(NGRAM_K8_BIG),
    "speed-bare-bar": lambda: speed_table(BARE_BAR),
    "speed-drafting-tcmalloc": lambda: speed_table(DRAFTING_TCMALLOC),
    "speed-trusted-drafts": lambda: speed_table(TRUSTED_DRAFTS),
    "speed-b1-no-undrafted-trispec": lambda: speed_table(NO_UNDRAFTED),
    "paired-b1-no-undrafted": lambda: paired_engines(PAIRED_NO_UNDRAFTED),
    "paired-b1-lossy-margin": lambda: paired_engines(PAIRED_LOSSY_MARGIN),
    "paired-b1-k5": lambda: paired_engines(PAIRED_K5),
    "paired-b1-budget": lambda: paired_engines(PAIRED_BUDGET),
    "paired-b1-budget-halving": lambda: paired_engines(PAIRED_BUDGET_HALVING),
    "paired-b8-budget": lambda: paired_engines(PAIRED_B8_BUDGET),
    "paired-b1-budget-k5": lambda: paired_engines(PAIRED_BUDGET_K5),
    "paired-b1-run-cost": lambda: paired_engines(PAIRED_RUN_COST),
    "paired-b8-run-cost": lambda: paired_engines(PAIRED_B8_RUN_COST),
    "step-times": lambda: step_times(STEP_TIMES),
    "step-times-before": lambda: step_times(STEP_TIMES_BEFORE),
    "step-times-after-bar": lambda: step_times(STEP_TIMES_AFTER_BAR),
    "step-times-worker": lambda: step_times(STEP_TIMES_WORKER),
    "speed-headline-no-tcmalloc-machine": lambda: headline_machine(HEADLINE_NO_TCMALLOC),
    "speed-headline-before-prefill": lambda: speed_table(HEADLINE_BEFORE_PREFILL),
    "speed-headline-before-warmup": lambda: speed_table(HEADLINE_BEFORE_WARMUP),
    "speed-headline-before-entry": lambda: speed_table(HEADLINE_BEFORE_ENTRY),
    "b64-repeat": b64_repeat,
    "b1-repeat": lambda: repeat(B1_REPEAT, 1),
    "b8-repeat": lambda: repeat(B8_REPEAT, 8),
    "b8-memory": lambda: memory(B8_MEMORY, 8),
    "speed-b1-drafted": lambda: speed_table(B1_DRAFTED),
    "speed-b8-drafted": lambda: speed_table(B8_DRAFTED),
    "ab-builds-b1": ab_builds,
    "ab-builds-b1-undrafted": lambda: ab_builds(AB_UNDRAFTED),
    "speed-target-share": lambda: speed_table(TARGET_SHARE),
    "speed-hold": lambda: speed_table(SPEED_HOLD),
    "speed-hold-b32": lambda: speed_table(SPEED_HOLD_B32),
    "speed-b8-drafting": lambda: speed_table(B8_DRAFTING),
    "speed-b8-rounds5": lambda: speed_table(B8_ROUNDS5),
    "b8-rounds5": lambda: repeat(B8_ROUNDS5, 8),
    "speed-b8-tcmalloc": lambda: speed_table(B8_TCMALLOC),
    "b8-tcmalloc": lambda: repeat(B8_TCMALLOC, 8),
    "speed-b1-b32-tcmalloc": lambda: speed_table(B1_B32_TCMALLOC),
    "b1-tcmalloc": lambda: repeat(B1_B32_TCMALLOC, 1),
    "b32-tcmalloc": lambda: repeat(B1_B32_TCMALLOC, 32),
    "speed-b64-tcmalloc": lambda: speed_table(B64_TCMALLOC),
    "b64-tcmalloc": lambda: repeat(B64_TCMALLOC, 64),
    "speed-headline-throughput": lambda: speed_table(HEADLINE_THROUGHPUT),
    "speed-learned": lambda: speed_table(SPEED_LEARNED),
    "learning-200": lambda: learning(LEARNING_200, per=5),
    "policies": policies,
    "speed-batches": lambda: speed_table(SPEED),
    "speed-policies": lambda: speed_table(SPEED_POLICIES),
    "speed-adaptive": lambda: speed_table(SPEED_ADAPTIVE),
    "speed-t07": lambda: speed_table(SPEED_T07),
    "quality": quality_greedy,
    "quality-holds": lambda: quality_greedy(QUALITY_HOLDS),
    "quality-proxy-vocab": lambda: quality_greedy(QUALITY_PROXY_VOCAB),
    "quality-t07": quality_sampled,
    "alignment": alignment,
    "load-test": load_test,
    "families": lambda: block(_bench("check_families").table(load(FAMILIES)["results"])),
    "speed-avx2": lambda: speed_table(SPEED_AVX2),
    "cpu-gemm-dtypes": lambda: cpu_gemm(CPU_GEMM_DTYPES),
    "speed-b1-float32": lambda: speed_table(SPEED_B1_FLOAT32),
    "speed-b8-float32": lambda: speed_table(SPEED_B8_FLOAT32),
    "speed-avx2-default": lambda: speed_table(SPEED_AVX2_DEFAULT),
    "cost-model": cost_model,
    "pass-costs": pass_costs,
    "cost-model-reading": cost_model_reading,
    "projection-eager": projection_eager,
    "projection-graphs": projection_graphs,
    "gpu-passes": gpu_passes,
    "kernels-gpu": kernels_gpu,
    "learning": learning,
}


# ---------------------------------------------------------------------- the files


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def render(text: str, where: Path) -> str:
    def replace(m: re.Match) -> str:
        name = m.group(2)
        if name not in BLOCKS:
            raise SystemExit(
                f"{where}: unknown block 'results:{name}' (known: {', '.join(BLOCKS)})"
            )
        return m.group(1) + BLOCKS[name]() + m.group(4)

    return MARKER.sub(replace, text)


def unreferenced() -> list[str]:
    """Results files no block read (call after rendering: `load` caches every file a
    block reads) and no document links to."""
    used = {*_cache, *PLOTS}
    text = "".join(p.read_text() for p in documents() if p.exists())
    return sorted(
        p.name
        for p in RESULTS.iterdir()
        if p.is_file() and p.name not in used and p.name not in text
    )


def merge(new_path: Path, into_path: Path) -> None:
    """Add the rows bench_quality measured in NEW (run with --baseline INTO) to INTO.

    A row whose key INTO already has replaces it; the reused reference rows of NEW
    are dropped. Each row keeps the date and command of the run that measured it."""
    new, into = json.loads(new_path.read_text()), json.loads(into_path.read_text())
    for k in ("task_ids", "samples", "mtbench_n", "max_tokens", "temperature", "seed"):
        default = 1 if k == "samples" else None
        if new["settings"].get(k, default) != into["settings"].get(k, default):
            raise SystemExit(f"{new_path}: setting {k} differs from {into_path}'s")
    rows = {r["key"]: r for r in into["results"]}
    for r in rows.values():
        r.setdefault("run", {"date": into["date"], "command": into["command"]})
    for r in new["results"]:
        if "reused_from" in r:
            continue
        r["run"] = {"date": new["date"], "command": new["command"]}
        rows[r["key"]] = r
    # Rows in bench_quality's order of configurations (unknown keys last).
    order = [c.key for c in _bench("bench_quality").configurations("proxy", None)]
    into["results"] = sorted(
        rows.values(), key=lambda r: order.index(r["key"]) if r["key"] in order else len(order)
    )
    into_path.write_text(json.dumps(into, indent=1))
    print(f"{into_path}: {len(rows)} rows ({', '.join(r['key'] for r in into['results'])})")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--check", action="store_true", help="exit 1 if a document is stale")
    ap.add_argument("--merge", nargs=2, type=Path, metavar=("NEW", "INTO"))
    args = ap.parse_args()
    if args.merge:
        merge(*args.merge)
        return 0
    stale = []
    for path in documents():
        if not path.exists():
            continue
        old = path.read_text()
        new = render(old, path)
        if new == old:
            continue
        stale.append(path)
        if args.check:
            rel = path.relative_to(ROOT)
            sys.stdout.writelines(
                difflib.unified_diff(
                    old.splitlines(True), new.splitlines(True), f"{rel}", f"{rel} (generated)"
                )
            )
        else:
            path.write_text(new)
            print(f"updated {path.relative_to(ROOT)}")
    for name in unreferenced():
        print(f"note: benchmarks/results/{name} is neither read here nor linked from the docs")
    if args.check and stale:
        print("stale: " + ", ".join(str(p.relative_to(ROOT)) for p in stale), file=sys.stderr)
        print("run: python3 benchmarks/make_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
