"""The proxy's vocabulary subset (`proxy_vocab`): which tokens its logits cover.

At small batches the proxy's pass streams its weights once, and the LM head is
a large share of them: Qwen2.5's 151,936 x 896 head is 28% of the 0.5B's
weights, and one pass over it took 21 ms of a proxy pass of about 50 ms on a
2-core CPU (its first 32,768 rows: 5 ms). BPE and SentencePiece tokenizers
number their tokens roughly by frequency (merge order, piece score), so the
lowest ids cover most text (the first 32,768 of Qwen2.5's: 97% of the tokens of
English prose, 93% of Python source). The proxy computes logits for those
rows and the special tokens (end of sequence, chat markers); every other token
gets -inf, so the proxy never drafts or trusts it and such positions go to the
target. As FR-Spec does for drafters, but here the subset also decides trust:
the proxy's probabilities are renormalised over the subset, so its margins are
a little larger than over the whole vocabulary (lossy mode only).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def subset_ids(size: int, vocab_size: int, always: Iterable[int] = ()) -> torch.Tensor:
    """[N] sorted, unique int64 ids: 0 .. size - 1 and every id of `always` (special
    tokens) inside the vocabulary. All ids when `size` covers the vocabulary."""
    if size < 1 or vocab_size < 1:
        raise ValueError(f"vocabulary sizes must be positive, got {size} of {vocab_size}")
    head = torch.arange(min(size, vocab_size), dtype=torch.int64)
    extra = torch.tensor(
        sorted({int(i) for i in always if size <= int(i) < vocab_size}), dtype=torch.int64
    )
    return torch.cat([head, extra])


def prefix_length(ids: torch.Tensor) -> int:
    """How many leading ids of a sorted, unique `ids` are 0, 1, 2, ... (copied as one
    slice by `expand_logits`, the rest index by index)."""
    n = ids.numel()
    if n == 0:
        return 0
    match = ids.cpu() == torch.arange(n, dtype=ids.dtype)
    return n if bool(match.all()) else int(match.logical_not().nonzero()[0, 0])


def expand_logits(
    sub: torch.Tensor, ids: torch.Tensor, vocab_size: int, prefix: int
) -> torch.Tensor:
    """[R, V] logits from [R, N] logits over `ids` ([N], sorted, on sub's device, its
    first `prefix` being 0 .. prefix - 1), -inf at every other token."""
    out = sub.new_full((sub.shape[0], vocab_size), float("-inf"))
    out[:, :prefix] = sub[:, :prefix]
    if prefix < sub.shape[1]:
        out.index_copy_(1, ids[prefix:], sub[:, prefix:])
    return out
