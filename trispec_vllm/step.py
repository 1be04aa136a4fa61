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

from trispec_vllm import pyramid
from trispec_vllm.adaptive import AdaptiveLambda
from trispec_vllm.config import TriSpecConfig
from trispec_vllm.kernels import divergence, point_mass_divergence, top2_margins
from trispec_vllm.metrics import TriSpecStats
from trispec_vllm.router import RoutingDecision, route, route_own_drafts
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
    # [B] sampling temperature, 0 for greedy; None (unit-test batches): all greedy.
    temperature: np.ndarray | None = None
    plain_greedy: np.ndarray | None = None  # [B] bool: greedy with no logits processing
    # [B] bool: no top-k/top-p truncation (PyramidSD samples from whole distributions).
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

    def forget(self, live_req_ids) -> None:
        """Drop the state of finished requests."""
        live = list(live_req_ids)
        self.watermarks.forget(live)
        self.proxy_marks.forget(live)
        if self.adaptive is not None:
            self.adaptive.forget(live)

    def skip_proxy(self, batch: StepBatch) -> bool:
        """Whether this step runs without the proxy (more decoding requests than
        max_proxy_batch, or speculation disabled at this batch size): standard
        speculative decoding on the target alone."""
        if self.speculation_disabled(len(batch.req_ids)):
            return True
        limit = self.cfg.max_proxy_batch
        return limit is not None and int(_decoding(batch).sum()) > limit

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
        self, req_ids: list[str], num_computed: np.ndarray, num_scheduled: np.ndarray, secs: float
    ) -> TriSpecStats:
        """Book a step vLLM ran on its own (no drafts, no proxy): the target's KV now
        covers every scheduled token; the proxy's watermarks stay where they were."""
        ends = num_computed.astype(np.int64) + num_scheduled
        for req_id, c, end in zip(req_ids, num_computed, ends, strict=True):
            self.watermarks.settle(req_id, int(c))
            self.watermarks.target_ran(req_id, int(end))
        step = TriSpecStats(target_steps=1, native_target_steps=1, plain_steps=1)
        step.add_times(plain=secs)
        self.stats.add(step)
        return step

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
        ends = batch.num_computed + batch.num_scheduled
        for req_id, end in zip(batch.req_ids, ends, strict=True):
            self.proxy_marks.settle(req_id, int(end))  # register new requests
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
            top1_flat, margin_flat = res.top1_id.cpu(), res.margin.cpu()
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
            flat = batch.draft_tokens.cpu().long()
            # Entries past a request's own drafts are ignored by the router.
            idx = np.minimum(batch.draft_offsets()[:, None] + j[None, :k], flat.numel() - 1)
            drafts = flat[torch.from_numpy(idx)]

        skips = np.zeros(b, dtype=np.int64)
        for i, req_id in enumerate(batch.req_ids):
            skips[i] = self.watermarks.settle(req_id, int(batch.num_computed[i])).skips
        decoding = _decoding(batch)
        force = ~decoding | (skips >= self.cfg.max_skips) | (proxy_logits is None)
        if self.adaptive is not None:
            base = self.adaptive.lambdas(batch.req_ids)
        else:
            base = np.full(b, self.cfg.margin_threshold, dtype=np.float32)
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
        if self.cfg.ride_along == "all" and escalated.any():
            # The target runs anyway: let every request ride along, trusted prefix kept.
            decision = rule(lam, torch.ones(b, dtype=torch.bool))
            escalated = np.ones(b, dtype=bool)
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
        )

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


def _starts(counts: np.ndarray) -> np.ndarray:
    """Exclusive prefix sum: where each of consecutive runs of `counts` begins."""
    out = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


def _decoding(batch: StepBatch) -> np.ndarray:
    """[B] bool: requests decoding this step (not prefilling a prompt chunk)."""
    return (batch.num_computed >= batch.num_prompt) & (batch.num_scheduled == batch.num_drafts + 1)


