"""One TriSpec engine step: drafter -> proxy -> router -> target.

The drafter's proposals arrive as vLLM scheduled them (`SpecDecodeMetadata`).
The proxy has already run on the whole batch; this module turns its logits
into margins, routes every request, runs the target on the escalated
sub-batch (catching up the positions it skipped) and assembles the logits
vLLM's own sampler sees: the target's rows where the target verified, the
proxy's rows elsewhere. Greedy rejection sampling over the proxy's rows then
reproduces the router's Case I emission exactly, so vLLM's sampler,
scheduler, detokeniser and output path run unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from trispec_vllm.config import TriSpecConfig
from trispec_vllm.kernels import top2_margins
from trispec_vllm.metrics import TriSpecStats
from trispec_vllm.router import RoutingDecision, route
from trispec_vllm.target_batch import TargetBatch, build_target_batch
from trispec_vllm.watermarks import Watermarks

logger = logging.getLogger("vllm.trispec")

NEVER_TRUST = float("inf")


@dataclass(frozen=True)
class StepBatch:
    """What the step needs from vLLM's prepared batch (all per input-batch row)."""

    req_ids: list[str]
    num_scheduled: np.ndarray  # [B]
    num_computed: np.ndarray  # [B] before this step
    num_prompt: np.ndarray  # [B]
    num_drafts: np.ndarray  # [B]
    draft_tokens: torch.Tensor  # [sum(num_drafts)] flat
    trust_allowed: np.ndarray  # [B] bool: requests that may trust the proxy (no penalties etc.)
    mixed_sampling: bool = False  # greedy and sampled requests share the batch
    temperature: np.ndarray | None = None  # [B] sampling temperature, 0 for greedy
    plain_greedy: np.ndarray | None = None  # [B] bool: greedy with no logits processing

    def row_temperatures(self) -> torch.Tensor:
        """Per logits row (drafts + bonus of each request) temperature for the margins:
        sampled requests are judged on the distribution they sample from, greedy ones on
        the plain softmax."""
        temp = np.ones(len(self.req_ids)) if self.temperature is None else self.temperature
        temp = np.where(temp > 0, temp, 1.0)
        return torch.from_numpy(np.repeat(temp, self.num_drafts + 1).astype(np.float32))


@dataclass(frozen=True)
class StepPlan:
    decision: RoutingDecision
    escalated_rows: np.ndarray
    sample_row_offsets: np.ndarray  # [B] first logits row of each request
    margins: np.ndarray  # proxy margins at the decoding requests' draft and bonus positions
    decoding: np.ndarray  # [B] bool: requests routed this step (not prefilling)


