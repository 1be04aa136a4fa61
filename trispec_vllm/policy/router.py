"""TriSpec's per-request routing rule, vectorised over the batch (no vLLM import).

One step of one request: drafts d_1..d_n (0 <= n <= K), the proxy's top-1
t_1..t_{n+1} and margins m_1..m_{n+1} (position n+1 is the bonus position).

- tau_a: number of leading drafts with d_i == t_i (proxy acceptance length);
- tau_m: number of leading positions 1..n+1 with m_i >= lambda (trusted prefix);
- Case I (tau_a < tau_m): the proxy is confident through its first rejection,
  so the request emits d_1..d_tau_a and t_{tau_a+1} with no target work;
- Case II (otherwise): d_1..d_tau_m are accepted without the target and the
  target verifies d_{tau_m+1}..d_n as in standard speculative decoding.

A request forced to the target (`force_target`, e.g. after max_skips proxy
steps) takes Case II with trusted length min(tau_a, tau_m), so a draft the
proxy rejected is never accepted unverified. A `whole_step` request (sampled:
vLLM's rejection sampler may accept a draft the proxy's argmax rejects and go
on, so it can emit at any position 1..n+1) takes Case I only when every
position is trusted (tau_m = n + 1), so no token ever comes from an untrusted
proxy row. lambda > 1 never trusts
(tau_m = 0: standard speculative decoding); lambda <= 0 always trusts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD = -1


@dataclass(frozen=True)
class RoutingDecision:
    """Per-request verdicts for one step; every tensor has batch size B first."""

    tau_a: torch.Tensor  # [B] int64
    tau_m: torch.Tensor  # [B] int64
    proxy_completes: torch.Tensor  # [B] bool: Case I
    emitted: torch.Tensor  # [B, K+1] int64, Case I tokens, PAD after num_emitted
    num_emitted: torch.Tensor  # [B] int64, tau_a + 1 in Case I, 0 in Case II
    trusted_len: torch.Tensor  # [B] int64, Case II drafts accepted without the target
    target_drafts: torch.Tensor  # [B, K] int64, Case II drafts left to verify, PAD-padded
    num_target_drafts: torch.Tensor  # [B] int64

    @property
    def escalated(self) -> torch.Tensor:
        """[B] bool: Case II, the request needs the target this step."""
        return ~self.proxy_completes


def _on(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`t` as `dtype` on `device`, with no device move (and no host sync) when it is
    already there: the step routes on host tensors."""
    return t.to(dtype) if t.device == device else t.to(device=device, dtype=dtype)


def leading_true(flags: torch.Tensor) -> torch.Tensor:
    """Length of the run of True at the start of each row."""
    return torch.cumprod(flags.to(torch.int64), dim=1).sum(dim=1)


