"""Prefill and decode time of one vLLM CPU engine under each numba threading layer.

vLLM's ngram drafter runs on numba. With numba's OpenMP layer the model's
passes fall to one thread once the drafter has proposed (see
`trispec_vllm.cpu_runtime`); this script shows it on the real target: the
same prompt prefilled three times (the first before any proposal), then a
prefill plus 16 decoded tokens, in a plain engine and in vLLM's ngram
engine under `NUMBA_THREADING_LAYER=omp` (with and without `LD_PRELOAD`) and
`=workqueue`. Each engine runs
in its own process, since the layer is fixed when numba first starts threads.

    python benchmarks/bench_threads.py --out benchmarks/results/threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# (engine, numba layer, Intel OpenMP and tcmalloc preloaded)
SETTINGS = [
    ("plain", None, True),
    ("ngram", "omp", True),
    ("ngram", "omp", False),
    ("ngram", "workqueue", True),
]


def child(engine: str) -> dict:
    """One engine in this process: the timings, as a dict."""
    from bench_speed import chat_prompts, ngram
    from vllm import LLM, SamplingParams

    from trispec_vllm.fetch import fetch_pair

    pair = fetch_pair()
    kw = {"speculative_config": ngram(3)} if engine == "ngram" else {}
    llm = LLM(
        model=pair.target, dtype="bfloat16", max_model_len=2048, seed=0, enforce_eager=True, **kw
    )
    prompt = chat_prompts(4)[1]
    ids = llm.get_tokenizer().apply_chat_template(prompt, add_generation_prompt=True)
    n = len(ids["input_ids"] if hasattr(ids, "keys") else ids)
    out = {"prompt_tokens": n, "prefill_s": []}
    for _ in range(3):
        t = time.perf_counter()
        llm.chat([prompt], SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
        out["prefill_s"].append(round(time.perf_counter() - t, 3))
    t = time.perf_counter()
    params = SamplingParams(temperature=0, max_tokens=17, ignore_eos=True)
    llm.chat([prompt], params, use_tqdm=False)
    out["prefill_and_16_tokens_s"] = round(time.perf_counter() - t, 3)
    llm.llm_engine.engine_core.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default=None, help="JSON file to write")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child)), flush=True)
        return
    from bench_speed import cpu_model

    from trispec_vllm import cpu_runtime

    rows = []
    print(f"hardware: {cpu_model()}")
    for engine, layer, preload in SETTINGS:
        env = dict(os.environ)
        env.update(cpu_runtime.recommended(env))
        env["NUMBA_THREADING_LAYER"] = layer or "workqueue"
        if not preload:
            env.pop("LD_PRELOAD", None)
        proc = subprocess.run(
            [sys.executable, __file__, "--child", engine],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(proc.stdout.split("RESULT ", 1)[1])
        rows.append({"engine": engine, "numba_layer": layer, "preload": preload, **result})
        print(
            f"{engine:<6} numba {layer or '-':<10} preload {preload!s:<5} "
            f"prefill {result['prefill_s']} s, "
            f"prefill + 16 tokens {result['prefill_and_16_tokens_s']} s",
            flush=True,
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps({"machine": cpu_model(), "rows": rows}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
