"""PyramidSD's fuzzy acceptance over one step (drafter -> qualifier -> target).

Implements Pyramid Speculative Decoding (Byun et al., arXiv 2510.12966) on
top of the acceptance rule of its source, Fuzzy Speculative Decoding
(maxholsman/fsd, `fsd_utils.py`): a position passes a stage when the
divergence between the checking model's next-token distribution and the
checked model's is at most the stage's threshold; the prefix up to the first
failing position is kept and that position's token is replaced by a sample
from the checking model's own distribution (not a residual). In our three
stages the qualifier is the proxy:

- qualifier stage, d_1..d_n: PSD_F passes d_j when Div(Q_j, P_draft_j) <= tau_Q.
  vLLM's drafters (ngram, greedy draft_model) give no draft distribution, so
  P_draft is a point mass on d_j and the test is a floor on Q_j(d_j)
  (`point_mass_divergence`). PSD_A has no tau_Q: the qualifier verifies the
  drafts as in standard (assisted) speculative decoding, which for a
  deterministic drafter accepts d_j with probability Q_j(d_j) (greedy: when
  d_j is Q_j's argmax), and otherwise samples from Q_j without d_j.
  Either way the qualifier's candidate is d_1..d_a, then its own token c at
  position a + 1 (a sample from Q, or its argmax for greedy requests).
- target stage, the candidate y_1..y_{a+1}: y_j passes when
  Div(P_T_j, Q_j) <= tau_T (the target checks against the qualifier's
  distribution, not the drafter's); the first failing y_j is replaced by a
  sample from P_T_j (its argmax for greedy requests). The target's
  distribution after y_{a+1} = c is not computed in this step (its input
  there was d_{a+1}), so a fully accepted candidate ends the step.

Divergences are taken on the raw distributions (temperature 1, full
vocabulary), as Fuzzy SD's code does; the tokens are drawn at the request's
temperature. Where Fuzzy SD samples even in greedy mode, greedy requests here
take the argmax, so greedy output stays deterministic. The JS divergence is
the standard one (see `trispec_vllm.kernels.divergence`).

The qualifier window is the step's draft window (vLLM emits tokens every step,
so a window longer than one step could not be taken back). This module holds
the pure rule, vectorised over the batch; the sampling and the divergences
are computed by the caller (`trispec_vllm.step`). No vLLM import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trispec_vllm.policy.router import PAD, leading_true

__all__ = ["PAD", "PyramidDecision", "first_target_failure", "qualifier_accepts", "target_verify"]


@dataclass(frozen=True)
class PyramidDecision:
    tokens: torch.Tensor  # [B, K+1] emitted tokens, PAD after num_emitted
    num_emitted: torch.Tensor  # [B]
    qualifier_accepted: torch.Tensor  # [B] a: drafts the qualifier kept
    target_accepted: torch.Tensor  # [B] leading candidate tokens the target kept


def qualifier_accepts(
    draft_tokens: torch.Tensor, num_drafts: torch.Tensor, draft_pass: torch.Tensor
) -> torch.Tensor:
    """[B] number of leading drafts the qualifier keeps, given per-draft verdicts [B, K]."""
    b, k = draft_tokens.shape
    is_draft = torch.arange(k, device=draft_tokens.device).unsqueeze(0) < num_drafts.unsqueeze(1)
    return leading_true(is_draft & draft_pass.bool())


def target_verify(
    draft_tokens: torch.Tensor,
    qualifier_accepted: torch.Tensor,
    qualifier_token: torch.Tensor,
    target_pass: torch.Tensor,
    target_token: torch.Tensor,
) -> PyramidDecision:
    """The target stage over each request's candidate d_1..d_a, c.

    Args:
        draft_tokens: [B, K] drafts (entries past a request's own are ignored).
        qualifier_accepted: [B] a, from `qualifier_accepts` (or the PSD_A rule).
        qualifier_token: [B] c, the qualifier's token at position a + 1.
        target_pass: [B, K+1] Div(P_T_j, Q_j) <= tau_T at each position.
        target_token: [B] the target's replacement token at the first failing
            position (callers sample it once that position is known, see
            `first_target_failure`).
    """
    b, k = draft_tokens.shape
    dev = draft_tokens.device
    a = qualifier_accepted.to(device=dev, dtype=torch.int64)
    pos = torch.arange(k + 1, device=dev).unsqueeze(0)
    t = first_target_failure(qualifier_accepted, target_pass)
    padded = torch.cat([draft_tokens.long(), draft_tokens.new_full((b, 1), PAD).long()], dim=1)
    candidate = padded.scatter(1, a.unsqueeze(1), qualifier_token.long().view(b, 1))
    full = t > a  # every candidate token passed
    num_emitted = torch.where(full, a + 1, t + 1)
    replaced = candidate.scatter(1, t.clamp(max=k).unsqueeze(1), target_token.long().view(b, 1))
    tokens = torch.where(full.unsqueeze(1), candidate, replaced)
    tokens = torch.where(pos < num_emitted.unsqueeze(1), tokens, PAD)
    return PyramidDecision(tokens, num_emitted, a, torch.minimum(t, a + 1))


def first_target_failure(
    qualifier_accepted: torch.Tensor, target_pass: torch.Tensor
) -> torch.Tensor:
    """[B] index of the first candidate position the target rejects (a + 1 when none)."""
    k1 = target_pass.shape[1]
    a = qualifier_accepted.to(device=target_pass.device, dtype=torch.int64)
    in_candidate = torch.arange(k1, device=target_pass.device).unsqueeze(0) <= a.unsqueeze(1)
    return leading_true(in_candidate & target_pass.bool())
