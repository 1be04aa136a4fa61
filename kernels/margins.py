"""Fused row-wise softmax + top-1/top-2: the proxy's confidence per position.

For logits [N, V] returns the top-1 token id, its probability and the margin
p_top1 - p_top2, reading each row once with an online max/sum (no softmax is
materialised: at V = 151,936 the logits read is the whole cost).

Conventions shared by the kernel and the reference:
- logits are upcast to fp32; an optional per-row temperature divides them;
- the top-1 id is the smallest index attaining the row maximum, so ties give
  margin 0 and the lower id;
- -inf entries have probability 0; a row with one finite entry has margin 1;
- a row with no finite entry (all -inf) yields id 0, probability 0, margin 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from trispec_vllm.kernels.triton_support import HAS_TRITON, run


class MarginResult(NamedTuple):
    top1_id: torch.Tensor  # [N] int64
    top1_prob: torch.Tensor  # [N] fp32
    margin: torch.Tensor  # [N] fp32, p_top1 - p_top2


def _check(logits: torch.Tensor, temperature: torch.Tensor | None) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, V], got shape {tuple(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"logits must be fp32, bf16 or fp16, got {logits.dtype}")
    if logits.shape[1] == 0:
        raise ValueError("logits must have at least one column")
    if temperature is not None and temperature.shape != (logits.shape[0],):
        raise ValueError(
            f"temperature must be [N]={logits.shape[0]}, got {tuple(temperature.shape)}"
        )


def top2_margins_reference(
    logits: torch.Tensor, temperature: torch.Tensor | None = None
) -> MarginResult:
    """Plain-torch reference (also the CPU path)."""
    _check(logits, temperature)
    x = logits.float()
    if temperature is not None:
        x = x / temperature.float().unsqueeze(1)
    n, v = x.shape
    top1_val, top1_id = x.max(dim=1)  # max() returns the first index of the maximum
    lse = torch.logsumexp(x, dim=1)
    if v > 1:
        top2_val = torch.topk(x, 2, dim=1).values[:, 1]
    else:
        top2_val = torch.full((n,), float("-inf"), device=x.device)
    finite = torch.isfinite(top1_val)
    safe_lse = torch.where(finite, lse, torch.zeros_like(lse))
    p1 = torch.where(finite, torch.exp(top1_val - safe_lse), torch.zeros_like(lse))
    p2 = torch.where(finite, torch.exp(top2_val - safe_lse), torch.zeros_like(lse))
    top1_id = torch.where(finite, top1_id, torch.zeros_like(top1_id))
    return MarginResult(top1_id.long(), p1, p1 - p2)


def top2_margins(logits: torch.Tensor, temperature: torch.Tensor | None = None) -> MarginResult:
    """Triton on CUDA tensors when it pays (`triton_support.run`), else the reference."""
    return run("margins", logits, top2_margins_triton, top2_margins_reference, logits, temperature)


if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _partial_kernel(
        logits_ptr,
        stride_row,
        inv_temp_ptr,
        part_ptr,  # [N, SPLITS, 4] fp32: max, sum(exp(x - max)), top1 id, second max
        V,
        cols_per_split,
        SPLITS: tl.constexpr,
        BLOCK: tl.constexpr,
        HAS_TEMP: tl.constexpr,
    ):
        row = tl.program_id(0)
        split = tl.program_id(1)
        start = split * cols_per_split
        stop = tl.minimum(start + cols_per_split, V)
        inv_t = tl.load(inv_temp_ptr + row) if HAS_TEMP else tl.full((), 1.0, tl.float32)
        row_ptr = logits_ptr + row.to(tl.int64) * stride_row
        offs = tl.arange(0, BLOCK)
        run_max = tl.full((), -float("inf"), tl.float32)
        run_sum = tl.full((), 0.0, tl.float32)
        run_id = tl.full((), 0, tl.int32)
        run_second = tl.full((), -float("inf"), tl.float32)
        for col in range(start, stop, BLOCK):
            idx = col + offs
            x = tl.load(row_ptr + idx, mask=idx < stop, other=-float("inf")).to(tl.float32)
            x = x * inv_t
            b_max, b_arg = tl.max(
                x, axis=0, return_indices=True, return_indices_tie_break_left=True
            )
            b_second = tl.max(tl.where(offs == b_arg, -float("inf"), x), axis=0)
            new_max = tl.maximum(run_max, b_max)
            # exp(-inf - -inf) is NaN: rescale only when a finite maximum exists.
            finite = new_max > -float("inf")
            shift = tl.where(finite, new_max, 0.0)
            run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(x - shift), axis=0)
            run_second = tl.maximum(tl.maximum(run_second, b_second), tl.minimum(run_max, b_max))
            run_id = tl.where(b_max > run_max, col + b_arg, run_id)
            run_max = new_max
        base = part_ptr + (row * SPLITS + split) * 4
        tl.store(base + 0, run_max)
        tl.store(base + 1, run_sum)
        tl.store(base + 2, run_id.to(tl.float32))
        tl.store(base + 3, run_second)

    @triton.jit
    def _combine_kernel(
        part_ptr, id_ptr, p1_ptr, margin_ptr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr
    ):
        row = tl.program_id(0)
        s = tl.arange(0, SPLITS_P2)
        valid = s < SPLITS
        base = part_ptr + (row * SPLITS + s) * 4
        mx = tl.load(base + 0, mask=valid, other=-float("inf"))
        sm = tl.load(base + 1, mask=valid, other=0.0)
        ids = tl.load(base + 2, mask=valid, other=0.0)
        sec = tl.load(base + 3, mask=valid, other=-float("inf"))
        g_max, g_arg = tl.max(mx, axis=0, return_indices=True, return_indices_tie_break_left=True)
        finite = g_max > -float("inf")
        shift = tl.where(finite, g_max, 0.0)
        total = tl.sum(tl.where(mx > -float("inf"), sm * tl.exp(mx - shift), 0.0), axis=0)
        other_max = tl.max(tl.where(s == g_arg, -float("inf"), mx), axis=0)
        own_second = tl.max(tl.where(s == g_arg, sec, -float("inf")), axis=0)
        g_second = tl.maximum(other_max, own_second)
        g_id = tl.sum(tl.where(s == g_arg, ids, 0.0), axis=0)
        safe_total = tl.where(finite, total, 1.0)
        p1 = tl.where(finite, 1.0 / safe_total, 0.0)
        p2 = tl.where(finite, tl.exp(g_second - shift) / safe_total, 0.0)
        tl.store(id_ptr + row, tl.where(finite, g_id, 0.0).to(tl.int64))
        tl.store(p1_ptr + row, p1)
        tl.store(margin_ptr + row, p1 - p2)


def _num_splits(n: int, v: int, block: int, device: torch.device) -> int:
    """Split long rows so that N * splits programs fill the GPU about 4 times."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sms = 8
    want = max(1, (4 * sms + n - 1) // n)
    return int(max(1, min(want, triton.cdiv(v, block), 64)))


def top2_margins_triton(
    logits: torch.Tensor,
    temperature: torch.Tensor | None = None,
    *,
    block: int = 4096,
    splits: int | None = None,
) -> MarginResult:
    """Triton implementation (CUDA, or CPU tensors under TRITON_INTERPRET=1)."""
    if not HAS_TRITON:  # pragma: no cover
        raise RuntimeError("Triton is not installed")
    _check(logits, temperature)
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    n, v = logits.shape
    dev = logits.device
    ids = torch.empty(n, dtype=torch.int64, device=dev)
    p1 = torch.empty(n, dtype=torch.float32, device=dev)
    margin = torch.empty(n, dtype=torch.float32, device=dev)
    if n == 0:
        return MarginResult(ids, p1, margin)
    block = min(block, triton.next_power_of_2(v))
    splits = splits or _num_splits(n, v, block, dev)
    cols_per_split = triton.cdiv(triton.cdiv(v, splits), block) * block
    splits = triton.cdiv(v, cols_per_split)
    part = torch.empty((n, splits, 4), dtype=torch.float32, device=dev)
    inv_t = (1.0 / temperature.float()).contiguous() if temperature is not None else p1
    _partial_kernel[(n, splits)](
        logits,
        logits.stride(0),
        inv_t,
        part,
        v,
        cols_per_split,
        SPLITS=splits,
        BLOCK=block,
        HAS_TEMP=temperature is not None,
    )
    _combine_kernel[(n,)](
        part, ids, p1, margin, SPLITS=splits, SPLITS_P2=triton.next_power_of_2(splits)
    )
    return MarginResult(ids, p1, margin)
