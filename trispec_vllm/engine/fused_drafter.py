"""The proxy as the drafter: vLLM's draft model's own passes give the margins.

When `speculative_config` is `draft_model` with the proxy's checkpoint, the
drafter already computed the proxy's logits at every draft position (it takes
their argmax and drops them). Keeping them makes the proxy pass free: the proxy
is loaded once, and the step's logits rows come from the last proposal.
"""

from __future__ import annotations

import numpy as np
import torch

from trispec_vllm.config import TriSpecConfig
from trispec_vllm.engine.config_hook import same_model
from trispec_vllm.engine.step_state import StepState
from trispec_vllm.policy.batch import StepBatch


def proxy_is_drafter(cfg: TriSpecConfig, spec) -> bool:
    """Whether the proxy is vLLM's greedy draft model itself (same checkpoint): then
    the drafter's own passes give the proxy's verdict and no second copy is loaded."""
    if spec is None or spec.method != "draft_model" or spec.model is None:
        return False
    if cfg.policy != "trispec" or cfg.max_proxy_batch is not None:
        return False
    if getattr(spec, "draft_sample_method", "greedy") != "greedy":
        return False
    return same_model(spec.model, cfg.proxy_model)


def record_drafter_logits(drafter, state: StepState) -> bool:
    """Make vLLM's greedy draft-model drafter append the logits of each drafting pass
    to `state.recording` while it is a list (instance-level patch of
    `_greedy_sample`). False when this drafter cannot be recorded."""
    if drafter is None or not hasattr(drafter, "_greedy_sample"):
        return False
    if getattr(drafter, "use_local_argmax_reduction", False) or getattr(
        drafter, "use_heterogeneous_vocab", False
    ):
        return False

    def greedy_sample(hidden_states: torch.Tensor) -> torch.Tensor:
        logits = drafter.model.compute_logits(hidden_states)
        if state.recording is not None:
            state.recording.append(logits)
        return logits.argmax(dim=-1)

    drafter._greedy_sample = greedy_sample
    return True


def propose_recorded(propose, state: StepState, req_ids: list[str]):
    """Run vLLM's proposer (`propose()`), keeping its passes' logits as the next
    step's proxy rows in `state.own`."""
    num_reqs = len(req_ids)
    state.recording = []
    try:
        out = propose()
        passes = state.recording
    finally:
        state.recording = None
    state.own = None
    if passes and all(p.shape[0] >= num_reqs for p in passes):
        own = torch.stack([p[:num_reqs] for p in passes], dim=1)  # [R, K, V]
        state.own = (list(req_ids), own)
    return out


def own_rows(
    state: StepState, batch: StepBatch, vocab: int, device: torch.device
) -> tuple[torch.Tensor, np.ndarray]:
    """The proxy's logits rows of this step from the drafter's last proposal
    (draft positions; bonus rows are zeros and never trusted), and [B] whether
    a request's drafts came from that proposal."""
    b = len(batch.req_ids)
    n = batch.num_drafts
    offsets = batch.row_offsets()
    known = np.zeros(b, dtype=bool)
    rec, state.own = state.own, None
    if rec is None:
        return torch.zeros((int((n + 1).sum()), vocab), device=device), known
    rec_ids, own = rec
    where = {r: i for i, r in enumerate(rec_ids)}
    src_req, src_pos, dst = [], [], []
    for i, req_id in enumerate(batch.req_ids):
        j = where.get(req_id)
        if j is None or not 0 < n[i] <= own.shape[1]:
            continue
        known[i] = True
        src_req += [j] * int(n[i])
        src_pos += range(int(n[i]))
        dst += range(int(offsets[i]), int(offsets[i] + n[i]))
    rows = own.new_zeros((int((n + 1).sum()), own.shape[2]))
    if dst:
        dev = own.device
        rows[torch.tensor(dst, device=dev)] = own[
            torch.tensor(src_req, device=dev), torch.tensor(src_pos, device=dev)
        ]
    return rows, known
