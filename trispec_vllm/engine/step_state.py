"""State a TriSpec step carries across the model runner's calls.

vLLM splits a step into `execute_model` (forward passes) and `sample_tokens`
(sampler, bookkeeping, the drafter's next proposal); what the first decides and
the second applies lives here, in one place, instead of loose runner attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from trispec_vllm.metrics import TriSpecStats
from trispec_vllm.policy.batch import StepBatch


@dataclass
class StepState:
    # This step (cleared once sampled).
    batch: StepBatch | None = None  # None: a step vLLM ran on its own
    stats: TriSpecStats | None = None  # this step's counts, sent with its output
    # PyramidSD: ([B] bool rows, [B, K+1] tokens) replacing vLLM's sampled tokens.
    override: tuple[np.ndarray, torch.Tensor] | None = None
    no_bonus: np.ndarray | None = None  # [B] bool: requests whose bonus slot is dropped
    # Proxy as drafter: the drafter's logits per drafting pass while it proposes
    # ([R, V] each), and the last proposal's rows: (request ids, [R, K, V]).
    recording: list[torch.Tensor] | None = None
    own: tuple[list[str], torch.Tensor] | None = None

    def end_step(self) -> None:
        self.batch = self.stats = self.override = self.no_bonus = None


@dataclass(frozen=True)
class TimedStep:
    """A decoding step the cost-aware step will book once its tokens are sampled."""

    kind: str  # the kind that ran: "plain", "sd", "trispec" or "draft"
    num_reqs: int  # the batch-size class it is booked under
    t_start: float  # perf_counter() when execute_model began
    drafted: bool  # the drafter had drafts for it (TriSpec's drafted rate)
    learning: bool = False  # chosen for a learning run (the cost-aware step's budget)


@dataclass
class PreparedStep:
    """vLLM's prepared inputs of one step, and the policy's view of its batch."""

    scheduler_output: object
    batch: StepBatch
    num_tokens: int  # scheduled tokens of the whole batch
    logits_indices: torch.Tensor  # [rows] hidden-state index of each sampled row
    spec_meta: object  # vLLM's SpecDecodeMetadata (None without drafts)
    spec_cm: object  # vLLM's CommonAttentionMetadata for the drafter
    cg_stats: object
    slot_by_layer: dict
    run_on_vllm_batch: Callable[[torch.nn.Module], torch.Tensor] = field(repr=False)
    kind: str | None = None  # the cost-aware step's choice ("trispec" or "sd"), if any
    proxy_drafted: bool = False  # the proxy drafted and kept its logits (`StepState.own`)
