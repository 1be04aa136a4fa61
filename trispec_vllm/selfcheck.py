"""A seconds-long check of the pure core: margins kernel and router on one batch.

Runs everywhere (no model, no vLLM engine): the margin reference (and the
Triton kernel when a GPU or TRITON_INTERPRET=1 allows) on random logits, then
one routing decision printed per request.
"""

from __future__ import annotations

import torch

from trispec_vllm.kernels import margins, top2_margins_reference
from trispec_vllm.kernels.triton_support import interpreting
from trispec_vllm.policy.router import route


def run(batch: int = 6, k: int = 3, vocab: int = 151_936, lam: float = 0.5, seed: int = 0) -> int:
    gen = torch.Generator().manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = batch * (k + 1)
    logits = torch.randn(rows, vocab, generator=gen) * 2
    # Most positions get one clear favourite, like a confident language model.
    peak = torch.randint(0, vocab, (rows,), generator=gen)
    logits[torch.arange(rows), peak] += 30 * (torch.rand(rows, generator=gen) < 0.8)
    logits = logits.to(device)
    ref = top2_margins_reference(logits)
    if margins.HAS_TRITON and (device == "cuda" or interpreting()):
        got = margins.top2_margins_triton(logits)
        same = torch.equal(got.top1_id, ref.top1_id) and torch.allclose(
            got.margin, ref.margin, atol=1e-5
        )
        print(f"margin kernel (triton, {device}) vs reference: {'ok' if same else 'MISMATCH'}")
        if not same:
            return 1
    top1 = ref.top1_id.view(batch, k + 1).cpu()
    margin = ref.margin.view(batch, k + 1).cpu()
    num_drafts = torch.randint(0, k + 1, (batch,), generator=gen)
    # Drafts agree with the proxy at random, so both routing cases show up.
    agree = torch.rand(batch, k, generator=gen) < 0.7
    drafts = torch.where(agree, top1[:, :k], (top1[:, :k] + 1) % vocab)
    dec = route(drafts, num_drafts, top1, margin, lam)
    print(f"router, lambda={lam}:")
    print(" req  drafts  tau_a  tau_m  case  result")
    for i in range(batch):
        if dec.proxy_completes[i]:
            what = f"proxy emits {dec.emitted[i, : int(dec.num_emitted[i])].tolist()}"
        else:
            what = (
                f"target verifies {int(dec.num_target_drafts[i])} draft(s) after "
                f"{int(dec.trusted_len[i])} trusted"
            )
        case = "I" if dec.proxy_completes[i] else "II"
        print(
            f" {i:3d}  {int(num_drafts[i]):6d}  {int(dec.tau_a[i]):5d}  "
            f"{int(dec.tau_m[i]):5d}  {case:>4}  {what}"
        )
    return 0
