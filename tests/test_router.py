"""The vectorised router against a per-request reference of DESIGN.md's rules."""

from __future__ import annotations

import random

import pytest
import torch

from trispec_vllm.policy.router import PAD, route


def reference(drafts, top1, margins, lam, forced=False, whole=False):
    """One request, written straight from the paper's definitions (`whole`: a sampled
    request, which completes without the target only when every position is trusted)."""
    n = len(drafts)
    tau_a = 0
    while tau_a < n and drafts[tau_a] == top1[tau_a]:
        tau_a += 1
    tau_m = 0
    while tau_m < n + 1 and margins[tau_m] >= lam:
        tau_m += 1
    if tau_a < tau_m and not forced and (not whole or tau_m == n + 1):
        return dict(tau_a=tau_a, tau_m=tau_m, case=1, emitted=drafts[:tau_a] + [top1[tau_a]])
    trusted = min(tau_a, tau_m)
    return dict(tau_a=tau_a, tau_m=tau_m, case=2, trusted=trusted, rest=drafts[trusted:])


def run_batch(cases, lam, k, forced=None, whole=None):
    b = len(cases)
    drafts = torch.full((b, k), 7, dtype=torch.long)  # junk past num_drafts must be ignored
    top1 = torch.zeros((b, k + 1), dtype=torch.long)
    marg = torch.zeros((b, k + 1))
    nd = torch.tensor([len(c[0]) for c in cases])
    for i, (d, t, m) in enumerate(cases):
        drafts[i, : len(d)] = torch.tensor(d, dtype=torch.long)
        top1[i, : len(t)] = torch.tensor(t)
        marg[i, : len(m)] = torch.tensor(m)
        marg[i, len(m) :] = 1.0  # junk: positions past the bonus are never looked at
        top1[i, len(t) :] = 7
    f = None if forced is None else torch.tensor(forced)
    w = None if whole is None else torch.tensor(whole)
    return route(drafts, nd, top1, marg, lam, force_target=f, whole_step=w)


def check(dec, cases, lam, forced=None, whole=None):
    for i, (d, t, m) in enumerate(cases):
        ref = reference(d, t, m, lam, forced[i] if forced else False, whole[i] if whole else False)
        assert dec.tau_a[i] == ref["tau_a"]
        assert dec.tau_m[i] == ref["tau_m"]
        if ref["case"] == 1:
            assert bool(dec.proxy_completes[i])
            ne = int(dec.num_emitted[i])
            assert dec.emitted[i, :ne].tolist() == ref["emitted"]
            assert (dec.emitted[i, ne:] == PAD).all()
            assert dec.num_target_drafts[i] == 0
        else:
            assert not bool(dec.proxy_completes[i])
            assert dec.num_emitted[i] == 0 and (dec.emitted[i] == PAD).all()
            assert dec.trusted_len[i] == ref["trusted"]
            nt = int(dec.num_target_drafts[i])
            assert dec.target_drafts[i, :nt].tolist() == ref["rest"]
            assert (dec.target_drafts[i, nt:] == PAD).all()


def random_case(rng: random.Random, k: int):
    n = rng.randint(0, k)
    vocab = rng.choice([2, 3, 50])  # small vocabularies make long acceptances likely
    d = [rng.randrange(vocab) for _ in range(n)]
    t = [x if rng.random() < 0.7 else rng.randrange(vocab) for x in d] + [rng.randrange(vocab)]
    m = [rng.choice([0.0, 0.3, 0.5, 0.5, 0.7, 1.0, rng.random()]) for _ in range(n + 1)]
    return d, t, m


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 0.9, 1.0, 1.5])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_matches_reference_on_random_batches(lam, k):
    rng = random.Random(f"{lam}-{k}")
    for _ in range(20):
        cases = [random_case(rng, k) for _ in range(rng.randint(1, 40))]
        forced = [rng.random() < 0.2 for _ in cases]
        check(run_batch(cases, lam, k), cases, lam)
        check(run_batch(cases, lam, k, forced), cases, lam, forced)
        whole = [rng.random() < 0.5 for _ in cases]
        check(run_batch(cases, lam, k, forced, whole), cases, lam, forced, whole)


def test_sampled_requests_complete_only_when_the_whole_step_is_trusted():
    """vLLM's sampler may accept a draft the proxy's argmax rejects and go on: a
    sampled request must not reach an untrusted proxy row."""
    cases = [([1, 2], [1, 5, 9], [0.9, 0.9, 0.1]), ([1, 2], [1, 5, 9], [0.9, 0.9, 0.9])]
    greedy = run_batch(cases, 0.5, 2)
    assert greedy.proxy_completes.tolist() == [True, True]  # Case I at the rejection
    sampled = run_batch(cases, 0.5, 2, whole=[True, True])
    assert sampled.proxy_completes.tolist() == [False, True]
    assert sampled.trusted_len.tolist()[0] == 1  # the trusted prefix is still kept


def test_no_drafts_is_decided_on_the_bonus_position():
    cases = [([], [5], [0.9]), ([], [5], [0.1])]
    dec = run_batch(cases, 0.5, 3)
    assert dec.proxy_completes.tolist() == [True, False]
    assert dec.emitted[0, :1].tolist() == [5] and dec.num_emitted.tolist() == [1, 0]
    assert dec.num_target_drafts.tolist() == [0, 0]