def sampled_hidden_rows(batch: StepBatch, tb: TargetBatch, first: np.ndarray) -> np.ndarray:
    """Indices into a catch-up pass's hidden states of each request's sampled positions
    (drafts then bonus), from position `first[i]` on, request by request."""
    out = []
    for i, r in enumerate(tb.rows):
        n = int(batch.num_drafts[r])
        first_sampled = tb.step_offsets[i] + int(batch.num_scheduled[r]) - 1 - n
        out.append(first_sampled + np.arange(int(first[i]), n + 1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


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


def _uniform(n: int, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else "cpu"
    return torch.rand(n, generator=generator, device=dev).cpu()


def _sample_row(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None, exclude: int = -1
) -> int:
    """One token from a logits row: argmax when greedy (temperature 0), else a sample
    from softmax(logits / T), optionally with one token removed (a residual)."""
    x = logits.float()
    if exclude >= 0:
        x = x.clone()
        x[exclude] = float("-inf")
    if temperature <= 0:
        return int(x.argmax())
    probs = torch.softmax(x / temperature, dim=-1)
    if generator is not None:
        probs = probs.to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator))


def drop_bonus(sampled: torch.Tensor, rows: np.ndarray, num_drafts: np.ndarray) -> None:
    """Blank the bonus slot of the masked requests in vLLM's sampled tokens (in place).

    When the proxy is the drafter, a step it completes has the proxy's rows at the
    drafts only (no row past the last draft; vLLM's sampler sees a blank one there):
    vLLM's rejection sampler verifies the drafts against the proxy's rows, greedy or
    sampled (its argmax drafts are accepted with probability q(d), else a residual
    sample ends the step), and a step that accepted every draft ends at d_n.
    """
    idx = np.nonzero(rows)[0]
    if idx.size:
        dev = sampled.device
        cols = torch.from_numpy(num_drafts[idx].astype(np.int64)).to(dev)
        sampled[torch.from_numpy(idx).to(dev), cols] = -1


def pyramid_tokens(
    cfg: TriSpecConfig,
    batch: StepBatch,
    plan: StepPlan,
    proxy_logits: torch.Tensor,
    target_logits: torch.Tensor,
    generators: dict[int, torch.Generator],
) -> tuple[torch.Tensor, pyramid.PyramidDecision]:
    """PyramidSD's tokens for every request of the batch ([B, K+1], PAD-padded).

    `proxy_logits` are the qualifier's rows, `target_logits` the target's at the
    same rows (both in vLLM's layout: each request's drafts, then its bonus
    position). Only the rows of `plan.pyramid_rows` are meaningful; callers keep
    vLLM's own tokens for the others. Seeded requests draw from their own
    generator, so their tokens do not depend on batch neighbours.
    """
    b = len(batch.req_ids)
    n = torch.from_numpy(batch.num_drafts.astype(np.int64))
    drafts, rows = plan.drafts, plan.rows
    k = drafts.shape[1]
    temps = batch.row_temperatures().to(proxy_logits.device)
    req_temp = batch.request_temperatures()
    greedy = req_temp <= 0

    # Qualifier stage over the drafts: PSD_F's divergence on the raw distribution (as
    # the target stage), PSD_A's speculative sampling on the one the request samples.
    raw = cfg.pyramid_variant == "psd_f"
    scale = 1.0 if raw else temps.unsqueeze(1)
    log_q = torch.log_softmax(proxy_logits.float() / scale, dim=-1).cpu()
    if k:
        draft_rows = rows[:, :k]
        q_of_draft = log_q[draft_rows, drafts].exp()  # [B, K]
        q_top1 = torch.from_numpy(plan.row_top1)[draft_rows]
        if cfg.pyramid_variant == "psd_f":
            passes = point_mass_divergence(q_of_draft, cfg.divergence) <= cfg.tau_q
        else:  # psd_a: standard speculative verification by the qualifier
            u = torch.stack([_uniform(k, generators.get(r)) for r in range(b)])
            sampled_pass = u < q_of_draft
            greedy_pass = drafts == q_top1
            passes = torch.where(torch.from_numpy(greedy).unsqueeze(1), greedy_pass, sampled_pass)
        a = pyramid.qualifier_accepts(drafts, n, passes)
    else:
        a = torch.zeros(b, dtype=torch.long)

    active = plan.pyramid_rows if plan.pyramid_rows is not None else np.zeros(b, bool)
    c = torch.zeros(b, dtype=torch.long)
    for r in np.nonzero(active)[0]:
        ar = int(a[r])
        rejected = cfg.pyramid_variant == "psd_a" and ar < int(n[r]) and not greedy[r]
        c[r] = _sample_row(
            proxy_logits[int(rows[r, ar])],
            float(req_temp[r]),
            generators.get(int(r)),
            exclude=int(drafts[r, ar]) if rejected else -1,
        )

    # Target stage: Div(P_T, Q) at every row, against tau_T. As in Fuzzy SD, on the
    # raw distributions (temperature 1), so a threshold means the same at any temperature.
    div = divergence(target_logits, proxy_logits, None, cfg.divergence).cpu()
    t_pass = div[rows] <= cfg.tau_t
    t_fail = pyramid.first_target_failure(a, t_pass)
    t_tok = torch.zeros(b, dtype=torch.long)
    for r in np.nonzero(active)[0]:
        tr = int(t_fail[r])
        if tr <= int(a[r]):
            t_tok[r] = _sample_row(
                target_logits[int(rows[r, tr])], float(req_temp[r]), generators.get(int(r))
            )
    decision = pyramid.target_verify(drafts, a, c, t_pass, t_tok)
    return decision.tokens, decision
