"""Ancestor-or-self masks for draft trees: which earlier nodes each node attends to.

A batch of trees is given ragged: `parents` holds every tree's parent indices
back to back (local to the tree, root = -1, a parent before its child) and
`num_nodes` each tree's size. The result is padded to the largest tree:
mask[b, i, j] is True when node j is node i or one of its ancestors, and
depth[b, i] is the number of edges from the root (-1 for padding). A chain
draft is parents = [-1, 0, 1, ...], whose mask is lower-triangular.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from trispec_vllm.kernels.triton_support import HAS_TRITON, use_triton


class TreeMask(NamedTuple):
    mask: torch.Tensor  # [B, M, M] bool
    depth: torch.Tensor  # [B, M] int32, -1 on padding


def _check(parents: torch.Tensor, num_nodes: torch.Tensor) -> None:
    if parents.dim() != 1 or num_nodes.dim() != 1:
        raise ValueError("parents and num_nodes must be 1-D (ragged trees back to back)")
    total = int(num_nodes.sum()) if num_nodes.numel() else 0
    if total != parents.numel():
        raise ValueError(f"num_nodes sums to {total} but parents has {parents.numel()} entries")
    if num_nodes.numel() and int(num_nodes.min()) < 0:
        raise ValueError("num_nodes must be non-negative")
    if parents.numel() == 0:
        return
    starts = torch.repeat_interleave(torch.cumsum(num_nodes, 0) - num_nodes, num_nodes)
    local = torch.arange(parents.numel(), device=parents.device) - starts
    bad = (parents < -1) | (parents >= local)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"node {int(local[i])} of its tree has parent {int(parents[i])}: a parent must "
            "be -1 (root) or an earlier node of the same tree"
        )


def tree_mask_reference(parents: torch.Tensor, num_nodes: torch.Tensor) -> TreeMask:
    """Plain-torch reference: walks each node's parent chain."""
    _check(parents, num_nodes)
    b = num_nodes.numel()
    m = int(num_nodes.max()) if b else 0
    mask = torch.zeros((b, m, m), dtype=torch.bool)
    depth = torch.full((b, m), -1, dtype=torch.int32)
    par = parents.cpu().tolist()
    offset = 0
    for t, n in enumerate(num_nodes.cpu().tolist()):
        for i in range(n):
            j, d = i, 0
            while j >= 0:
                mask[t, i, j] = True
                j = par[offset + j]
                d += 1 if j >= 0 else 0
            depth[t, i] = d
        offset += n
    return TreeMask(mask.to(parents.device), depth.to(parents.device))


def tree_mask(parents: torch.Tensor, num_nodes: torch.Tensor) -> TreeMask:
    """Triton on CUDA tensors, the torch reference elsewhere."""
    if use_triton(parents):
        return tree_mask_triton(parents, num_nodes)
    return tree_mask_reference(parents, num_nodes)


if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _tree_mask_kernel(
        parents_ptr, starts_ptr, sizes_ptr, mask_ptr, depth_ptr, M, BLOCK: tl.constexpr
    ):
        """One program per tree; all its nodes climb to the root in lock-step."""
        tree = tl.program_id(0)
        start = tl.load(starts_ptr + tree)
        size = tl.load(sizes_ptr + tree)
        node = tl.arange(0, BLOCK)
        live = node < size
        cur = tl.where(live, node, -1)
        depth = tl.zeros((BLOCK,), dtype=tl.int32) - 1
        row_base = mask_ptr + tree.to(tl.int64) * M * M + node * M
        for _ in range(0, M):
            on = cur >= 0
            tl.store(row_base + cur, 1, mask=on & live)
            depth += on.to(tl.int32)
            cur = tl.load(parents_ptr + start + cur, mask=on, other=-1)
        tl.store(depth_ptr + tree * M + node, depth, mask=live)


def tree_mask_triton(parents: torch.Tensor, num_nodes: torch.Tensor) -> TreeMask:
    """Triton implementation (CUDA, or CPU tensors under TRITON_INTERPRET=1)."""
    if not HAS_TRITON:  # pragma: no cover
        raise RuntimeError("Triton is not installed")
    _check(parents, num_nodes)
    dev = parents.device
    b = num_nodes.numel()
    m = int(num_nodes.max()) if b else 0
    mask = torch.zeros((b, m, m), dtype=torch.int8, device=dev)
    depth = torch.full((b, m), -1, dtype=torch.int32, device=dev)
    if b == 0 or m == 0:
        return TreeMask(mask.bool(), depth)
    sizes = num_nodes.to(device=dev, dtype=torch.int32).contiguous()
    starts = (torch.cumsum(sizes, 0) - sizes).to(torch.int32)
    par = parents.to(device=dev, dtype=torch.int32).contiguous()
    _tree_mask_kernel[(b,)](par, starts, sizes, mask, depth, m, BLOCK=triton.next_power_of_2(m))
    return TreeMask(mask.bool(), depth)
