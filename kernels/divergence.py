"""Fused row-wise divergence between two models' next-token distributions.

PyramidSD's target stage compares the target's distribution P with the
qualifier's (our proxy's) Q at every verified position. Both rows are
softmaxed at the request's temperature and reduced to one number without
materialising either distribution: at V = 151,936 the two logits reads are the
whole cost, so the kernel reads each row twice (online max/sum, then the sum
of the divergence terms) and writes 4 bytes.

P is the checking model's distribution (first argument), Q the checked one's.
Kinds (natural log, as Fuzzy SD's `fsd_utils.py`):
- "js": Jensen-Shannon, 0.5 KL(P || M) + 0.5 KL(Q || M), M = (P + Q) / 2, in [0, ln 2].
  Fuzzy SD's code computes 0.5 KL(M || P) + 0.5 KL(M || Q) under this name; that
  is unbounded, and infinite against a drafter's point mass, so we keep the
  standard definition: its thresholds are not interchangeable with FSD's;
- "kl": KL(Q || P), the checked model's distribution first (FSD's `kl_div`), in [0, inf];
- "tv": total variation, 0.5 sum |P - Q|, in [0, 1].

Conventions shared by the kernel and the reference: logits are upcast to
fp32; an optional per-row temperature divides both rows; -inf entries have
probability 0 (0 log 0 = 0); a row pair with no finite entry yields 0.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from trispec_vllm.kernels.triton_support import HAS_TRITON, run

DivergenceKind = Literal["js", "kl", "tv"]
KINDS: tuple[str, ...] = ("js", "kl", "tv")


def _check(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature, kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown divergence {kind!r}; choose one of {', '.join(KINDS)}")
    if p_logits.dim() != 2 or p_logits.shape != q_logits.shape:
        raise ValueError(
            f"logits must be two [N, V] tensors of one shape, got {tuple(p_logits.shape)} "
            f"and {tuple(q_logits.shape)}"
        )
    if temperature is not None and temperature.shape != (p_logits.shape[0],):
        raise ValueError(
            f"temperature must be [N]={p_logits.shape[0]}, got {tuple(temperature.shape)}"
        )


def _xlogy_diff(p: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """p * (log p - log q) with 0 where p == 0 (so -inf - -inf never becomes NaN)."""
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))


def divergence_reference(
    p_logits: torch.Tensor,
    q_logits: torch.Tensor,
    temperature: torch.Tensor | None = None,
    kind: DivergenceKind = "js",
) -> torch.Tensor:
    """Plain-torch reference (also the CPU path): [N] fp32 divergence of row pairs."""
    _check(p_logits, q_logits, temperature, kind)
    a, b = p_logits.float(), q_logits.float()
    if temperature is not None:
        inv = 1.0 / temperature.float().unsqueeze(1)
        a, b = a * inv, b * inv
    log_p = torch.log_softmax(a, dim=1)
    log_q = torch.log_softmax(b, dim=1)
    p, q = log_p.exp(), log_q.exp()
    if kind == "tv":
        out = 0.5 * (p - q).abs().sum(dim=1)
    elif kind == "kl":
        out = _xlogy_diff(q, log_q, log_p).sum(dim=1)
    else:
        # log((p + q) / 2) from the logs: p + q underflows for tiny p and q.
        log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
        out = 0.5 * (_xlogy_diff(p, log_p, log_m) + _xlogy_diff(q, log_q, log_m)).sum(dim=1)
    # A row pair with no finite logit has NaN log-softmax: define its divergence as 0.
    return torch.nan_to_num(out, nan=0.0, posinf=float("inf"))


def divergence(
    p_logits: torch.Tensor,
    q_logits: torch.Tensor,
    temperature: torch.Tensor | None = None,
    kind: DivergenceKind = "js",
) -> torch.Tensor:
    """Triton on CUDA tensors when it pays (`triton_support.run`), else the reference."""
    return run(
        f"divergence-{kind}",
        p_logits,
        divergence_triton,
        divergence_reference,
        p_logits,
        q_logits,
        temperature,
        kind,
    )


def point_mass_divergence(prob: torch.Tensor, kind: DivergenceKind = "js") -> torch.Tensor:
    """Divergence between a distribution Q and a point mass on token d, from Q(d) alone.

    A drafter without draft probabilities (vLLM's ngram, its greedy draft_model)
    proposes d with certainty, so PyramidSD's qualifier test Div(Q, P_draft)
    depends only on q = Q(d): JS = 0.5 [(1 - q) ln 2 + q ln(2q / (1 + q)) + ln(2 / (1 + q))],
    TV = 1 - q, KL(point mass || Q) = -ln q. All three fall as q rises, so the
    test is a floor on the qualifier's probability of the draft.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown divergence {kind!r}; choose one of {', '.join(KINDS)}")
    q = prob.float().clamp(0.0, 1.0)
    if kind == "tv":
        return 1.0 - q
    if kind == "kl":
        return -torch.log(q)
    ln2 = torch.log(torch.tensor(2.0, device=q.device))
    q_term = torch.where(q > 0, q * torch.log(2 * q / (1 + q)), torch.zeros_like(q))
    return 0.5 * ((1 - q) * ln2 + q_term + torch.log(2 / (1 + q)))


if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _divergence_kernel(
        p_ptr,
        q_ptr,
        stride_p,
        stride_q,
        inv_temp_ptr,
        out_ptr,
        V,
        BLOCK: tl.constexpr,
        HAS_TEMP: tl.constexpr,
        KIND: tl.constexpr,  # 0 js, 1 kl, 2 tv
    ):
        row = tl.program_id(0)
        inv_t = tl.load(inv_temp_ptr + row) if HAS_TEMP else tl.full((), 1.0, tl.float32)
        p_row = p_ptr + row.to(tl.int64) * stride_p
        q_row = q_ptr + row.to(tl.int64) * stride_q
        offs = tl.arange(0, BLOCK)
        ninf = -float("inf")
        # Pass 1: online max and sum(exp(x - max)) of both rows.
        mp = tl.full((), ninf, tl.float32)
        mq = tl.full((), ninf, tl.float32)
        sp = tl.full((), 0.0, tl.float32)
        sq = tl.full((), 0.0, tl.float32)
        for col in range(0, V, BLOCK):
            idx = col + offs
            a = tl.load(p_row + idx, mask=idx < V, other=ninf).to(tl.float32) * inv_t
            b = tl.load(q_row + idx, mask=idx < V, other=ninf).to(tl.float32) * inv_t
            new_p = tl.maximum(mp, tl.max(a, axis=0))
            new_q = tl.maximum(mq, tl.max(b, axis=0))
            shift_p = tl.where(new_p > ninf, new_p, 0.0)
            shift_q = tl.where(new_q > ninf, new_q, 0.0)
            sp = sp * tl.exp(mp - shift_p) + tl.sum(tl.exp(a - shift_p), axis=0)
            sq = sq * tl.exp(mq - shift_q) + tl.sum(tl.exp(b - shift_q), axis=0)
            mp, mq = new_p, new_q
        finite = (mp > ninf) & (mq > ninf)
        lse_p = tl.where(finite, mp + tl.log(sp), 0.0)
        lse_q = tl.where(finite, mq + tl.log(sq), 0.0)
        # Pass 2: the divergence terms.
        acc = tl.zeros((BLOCK,), tl.float32)
        for col in range(0, V, BLOCK):
            idx = col + offs
            a = tl.load(p_row + idx, mask=idx < V, other=ninf).to(tl.float32) * inv_t
            b = tl.load(q_row + idx, mask=idx < V, other=ninf).to(tl.float32) * inv_t
            lp = a - lse_p
            lq = b - lse_q
            p = tl.exp(lp)
            q = tl.exp(lq)
            if KIND == 2:
                term = 0.5 * tl.abs(p - q)
            elif KIND == 1:
                term = tl.where(q > 0, q * (lq - lp), 0.0)
            else:
                hi = tl.maximum(lp, lq)
                lo = tl.minimum(lp, lq)
                # log((p + q) / 2) from the logs: p + q underflows for tiny p and q.
                lm = hi + tl.log(1.0 + tl.exp(lo - hi)) - 0.6931471805599453
                term = 0.5 * (
                    tl.where(p > 0, p * (lp - lm), 0.0) + tl.where(q > 0, q * (lq - lm), 0.0)
                )
            acc += term
        tl.store(out_ptr + row, tl.where(finite, tl.sum(acc, axis=0), 0.0))


def divergence_triton(
    p_logits: torch.Tensor,
    q_logits: torch.Tensor,
    temperature: torch.Tensor | None = None,
    kind: DivergenceKind = "js",
    *,
    block: int = 2048,
) -> torch.Tensor:
    """Triton implementation (CUDA, or CPU tensors under TRITON_INTERPRET=1)."""
    if not HAS_TRITON:  # pragma: no cover
        raise RuntimeError("Triton is not installed")
    _check(p_logits, q_logits, temperature, kind)
    p_logits = p_logits if p_logits.stride(1) == 1 else p_logits.contiguous()
    q_logits = q_logits if q_logits.stride(1) == 1 else q_logits.contiguous()
    n, v = p_logits.shape
    out = torch.empty(n, dtype=torch.float32, device=p_logits.device)
    if n == 0:
        return out
    inv_t = (1.0 / temperature.float()).contiguous() if temperature is not None else out
    _divergence_kernel[(n,)](
        p_logits,
        q_logits,
        p_logits.stride(0),
        q_logits.stride(0),
        inv_t,
        out,
        v,
        BLOCK=min(block, triton.next_power_of_2(v)),
        HAS_TEMP=temperature is not None,
        KIND=KINDS.index(kind),
    )
    return out
