"""What one engine step hands the policy: the batch, and the plan made for it.

Plain dataclasses of numpy/torch arrays (shapes in the comments), built by the
vLLM glue from its prepared input batch, so the policy never imports vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trispec_vllm.policy.router import RoutingDecision


@dataclass(frozen=True)
class StepBatch:
    """What the step needs from vLLM's prepared batch (all per input-batch row)."""

    req_ids: list[str]
    num_scheduled: np.ndarray  # [B]
    num_computed: np.ndarray  # [B] before this step
    num_prompt: np.ndarray  # [B]
    num_drafts: np.ndarray  # [B]
    draft_tokens: torch.Tensor  # [sum(num_drafts)] flat, on the host
    trust_allowed: np.ndarray  # [B] bool: requests that may trust the proxy (no penalties etc.)
    mixed_sampling: bool = False  # greedy and sampled requests share the batch
    # [B] sampling temperature, 0 for greedy; None (unit-test batches): all greedy.
    temperature: np.ndarray | None = None
    plain_greedy: np.ndarray | None = None  # [B] bool: greedy with no logits processing
    # [B] bool: no top-k/top-p/min-p truncation and no grammar mask (PyramidSD samples
    # from whole distributions).
    untruncated: np.ndarray | None = None

    def row_offsets(self) -> np.ndarray:
        """[B] first logits row of each request (its drafts, then its bonus row)."""
        return _starts(self.num_drafts.astype(np.int64) + 1)

    def draft_offsets(self) -> np.ndarray:
        """[B] index of each request's first draft in the flat `draft_tokens`."""
        return _starts(self.num_drafts.astype(np.int64))

    def request_temperatures(self) -> np.ndarray:
        """[B] temperature each request samples at, 0 for greedy: the one reading of
        `temperature` that routing and PyramidSD's sampling share."""
        if self.temperature is None:
            return np.zeros(len(self.req_ids))
        return np.where(self.temperature > 0, self.temperature, 0.0)

    def sampled(self) -> np.ndarray:
        """[B] bool: requests that sample (temperature > 0)."""
        return self.request_temperatures() > 0

    def row_temperatures(self) -> torch.Tensor:
        """Per logits row (drafts + bonus of each request) temperature for the margins:
        sampled requests are judged on the distribution they sample from, greedy ones on
        the plain softmax."""
        temp = self.request_temperatures()
        temp = np.where(temp > 0, temp, 1.0)
        return torch.from_numpy(np.repeat(temp, self.num_drafts + 1).astype(np.float32))


@dataclass(frozen=True)
class StepPlan:
    decision: RoutingDecision
    escalated_rows: np.ndarray
    sample_row_offsets: np.ndarray  # [B] first logits row of each request
    margins: np.ndarray  # proxy margins at the decoding requests' draft and bonus positions
    decoding: np.ndarray  # [B] bool: requests routed this step (not prefilling)
    drafts: torch.Tensor  # [B, K] drafts; entries past a request's own are arbitrary
    rows: torch.Tensor  # [B, K+1] logits row of each draft and bonus position (clamped)
    row_top1: np.ndarray | None = None  # [rows] proxy top-1 per logits row
    row_margin: np.ndarray | None = None  # [rows] proxy margin per logits row
    lambdas: np.ndarray | None = None  # [B] lambda each request was routed with
    pyramid_rows: np.ndarray | None = None  # [B] bool: requests PyramidSD verifies
    proxy_ran: bool = True  # False in steps above max_proxy_batch (standard SD)
    held: np.ndarray | None = None  # [B] bool: escalations held for a step (`policy/hold.py`)
    held_tokens: np.ndarray | None = None  # [B, K+1] their trusted prefixes, -1 past them

    def held_empty(self) -> np.ndarray:
        """[B] bool: held requests with no trusted draft (their step emits nothing)."""
        if self.held is None:
            return np.zeros(len(self.decoding), dtype=bool)
        return self.held & (self.held_tokens[:, 0] < 0)


def _starts(counts: np.ndarray) -> np.ndarray:
    """Exclusive prefix sum: where each of consecutive runs of `counts` begins."""
    out = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


def decoding_rows(batch: StepBatch) -> np.ndarray:
    """[B] bool: requests decoding this step (not prefilling a prompt chunk)."""
    return (batch.num_computed >= batch.num_prompt) & (batch.num_scheduled == batch.num_drafts + 1)
