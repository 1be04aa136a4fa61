"""Print every engine step of a TriSpec engine: its kind, phase times and the proxy's
catch-up, for one request at a time (or `--batch N` requests together) on the real pair
(a diagnostic, not a benchmark).

    python benchmarks/probe_steps.py [--max-tokens 24] [--batch 32] [--k 5] [--requests 4]

The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so that the
runner's methods can be wrapped; the CPU runtime is trispec_vllm.cpu_runtime's.
"""

from __future__ import annotations

import argparse
import json
import time

from bench_speed import WARMUP_CHAT, chat_prompts, in_process_engines, ngram


def wrap_runner(seen: dict) -> None:
    """Print each step of the TriSpec runner once vLLM's sampler has run."""
    from trispec_vllm.engine import model_runner

    mixin = model_runner.TriSpecRunnerMixin
    execute, sample = mixin.execute_model, mixin.sample_tokens

    def execute_model(self, scheduler_output, *args, **kwargs):
        seen.update(t=time.perf_counter(), n=scheduler_output.total_num_scheduled_tokens)
        seen["kind"] = self.trispec_next_kind
        out = execute(self, scheduler_output, *args, **kwargs)
        step = self.trispec_state.stats
        seen["times"] = {k: round(v, 2) for k, v in (step.times.items() if step else [])}
        measured = self.trispec_measure
        seen["ran"] = (
            (measured.kind + ("+drafts" if measured.drafted else ""))
            if measured
            else "mixed/prefill"
        )
        seen["waiting"] = self.trispec_waiting
        return out

    def sample_tokens(self, grammar_output):
        out = sample(self, grammar_output)
        emitted = sum(map(len, getattr(out, "sampled_token_ids", None) or []))
        print(
            f"step tokens={seen['n']} emitted={emitted} chosen={seen['kind']} ran={seen['ran']} "
            f"waiting={seen['waiting']} "
            f"{time.perf_counter() - seen['t']:.2f}s {seen['times']} "
            f"proxy_catchup={self.trispec.stats.proxy_catchup_tokens}",
            flush=True,
        )
        return out

    mixin.execute_model, mixin.sample_tokens = execute_model, sample_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--batch", type=int, default=1, help="requests submitted together")
    ap.add_argument("--k", type=int, default=3, help="ngram draft length")
    ap.add_argument("--requests", type=int, default=2, help="requests one at a time (batch 1)")
    ap.add_argument(
        "--section", default="{}", help="JSON keys added to the trispec section (proxy_model set)"
    )
    args = ap.parse_args()
    in_process_engines()
    from vllm import LLM, SamplingParams

    from trispec_vllm.fetch import fetch_pair

    pair = fetch_pair()
    wrap_runner({})
    llm = LLM(
        model=pair.target,
        dtype="bfloat16",
        max_model_len=2048,
        seed=0,
        enforce_eager=True,
        speculative_config=ngram(args.k),
        additional_config={"trispec": {"proxy_model": pair.proxy, **json.loads(args.section)}},
    )
    prompts = chat_prompts(max(args.requests, args.batch))
    llm.chat([WARMUP_CHAT], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    groups = [[p] for p in prompts[: args.requests]] if args.batch == 1 else [prompts[: args.batch]]
    for group in groups:
        t0 = time.perf_counter()
        outs = llm.chat(group, SamplingParams(temperature=0, max_tokens=args.max_tokens))
        print(
            f"{len(outs)} request(s): {sum(len(o.prompt_token_ids) for o in outs)} prompt tokens, "
            f"{sum(len(o.outputs[0].token_ids) for o in outs)} generated, "
            f"{time.perf_counter() - t0:.2f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
