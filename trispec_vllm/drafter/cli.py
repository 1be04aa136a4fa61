"""`trispec-vllm train-drafter`: the offline warm start of the learned drafter."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--proxy", required=True, help="the proxy's model folder (safetensors)")
    p.add_argument("--out", required=True, help="checkpoint to write (drafter_checkpoint)")
    p.add_argument("--prompts", type=int, default=200, help="ShareGPT conversations to read")
    p.add_argument("--k", type=int, default=4, help="draft length (num_speculative_tokens)")
    p.add_argument("--updates", type=int, default=600, help="optimiser steps")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch", type=int, default=32, help="windows per optimiser step")
    p.add_argument("--max-tokens", type=int, default=384, help="tokens read per conversation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--draft-vocab",
        type=int,
        default=None,
        metavar="N",
        help="draft from the proxy's N most frequent top-1 tokens only (default: all)",
    )
    p.add_argument(
        "--no-rollout",
        action="store_true",
        help="train on the proxy's features only (no pass over the head's own features)",
    )


def texts(n: int, tokenizer_dir: Path) -> list[str]:
    """ShareGPT conversations (first human turn and first reply) in the chat template."""
    from transformers import AutoTokenizer

    from trispec_vllm import prompts

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = []
    for conv in prompts.sharegpt_conversations(n):
        chat = [{"role": "user", "content": conv["prompt"]}]
        if conv["reply"]:
            chat.append({"role": "assistant", "content": conv["reply"]})
        try:
            out.append(tok.apply_chat_template(chat, tokenize=False))
        except (ValueError, AttributeError):  # a tokenizer without a chat template
            out.append(conv["prompt"] + "\n" + conv["reply"])
    return out


def run(args: argparse.Namespace) -> int:
    from trispec_vllm.drafter.distill import distill

    logging.basicConfig(level=logging.INFO, format="[train-drafter] %(message)s")
    out = Path(args.out).expanduser()
    if not out.parent.is_dir():
        raise SystemExit(f"train-drafter: folder {out.parent} does not exist")
    if args.draft_vocab is not None and args.draft_vocab < 1:
        raise SystemExit(f"train-drafter: --draft-vocab must be at least 1, not {args.draft_vocab}")
    proxy = Path(args.proxy).expanduser()
    if not (proxy / "config.json").is_file():
        raise SystemExit(f"train-drafter: {proxy} is not a model folder (no config.json)")
    report = distill(
        proxy,
        texts(args.prompts, proxy),
        out,
        k=args.k,
        updates=args.updates,
        lr=args.lr,
        batch_size=args.batch,
        max_tokens=args.max_tokens,
        seed=args.seed,
        draft_vocab=args.draft_vocab,
        rollout=not args.no_rollout,
    )
    print(json.dumps(report, indent=2))
    return 0
