"""Token-level rules applied to vLLM's sampled tokens after its sampler ran.

Greedy re-verification, dropping a blank bonus slot when the proxy drafted, and
PyramidSD's fuzzy two-stage tokens; plus the index map from a catch-up pass's
hidden states to a request's sampled rows. No vLLM imports.
"""

from __future__ import annotations

import numpy as np
import torch

from trispec_vllm.config import TriSpecConfig
from trispec_vllm.kernels import divergence, point_mass_divergence
from trispec_vllm.policy import pyramid
from trispec_vllm.policy.batch import StepBatch, StepPlan
from trispec_vllm.policy.target_batch import TargetBatch


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


def relabel_logprobs(
    token_ids: torch.Tensor,
    values: torch.Tensor,
    ranks: torch.Tensor,
    before: torch.Tensor,
    after: torch.Tensor,
    logits: torch.Tensor,
    row_offsets: np.ndarray,
    temperatures: np.ndarray | None = None,
    mode: str = "raw_logprobs",
) -> None:
    """Make vLLM's sampled-token logprobs name the tokens a request emits (in place).

    vLLM's sampler gathers each position's logprobs for the token it sampled: the
    first column of `token_ids`/`values` ([B x W, n + 1], position j of request r at
    row r * W + j) and `ranks` ([B x W]). Where TriSpec then replaces that token
    (PyramidSD, a held request), the entry is recomputed for the emitted one from the
    same logits row (`logits` [rows, V], request r's first at `row_offsets[r]`), so
    the emitted token is in its logprobs with its rank; the top-n columns stay.
    `before`/`after`: [B, W] sampled ids before and after the replacement; `mode`:
    vLLM's logprobs_mode (a processed mode scales by `temperatures`, [B], 0: greedy).
    """
    width = before.shape[1]
    changed = ((before != after) & (after >= 0)).cpu()
    if not changed.any():
        return
    r, j = torch.nonzero(changed, as_tuple=True)
    dev = logits.device
    rows = (torch.from_numpy(row_offsets.astype(np.int64))[r] + j).to(dev)
    chosen = logits[rows].float()
    if mode.startswith("processed") and temperatures is not None:
        temp = torch.from_numpy(np.asarray(temperatures, dtype=np.float32))[r].to(dev)
        chosen = chosen / torch.where(temp > 0, temp, 1.0).unsqueeze(1)
    if mode.endswith("logprobs"):
        chosen = chosen.log_softmax(dim=-1)
    tokens = after.cpu()[r, j].to(dev, torch.long)
    own = chosen.gather(1, tokens.unsqueeze(1)).squeeze(1)
    flat = (r * width + j).to(token_ids.device)
    token_ids[flat, 0] = tokens.to(token_ids.device, token_ids.dtype)
    values[flat, 0] = own.to(values.device, values.dtype)
    ranks[flat] = (chosen >= own.unsqueeze(1)).sum(dim=1).to(ranks.device, ranks.dtype)
