"""Adaptive lambda's controller (no vLLM)."""

from __future__ import annotations

import numpy as np
import pytest

from trispec_vllm.policy.adaptive import AdaptiveLambda


def simulate(ctrl: AdaptiveLambda, req: str, wrong_prob_at, steps: int, seed: int = 0):
    """Positions with uniform margins; the proxy is wrong with probability
    wrong_prob_at(margin). Returns the last lambda."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        m = rng.uniform(0, 1, size=4)
        agree = rng.uniform(size=4) >= wrong_prob_at(m)
        ctrl.observe(req, m, agree)
    return float(ctrl.lambdas([req])[0])


def test_lambda_settles_where_the_trusted_error_rate_meets_the_goal():
    # Wrong with probability 0.5 * (1 - margin), margins uniform: the share of
    # positions with margin >= L that are wrong is the integral of 0.5 (1 - m) over
    # [L, 1] = 0.25 (1 - L)^2, so a 5% goal settles at L = 1 - sqrt(0.2) = 0.553.
    ctrl = AdaptiveLambda(initial=0.9, target_disagreement=0.05, rate=0.01, lo=0.0, hi=1.0)
    lam = simulate(ctrl, "a", lambda m: 0.5 * (1 - m), steps=4000)
    assert lam == pytest.approx(1 - 0.2**0.5, abs=0.06)
    assert ctrl.observed_disagreement("a") == pytest.approx(0.05, abs=0.03)


def test_requests_adapt_separately_and_stay_in_bounds():
    ctrl = AdaptiveLambda(initial=0.5, target_disagreement=0.05, rate=0.05, lo=0.1, hi=0.9)
    good = simulate(ctrl, "good", lambda m: np.zeros_like(m), steps=300)
    bad = simulate(ctrl, "bad", lambda m: np.ones_like(m), steps=300)
    assert good == pytest.approx(0.1) and bad == pytest.approx(0.9, abs=0.01)
    assert ctrl.lambdas(["good", "bad", "new"]).tolist() == pytest.approx([0.1, 0.9, 0.5], abs=0.01)


def test_a_request_below_lambda_is_probed_again():
    ctrl = AdaptiveLambda(initial=0.9, target_disagreement=0.1, rate=0.05, lo=0.0, hi=1.0)
    ctrl.observe("r", np.full(20, 0.5), np.ones(20, bool))  # all below lambda
    assert ctrl.lambdas(["r"])[0] == pytest.approx(0.8)
    assert ctrl.observed_disagreement("r") == 0.0
    assert ctrl.observed_disagreement("unseen") is None


def test_forget_drops_finished_requests_but_keeps_totals():
    ctrl = AdaptiveLambda(initial=0.5)
    ctrl.observe("a", np.array([0.9]), np.array([False]))
    ctrl.forget(["b"])
    assert ctrl.snapshot() == {} and ctrl.total_failures == 1 and ctrl.total_trials == 1


def test_initial_lambda_outside_the_bounds_is_refused():
    with pytest.raises(ValueError, match="outside"):
        AdaptiveLambda(initial=1.5, lo=0.0, hi=1.0)


def test_learned_start_carries_the_threshold_to_new_requests():
    # Same setting as the settling test: the pooled trials of earlier requests move
    # the start, so a request arriving later begins near 0.553 instead of 0.9.
    ctrl = AdaptiveLambda(
        initial=0.9, target_disagreement=0.05, rate=0.01, lo=0.0, hi=1.0, learn_start=True
    )
    for i in range(8):
        simulate(ctrl, f"r{i}", lambda m: 0.5 * (1 - m), steps=500, seed=i)
    assert ctrl.start == pytest.approx(1 - 0.2**0.5, abs=0.08)
    assert ctrl.lambdas(["late"])[0] == pytest.approx(ctrl.start)
    fixed = AdaptiveLambda(initial=0.9, target_disagreement=0.05, rate=0.01, lo=0.0, hi=1.0)
    simulate(fixed, "r0", lambda m: 0.5 * (1 - m), steps=500)
    assert fixed.lambdas(["late"])[0] == pytest.approx(0.9)


def test_a_request_keeps_the_start_it_was_first_routed_with():
    ctrl = AdaptiveLambda(initial=0.5, rate=0.05, lo=0.0, hi=1.0, learn_start=True)
    assert ctrl.lambdas(["a"])[0] == pytest.approx(0.5)
    ctrl.observe("b", np.full(10, 0.9), np.zeros(10, bool))  # b fails: the start rises
    assert ctrl.start > 0.5
    assert ctrl.lambdas(["a"])[0] == pytest.approx(0.5)
