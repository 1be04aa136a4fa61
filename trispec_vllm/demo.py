"""`trispec-vllm demo`: a TriSpec generation inside vLLM on an embedded default.

The default pair is the tiny random Qwen2 target/proxy from
`trispec_vllm.testing` (built in a second, no download), so the demo shows the
machinery, not good text: the same prompts run through vLLM's plain
speculative decoding and through TriSpec, and the demo prints outputs, speed
and TriSpec's counters side by side.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PROMPTS = [
    "def fibonacci(n):\n    ",
    "hello world hello world hello",
    "The quick brown fox jumps over the lazy dog. The quick brown",
    "for i in range(10):\n    print(i)\nfor j in range(10):\n",
]


def cache_dir() -> Path:
    root = os.environ.get("TRISPEC_CACHE") or Path.home() / ".cache" / "trispec-vllm"
    return Path(root)


def run(margin_threshold: float = 0.5, max_tokens: int = 48, num_spec: int = 3) -> int:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    from trispec_vllm.testing import make_tiny_pair

    pair = make_tiny_pair(cache_dir() / "tiny-pair")
    spec = {
        "method": "ngram",
        "num_speculative_tokens": num_spec,
        "prompt_lookup_max": 3,
        "prompt_lookup_min": 1,
    }
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    results = {}
    for label, extra in (
        ("vLLM ngram SD", {}),
        (
            f"TriSpec lambda={margin_threshold}",
            {
                "additional_config": {
                    "trispec": {"proxy_model": pair.proxy, "margin_threshold": margin_threshold}
                }
            },
        ),
    ):
        llm = LLM(
            model=pair.target,
            dtype="float32",
            max_model_len=512,
            enforce_eager=True,
            speculative_config=spec,
            disable_log_stats=False,
            seed=0,
            **extra,
        )
        llm.generate(PROMPTS[:1], params, use_tqdm=False)  # warm-up
        t0 = time.perf_counter()
        outs = llm.generate(PROMPTS, params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        metrics = {m.name: getattr(m, "value", None) for m in llm.get_metrics()}
        results[label] = (outs, tokens / elapsed, metrics)
        llm.llm_engine.engine_core.shutdown()
        del llm

    for label, (outs, tps, metrics) in results.items():
        print(f"\n=== {label}: {tps:.1f} output tokens/s")
        for o in outs[:2]:
            print(f"  {o.prompt!r} -> {o.outputs[0].text[:60]!r}")
        if any(k.startswith("trispec:") for k in metrics):
            steps = metrics["trispec:proxy_steps"]
            print(
                f"  engine steps {steps}, target ran in {metrics['trispec:target_steps']}, "
                f"request-steps: {metrics['trispec:proxy_completions']} completed by the proxy, "
                f"{metrics['trispec:escalations']} escalated; "
                f"{metrics['trispec:emitted_tokens']} tokens emitted"
            )
    base = results["vLLM ngram SD"][0]
    ours = next(v for k, v in results.items() if k.startswith("TriSpec"))[0]
    pairs = zip(base, ours, strict=True)
    same = sum(a.outputs[0].token_ids == b.outputs[0].token_ids for a, b in pairs)
    print(
        f"\nTriSpec output identical to the target's for {same}/{len(base)} prompts "
        "(lambda > 1 makes it lossless; the tiny random proxy is a weak judge)."
    )
    return 0
