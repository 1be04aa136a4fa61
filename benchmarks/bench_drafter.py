"""The learned drafter's head on the real proxy, without an engine: draft-vocabulary
coverage and draft time, and (--train N) what rollout training changes.

python benchmarks/bench_drafter.py [--proxy DIR] [--vocab 8192 16384 32768]
    [--batches 1 8] [--k 4] [--rounds 5] [--train 800 --save FILE]
    [--out benchmarks/results/drafter_vocab.json]

Measurements:
- coverage: the proxy reads ShareGPT conversations and HumanEval problems with
  their reference solutions (teacher forcing, transformers); the N tokens it
  predicts (top-1) most often on the first 75% of each set form the draft
  vocabulary, and the table gives the share of the proxy's top-1 predictions on
  the held-out 25% that lie in it. A draft outside the vocabulary cannot be
  made, so this bounds what the restriction can cost in first-draft agreement.
- time: `DraftHead.draft` (k tokens, the head's own chain) per call at each
  batch size, with the whole LM head and with each reduced vocabulary, in
  interleaved rounds (median and min-max over rounds).
- training (--train N): two heads trained N updates each on the training
  traces (teacher: the proxy, as `train-drafter` does), one on the proxy's
  features only and one with rollout (`dvi_loss`), same seed; held-out
  first-draft agreement and tau (leading drafts equal to the proxy's greedy
  continuation where the text follows it), with the whole vocabulary and with
  the first --vocab size. --save writes the rollout head with that vocabulary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from bench_speed import cpu_model

DEFAULT_PROXY = "~/.cache/trispec-vllm/models/qwen2.5-coder-0.5b-instruct-bfloat16"


def texts(tok, n_chat: int, n_code: int) -> dict[str, list[str]]:
    from trispec_vllm import prompts

    def render(user: str, reply: str) -> str:
        chat = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        return tok.apply_chat_template(chat, tokenize=False)

    chat = [render(c["prompt"], c["reply"]) for c in prompts.sharegpt_conversations(n_chat)]
    code = []
    for p in prompts.humaneval_subset(n_code):
        reply = "```python\n" + p["prompt"] + p["canonical_solution"] + "```"
        code.append(render(prompts.humaneval_chat(p)[0]["content"], reply))
    return {"ShareGPT": chat, "HumanEval": code}


def coverage_table(proxy_dir: Path, vocabs: list[int], n_chat: int, n_code: int, max_tokens: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trispec_vllm.drafter.distill import coverage, frequent_tokens, trace

    tok = AutoTokenizer.from_pretrained(proxy_dir)
    proxy = AutoModelForCausalLM.from_pretrained(proxy_dir, dtype=torch.float32).eval()
    size = proxy.get_output_embeddings().weight.shape[0]
    sets = {
        name: [trace(proxy, tok(t).input_ids[:max_tokens]) for t in items]
        for name, items in texts(tok, n_chat, n_code).items()
    }
    split = {name: int(len(trs) * 0.75) for name, trs in sets.items()}
    train = [tr for name, trs in sets.items() for tr in trs[: split[name]]]
    out = []
    for n in vocabs:
        ids = frequent_tokens(train, n, size)
        row = {"vocab": n}
        for name, trs in sets.items():
            row[name] = coverage(trs[split[name] :], ids, size)
        out.append(row)
    positions = {name: sum(int(tr.tokens.numel()) for tr in trs) for name, trs in sets.items()}
    return out, positions, train, size, {n: trs[split[n] :] for n, trs in sets.items()}


def train_compare(
    proxy_dir: Path,
    train,
    test,
    k: int,
    updates: int,
    lr: float,
    vocab: int,
    size: int,
    save: Path | None,
):
    from trispec_vllm.drafter.distill import (
        first_draft_agreement,
        frequent_tokens,
        save_head,
        train_head,
    )
    from trispec_vllm.drafter.head import build_head

    ids = frequent_tokens(train, vocab, size)
    rows = []
    for rollout in (False, True):
        torch.manual_seed(0)
        head = build_head(proxy_dir)
        trained = train_head(head, train, k, updates, lr, rollout=rollout)
        for vocab_ids in (None, ids):
            head.set_draft_vocab(vocab_ids)
            for name, trs in test.items():
                a = first_draft_agreement(head, trs, k)
                rows.append(
                    {
                        "rollout": rollout,
                        "vocab": size if vocab_ids is None else vocab,
                        "set": name,
                        "first": a["first"],
                        "tau": a["tau"],
                        "train_seconds": trained.seconds,
                    }
                )
        if rollout and save is not None:
            save_head(save, trained)
    return rows


def time_drafts(proxy_dir: Path, vocabs, batches, k: int, rounds: int, train, size):
    from trispec_vllm.drafter.distill import frequent_tokens
    from trispec_vllm.drafter.head import build_head

    head = build_head(proxy_dir).eval()
    vocab_ids = {n: frequent_tokens(train, n, size) for n in vocabs}
    configs = [(b, n) for b in batches for n in [None, *vocabs]]
    times: dict[tuple, list[float]] = {c: [] for c in configs}
    g = torch.Generator().manual_seed(0)
    for r in range(rounds):
        for b, n in configs if r % 2 == 0 else reversed(configs):
            head.set_draft_vocab(None if n is None else vocab_ids[n])
            feats = torch.randn(b, head.hidden, generator=g)
            toks = torch.randint(0, size, (b,), generator=g)
            pos = torch.randint(10, 400, (b,), generator=g)
            head.draft(feats, toks, pos, k)  # warm
            t0 = time.perf_counter()
            for _ in range(5):
                head.draft(feats, toks, pos, k)
            times[(b, n)].append((time.perf_counter() - t0) / 5)
    rows = []
    for (b, n), ts in times.items():
        rows.append(
            {
                "batch": b,
                "vocab": n or size,
                "full": n is None,
                "ms_median": 1e3 * statistics.median(ts),
                "ms_min": 1e3 * min(ts),
                "ms_max": 1e3 * max(ts),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proxy", default=DEFAULT_PROXY)
    ap.add_argument("--vocab", type=int, nargs="+", default=[8192, 16384, 32768])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chat", type=int, default=48, help="ShareGPT conversations read")
    ap.add_argument("--code", type=int, default=40, help="HumanEval problems read")
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--train", type=int, default=0, metavar="N", help="updates per head")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--save", type=Path, default=None, help="write the rollout head here")
    ap.add_argument("--out", default="benchmarks/results/drafter_vocab.json")
    args = ap.parse_args()
    proxy = Path(args.proxy).expanduser()
    cov, positions, train, size, test = coverage_table(
        proxy, args.vocab, args.chat, args.code, args.max_tokens
    )
    timing = time_drafts(proxy, args.vocab, args.batches, args.k, args.rounds, train, size)
    training = []
    if args.train:
        save = args.save.expanduser() if args.save else None
        training = train_compare(
            proxy, train, test, args.k, args.train, args.lr, args.vocab[0], size, save
        )
    hw = cpu_model()
    print(f"\nHardware: {hw}, torch threads {torch.get_num_threads()}; proxy {proxy.name}")
    print(f"Held-out coverage of the proxy's top-1 (positions read: {positions})")
    print("| draft vocabulary | ShareGPT | HumanEval |\n|---|---|---|")
    for r in cov:
        print(f"| {r['vocab']} | {r['ShareGPT']:.1%} | {r['HumanEval']:.1%} |")
    print(f"\nDraftHead.draft, k={args.k}, ms per call: median (min-max) of {args.rounds} rounds")
    print("| batch | vocabulary | ms | vs whole LM head |\n|---|---|---|---|")
    full = {r["batch"]: r["ms_median"] for r in timing if r["full"]}
    for r in timing:
        print(
            f"| {r['batch']} | {r['vocab']}{' (all)' if r['full'] else ''} | "
            f"{r['ms_median']:.1f} ({r['ms_min']:.1f}-{r['ms_max']:.1f}) | "
            f"{r['ms_median'] / full[r['batch']]:.2f}x |"
        )
    if training:
        print(f"\nHeld-out agreement after {args.train} updates (lr {args.lr}, 32 windows each)")
        print("| training | draft vocabulary | set | first draft = proxy top-1 | tau |")
        print("|---|---|---|---|---|")
        for r in training:
            label = "rollout" if r["rollout"] else "proxy features only"
            print(
                f"| {label} ({r['train_seconds']:.0f} s) | {r['vocab']} | {r['set']} | "
                f"{r['first']:.1%} | {r['tau']:.3f} |"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"hardware": hw, "k": args.k, "coverage": cov, "positions": positions}
    payload["training"] = {"updates": args.train, "lr": args.lr, "rows": training}
    out.write_text(json.dumps({**payload, "timing": timing}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
