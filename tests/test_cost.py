"""The cost-aware step's choice (pure logic, no vLLM)."""

from __future__ import annotations

import pytest

from trispec_vllm.policy.cost import CostModel, size_class, step_kinds


def test_size_classes_are_powers_of_two():
    assert [size_class(n) for n in (1, 2, 3, 4, 5, 8, 9, 33)] == [1, 2, 4, 4, 8, 8, 16, 64]


def test_kinds_per_mode():
    assert step_kinds(lossless=False, plain_allowed=True) == ("trispec", "sd", "plain")
    assert step_kinds(lossless=True, plain_allowed=True) == ("sd", "plain")
    assert step_kinds(lossless=False, plain_allowed=False) == ("trispec", "sd")


def run(model: CostModel, speed: dict[str, float], num_reqs: int, steps: int) -> list[str]:
    """Feed back `speed` tokens/s per kind (one second per step) for `steps` decisions."""
    picks = []
    for _ in range(steps):
        kind = model.choose(num_reqs)
        model.observe(kind, num_reqs, 1.0, int(speed[kind]))
        picks.append(kind)
    return picks


def test_tries_every_kind_then_keeps_the_fastest_and_keeps_exploring():
    model = CostModel(warmup=2, explore_every=8)
    picks = run(model, {"trispec": 12, "sd": 9, "plain": 10}, num_reqs=1, steps=70)
    assert picks[:6].count("trispec") == picks[:6].count("sd") == picks[:6].count("plain") == 2
    later = picks[6:]
    assert later.count("trispec") >= len(later) * 7 // 8 - 1
    assert {"sd", "plain"} <= set(later)  # still measured now and then
    assert model.rates()["trispec"][1] == 12.0


def test_batch_size_classes_are_measured_apart():
    model = CostModel(warmup=1, explore_every=1000)
    speeds = {1: {"trispec": 12, "sd": 9, "plain": 10}, 8: {"trispec": 30, "sd": 39, "plain": 49}}
    for _ in range(20):
        for b, speed in speeds.items():
            kind = model.choose(b)
            model.observe(kind, b, 1.0, speed[kind])
    assert model.choose(1) == "trispec"
    assert model.choose(8) == "plain"
    assert model.choose(6) == "plain"  # same class as 8


def test_a_changed_workload_moves_the_choice():
    model = CostModel(warmup=1, explore_every=4, weight=0.5)
    run(model, {"trispec": 12, "sd": 9, "plain": 10}, 1, 20)
    picks = run(model, {"trispec": 5, "sd": 9, "plain": 10}, 1, 40)
    assert picks[-8:].count("plain") >= 6


def test_allowed_narrows_the_choice_and_prefill_is_not_a_sample():
    model = CostModel(warmup=1)
    assert model.choose(4, allowed=("trispec", "sd")) in ("trispec", "sd")
    model.observe("trispec", 4, 0.0, 10)  # a zero-time step is ignored
    assert not model.stats
    with pytest.raises(ValueError):
        model.choose(4, allowed=())
