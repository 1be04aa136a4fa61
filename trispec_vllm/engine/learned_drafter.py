"""The learned drafter's feed: the proxy's features of a step, handed to it.

vLLM's `custom_class` hook gives a proposer no hidden states; the proxy's pass
computes them anyway, so the runner passes its rows at every sampled position
(with the proxy's top-M distribution there) to the drafter before sampling.
"""

from __future__ import annotations

import numpy as np
import torch

from trispec_vllm.drafter.proposer import LearnedDrafter, StepFeatures, teacher_rows
from trispec_vllm.metrics import TriSpecStats
from trispec_vllm.policy.batch import StepBatch


def learned_drafter(runner) -> LearnedDrafter | None:
    drafter = getattr(runner, "drafter", None)
    return drafter if isinstance(drafter, LearnedDrafter) else None


def step_features(
    batch: StepBatch, token_ids_cpu: np.ndarray, hidden_rows: torch.Tensor, logits: torch.Tensor
) -> StepFeatures:
    """The drafter's view of a step from the proxy's [rows, H] hidden states and
    [rows, V] logits at the sampled rows (each request's drafts + 1, in order)."""
    rows = batch.num_drafts.astype(np.int64) + 1
    first = batch.num_computed.astype(np.int64) + batch.num_scheduled - rows
    tokens = np.concatenate(
        [token_ids_cpu[i, f : f + r] for i, (f, r) in enumerate(zip(first, rows, strict=True))]
    )
    ids, probs = teacher_rows(logits)
    return StepFeatures(
        req_ids=list(batch.req_ids),
        row_offsets=batch.row_offsets(),
        num_rows=rows,
        first_position=first,
        row_tokens=tokens,
        hidden=hidden_rows,
        teacher_ids=ids,
        teacher_probs=probs,
    )


def book_counts(drafter: LearnedDrafter, step: TriSpecStats, total: TriSpecStats) -> None:
    """The drafter's work since the last step, into the step's and the engine's counts."""
    c = drafter.take_counts()
    for stats in (step, total):
        stats.drafter_updates += c.updates
        stats.drafter_windows += c.windows
        stats.drafter_loss_sum += sum(c.losses)
        stats.add_times(drafter_update=c.update_seconds, drafter_draft=c.draft_seconds)
    step.drafter_losses = c.losses
