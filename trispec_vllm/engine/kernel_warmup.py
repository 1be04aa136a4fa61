"""Compile TriSpec's Triton kernels, and make their Triton-vs-torch choice, at start-up.

`triton_support.run` compiles a kernel and times it against its torch
reference on the first call of each shape class (rows rounded up to a power of
two). Left to the first requests, that cost lands on their latency; run from
vLLM's warm-up pass, every shape class a step can produce is settled before
the engine serves. CPU tensors always take the torch reference, so there is
nothing to warm on CPU.
"""

from __future__ import annotations

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
