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

import numpy as np
import torch

from trispec_vllm.config import TriSpecConfig
from trispec_vllm.kernels import top2_margins
from trispec_vllm.metrics import TriSpecStats
from trispec_vllm.policy import pyramid
from trispec_vllm.policy.adaptive import AdaptiveLambda
from trispec_vllm.policy.batch import StepBatch, StepPlan, decoding_rows
from trispec_vllm.policy.hold import held_rows, held_tokens
from trispec_vllm.policy.router import route, route_own_drafts
from trispec_vllm.policy.sampling import sampled_hidden_rows
from trispec_vllm.policy.target_batch import TargetBatch, build_target_batch
from trispec_vllm.policy.watermarks import Watermarks

logger = logging.getLogger("vllm.trispec")

NEVER_TRUST = float("inf")


def margins_to_host(top1: torch.Tensor, margin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's one inherent device-to-host copy: top-1 ids and margins packed
    into one float32 tensor (ids are exact in float32 below 2**24)."""
    packed = torch.stack([margin.float(), top1.float()]).cpu()
    return packed[1].long(), packed[0]


class TriSpecStep:
    def __init__(self, cfg: TriSpecConfig) -> None:
        self.cfg = cfg
        self.watermarks = Watermarks()
        self.proxy_marks = Watermarks()  # how far each request's proxy KV is valid
        self.stats = TriSpecStats()
        self.adaptive = (
            AdaptiveLambda(
                initial=cfg.margin_threshold,
                target_disagreement=cfg.target_disagreement,
                rate=cfg.adaptive_rate,
                lo=cfg.lambda_min,
                hi=cfg.lambda_max,
                learn_start=cfg.adaptive_start == "learned",
            )
            if cfg.adaptive_lambda
            else None
        )
        self._booked = (0, 0)  # adaptive trials and failures already in the stats
        self.held: dict[str, int] = {}  # consecutive steps each request has been held

    def forget(self, live_req_ids) -> None:
        """Drop the state of finished requests."""
        live = list(live_req_ids)
        alive = set(live)
        self.held = {r: n for r, n in self.held.items() if r in alive}
        self.watermarks.forget(live)
        self.proxy_marks.forget(live)
        if self.adaptive is not None:
            self.adaptive.forget(live)

    def start_request(self, req_id: str, target_valid: int, proxy_valid: int) -> None:
        """A request (new, or resumed after preemption) starts on prefix-cached KV that
        is valid below `target_valid` for the target and `proxy_valid` for the proxy;
        each model catches up the rest of the cached positions when it next runs."""
        self.watermarks.start(req_id, target_valid)
        self.proxy_marks.start(req_id, proxy_valid)

    def skip_proxy(self, batch: StepBatch) -> bool:
        """Whether this step runs without the proxy (more decoding requests than
        max_proxy_batch, or speculation disabled at this batch size): standard
        speculative decoding on the target alone."""
        if self.speculation_disabled(len(batch.req_ids)):
            return True
        limit = self.cfg.max_proxy_batch
        return limit is not None and int(decoding_rows(batch).sum()) > limit

    def speculation_disabled(self, num_reqs: int) -> bool:
        """Batches of at least disable_by_batch_size requests decode without speculation."""
        limit = self.cfg.disable_by_batch_size
        return limit is not None and num_reqs >= limit

    def target_up_to_date(self, req_ids: list[str], num_computed: np.ndarray) -> bool:
        """Whether the target's KV covers every computed token of every request."""
        computed = [int(c) for c in num_computed]
        marks = [
            self.watermarks.settle(r, c).watermark for r, c in zip(req_ids, computed, strict=True)
        ]
        return marks == computed

    def plain_step(
        self,
        req_ids: list[str],
        num_computed: np.ndarray,
        num_scheduled: np.ndarray,
        secs: float,
        decoding: np.ndarray | None = None,
    ) -> TriSpecStats:
        """Book a step vLLM ran on its own (no drafts, no proxy): the target's KV now
        covers every scheduled token; the proxy's watermarks stay where they were.
        `decoding` ([B] bool): requests decoding a token, booked per request as steps
        the target ran for."""
        ends = num_computed.astype(np.int64) + num_scheduled
        for req_id, c, end in zip(req_ids, num_computed, ends, strict=True):
            self.watermarks.settle(req_id, int(c))
            self.watermarks.target_ran(req_id, int(end))
            self.proxy_marks.settle(req_id, int(c))
        for req_id in req_ids:
            self.held.pop(req_id, None)
        step = TriSpecStats(target_steps=1, native_target_steps=1, plain_steps=1)
        if decoding is not None:
            step.per_request = {
                r: [1, 0, 1, 0] for r, d in zip(req_ids, decoding, strict=True) if d
            }
        step.add_times(plain=secs)
        self.stats.add(step)
        return step

    def begin_step(self, batch: StepBatch) -> None:
        """Settle the proxy's marks at this step's computed tokens, before any pass
        of the step (the target's settle in `plan`, before its pass). They settle in
        every step, run or not: only the count of tokens kept right after a pass says
        which of its positions still hold, and settling them after this step's own
        pass would undo it (the proxy would redo its last pass's positions)."""
        for req_id, c in zip(batch.req_ids, batch.num_computed, strict=True):
            self.proxy_marks.settle(req_id, int(c))

    def proxy_watermarks(self, batch: StepBatch) -> np.ndarray:
        """[B] first position of each request the proxy has no KV for."""
        return np.array(
            [
                self.proxy_marks.settle(r, int(c)).watermark
                for r, c in zip(batch.req_ids, batch.num_computed, strict=True)
            ],
            dtype=np.int64,
        )

    def proxy_ran(self, batch: StepBatch) -> None:
        """The proxy's KV now covers every scheduled token of the batch."""
        ends = batch.num_computed + batch.num_scheduled - 1
        for req_id, c, end in zip(batch.req_ids, batch.num_computed, ends, strict=True):
            self.proxy_marks.settle(req_id, int(c))  # registers new requests only
            self.proxy_marks.target_ran(req_id, int(end))

    def proxy_drafted(self, batch: StepBatch, known: np.ndarray) -> None:
        """The proxy's drafting passes fed each `known` request's sampled token and
        its drafts but the last (never fed): its KV covers them now."""
        ends = batch.num_computed + batch.num_scheduled - 1
        for req_id, end in zip(np.asarray(batch.req_ids)[known], ends[known], strict=True):
            self.proxy_marks.target_ran(req_id, int(end))

    def plan(
        self,
        batch: StepBatch,
        proxy_logits: torch.Tensor | None,
        own_drafts: np.ndarray | None = None,
    ) -> StepPlan:
        """Margins, watermarks and routing for every request of the batch
        (proxy_logits None: a step without the proxy, every request escalated).

        `own_drafts` ([B] bool) means the proxy is the drafter: `proxy_logits` hold
        the drafter's rows at the draft positions of the requests marked True (bonus
        rows are blank), and the rule is `route_own_drafts`."""
        b = len(batch.req_ids)
        n = batch.num_drafts.astype(np.int64)
        k = int(n.max()) if b else 0
        offsets = batch.row_offsets()
        if proxy_logits is None:
            top1_flat = torch.full((int((n + 1).sum()),), -1, dtype=torch.long)
            margin_flat = torch.zeros(int((n + 1).sum()))
        else:
            temps = batch.row_temperatures()
            uniform = bool((temps == 1.0).all())
            res = top2_margins(proxy_logits, None if uniform else temps.to(proxy_logits.device))
            top1_flat, margin_flat = margins_to_host(res.top1_id, res.margin)
            if own_drafts is not None:
                # Blank rows (bonus positions, requests without a proposal): no verdict.
                blank = np.repeat(~own_drafts, n + 1)
                blank[offsets + n] = True
                top1_flat[torch.from_numpy(blank)] = -1
                margin_flat[torch.from_numpy(blank)] = 0.0
        # [B, K+1] gather of each request's sampled rows (clamped past its own end).
        j = np.arange(k + 1)
        rows = torch.from_numpy(offsets[:, None] + np.minimum(j[None, :], n[:, None]))
        top1 = top1_flat[rows]
        margin = margin_flat[rows]
        drafts = torch.zeros((b, k), dtype=torch.long)
        if k:
            flat = batch.draft_tokens.long()  # host copy (StepBatch)
            # Entries past a request's own drafts are ignored by the router.
            idx = np.minimum(batch.draft_offsets()[:, None] + j[None, :k], flat.numel() - 1)
            drafts = flat[torch.from_numpy(idx)]

        skips = np.zeros(b, dtype=np.int64)
        for i, req_id in enumerate(batch.req_ids):
            skips[i] = self.watermarks.settle(req_id, int(batch.num_computed[i])).skips
        decoding = decoding_rows(batch)
        holds = np.array([self.held.get(r, 0) for r in batch.req_ids], dtype=np.int64)
        max_holds = getattr(self.cfg, "max_holds", 0)  # none under PyramidSD
        # Forced to the target whatever the step: prompts, no proxy, no holds left.
        hard = ~decoding | (proxy_logits is None) | ((holds > 0) & (holds >= max_holds))
        force = hard | (skips >= self.cfg.max_skips)
        if self.adaptive is not None:
            base = self.adaptive.lambdas(batch.req_ids)
        else:
            lam = getattr(self.cfg, "margin_threshold", NEVER_TRUST)  # none under PyramidSD
            base = np.full(b, lam, dtype=np.float32)
        trusting = batch.trust_allowed & decoding & (proxy_logits is not None)
        pyramid_rows = None
        if self.cfg.policy == "pyramid" and proxy_logits is not None:
            # PyramidSD sends every window to the target; its fuzzy rule replaces
            # the margins (requests it cannot judge get standard SD).
            untruncated = np.ones(b, bool) if batch.untruncated is None else batch.untruncated
            pyramid_rows = trusting & untruncated
            trusting = np.zeros(b, dtype=bool)
        if own_drafts is not None:
            own = torch.from_numpy(own_drafts).unsqueeze(1) & (top1[:, :k] == drafts)
            own_margin = torch.where(own, margin[:, :k], float("-inf"))

            def rule(lam, force):
                return route_own_drafts(drafts, torch.from_numpy(n), own_margin, lam, force)
        else:
            # Sampled requests: vLLM's sampler may emit at any position of the step.
            sampled = torch.from_numpy(batch.sampled())

            def rule(lam, force):
                return route(drafts, torch.from_numpy(n), top1, margin, lam, force, sampled)

        lam = torch.from_numpy(np.where(trusting, base, NEVER_TRUST).astype(np.float32))
        decision = rule(lam, torch.from_numpy(force))
        escalated = ~decision.proxy_completes.numpy()
        held = hold_tokens = None
        if max_holds and own_drafts is None:
            # In a step without the target, requests due at max_skips complete with the
            # proxy (they ride the pass the held requests force next).
            soft = rule(lam, torch.from_numpy(hard))
            waits = ~soft.proxy_completes.numpy()
            greedy = np.ones(b, bool) if batch.plain_greedy is None else batch.plain_greedy
            rows = held_rows(waits, trusting & ~hard & greedy, ~waits)
            if rows.any():
                held, decision, escalated = rows, soft, waits & ~rows
                hold_tokens = held_tokens(drafts.numpy(), decision.trusted_len.numpy(), held)
        riders = None if held is not None else self.riders(escalated, skips)
        if riders is not None:
            # The target runs anyway: riders are verified too, trusted prefix kept.
            decision = rule(lam, torch.from_numpy(force | riders))
            escalated = ~decision.proxy_completes.numpy()
        in_step = (torch.arange(k + 1).unsqueeze(0) <= torch.from_numpy(n).unsqueeze(1)).numpy()
        step_margins = margin.numpy()[in_step & decoding[:, None]]
        return StepPlan(
            decision,
            np.nonzero(escalated)[0],
            offsets,
            step_margins,
            decoding,
            drafts,
            rows,
            row_top1=top1_flat.numpy(),
            row_margin=margin_flat.numpy(),
            lambdas=np.where(trusting, base, np.nan),
            pyramid_rows=pyramid_rows,
            proxy_ran=proxy_logits is not None,
            held=held,
            held_tokens=hold_tokens,
        )

    def riders(self, escalated: np.ndarray, skips: np.ndarray) -> np.ndarray | None:
        """[B] bool: requests the target verifies because it runs this step anyway
        (`ride_along`), None when there are none. 'expiring' picks those whose skip
        counter would reach max_skips next step: their forced escalation joins this
        target pass instead of forcing one of its own later."""
        mode = self.cfg.ride_along
        if mode == "none" or not escalated.any():
            return None
        if mode == "all":
            return np.ones_like(escalated)
        return skips + 1 >= self.cfg.max_skips

    def observe_target(
        self, batch: StepBatch, plan: StepPlan, logit_rows: np.ndarray, target_top1: np.ndarray
    ) -> None:
        """Feed adaptive lambda with the proxy/target agreement at the rows the target scored."""
        if self.adaptive is None or plan.row_top1 is None or not logit_rows.size:
            return
        req_of_row = np.repeat(np.arange(len(batch.req_ids)), batch.num_drafts + 1)
        seen = plan.row_top1[logit_rows] >= 0  # rows the proxy gave a verdict on
        logit_rows, target_top1 = logit_rows[seen], target_top1[seen]
        reqs = req_of_row[logit_rows]
        agree = plan.row_top1[logit_rows] == target_top1
        margins = plan.row_margin[logit_rows]
        for r in np.unique(reqs):
            if plan.decoding[r] and batch.trust_allowed[r]:
                sel = reqs == r
                self.adaptive.observe(batch.req_ids[r], margins[sel], agree[sel])

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
            req_ids=[batch.req_ids[r] for r in rows],
        )

    def target_rows(
        self, batch: StepBatch, plan: StepPlan, tb: TargetBatch
    ) -> tuple[np.ndarray, np.ndarray]:
        """(logits rows to take from the target, matching indices into its hidden states)."""
        trusted = plan.decision.trusted_len.numpy()[tb.rows]
        if not tb.rows.size:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        logits_rows = np.concatenate(
            [
                plan.sample_row_offsets[r] + np.arange(int(t), int(batch.num_drafts[r]) + 1)
                for r, t in zip(tb.rows, trusted, strict=True)
            ]
        )
        return logits_rows, sampled_hidden_rows(batch, tb, trusted)

    def finish(
        self,
        batch: StepBatch,
        plan: StepPlan,
        tb: TargetBatch | None,
        fuzzy: pyramid.PyramidDecision | None = None,
    ) -> TriSpecStats:
        """Book the step: watermarks, skip counters and counters."""
        d = plan.decision
        step = TriSpecStats(
            proxy_steps=int(plan.proxy_ran), target_steps=int(tb is not None and tb.num_reqs > 0)
        )
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
        if self.adaptive is not None and plan.lambdas is not None:
            lam = plan.lambdas[~np.isnan(plan.lambdas)]
            step.lambdas = np.round(lam, 3).tolist()
            step.lambda_sum = float(lam.sum())
            step.lambda_count = int(lam.size)
            step.adaptive_trials = self.adaptive.total_trials - self._booked[0]
            step.adaptive_failures = self.adaptive.total_failures - self._booked[1]
            self._booked = (self.adaptive.total_trials, self.adaptive.total_failures)
        step.proxy_completions = int(completes.sum())
        step.decode_request_steps = int(plan.decoding.sum())
        step.proxy_accepted_tokens = int(d.tau_a.numpy()[plan.decoding].sum())
        step.escalations = int((~completes).sum())
        held = np.zeros(len(batch.req_ids), bool) if plan.held is None else plan.held
        step.held_escalations = int(held.sum())
        step.held_without_tokens = int(plan.held_empty().sum())
        self.held = {
            batch.req_ids[i]: self.held.get(batch.req_ids[i], 0) + 1 for i in np.nonzero(held)[0]
        }
        if fuzzy is not None and plan.pyramid_rows is not None:
            rows = plan.pyramid_rows
            # Under PyramidSD the proxy's acceptance is the qualifier's.
            step.proxy_accepted_tokens = int(fuzzy.qualifier_accepted.numpy()[rows].sum())
            step.proxy_accepted_tokens += int(d.tau_a.numpy()[plan.decoding & ~rows].sum())
            step.fuzzy_accepted_tokens = int(fuzzy.target_accepted.numpy()[rows].sum())
        step.per_request = {
            req_id: [1, int(completes[i]), int(not completes[i]), 0]
            for i, req_id in enumerate(batch.req_ids)
            if plan.decoding[i]
        }
        self.stats.add(step)
        return step
