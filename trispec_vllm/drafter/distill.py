"""Offline warm start of the drafter head: distilled from the proxy alone.

A draft only has to equal the proxy's top-1 to count in tau_a, so the proxy is
the teacher and the target is not needed: the proxy reads each text once
(transformers, teacher forcing), and every position gives a training example
(its feature and token in, the proxy's next feature and top-M distribution
out), cut into windows of k + 1 positions like the engine's. `train-drafter`
writes the checkpoint the engine then loads from `drafter_checkpoint`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trispec_vllm.drafter import checkpoint
from trispec_vllm.drafter.head import DraftHead, build_head
from trispec_vllm.drafter.learning import TOP_M, OnlineLearner, ReplayBuffer, Window

logger = logging.getLogger("trispec.train_drafter")


@dataclass
class ProxyTrace:
    """The proxy over one token sequence (teacher forcing)."""

    tokens: torch.Tensor  # [T]
    hidden: torch.Tensor  # [T, H] last hidden state (after the final norm)
    top_ids: torch.Tensor  # [T, M] the proxy's top-M next tokens at each position
    top_probs: torch.Tensor  # [T, M]


@torch.inference_mode()
def trace(proxy, token_ids: list[int]) -> ProxyTrace:
    ids = torch.tensor([token_ids])
    hidden = proxy.model(input_ids=ids).last_hidden_state[0].float()
    probs = torch.softmax(proxy.get_output_embeddings()(hidden.to(proxy.dtype)).float(), -1)
    top_probs, top_ids = probs.topk(min(TOP_M, probs.shape[-1]), dim=-1)
    return ProxyTrace(ids[0], hidden, top_ids, top_probs)


def windows(tr: ProxyTrace, length: int) -> list[Window]:
    """Consecutive windows of `length` positions from position 1 on: input j is the
    proxy's feature at the position before and the token at it; the proxy's feature
    and top-M at that position are the teacher (verified token: the proxy's top-1)."""
    out = []
    t = int(tr.tokens.shape[0])
    for s in range(1, t, length):
        e = min(t, s + length)
        n = e - s
        none = torch.full((n,), -1, dtype=torch.long)
        out.append(
            Window(
                features=tr.hidden[s - 1 : e - 1],
                tokens=tr.tokens[s:e],
                positions=torch.arange(s, e),
                target_features=tr.hidden[s:e],
                teacher_ids=tr.top_ids[s:e],
                teacher_probs=tr.top_probs[s:e],
                drafts=none,
                verified=tr.top_ids[s:e, 0],
                rewards=none,
            )
        )
    return out


@torch.inference_mode()
def first_draft_agreement(
    head: DraftHead, traces: list[ProxyTrace], k: int, per_trace: int = 64
) -> dict[str, float]:
    """On held-out traces: how often the head's drafts equal the proxy's top-1.
    `first`: share of positions whose first draft is the proxy's top-1; `tau`:
    mean leading drafts that equal the text where the text continues as the
    proxy's own greedy choice (a lower bound of tau_a on proxy-like text)."""
    hits = total = tau_sum = 0
    for tr in traces:
        t = int(tr.tokens.shape[0])
        if t < 3:
            continue
        pos = torch.arange(1, t - 1)[:per_trace]  # the first positions of each trace
        drafts = head.draft(tr.hidden[pos - 1], tr.tokens[pos], pos, k)  # [P, k]
        hits += int((drafts[:, 0] == tr.top_ids[pos, 0]).sum())
        total += int(pos.numel())
        for row, p in zip(drafts.tolist(), pos.tolist(), strict=True):
            n = 0
            while n < k and p + n < t - 1:
                want = int(tr.top_ids[p + n, 0])  # the proxy's top-1 at that position
                if row[n] != want or int(tr.tokens[p + n + 1]) != want:
                    break
                n += 1
            tau_sum += n
    return {"first": hits / max(total, 1), "tau": tau_sum / max(total, 1), "positions": total}


def frequent_tokens(traces: list[ProxyTrace], n: int, vocab: int) -> torch.Tensor:
    """[n] the tokens the proxy predicts (top-1) most often over `traces`, most
    frequent first; ties and unseen tokens in id order (BPE ids grow with rarity)."""
    counts = torch.zeros(vocab, dtype=torch.long)
    for tr in traces:
        counts += torch.bincount(tr.top_ids[:, 0], minlength=vocab)[:vocab]
    # Stable sort on -count keeps id order among equal counts.
    order = torch.sort(-counts, stable=True).indices
    return order[: min(n, vocab)].clone()


def coverage(traces: list[ProxyTrace], ids: torch.Tensor, vocab: int) -> float:
    """Share of the proxy's top-1 predictions over `traces` that lie in `ids`."""
    member = torch.zeros(vocab, dtype=torch.bool)
    member[ids] = True
    hits = sum(int(member[tr.top_ids[:, 0]].sum()) for tr in traces)
    return hits / max(sum(int(tr.top_ids.shape[0]) for tr in traces), 1)


@dataclass
class Trained:
    """A head trained offline, with what it took."""

    head: DraftHead
    learner: OnlineLearner
    losses: list[float]
    windows: int
    seconds: float


def train_head(
    head: DraftHead,
    traces: list[ProxyTrace],
    k: int,
    updates: int,
    lr: float,
    batch_size: int = 32,
    seed: int = 0,
    rollout: bool = True,
) -> Trained:
    """Distil `head` (fresh from `build_head`) on every window of `traces` (DVI's KL
    phase only: the proxy is the teacher)."""
    ws = [w for tr in traces for w in windows(tr, k + 1)]
    buffer = ReplayBuffer(max(len(ws), 1), k + 1, head.hidden, "cpu")
    for w in ws:
        buffer.add(w)
    learner = OnlineLearner(head, buffer, lr, batch_size, seed, kl_only=True, rollout=rollout)
    t0 = time.perf_counter()
    losses = []
    for i in range(updates):
        losses.append(learner.update())
        if (i + 1) % 100 == 0:
            logger.info("update %d/%d: loss %.3f", i + 1, updates, sum(losses[-100:]) / 100)
    return Trained(head, learner, losses, len(ws), time.perf_counter() - t0)


def save_head(out: str | Path, trained: Trained) -> None:
    """Write the checkpoint `drafter_checkpoint` loads; the engine's online schedule
    starts at its KL phase."""
    trained.learner.updates = 0
    head = trained.head
    checkpoint.save(
        out,
        head.trainable_state(),
        trained.learner.state_dict(),
        head.proxy_fingerprint,
        head.draft_vocab,
    )


def distill(
    proxy_dir: str | Path,
    texts: list[str],
    out: str | Path,
    k: int = 4,
    updates: int = 600,
    lr: float = 5e-4,
    batch_size: int = 32,
    max_tokens: int = 512,
    holdout: float = 0.1,
    seed: int = 0,
    draft_vocab: int | None = None,
    rollout: bool = True,
) -> dict:
    """Train a head on `texts` (teacher: the proxy), write it to `out`, and report
    the held-out agreement before and after. `draft_vocab`: keep the head drafting
    from the proxy's `draft_vocab` most frequent top-1 tokens over the training
    texts (stored in the checkpoint); None: the whole vocabulary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    proxy_dir = Path(proxy_dir).expanduser()
    tok = AutoTokenizer.from_pretrained(proxy_dir)
    proxy = AutoModelForCausalLM.from_pretrained(proxy_dir, dtype=torch.float32).eval()
    t0 = time.perf_counter()
    traces = [trace(proxy, tok(t).input_ids[:max_tokens]) for t in texts]
    traces = [tr for tr in traces if tr.tokens.shape[0] >= 3]
    n_test = max(1, int(len(traces) * holdout)) if len(traces) > 1 else 0
    test, train = traces[:n_test], traces[n_test:] or traces
    t_trace = time.perf_counter() - t0
    head = build_head(proxy_dir)
    before = first_draft_agreement(head, test, k) if test else None
    trained = train_head(head, train, k, updates, lr, batch_size, seed, rollout)
    losses = trained.losses
    after = first_draft_agreement(head, test, k) if test else None
    vocab_report = {}
    if draft_vocab is not None:
        size = head.lm_head_weight.shape[0]
        ids = frequent_tokens(train, draft_vocab, size)
        head.set_draft_vocab(ids)
        vocab_report = {
            "draft_vocab": int(ids.numel()),
            "heldout_coverage": coverage(test, ids, size) if test else None,
            "heldout_after_draft_vocab": first_draft_agreement(head, test, k) if test else None,
        }
    save_head(out, trained)
    return {
        "proxy": str(proxy_dir),
        "checkpoint": str(out),
        "texts": len(texts),
        "train_windows": trained.windows,
        "test_texts": len(test),
        "updates": updates,
        "loss_first": losses[0] if losses else None,
        "loss_last": sum(losses[-20:]) / max(len(losses[-20:]), 1) if losses else None,
        "heldout_before": before,
        "heldout_after": after,
        **vocab_report,
        "seconds_trace": round(t_trace, 1),
        "seconds_train": round(trained.seconds, 1),
    }
