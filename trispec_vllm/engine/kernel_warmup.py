"""Compile what a step calls, at start-up: TriSpec's Triton kernels (and their
Triton-vs-torch choice) and vLLM's ngram drafter.

`triton_support.run` compiles a kernel and times it against its torch
reference on the first call of each shape class (rows rounded up to a power of
two). Left to the first requests, that cost lands on their latency; run from
vLLM's warm-up pass, every shape class a step can produce is settled before
the engine serves. CPU tensors always take the torch reference, so there is
nothing to warm on CPU. vLLM's ngram drafter is compiled by numba on its first
proposal (`warm_ngram_drafter`).
"""

from __future__ import annotations

import numpy as np
import torch

from trispec_vllm.kernels import divergence, top2_margins
from trispec_vllm.kernels.triton_support import use_triton


def row_buckets(max_rows: int) -> list[int]:
    """Powers of two from 1 to the first at or above `max_rows`: the shape classes
    `triton_support.run` keys its choice on."""
    out = [1]
    while out[-1] < max_rows:
        out.append(out[-1] * 2)
    return out


def warm_kernels(
    cfg, vocab: int, dtype: torch.dtype, device: torch.device, max_rows: int
) -> list[int]:
    """Run every kernel the step can call once per shape class; returns the classes
    warmed (none on CPU). `max_rows`: most logits rows of a step (requests x (k + 1))."""
    if not use_triton(torch.empty(0, device=device)):
        return []
    buckets = row_buckets(max_rows)
    for rows in buckets:
        logits = torch.randn(rows, vocab, dtype=dtype, device=device)
        top2_margins(logits)
        top2_margins(logits, torch.full((rows,), 0.7, device=device))
        if cfg.policy == "pyramid":
            divergence(logits, logits.roll(1, dims=0), None, cfg.divergence)
    return buckets


def warm_ngram_drafter(drafter, num_tokens: np.ndarray, token_ids: np.ndarray) -> bool:
    """Compile vLLM's ngram drafter (numba) now; False: `drafter` is not one.

    vLLM's own warm-up proposes for requests that sampled nothing, which never
    reaches the compiled function, so the first request that drafts paid the
    compile (1.4 s on a 2-core CPU) in its latency, and the cost-aware step could
    book it on the first step it timed. `num_tokens` and `token_ids` are the input
    batch's own arrays (`num_tokens_no_spec`, `token_ids_cpu`), so the compiled
    signature is the one every later proposal calls.
    """
    from vllm.v1.spec_decode.ngram_proposer import NgramProposer

    if not isinstance(drafter, NgramProposer) or not len(num_tokens):
        return False
    drafter.batch_propose(1, [0], num_tokens, token_ids, drafter.k)
    return True