def route(
    draft_tokens: torch.Tensor,
    num_drafts: torch.Tensor,
    proxy_top1: torch.Tensor,
    proxy_margin: torch.Tensor,
    margin_threshold: float | torch.Tensor,
    force_target: torch.Tensor | None = None,
    whole_step: torch.Tensor | None = None,
) -> RoutingDecision:
    """Apply the TriSpec rule to a batch.

    Args:
        draft_tokens: [B, K] drafts, left-aligned; entries past num_drafts are ignored.
        num_drafts: [B] number of drafts per request (0..K).
        proxy_top1: [B, K+1] proxy argmax at each draft position and the bonus one.
        proxy_margin: [B, K+1] proxy top-1 minus top-2 probability, same positions.
        margin_threshold: lambda, a float or a [B] tensor (per-request lambda).
        force_target: optional [B] bool, requests that must go to the target.
        whole_step: optional [B] bool, requests that complete only when every
            position of the step is trusted (sampled requests).
    """
    b, k = draft_tokens.shape
    if proxy_top1.shape != (b, k + 1) or proxy_margin.shape != (b, k + 1):
        raise ValueError(
            f"proxy_top1/proxy_margin must be [B, K+1] = [{b}, {k + 1}], got "
            f"{tuple(proxy_top1.shape)} and {tuple(proxy_margin.shape)}"
        )
    dev = draft_tokens.device
    n = _on(num_drafts, dev, torch.int64)
    pos = torch.arange(k + 1, device=dev)
    is_draft = pos[:k].unsqueeze(0) < n.unsqueeze(1)  # [B, K]
    in_step = pos.unsqueeze(0) <= n.unsqueeze(1)  # [B, K+1]: drafts + bonus

    tau_a = leading_true(is_draft & (draft_tokens == proxy_top1[:, :k]))
    lam = torch.as_tensor(margin_threshold, dtype=proxy_margin.dtype, device=dev)
    lam = lam.unsqueeze(-1) if lam.dim() == 1 else lam
    tau_m = leading_true(in_step & (proxy_margin >= lam))

    case_i = tau_a < tau_m
    if whole_step is not None:
        whole = _on(whole_step, dev, torch.bool)
        case_i = case_i & (~whole | (tau_m == n + 1))
    if force_target is not None:
        case_i = case_i & ~_on(force_target, dev, torch.bool)

    # Case I emits d_1..d_tau_a then the proxy's correction t_{tau_a+1}.
    draft_tokens = draft_tokens.long()
    padded_drafts = torch.cat([draft_tokens, draft_tokens.new_full((b, 1), PAD)], dim=1)
    correction = proxy_top1.gather(1, tau_a.unsqueeze(1)).long()  # [B, 1]
    emitted = torch.where(pos.unsqueeze(0) < tau_a.unsqueeze(1), padded_drafts, PAD).long()
    emitted = emitted.scatter(1, tau_a.unsqueeze(1), correction)
    emitted = torch.where(case_i.unsqueeze(1), emitted, PAD).long()
    num_emitted = torch.where(case_i, tau_a + 1, 0)

    # Case II keeps the trusted prefix (never past the proxy's first rejection).
    trusted_len = torch.where(case_i, 0, torch.minimum(tau_a, tau_m))
    num_target = torch.where(case_i, 0, n - trusted_len)
    src = (pos[:k].unsqueeze(0) + trusted_len.unsqueeze(1)).clamp(max=k - 1 if k else 0)
    shifted = draft_tokens.gather(1, src) if k else draft_tokens
    target_drafts = torch.where(pos[:k].unsqueeze(0) < num_target.unsqueeze(1), shifted, PAD)

    return RoutingDecision(
        tau_a=tau_a,
        tau_m=tau_m,
        proxy_completes=case_i,
        emitted=emitted,
        num_emitted=num_emitted,
        trusted_len=trusted_len,
        target_drafts=target_drafts.long(),
        num_target_drafts=num_target,
    )


def route_own_drafts(
    draft_tokens: torch.Tensor,
    num_drafts: torch.Tensor,
    draft_margin: torch.Tensor,
    margin_threshold: float | torch.Tensor,
    force_target: torch.Tensor | None = None,
) -> RoutingDecision:
    """The rule when the proxy is the drafter itself (vLLM's greedy `draft_model`).

    The drafts are the proxy's own top-1 tokens, so tau_a = n, and the proxy's
    margins at the draft positions come free with the drafting passes; there is
    no proxy row at the bonus position. A request with n >= 1 drafts that are all
    trusted (margin >= lambda) completes without the target and emits d_1..d_n
    (no bonus token); otherwise it takes Case II with the trusted prefix. A
    request with no drafts always goes to the target.

    Args:
        draft_margin: [B, K] the drafter's top-1 minus top-2 probability at each
            draft; -inf where unknown (such a draft is never trusted).
    """
    b, k = draft_tokens.shape
    dev = draft_tokens.device
    n = _on(num_drafts, dev, torch.int64)
    top1 = torch.cat([draft_tokens.long(), draft_tokens.new_full((b, 1), PAD).long()], dim=1)
    # The bonus position is "trusted" exactly when a request has drafts, so that
    # tau_m = n + 1 (Case I with tau_a = n) means: every draft trusted.
    bonus = torch.where(n >= 1, float("inf"), float("-inf")).to(draft_margin.dtype)
    margin = torch.cat([draft_margin, bonus.unsqueeze(1)], dim=1)
    margin = margin.scatter(1, n.unsqueeze(1), bonus.unsqueeze(1))  # bonus sits at column n
    top1 = top1.scatter(1, n.unsqueeze(1), torch.full_like(n, PAD).unsqueeze(1))
    d = route(draft_tokens, n, top1, margin, margin_threshold, force_target)
    pos = torch.arange(k + 1, device=dev)
    keep = d.proxy_completes.unsqueeze(1) & (pos.unsqueeze(0) < n.unsqueeze(1))
    return RoutingDecision(
        tau_a=d.tau_a,
        tau_m=torch.minimum(d.tau_m, n),
        proxy_completes=d.proxy_completes,
        emitted=torch.where(keep, top1, PAD),
        num_emitted=torch.where(d.proxy_completes, n, 0),
        trusted_len=d.trusted_len,
        target_drafts=d.target_drafts,
        num_target_drafts=d.num_target_drafts,
    )
