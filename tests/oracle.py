"""A per-request reference of TriSpec's rules on Hugging Face models (test oracle).

Plain loops, no batching, no KV cache: the drafter (a draft model, greedy)
proposes k tokens, the proxy scores them, the paper's rule decides, and the
target verifies what the proxy does not complete. Not product code.
"""

from __future__ import annotations

import torch


def _top(model, ids: list[int], n_last: int):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -n_last:].float()
    probs = logits.softmax(-1)
    top = probs.topk(2, dim=-1)
    return logits.argmax(-1).tolist(), (top.values[:, 0] - top.values[:, 1]).tolist()


def trispec_generate(
    target, proxy, drafter, prompt_ids, max_tokens, k, lam, max_skips, own_drafts=False
):
    """`own_drafts`: the proxy is the drafter (the rule of `route_own_drafts`): the
    step completes with d_1..d_k when every draft's margin is trusted."""
    # The prompt's pass (vLLM's prefill step) always runs the target: its greedy
    # token is the first output, and drafting starts from the next step.
    first, _ = _top(target, list(prompt_ids), 1)
    tokens = list(prompt_ids) + first
    out: list[int] = list(first)
    skips = 0
    while len(out) < max_tokens:
        drafts: list[int] = []
        for _ in range(k):
            nxt, _ = _top(drafter, tokens + drafts, 1)
            drafts.append(nxt[0])
        t, m = _top(proxy, tokens + drafts, k + 1)
        if own_drafts:
            tau_m = 0
            while tau_m < k and m[tau_m] >= lam:
                tau_m += 1
            if tau_m == k and skips < max_skips:
                step, skips = list(drafts), skips + 1
            else:
                step, skips = _verify(target, tokens, drafts, tau_m, k), 0
            tokens += step
            out += step
            continue
        tau_a = 0
        while tau_a < k and drafts[tau_a] == t[tau_a]:
            tau_a += 1
        tau_m = 0
        while tau_m < k + 1 and m[tau_m] >= lam:
            tau_m += 1
        if tau_a < tau_m and skips < max_skips:
            step = drafts[:tau_a] + [t[tau_a]]
            skips += 1
        else:
            step, skips = _verify(target, tokens, drafts, min(tau_a, tau_m), k), 0
        tokens += step
        out += step
    return out[:max_tokens]


def _verify(target, tokens, drafts, trusted, k):
    """Trusted prefix kept, then the target's greedy verification of the rest."""
    tt, _ = _top(target, tokens + drafts, k + 1)
    step = drafts[:trusted]
    i = trusted
    while i < k and drafts[i] == tt[i]:
        step.append(drafts[i])
        i += 1
    step.append(tt[i])
    return step
