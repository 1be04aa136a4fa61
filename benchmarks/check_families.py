"""TriSpec on decoder families the test suite does not build: does each run, and do
the exact modes stay exact?

    python benchmarks/check_families.py --out benchmarks/results/families.json
    python benchmarks/check_families.py gemma2 phi3      # some families only

For each family a tiny random target (3 layers) and a proxy holding its first
layer are written by `trispec_vllm.testing.make_tiny_family_pair`, and vLLM's own
non-speculative greedy output on six prompts (one a single token) is the
reference. Then, each in an engine of its own: lossless mode (lambda 1.5) over the
ngram and the draft_model drafters and the proxy = target at lambda 0.05 must
equal it token for token; lossy lambda 0.5 with the one-layer proxy must run and
give every request its tokens (its equal count is printed, not checked: a random
one-layer proxy is a poor one). Prints a table, writes JSON; exits 1 when a check
fails. A correctness sweep, not a speed figure (tens of minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

# model_type -> that family's own config settings (tiny: 2 heads, 1 KV head).
FAMILIES: dict[str, dict] = {
    "gemma2": {
        "head_dim": 64,
        "query_pre_attn_scalar": 64,
        "sliding_window": 64,
        "tie_word_embeddings": True,
    },
    "gemma3_text": {
        "head_dim": 64,
        "query_pre_attn_scalar": 64,
        "sliding_window": 64,
        "tie_word_embeddings": True,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
    },
    "phi3": {},
    "mistral": {"sliding_window": 64},
    "qwen3": {"head_dim": 64},
    "granite": {
        "logits_scaling": 4.0,
        "embedding_multiplier": 2.0,
        "residual_multiplier": 0.5,
        "attention_multiplier": 0.1,
    },
    "olmo2": {},
    "stablelm": {},
    "gpt_neox": {},
    "qwen3_moe": {
        "head_dim": 64,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 64,
        "decoder_sparse_step": 1,
    },
}
PROMPTS = [
    "def add(a, b): return a + b\n" * 2,
    "the cat sat on the mat. the cat",
    "x = [1, 2, 3]\n",
    "hello world hello world ",
    "a",
    "for i in range(10): print(i)\n",
]
MAX_TOKENS = 40
NGRAM = {
    "method": "ngram",
    "num_speculative_tokens": 3,
    "prompt_lookup_min": 1,
    "prompt_lookup_max": 3,
}


def generate(target: str, spec=None, trispec=None) -> list[list[int]]:
    from vllm import LLM, SamplingParams

    extra = {"additional_config": {"trispec": trispec}} if trispec else {}
    llm = LLM(
        model=target,
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        speculative_config=spec,
        seed=0,
        **extra,
    )
    try:
        params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        return [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, params, use_tqdm=False)]
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


MODES = (
    "lossless, ngram",
    "lossless, draft_model",
    "proxy = target, lambda 0.05",
    "lossy lambda 0.5",
)


def modes(pair) -> dict[str, tuple[dict, dict, bool]]:
    """name -> (speculative_config, trispec section, must equal the reference)."""
    lossless = {"proxy_model": pair.proxy, "margin_threshold": 1.5, "cost_aware": False}
    draft = {"method": "draft_model", "model": pair.proxy, "num_speculative_tokens": 3}
    return {  # in the order of MODES
        "lossless, ngram": (NGRAM, lossless, True),
        "lossless, draft_model": (draft, lossless, True),
        "proxy = target, lambda 0.05": (
            NGRAM,
            {"proxy_model": pair.target, "margin_threshold": 0.05, "cost_aware": False},
            True,
        ),
        "lossy lambda 0.5": (
            NGRAM,
            {"proxy_model": pair.proxy, "margin_threshold": 0.5, "cost_aware": False},
            False,
        ),
    }


def check(family: str, root: Path) -> dict[str, str]:
    from trispec_vllm.testing import make_tiny_family_pair

    try:
        pair = make_tiny_family_pair(root / family, family, **FAMILIES[family])
        reference = generate(pair.target)
    except Exception as e:  # noqa: BLE001 - not TriSpec's: vLLM or transformers refused it
        traceback.print_exc()
        return dict.fromkeys(MODES, f"not run: {type(e).__name__}: {str(e)[:200]}")
    out = {}
    for name, (spec, section, exact) in modes(pair).items():
        try:
            got = generate(pair.target, spec, section)
        except Exception as e:  # noqa: BLE001 - reported per mode, the sweep goes on
            traceback.print_exc()
            out[name] = f"FAILED: {type(e).__name__}: {str(e)[:200]}"
            continue
        same = sum(a == b for a, b in zip(got, reference, strict=True))
        whole = all(len(t) == MAX_TOKENS for t in got)
        ok = whole and (same == len(PROMPTS) or not exact)
        out[name] = f"{'ok' if ok else 'FAILED'}: {same}/{len(PROMPTS)} equal" + (
            "" if whole else ", requests short of their tokens"
        )
    return out


def table(results: dict[str, dict[str, str]]) -> str:
    """A markdown table: one row per family, one column per mode."""
    lines = ["| family | " + " | ".join(MODES) + " |", "|---" * (len(MODES) + 1) + "|"]
    lines += [f"| {f} | " + " | ".join(r[m] for m in MODES) + " |" for f, r in results.items()]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("families", nargs="*", default=list(FAMILIES), help="model_type names")
    ap.add_argument("--out", default=None, help="JSON results file")
    args = ap.parse_args()
    unknown = set(args.families) - set(FAMILIES)
    if unknown:
        raise SystemExit(f"unknown families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    root = Path(tempfile.mkdtemp(prefix="families-"))
    results = {f: check(f, root) for f in args.families}
    print(table(results))
    if args.out:
        import vllm

        Path(args.out).write_text(
            json.dumps(
                {
                    "vllm": vllm.__version__,
                    "prompts": PROMPTS,
                    "max_tokens": MAX_TOKENS,
                    "results": results,
                },
                indent=1,
            )
            + "\n"
        )
    failed = [f for f, r in results.items() if any(v.startswith("FAILED") for v in r.values())]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
