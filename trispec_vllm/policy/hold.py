"""Holding a step's escalations back, so that whole steps skip the target.

A step runs the target as soon as one request escalates; at lambda 0.5 a request
escalates in about 45% of its steps, so at batch 8 nearly every step runs it.
Holding an escalated request for one step costs it only the tokens past its
trusted prefix (it keeps the prefix, and in the next step it stands where the
proxy was unsure again, so the target decides that position then); when every
escalation of a step can wait, the step needs no target pass at all and the
next one verifies the held requests together with its own escalations.
"""

from __future__ import annotations

import numpy as np


def held_rows(escalated: np.ndarray, holdable: np.ndarray, completes: np.ndarray) -> np.ndarray:
    """[B] bool: the escalated requests to hold this step (all [B] bool).

    All of them, when each may wait (`holdable`: not forced to the target, holds
    left) and the proxy completes at least one request (a step that moves nobody
    would only delay the target: at batch 1 nothing is held); else none, since the
    target runs for the others anyway."""
    escalated = np.asarray(escalated, dtype=bool)
    if not escalated.any() or (escalated & ~np.asarray(holdable, dtype=bool)).any():
        return np.zeros_like(escalated)
    if not np.asarray(completes, dtype=bool).any():
        return np.zeros_like(escalated)
    return escalated.copy()


def held_tokens(drafts: np.ndarray, trusted_len: np.ndarray, held: np.ndarray) -> np.ndarray:
    """[B, K+1] the tokens each held request emits, -1 past them: its trusted prefix
    d_1..d_t (t = trusted_len, possibly 0); rows not held are all -1.
    `drafts`: [B, K] each request's drafts."""
    b, k = drafts.shape
    out = np.full((b, k + 1), -1, dtype=np.int64)
    keep = (np.arange(k)[None, :] < trusted_len[:, None]) & held[:, None]
    out[:, :k] = np.where(keep, drafts, -1)
    return out
