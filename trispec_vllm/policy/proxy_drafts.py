"""How many drafts the proxy may write for each request (no vLLM import).

In a ``draft`` step the proxy drafts instead of vLLM's ngram drafter (whose
drafts are free, and right on text that repeats itself, but few or wrong on
text that does not), greedily and autoregressively, as vLLM's draft_model
drafter does: one pass over each request's tokens it has not read yet (ending
at the token just sampled), then one pass per further draft. Its passes write
KV at the positions of its own drafts, so those must lie in blocks the
scheduler already gave the request: vLLM schedules no look-ahead slots for the
ngram drafter, so a request whose drafts would cross into its next block gets
fewer of them (the next step allocates that block). A draft also needs a
position inside the model's context.
"""

from __future__ import annotations

import numpy as np


def proxy_draft_lengths(
    k: int,
    num_tokens: np.ndarray,
    allocated_slots: np.ndarray,
    max_model_len: int,
    wanted: np.ndarray,
) -> np.ndarray:
    """[B] drafts the proxy writes per request (0 where not `wanted`).

    num_tokens: [B] tokens each request holds (its last one just sampled, at
    position n - 1); allocated_slots: [B] KV positions its blocks cover. Drafting
    L tokens feeds positions up to n + L - 2 (the last draft is never fed), and
    the next step verifies positions up to n + L - 1.
    """
    n = np.asarray(num_tokens, dtype=np.int64)
    by_blocks = np.asarray(allocated_slots, dtype=np.int64) - n + 1
    by_context = max_model_len - n
    lengths = np.minimum(np.minimum(by_blocks, by_context), k)
    return np.where(np.asarray(wanted, dtype=bool), np.maximum(lengths, 0), 0)