class TriSpecStep:
    def __init__(self, cfg: TriSpecConfig) -> None:
        self.cfg = cfg
        self.watermarks = Watermarks()
        self.stats = TriSpecStats()

    def plan(self, batch: StepBatch, proxy_logits: torch.Tensor) -> StepPlan:
        """Margins, watermarks and routing for every request of the batch."""
        b = len(batch.req_ids)
        n = batch.num_drafts.astype(np.int64)
        k = int(n.max()) if b else 0
        offsets = np.zeros(b, dtype=np.int64)
        np.cumsum(n[:-1] + 1, out=offsets[1:])
        temps = batch.row_temperatures()
        uniform = batch.temperature is None or bool((temps == 1.0).all())
        res = top2_margins(proxy_logits, None if uniform else temps.to(proxy_logits.device))
        top1_flat, margin_flat = res.top1_id.cpu(), res.margin.cpu()
        # [B, K+1] gather of each request's sampled rows (clamped past its own end).
        j = np.arange(k + 1)
        rows = torch.from_numpy(offsets[:, None] + np.minimum(j[None, :], n[:, None]))
        top1 = top1_flat[rows]
        margin = margin_flat[rows]
        drafts = torch.zeros((b, k), dtype=torch.long)
        if k:
            cu = np.zeros(b, dtype=np.int64)
            np.cumsum(n[:-1], out=cu[1:])
            flat = batch.draft_tokens.cpu().long()
            # Entries past a request's own drafts are ignored by the router.
            idx = np.minimum(cu[:, None] + j[None, :k], flat.numel() - 1)
            drafts = flat[torch.from_numpy(idx)]

        skips = np.zeros(b, dtype=np.int64)
        for i, req_id in enumerate(batch.req_ids):
            skips[i] = self.watermarks.settle(req_id, int(batch.num_computed[i])).skips
        decoding = (batch.num_computed >= batch.num_prompt) & (batch.num_scheduled == n + 1)
        force = ~decoding | (skips >= self.cfg.max_skips)
        lam = torch.where(
            torch.from_numpy(batch.trust_allowed & decoding),
            torch.tensor(self.cfg.margin_threshold),
            torch.tensor(NEVER_TRUST),
        )
        decision = route(drafts, torch.from_numpy(n), top1, margin, lam, torch.from_numpy(force))
        escalated = ~decision.proxy_completes.numpy()
        if self.cfg.ride_along == "all" and escalated.any():
            # The target runs anyway: let every request ride along, trusted prefix kept.
            decision = route(
                drafts, torch.from_numpy(n), top1, margin, lam, torch.ones(b, dtype=torch.bool)
            )
            escalated = np.ones(b, dtype=bool)
        in_step = (torch.arange(k + 1).unsqueeze(0) <= torch.from_numpy(n).unsqueeze(1)).numpy()
        step_margins = margin.numpy()[in_step & decoding[:, None]]
        return StepPlan(decision, np.nonzero(escalated)[0], offsets, step_margins, decoding)

    def target_batch(
        self,
        batch: StepBatch,
        plan: StepPlan,
        token_ids: np.ndarray,
        block_table: torch.Tensor,
        block_size: int,
    ) -> TargetBatch:
        rows = plan.escalated_rows
        wm = np.array(
            [
                self.watermarks.settle(batch.req_ids[r], int(batch.num_computed[r])).watermark
                for r in rows
            ],
            dtype=np.int64,
        )
        return build_target_batch(
            rows,
            wm,
            batch.num_computed[rows],
            batch.num_scheduled[rows],
            token_ids,
            block_table,
            block_size,
        )

    def target_rows(
        self, batch: StepBatch, plan: StepPlan, tb: TargetBatch
    ) -> tuple[np.ndarray, np.ndarray]:
        """(logits rows to take from the target, matching indices into its hidden states)."""
        logits_rows, hidden_rows = [], []
        trusted = plan.decision.trusted_len.numpy()
        for i, r in enumerate(tb.rows):
            n = int(batch.num_drafts[r])
            first_sampled = tb.step_offsets[i] + int(batch.num_scheduled[r]) - 1 - n
            js = np.arange(int(trusted[r]), n + 1)
            logits_rows.append(plan.sample_row_offsets[r] + js)
            hidden_rows.append(first_sampled + js)
        if not logits_rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(logits_rows), np.concatenate(hidden_rows)

    def finish(self, batch: StepBatch, plan: StepPlan, tb: TargetBatch | None) -> TriSpecStats:
        """Book the step: watermarks, skip counters and counters."""
        d = plan.decision
        step = TriSpecStats(proxy_steps=1, target_steps=int(tb is not None and tb.num_reqs > 0))
        completes = d.proxy_completes.numpy()
        for i, req_id in enumerate(batch.req_ids):
            if completes[i]:
                self.watermarks.proxy_completed(req_id)
        if tb is not None:
            ends = batch.num_computed[tb.rows] + batch.num_scheduled[tb.rows]
            for r, end in zip(tb.rows, ends, strict=True):
                self.watermarks.target_ran(batch.req_ids[r], int(end))
            catchup = tb.step_offsets - tb.query_start_loc[:-1].numpy()
            step.catchup_tokens = int(catchup.sum())
            step.catchup_lengths = catchup.tolist()
        step.margins = np.round(plan.margins, 3).tolist()
        step.proxy_completions = int(completes.sum())
        step.decode_request_steps = int(plan.decoding.sum())
        step.proxy_accepted_tokens = int(d.tau_a.numpy()[plan.decoding].sum())
        step.escalations = int((~completes).sum())
        step.per_request = {
            req_id: [1, int(completes[i]), int(not completes[i]), 0]
            for i, req_id in enumerate(batch.req_ids)
            if plan.decoding[i]
        }
        self.stats.add(step)
        return step


def greedy_verify(
    logits: torch.Tensor,
    num_drafts: np.ndarray,
    draft_tokens: torch.Tensor,
    rows_mask: np.ndarray,
    sampled: torch.Tensor,
) -> torch.Tensor:
    """Greedy speculative verification for the masked requests (others copied).

    A request's logits rows are its drafts' positions then the bonus one: drafts
    are kept while they equal the row's argmax, then the argmax at the first
    mismatch (or the bonus) ends the step; later slots hold -1.
    """
    out = sampled.clone()
    argmax = logits.argmax(dim=-1).to(out.dtype).cpu()
    drafts = draft_tokens.cpu()
    row = draft = 0
    for r, n in enumerate(num_drafts.tolist()):
        if rows_mask[r]:
            tokens = []
            for j in range(n + 1):
                best = int(argmax[row + j])
                tokens.append(best)
                if j == n or int(drafts[draft + j]) != best:
                    break
            out[r] = -1
            out[r, : len(tokens)] = torch.tensor(tokens, dtype=out.dtype)
        row += n + 1
        draft += n
    return out.to(sampled.device)
