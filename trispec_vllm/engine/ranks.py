"""Tensor parallelism: every rank must take the same routing decision.

Each rank routes on its own copy of identical inputs (all-gathered logits, the
broadcast scheduler output), so they agree by construction. The cost-aware
step's choice of step kind is the exception: it comes from each rank's own
timings, so rank 0's choice is broadcast (`rank0_kind`), and so is its
choice to skip the drafter (`rank0_flag`); ranks running different kinds
would pair one model's collectives with another's. With
TRISPEC_CHECK_RANKS=1 every step also all-gathers a 4-number fingerprint of
the routing and raises if any rank differs (one tiny collective per step).
"""

from __future__ import annotations

import torch

from trispec_vllm import envs
from trispec_vllm.policy.agreement import disagreeing_ranks, routing_fingerprint
from trispec_vllm.policy.batch import StepPlan


def tp_world_size() -> int:
    from vllm.distributed import get_tensor_model_parallel_world_size

    return get_tensor_model_parallel_world_size()


def rank0_kind(kind: str, kinds: tuple[str, ...], device: torch.device) -> str:
    """Rank 0's step kind on every tensor-parallel rank (`kind` itself at TP = 1)."""
    return kinds[_rank0_index(kinds.index(kind), device)]


def rank0_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's yes/no on every tensor-parallel rank (`flag` itself at TP = 1)."""
    return bool(_rank0_index(int(flag), device))


def _rank0_index(index: int, device: torch.device) -> int:
    if tp_world_size() == 1:
        return index
    from vllm.distributed import get_tp_group

    value = torch.tensor([index], dtype=torch.int64, device=device)
    return int(get_tp_group().broadcast(value, src=0).item())


def check_agreement(plan: StepPlan, device: torch.device, step: int) -> None:
    """Raise when the ranks' routing decisions differ (TRISPEC_CHECK_RANKS=1, TP > 1)."""
    if not envs.flag("TRISPEC_CHECK_RANKS") or tp_world_size() == 1:
        return
    from vllm.distributed import get_tp_group

    mine = torch.from_numpy(routing_fingerprint(plan)).to(device)
    gathered = get_tp_group().all_gather(mine.unsqueeze(0), dim=0).cpu().numpy()
    bad = disagreeing_ranks(gathered)
    if bad:
        raise RuntimeError(
            f"TriSpec: tensor-parallel ranks {bad} routed step {step} differently from rank 0 "
            f"(fingerprints {gathered.tolist()})"
        )