def test_all_drafts_accepted_emits_the_bonus_token():
    cases = [([1, 2, 3], [1, 2, 3, 9], [0.9, 0.9, 0.9, 0.9])]
    dec = run_batch(cases, 0.5, 3)
    assert bool(dec.proxy_completes[0])
    assert dec.emitted[0].tolist() == [1, 2, 3, 9]
    # An untrusted bonus position sends the request to the target with every draft trusted.
    cases = [([1, 2, 3], [1, 2, 3, 9], [0.9, 0.9, 0.9, 0.2])]
    dec = run_batch(cases, 0.5, 3)
    assert not bool(dec.proxy_completes[0])
    assert dec.trusted_len.tolist() == [3] and dec.num_target_drafts.tolist() == [0]


def test_lambda_above_one_never_trusts():
    rng = random.Random(1)
    cases = [random_case(rng, 4) for _ in range(200)]
    for c in cases:
        c[2][:] = [1.0] * len(c[2])  # even certain positions are not trusted
    dec = run_batch(cases, 1.0001, 4)
    assert not dec.proxy_completes.any()
    assert (dec.trusted_len == 0).all() and (dec.tau_m == 0).all()
    assert dec.num_target_drafts.tolist() == [len(c[0]) for c in cases]


@pytest.mark.parametrize("lam", [0.0, -1.0])
def test_lambda_at_most_zero_always_trusts(lam):
    rng = random.Random(2)
    cases = [random_case(rng, 4) for _ in range(200)]
    dec = run_batch(cases, lam, 4)
    assert dec.proxy_completes.all()
    assert dec.num_emitted.tolist() == [int(a) + 1 for a in dec.tau_a]


def test_forced_request_never_accepts_a_rejected_draft():
    # Case I naturally (tau_a=1 < tau_m=3), but forced: only d_1 may be kept.
    cases = [([1, 2, 3], [1, 5, 3, 4], [0.9, 0.9, 0.9, 0.1])]
    dec = run_batch(cases, 0.5, 3, forced=[True])
    assert not bool(dec.proxy_completes[0])
    assert dec.trusted_len.tolist() == [1]
    assert dec.target_drafts[0, :2].tolist() == [2, 3]


def test_per_request_lambda():
    cases = [([1], [1, 2], [0.6, 0.6])] * 2
    d = torch.tensor([[1], [1]])
    dec = route(
        d,
        torch.tensor([1, 1]),
        torch.tensor([[1, 2]] * 2),
        torch.tensor([[0.6, 0.6]] * 2),
        torch.tensor([0.5, 2.0]),
    )
    assert dec.proxy_completes.tolist() == [True, False]
    check(run_batch(cases[:1], 0.5, 1), cases[:1], 0.5)


def test_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\[B, K\+1\]"):
        route(
            torch.zeros(2, 3, dtype=torch.long),
            torch.zeros(2),
            torch.zeros(2, 3),
            torch.zeros(2, 3),
            0.5,
        )


def test_empty_batch_and_zero_k():
    dec = route(
        torch.zeros(0, 3, dtype=torch.long),
        torch.zeros(0),
        torch.zeros(0, 4),
        torch.zeros(0, 4),
        0.5,
    )
    assert dec.tau_a.shape == (0,)
    dec = route(
        torch.zeros(2, 0, dtype=torch.long),
        torch.zeros(2),
        torch.tensor([[3], [4]]),
        torch.tensor([[0.9], [0.1]]),
        0.5,
    )
    assert dec.proxy_completes.tolist() == [True, False]
    assert dec.emitted.tolist() == [[3], [PAD]]


def test_own_drafts_complete_only_when_every_draft_is_trusted():
    from trispec_vllm.policy.router import route_own_drafts

    drafts = torch.tensor([[5, 6, 7], [5, 6, 7], [5, 6, 7], [0, 0, 0], [5, 6, 0]])
    n = torch.tensor([3, 3, 3, 0, 2])
    inf = float("inf")
    margin = torch.tensor(
        [
            [0.9, 0.8, 0.7],  # all trusted: completes with d_1..d_3, no bonus
            [0.9, 0.2, 0.7],  # second draft unsure: d_1 trusted, target verifies the rest
            [0.9, 0.8, -inf],  # unknown third draft: never trusted
            [0.9, 0.9, 0.9],  # no drafts: always the target
            [0.6, 0.6, 0.0],  # two drafts, both trusted (the third slot is not a draft)
        ]
    )
    d = route_own_drafts(drafts, n, margin, 0.5)
    assert d.proxy_completes.tolist() == [True, False, False, False, True]
    assert d.num_emitted.tolist() == [3, 0, 0, 0, 2]
    assert d.emitted.tolist()[0] == [5, 6, 7, PAD]
    assert d.emitted.tolist()[4] == [5, 6, PAD, PAD]
    assert d.trusted_len.tolist() == [0, 1, 2, 0, 0]
    assert d.num_target_drafts.tolist() == [0, 2, 1, 0, 0]
    assert d.target_drafts.tolist()[1] == [6, 7, PAD]


def test_own_drafts_lossless_and_forced():
    from trispec_vllm.policy.router import route_own_drafts

    drafts = torch.tensor([[5, 6, 7]])
    n = torch.tensor([3])
    margin = torch.tensor([[1.0, 1.0, 1.0]])
    lossless = route_own_drafts(drafts, n, margin, 1.5)
    assert not lossless.proxy_completes.any() and lossless.trusted_len.tolist() == [0]
    forced = route_own_drafts(drafts, n, margin, 0.5, torch.tensor([True]))
    assert not forced.proxy_completes.any()
    assert forced.trusted_len.tolist() == [3] and forced.num_target_drafts.tolist() == [0]
