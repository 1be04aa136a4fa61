"""The cost-aware step's choice (pure logic, no vLLM)."""

from __future__ import annotations

import json

import pytest

from trispec_vllm.policy.cost import (
    CostModel,
    batch_horizon,
    drafts_needed,
    kind_with_prompts,
    kinds_for,
    size_class,
    step_kinds,
    waiting_for_slots,
)


def test_size_classes_are_powers_of_two():
    assert [size_class(n) for n in (1, 2, 3, 4, 5, 8, 9, 33)] == [1, 2, 4, 4, 8, 8, 16, 64]


def test_kinds_per_mode():
    assert step_kinds(lossless=False, plain_allowed=True) == ("trispec", "sd", "plain")
    assert step_kinds(lossless=True, plain_allowed=True) == ("sd", "plain")
    assert step_kinds(lossless=False, plain_allowed=False) == ("trispec", "sd")
    assert step_kinds(False, True, proxy_drafts=True) == ("trispec", "sd", "draft", "plain")
    assert step_kinds(True, True, proxy_drafts=True) == ("sd", "draft", "plain")


def run(model: CostModel, speed: dict[str, float], num_reqs: int, steps: int) -> list[str]:
    """Feed back `speed` tokens/s per kind (one second per step) for `steps` decisions."""
    picks = []
    for _ in range(steps):
        kind = model.choose(num_reqs)
        model.observe(kind, num_reqs, 1.0, int(speed[kind]))
        picks.append(kind)
    return picks


def test_tries_every_kind_then_keeps_the_fastest_and_keeps_exploring():
    model = CostModel(warmup=2, explore_every=8, run_length=3)
    picks = run(model, {"trispec": 12, "sd": 9, "plain": 10}, num_reqs=1, steps=90)
    # Warm-up: a run of each kind, plain first; its first step (a switch) is not timed.
    assert picks[:9] == ["plain"] * 3 + ["trispec"] * 3 + ["sd"] * 3
    later = picks[9:]
    assert later.count("trispec") >= len(later) * 2 // 3
    assert {"sd", "plain"} <= set(later)  # still measured now and then, in runs
    assert model.rates()["trispec"][1] == 12.0
    assert all(st.samples >= 2 for st in model.stats.values())


def test_the_step_after_a_switch_is_not_timed():
    """It pays the previous kind's catch-up: a slow first step must not count."""
    model = CostModel(warmup=1)
    model.observe("sd", 1, 10.0, 1)  # first step of its kind in the class: a switch
    model.observe("sd", 1, 1.0, 9)
    model.observe("trispec", 1, 10.0, 1)
    model.observe("trispec", 1, 1.0, 12)
    assert model.rates() == {"sd": {1: 9.0}, "trispec": {1: 12.0}}


def test_batch_size_classes_are_measured_apart():
    model = CostModel(warmup=1, explore_every=1000)
    speeds = {1: {"trispec": 12, "sd": 9, "plain": 10}, 8: {"trispec": 30, "sd": 39, "plain": 49}}
    for _ in range(40):
        for b, speed in speeds.items():
            kind = model.choose(b)
            model.observe(kind, b, 1.0, speed[kind])
    assert model.choose(1) == "trispec"
    assert model.choose(8) == "plain"
    assert model.choose(6) == "plain"  # same class as 8


def test_a_changed_workload_moves_the_choice():
    model = CostModel(warmup=1, explore_every=4, weight=0.5, run_length=2)
    run(model, {"trispec": 12, "sd": 9, "plain": 10}, 1, 30)
    picks = run(model, {"trispec": 5, "sd": 9, "plain": 10}, 1, 60)
    assert picks[-10:].count("plain") >= 5
    assert model.rates()["trispec"][1] < 9 < model.rates()["plain"][1]


def test_allowed_narrows_the_choice_and_prefill_is_not_a_sample():
    model = CostModel(warmup=1)
    assert model.choose(4, allowed=("trispec", "sd")) in ("trispec", "sd")
    model.observe("trispec", 4, 0.0, 10)  # a zero-time step is ignored
    assert not model.stats
    with pytest.raises(ValueError):
        model.choose(4, allowed=())


def test_plain_wins_ties_and_gains_inside_the_margin():
    """Plain decoding is exact and costs no quality: a speculative kind must beat it
    by more than `plain_margin` to be chosen."""
    near = run(
        CostModel(warmup=1, explore_every=1000), {"trispec": 103, "sd": 90, "plain": 100}, 1, 40
    )
    assert near[-20:] == ["plain"] * 20
    far = run(
        CostModel(warmup=1, explore_every=1000), {"trispec": 110, "sd": 90, "plain": 100}, 1, 40
    )
    assert far[-20:] == ["plain"] * 20  # inside plain_margin and lossy_margin together
    farther = run(
        CostModel(warmup=1, explore_every=1000), {"trispec": 120, "sd": 90, "plain": 100}, 1, 40
    )
    assert farther[-20:] == ["trispec"] * 20


def test_sd_wins_a_lossy_lead_inside_the_lossy_margin():
    """The TriSpec step costs quality (the target checks not all its tokens): it must
    beat exact SD by lossy_margin (10%) to be chosen."""
    near = run(
        CostModel(warmup=1, explore_every=1000), {"trispec": 108, "sd": 100, "plain": 50}, 1, 40
    )
    assert near[-20:] == ["sd"] * 20
    far = run(
        CostModel(warmup=1, explore_every=1000), {"trispec": 115, "sd": 100, "plain": 50}, 1, 40
    )
    assert far[-20:] == ["trispec"] * 20


def test_without_drafts_there_is_no_sd_step_and_no_trispec_step_beside_plain():
    assert kinds_for(("trispec", "sd", "plain"), drafted=False) == ("plain",)
    assert kinds_for(("trispec", "sd"), drafted=False) == ("trispec",)  # no plain option
    assert kinds_for(("sd", "plain"), drafted=False) == ("plain",)
    assert kinds_for(("trispec", "sd"), drafted=True) == ("trispec", "sd")
    assert kinds_for(("sd",), drafted=False) == ("sd",)  # nothing else to run


def test_a_draft_step_needs_a_sampled_token_not_a_drafters_draft():
    """Without any draft an SD step would be plain decoding, while the proxy can still
    draft for every request that sampled a token; with prompt chunks only, it cannot."""
    kinds = ("trispec", "sd", "draft", "plain")
    assert kinds_for(kinds, drafted=True) == kinds
    assert kinds_for(kinds, drafted=False) == ("draft", "plain")
    assert kinds_for(kinds, drafted=False, sampled=False) == ("plain",)


def test_the_draft_kind_is_held_back_by_plain_decodings_lead_below_not_by_sds():
    """SD is timed only on steps where the ngram drafter found drafts (its best), the
    draft kind on any step, so SD's lead at a smaller batch says nothing of the draft
    kind at a larger one; plain decoding's lead does."""
    kinds = ("sd", "draft", "plain")
    sd_led = CostModel(kinds=kinds, warmup=2, run_length=3, explore_every=1000)
    run(sd_led, {"sd": 30, "draft": 12, "plain": 10}, num_reqs=1, steps=30)
    picks = run(sd_led, {"sd": 30, "draft": 40, "plain": 20}, num_reqs=8, steps=30)
    assert "draft" in picks[:9] and picks[-5:] == ["draft"] * 5
    plain_led = CostModel(kinds=kinds, warmup=2, run_length=3, explore_every=1000)
    run(plain_led, {"sd": 11, "draft": 9.5, "plain": 10}, num_reqs=1, steps=30)
    assert "draft" not in run(plain_led, {"sd": 30, "draft": 40, "plain": 20}, 8, 30)


def test_the_proxy_catch_up_that_starts_a_draft_run_is_booked_on_it():
    """A draft run's first step pays the proxy's catch-up (its first drafting pass over
    what other kinds emitted) and is not timed; its excess over the run's next step is
    booked on the draft kind when the run ends, so runs that each start with a long
    catch-up lose to plain decoding."""
    kinds = ("draft", "sd", "plain")  # warm-up: plain, draft, then SD (the run's end)

    def picks_with_entry(enter: float) -> list[str]:
        model = CostModel(kinds=kinds, warmup=3, run_length=4, explore_every=1000)
        picks = []
        for _ in range(80):
            kind = model.choose(1)
            secs = 1.0 + (enter if kind == "draft" and picks and picks[-1] != "draft" else 0.0)
            model.observe(kind, 1, secs, {"draft": 12, "sd": 9, "plain": 10}[kind])
            picks.append(kind)
        return picks

    assert picks_with_entry(0.1)[-10:] == ["draft"] * 10
    assert picks_with_entry(3.0)[-10:] == ["plain"] * 10


def test_a_clearly_slower_kind_is_dropped_after_one_measured_step():
    """Each step of a slow kind costs: its warm-up run ends once it measures below
    half another kind's rate (the switch step before it is not a measurement)."""
    model = CostModel(warmup=3, run_length=4, explore_every=1000)
    picks = run(model, {"trispec": 3, "sd": 9, "plain": 10}, 1, 60)
    assert picks[:10] == ["plain"] * 4 + ["trispec"] * 2 + ["sd"] * 4
    assert picks[10:] == ["plain"] * 50


def test_exploration_backs_off_while_it_confirms_the_choice():
    model = CostModel(warmup=1, run_length=2, explore_every=8, max_backoff=8)
    picks = run(model, {"trispec": 12, "sd": 9, "plain": 10}, 1, 600)
    later = picks[6:]
    starts = [
        i for i in range(1, len(later)) if later[i] != "trispec" and later[i - 1] == "trispec"
    ]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # 8, 16, 32, then 64 decisions apart (max_backoff * explore_every), plus the runs.
    assert gaps == sorted(gaps) and gaps[0] <= 2 * 8 + 2 and gaps[-1] >= 8 * 8, gaps
    assert max(gaps) <= 8 * 8 + 2, gaps
    assert {"sd", "plain"} <= set(later)


def test_a_kind_that_lost_at_a_smaller_batch_is_not_warmed_up_at_a_larger_one():
    """Speculation pays less as the batch grows: what lost to plain decoding at batch 8
    is not warmed up at batch 32 (each TriSpec warm-up there costs a proxy catch-up over
    every request), only re-tried at the longest exploration interval."""
    model = CostModel(warmup=2, run_length=3, explore_every=8, max_backoff=4)
    run(model, {"trispec": 8, "sd": 9, "plain": 10}, num_reqs=8, steps=40)
    picks = run(model, {"trispec": 30, "sd": 40, "plain": 50}, num_reqs=32, steps=31)
    assert picks[:31] == ["plain"] * 31
    later = run(model, {"trispec": 30, "sd": 40, "plain": 50}, num_reqs=32, steps=40)
    assert {"trispec", "sd"} & set(later)  # re-tried, at 4 x 8 decisions
    # Where plain decoding cannot run (the target has positions to catch up), of two
    # kinds that both lost below, the one doing less work goes first.
    fresh = CostModel(warmup=2, run_length=3, explore_every=8)
    run(fresh, {"trispec": 8, "sd": 9, "plain": 10}, num_reqs=8, steps=40)
    assert fresh.choose(32, allowed=("trispec", "sd")) == "sd"


def test_a_kind_that_won_at_a_smaller_batch_is_still_warmed_up():
    model = CostModel(warmup=2, run_length=3, explore_every=1000)
    run(model, {"trispec": 12, "sd": 11, "plain": 10}, num_reqs=1, steps=30)
    picks = run(model, {"trispec": 40, "sd": 30, "plain": 50}, num_reqs=4, steps=30)
    assert picks[:9] == ["plain"] * 3 + ["trispec"] * 3 + ["sd"] * 3
    assert picks[-10:] == ["plain"] * 10


def test_from_batch_8_trispec_warms_up_only_where_sd_beat_plain_decoding():
    """There the target runs in nearly every TriSpec step, so it costs SD plus a proxy
    pass (and a first run pays a proxy catch-up over every request): a fresh engine
    meeting a large batch first warms up plain, then SD, and TriSpec only if SD won;
    it is still re-tried at the longest exploration interval."""
    lost = CostModel(warmup=2, run_length=3, explore_every=8, max_backoff=4)
    picks = run(lost, {"trispec": 30, "sd": 40, "plain": 50}, num_reqs=64, steps=31)
    assert picks[:6] == ["plain"] * 3 + ["sd"] * 3
    assert "trispec" not in picks
    later = run(lost, {"trispec": 30, "sd": 40, "plain": 50}, num_reqs=64, steps=40)
    assert "trispec" in later  # at 4 x 8 decisions
    won = CostModel(warmup=2, run_length=3, explore_every=1000)
    picks = run(won, {"trispec": 70, "sd": 60, "plain": 50}, num_reqs=64, steps=30)
    assert picks[:9] == ["plain"] * 3 + ["sd"] * 3 + ["trispec"] * 3
    assert picks[-10:] == ["trispec"] * 10
    # Below batch 8 the proxy alone completes many steps: TriSpec is tried regardless.
    small = CostModel(warmup=2, run_length=3, explore_every=1000)
    picks = run(small, {"trispec": 12, "sd": 9, "plain": 10}, num_reqs=2, steps=30)
    assert picks[:9] == ["plain"] * 3 + ["trispec"] * 3 + ["sd"] * 3
    assert picks[-10:] == ["trispec"] * 10
    # Without a plain kind (a drafter with its own KV cache) SD still goes first.
    no_plain = CostModel(warmup=2, run_length=3, explore_every=1000, kinds=("trispec", "sd"))
    picks = run(no_plain, {"trispec": 30, "sd": 40}, num_reqs=16, steps=12)
    assert picks[:6] == ["sd"] * 3 + ["trispec"] * 3


def test_a_changed_choice_is_reported_with_the_measured_rates():
    events = []
    model = CostModel(warmup=1, explore_every=1000, on_change=lambda *e: events.append(e))
    run(model, {"trispec": 12, "sd": 9, "plain": 10}, num_reqs=1, steps=20)
    assert events == [(1, "trispec", {"trispec": 12.0, "sd": 9.0, "plain": 10.0}, "one request")]


def test_the_choice_moves_only_for_a_gain_beyond_the_switch_margin():
    """A switch pays the catch-up the previous kind deferred, which no timing sees:
    kinds within the noise of each other must not trade places."""
    model = CostModel(
        warmup=1, run_length=2, explore_every=4, weight=1.0, max_backoff=1, lossy_margin=0.0
    )
    run(model, {"trispec": 100, "sd": 98, "plain": 50}, 1, 20)
    near = run(model, {"trispec": 98, "sd": 100, "plain": 50}, 1, 40)
    assert model.best[1] == "trispec" and near.count("trispec") > near.count("sd")
    far = run(model, {"trispec": 90, "sd": 100, "plain": 50}, 1, 40)
    assert model.best[1] == "sd" and far.count("sd") > far.count("trispec")


def deferring_run(
    model: CostModel, speed: dict[str, float], defer: float, steps: int, enter: float = 0.0
):
    """Like `run`, but every TriSpec step leaves `defer` seconds of target catch-up to
    the first step after its run (the switch step), as the proxy-completed tokens do,
    and the first step of a TriSpec run takes `enter` seconds more (the proxy's
    catch-up over the tokens other kinds emitted)."""
    picks, owed = [], 0.0
    for _ in range(steps):
        kind = model.choose(1)
        secs = 1.0
        if kind == "trispec":
            owed += defer
            secs += enter if picks and picks[-1] != "trispec" else 0.0
        else:
            secs, owed = secs + owed, 0.0
        model.observe(kind, 1, secs, int(speed[kind]))
        picks.append(kind)
    return picks


def test_the_catch_up_a_trispec_run_leaves_is_booked_on_it():
    """A short TriSpec run leaves the target's catch-up to the switch step: booked on
    the TriSpec step (spread over its run), it tells a step that only looks fast (it
    defers half a step per step) from one that is fast (it defers little)."""
    speed = {"trispec": 12, "sd": 9, "plain": 10}
    costly = CostModel(warmup=3, run_length=4, explore_every=1000, lossy_margin=0.0)
    picks = deferring_run(costly, speed, defer=0.5, steps=40)
    assert picks[-10:] == ["plain"] * 10
    assert costly.rates()["trispec"][1] < 10
    cheap = CostModel(warmup=3, run_length=4, explore_every=1000, lossy_margin=0.0)
    assert deferring_run(cheap, speed, defer=0.05, steps=40)[-10:] == ["trispec"] * 10


def test_the_proxy_catch_up_that_starts_a_trispec_run_is_booked_on_it():
    """Entering a TriSpec run, the proxy first reads what other kinds emitted since it
    last ran. That first step is not timed (it is a switch), so a TriSpec step that is
    fast once the proxy is caught up, but whose runs each start with a long catch-up,
    loses to plain decoding; one whose catch-up is short does not."""
    speed = {"trispec": 12, "sd": 9, "plain": 10}
    costly = CostModel(warmup=3, run_length=4, explore_every=1000)
    picks = deferring_run(costly, speed, defer=0.0, steps=40, enter=1.2)
    assert picks[-10:] == ["plain"] * 10
    assert costly.rates()["trispec"][1] < 10
    cheap = CostModel(warmup=3, run_length=4, explore_every=1000)
    assert deferring_run(cheap, speed, defer=0.0, steps=40, enter=0.1)[-10:] == ["trispec"] * 10


def test_a_choice_is_reported_once_per_set_of_candidates():
    """Steps without drafts have no SD candidate: alternating between steps with and
    without drafts is not a change of choice, and is not reported as one."""
    events = []
    model = CostModel(warmup=1, explore_every=1000, on_change=lambda *e: events.append(e))
    speed = {"trispec": 5, "sd": 20, "plain": 7}
    for i in range(120):  # streaks of steps with and without drafts
        allowed = kinds_for(model.kinds, drafted=i // 6 % 2 == 0)
        kind = model.choose(1, allowed=allowed)
        model.observe(kind, 1, 1.0, speed[kind])
    assert sorted(e[1] for e in events) == ["plain", "sd"], events


REQS = [f"r{i}" for i in range(8)]


def batch_run(model: CostModel, steps: int, waiting: bool, sd_tokens: list[int]) -> list[str]:
    """Eight requests; an SD step takes 1 s and request i emits sd_tokens[i], a plain
    step takes 0.6 s and emits one token per request."""
    picks = []
    for _ in range(steps):
        kind = model.choose(8, allowed=("sd", "plain"), req_ids=REQS, waiting=waiting)
        per = dict(zip(REQS, sd_tokens if kind == "sd" else [1] * 8, strict=True))
        model.observe(kind, 8, 1.0 if kind == "sd" else 0.6, sum(per.values()), per)
        picks.append(kind)
    return picks


def test_a_draining_batch_is_ranked_by_its_slowest_requests_pace():
    """Half the batch accepts 4 drafts a step, half none: SD's steps emit 24 tokens/s
    against plain decoding's 13.3, but the requests that accept nothing advance at 1
    token/s instead of 1.7, and a batch nothing waits behind is done when they are."""
    uneven = [5, 5, 5, 5, 1, 1, 1, 1]
    busy = CostModel(warmup=2, explore_every=1000, kinds=("sd", "plain"))
    assert batch_run(busy, 30, waiting=True, sd_tokens=uneven)[-10:] == ["sd"] * 10
    idle = CostModel(warmup=2, explore_every=1000, kinds=("sd", "plain"))
    assert batch_run(idle, 30, waiting=False, sd_tokens=uneven)[-10:] == ["plain"] * 10
    # When every request accepts drafts, speculation wins the draining batch too.
    even = CostModel(warmup=2, explore_every=1000, kinds=("sd", "plain"))
    assert batch_run(even, 30, waiting=False, sd_tokens=[3] * 8)[-10:] == ["sd"] * 10


def test_a_requests_pace_starts_at_one_token_a_step_and_is_forgotten_when_it_leaves():
    model = CostModel(warmup=1, explore_every=1000, kinds=("sd", "plain"), prior_steps=4)
    batch_run(model, 6, waiting=False, sd_tokens=[3] * 8)
    sd = model.stats[(8, "sd")]
    # A newcomer is credited with no accepted draft, whatever the class's mean.
    assert sd.tokens / 8 > 2
    assert model._slowest_rate("sd", sd, ["new"]) == pytest.approx(1 / sd.seconds)
    done, steps = model.paces["sd"]["r0"]
    assert model._slowest_rate("sd", sd, ["r0"]) == pytest.approx(
        (done + 4) / (steps + 4) / sd.seconds
    )
    model.choose(8, allowed=("sd", "plain"), req_ids=REQS[:4], waiting=False)
    assert sorted(model.paces["sd"]) == REQS[:4]


def test_newcomers_that_accept_nothing_turn_a_draining_batch_to_plain_decoding_at_once():
    """A batch whose first requests all accepted 3 drafts per SD step is replaced by
    one in which one request accepts nothing: SD's class-wide tokens per request stay
    high, but no newcomer has shown an accepted draft yet, so the new batch is
    decoded plainly from its first step (crediting newcomers with the class's mean
    kept SD on for seven steps here)."""
    model = CostModel(warmup=2, explore_every=1000, kinds=("sd", "plain"))
    assert batch_run(model, 12, waiting=False, sd_tokens=[3] * 8)[-4:] == ["sd"] * 4
    newcomers = [f"n{i}" for i in range(8)]
    picks = []
    for _ in range(6):
        kind = model.choose(8, allowed=("sd", "plain"), req_ids=newcomers, waiting=False)
        per = dict(zip(newcomers, [3] * 7 + [1] if kind == "sd" else [1] * 8, strict=True))
        model.observe(kind, 8, 1.0 if kind == "sd" else 0.6, sum(per.values()), per)
        picks.append(kind)
    assert picks == ["plain"] * 6


def test_batch_one_is_ranked_by_throughput_whatever_waits():
    for waiting in (True, False):
        model = CostModel(warmup=2, explore_every=1000, kinds=("sd", "plain"))
        picks = []
        for _ in range(20):
            kind = model.choose(1, allowed=("sd", "plain"), req_ids=["a"], waiting=waiting)
            model.observe(
                kind,
                1,
                1.0 if kind == "sd" else 0.6,
                2 if kind == "sd" else 1,
                {"a": 2 if kind == "sd" else 1},
            )
            picks.append(kind)
        assert picks[-5:] == ["sd"] * 5


def test_a_step_with_prompt_chunks_runs_no_proxy_pass():
    assert kind_with_prompts("trispec", prompts=True) == "sd"
    assert kind_with_prompts("trispec", prompts=False) == "trispec"
    for kind in ("sd", "plain"):
        assert kind_with_prompts(kind, prompts=True) == kind


def test_trispec_warm_up_follows_the_objective_of_the_decision():
    """At batch 8, half the requests accept 3 drafts per SD step: SD steps out-run plain
    decoding in throughput (20 against 16 tokens/s) while the other half advance at 1
    token/s against 2. With nothing waiting the batch is ranked by its slowest
    request, SD lost, and the TriSpec step is not warmed up; with requests waiting it
    is (SD won by throughput)."""

    def picks(waiting: bool) -> list[str]:
        model = CostModel(warmup=2, run_length=3, explore_every=1000)
        out = []
        for _ in range(30):
            kind = model.choose(8, req_ids=REQS, waiting=waiting)
            per = dict(zip(REQS, [4, 1] * 4 if kind != "plain" else [1] * 8, strict=True))
            model.observe(kind, 8, 1.0 if kind != "plain" else 0.5, sum(per.values()), per)
            out.append(kind)
        return out

    assert "trispec" not in picks(waiting=False)
    assert "trispec" in picks(waiting=True)


def test_the_drafter_is_skipped_only_where_plain_decoding_is_settled():
    """`settled` predicts the next decision without changing state, and the drafter is
    spared exactly when that decision is plain decoding with drafts and without:
    never in warm-up, during a run, when exploration is due, or when SD leads."""
    import copy

    model = CostModel(warmup=2, explore_every=8, run_length=3)
    assert drafts_needed(model, 1)  # nothing measured yet: warm-up
    speed = {"trispec": 5, "sd": 6, "plain": 10}
    spared = 0
    for _ in range(60):
        before = copy.deepcopy(model)
        needed = drafts_needed(model, 1)
        assert model == before  # asking changes nothing
        prediction = model.settled(1, model.kinds)
        kind = model.choose(1)
        if not needed:
            spared += 1
            assert kind == prediction == "plain"
            assert before.choose(1, allowed=kinds_for(before.kinds, False)) == "plain"
        elif prediction is not None:
            assert kind == prediction  # a prediction, when made, is the decision
        if kind != "plain" or model.runs.get(1, ("", 0))[1] > 0:
            # a warm-up or exploration run of another kind: the drafter ran
            assert needed
        model.observe(kind, 1, 1.0, speed[kind])
    assert 30 <= spared < 60  # exploration keeps needing drafts now and then

    sd_leads = CostModel(warmup=2, explore_every=8, run_length=3)
    run(sd_leads, {"trispec": 5, "sd": 20, "plain": 10}, 1, 40)
    assert all(drafts_needed(sd_leads, 1) for _ in range(3))
    # Without a plain candidate (a drafter with its own KV cache) drafts are always due.
    no_plain = CostModel(kinds=("trispec", "sd"), warmup=1)
    run(no_plain, {"trispec": 5, "sd": 20}, 1, 20)
    assert drafts_needed(no_plain, 1)


def timed_run(model: CostModel, secs: dict[str, float], num_reqs: int, steps: int) -> list[str]:
    """Like `run`, with the machine's speed in the step seconds: each step of a kind
    takes `secs[kind]` and emits TOKENS[kind] tokens."""
    picks = []
    for _ in range(steps):
        kind = model.choose(num_reqs)
        model.observe(kind, num_reqs, secs[kind], TOKENS[kind])
        picks.append(kind)
    return picks


TOKENS = {"plain": 8, "sd": 24, "trispec": 24}


def test_a_stale_kind_is_re_measured_before_the_class_switches_to_it():
    """The machine slows down by 20%. Plain decoding, chosen, follows step by step;
    SD's mean step time, last measured before, does not, and SD out-ranks it. The
    class does not switch on that (nor warm the TriSpec step up, which it would where
    SD beat plain decoding): one run of SD re-measures it, its step time re-based on
    its own steps, and plain decoding stays. Where the fresh run confirms SD, the
    class switches. (Without the drift scaling, which alone would keep plain decoding
    here without a run: `test_a_slowdown_only_the_chosen_kind_saw_moves_no_choice`.)"""
    before = {"plain": 0.08, "sd": 24 / 90, "trispec": 2.4}  # 100, 90, 10 tok/s
    slower = {k: v * 1.25 for k, v in before.items()}  # 80, 72, 8 tok/s
    model = CostModel(warmup=2, run_length=3, explore_every=1000, stale_after=20, max_drift=1.0)
    timed_run(model, before, num_reqs=8, steps=40)
    assert model.best[8] == "plain" and (8, "trispec") not in model.stats
    picks = timed_run(model, slower, num_reqs=8, steps=60)
    assert picks.count("sd") == 3 and "trispec" not in picks, picks
    assert picks[-30:] == ["plain"] * 30
    # The stale mean counts as one sample among the run's two timed steps.
    assert model.stats[(8, "sd")].seconds == pytest.approx((before["sd"] + 2 * slower["sd"]) / 3)
    sd_holds = CostModel(warmup=2, run_length=3, explore_every=1000, stale_after=20, max_drift=1.0)
    timed_run(sd_holds, before, num_reqs=8, steps=40)
    picks = timed_run(sd_holds, {**slower, "sd": before["sd"]}, num_reqs=8, steps=60)
    assert picks[-20:] == ["sd"] * 20 and sd_holds.best[8] == "sd"


def slowed_by_half(secs: dict[str, float], chosen: str, steps_before: int) -> dict:
    """At batch 8, `steps_before` steps at `secs`, which settle on `chosen`, then 40 steps
    with every kind 1.5x slower; the picks of those 40, with the drift scaling (key 2.0,
    the default bound) and without it (1.0). No exploration, nothing goes stale."""
    picks = {}
    for drift in (2.0, 1.0):
        model = CostModel(
            warmup=2, run_length=3, explore_every=1000, stale_after=1000, max_drift=drift
        )
        timed_run(model, secs, num_reqs=8, steps=steps_before)
        assert model.best[8] == chosen
        slow = {k: v * 1.5 for k, v in secs.items()}
        picks[drift] = timed_run(model, slow, num_reqs=8, steps=40)
    return picks


def test_a_slowdown_only_the_chosen_kind_saw_moves_no_choice():
    """The machine slows by half while plain decoding is chosen: its mean follows, SD's
    (timed before) stands still and would out-rank it. Scaled by the drift plain
    decoding measured since SD was timed, SD stays behind and no SD step runs; a kind
    timed after the slowdown is scaled by nothing and wins where it is faster."""
    before = {"plain": 0.08, "sd": 24 / 90, "trispec": 2.4}  # 100, 90, 10 tok/s
    slower = {k: v * 1.5 for k, v in before.items()}  # 67, 60, 7 tok/s
    picks = slowed_by_half(before, chosen="plain", steps_before=40)
    assert picks[2.0] == ["plain"] * 40
    # Unscaled, the stale SD mean wins; SD's steps then show the truth, but meanwhile
    # the TriSpec step was warmed up too (where SD beat plain decoding at batch 8).
    assert picks[1.0].count("sd") >= 3 and "trispec" in picks[1.0]
    # Where SD is faster in the slow state, the exploration runs that time it there
    # move its scaled mean over plain decoding's (at the EWMA's pace) and it takes over.
    model = CostModel(
        kinds=("sd", "plain"),
        warmup=2,
        run_length=3,
        explore_every=20,
        stale_after=1000,
        max_backoff=1,
    )
    timed_run(model, before, num_reqs=8, steps=40)
    picks = timed_run(model, {**slower, "sd": 24 / 80}, num_reqs=8, steps=100)
    assert model.best[8] == "sd" and picks[-20:].count("sd") >= 14, picks


def test_the_drift_reference_moves_with_the_choice():
    """After a switch the kind it replaced is scaled by the new choice's drift: SD,
    chosen, then slowed by half, does not hand the class back to plain decoding on a
    plain mean from before the slowdown (80 tok/s against SD's 60 tok/s now)."""
    secs = {"plain": 0.1, "sd": 24 / 90, "trispec": 2.4}  # 80, 90, 10 tok/s
    picks = slowed_by_half(secs, chosen="sd", steps_before=30)
    assert picks[2.0] == ["sd"] * 40
    # Unscaled, plain decoding takes over on its mean from before, until its own
    # steps show the slowdown (the first switch after 2 SD steps, then one more).
    assert picks[1.0].count("plain") >= 3


def test_a_lead_inside_a_kinds_own_scatter_moves_no_choice():
    """At batch 1 a TriSpec step takes a proxy pass alone (0.06 s on a 2-core CPU) or
    a proxy and a target pass (0.2 s): a few fast steps in a row lift its mean above
    plain decoding's (0.14 s) by more than the margins. Discounted by its standard
    error, that lead does not take the class from plain decoding; the same mean from
    steps that do not scatter does, and so does the scattered one taken at its mean."""

    def choice(trispec_secs: list[float], confidence: float) -> str:
        model = CostModel(
            lossy_margin=0.0,
            kinds=("trispec", "plain"),
            warmup=2,
            explore_every=1000,
            confidence=confidence,
        )
        for kind, secs in (("plain", [0.14] * 4), ("trispec", trispec_secs)):
            for sec in secs:  # each kind's first step is a switch, not timed
                model.observe(kind, 1, sec, 1)
        model.best[1] = "plain"
        return model.choose(1)

    bursty = [0.2, 0.2, 0.2, 0.2, 0.06, 0.06, 0.06, 0.06]
    model = CostModel(lossy_margin=0.0)
    for sec in bursty:
        model.observe("trispec", 1, sec, 1)
    st = model.stats[(1, "trispec")]
    assert 1 / st.seconds > 0.14**-1 * 1.05**2 and st.spread(model.weight) > 0.15
    assert choice(bursty, confidence=1.0) == "plain"
    assert choice(bursty, confidence=0.0) == "trispec"
    assert choice([st.seconds] * 8, confidence=1.0) == "trispec"


def test_without_drafts_the_trispec_step_is_no_candidate_however_fast():
    """Where the drafter found nothing, plain decoding (or the draft kind) runs: a
    TriSpec step there would be the proxy generating alone, whatever its means from
    drafted steps, where its proxy completed whole drafts (4 tokens in 0.1 s)."""
    model = CostModel(kinds=("trispec", "sd", "plain"), warmup=2, explore_every=1000)
    for kind, secs, tokens in (("plain", 1 / 7, 1), ("sd", 0.25, 2), ("trispec", 0.1, 4)):
        for _ in range(3):  # the first is a switch, not timed
            model.observe(kind, 1, secs, tokens, drafted=kind != "plain")
    assert model.choose(1) == "trispec"  # 40 tok/s against SD's 8
    for _ in range(20):
        assert model.choose(1, allowed=kinds_for(model.kinds, drafted=False)) == "plain"


def test_a_fresh_run_re_bases_a_kinds_step_time_not_its_tokens():
    """Once a kind's step time went stale, it and the next steps are averaged evenly
    (as one sample among them: one outlier must not replace it) until the EWMA's own
    weight takes over. Tokens per step follow the workload and vary from step to step:
    their mean keeps moving by the EWMA's weight (a single SD step that accepted
    nothing would otherwise erase its kept rate)."""
    model = CostModel(weight=0.2, stale_after=5)
    model.observe("sd", 1, 1.0, 10)  # a switch step: not timed
    for _ in range(10):
        model.observe("sd", 1, 1.0, 10)
    model.decisions[1] = 100  # many decisions later, none of them SD
    sd = model.stats[(1, "sd")]
    model.observe("sd", 1, 2.0, 10)
    assert sd.seconds == 1.5
    model.observe("sd", 1, 4.0, 10)
    assert sd.seconds == pytest.approx(7 / 3)
    for _ in range(20):
        model.observe("sd", 1, 4.0, 10)
    assert sd.seconds == pytest.approx(4.0, abs=0.05)
    model.decisions[1] = 200
    model.observe("sd", 1, 2.0, 5)  # half the tokens it used to emit per step
    assert sd.seconds == pytest.approx(3.0, abs=0.05) and sd.tokens == pytest.approx(9.0)
    plain = CostModel(weight=0.2)  # never stale: the EWMA's weight from the second sample
    plain.observe("plain", 1, 9.0, 1)  # the class's first step: not timed
    for secs in (1.0, 2.0):
        plain.observe("plain", 1, secs, 1)
    assert plain.stats[(1, "plain")].seconds == pytest.approx(1.2)


def test_a_losing_exploration_run_stops_after_its_first_timed_step():
    """At a batch nothing waits behind, SD out-runs plain decoding in throughput while
    its slowest request falls behind: ranked by the slowest request, one timed SD step
    shows it under `abandon_uniform` of plain decoding, and the exploration run stops
    there (after its untimed switch step and that one) instead of paying its other
    steps (at batch 64 on a 2-core CPU an SD step cost twice a plain one)."""
    model = CostModel(warmup=2, run_length=4, explore_every=8, kinds=("sd", "plain"))
    picks = batch_run(model, 80, waiting=False, sd_tokens=[5, 5, 5, 5, 1, 1, 1, 1])
    later = "".join(k[0] for k in picks[20:])
    assert "p" * 8 in later and "ss" in later and "sss" not in later, later
    assert later.count("s") >= 2  # exploration still runs


def test_no_run_starts_in_a_draining_tail_with_too_few_steps_left():
    """A batch draining into a smaller class for its last steps does not warm a kind
    up there (a TriSpec warm-up's first step catches the proxy up over the whole
    context): it runs the class's best measured kind, plain decoding if none is, and
    the drafter need not run for it. A class a batch starts in is measured whatever
    its horizon: the next batch starts there again."""
    model = CostModel(warmup=2, run_length=3, explore_every=4, min_horizon=16)
    eight = [f"r{i}" for i in range(8)]
    model.choose(8, req_ids=eight, waiting=False, horizon=100)
    tail = eight[:3]
    for left in range(15, 0, -1):
        assert model.choose(3, req_ids=tail, waiting=False, horizon=left) == "plain"
        model.observe("plain", 3, 1.0, 3)
    assert 4 not in model.runs and (4, "trispec") not in model.stats
    assert not drafts_needed(model, 3, tail, waiting=False, horizon=15)
    # With time to use what it learns, the tail warms its kinds up as before.
    assert drafts_needed(model, 3, tail, waiting=False, horizon=16)
    # So does a batch that starts in the class, however short its requests.
    fresh = ["a", "b", "c"]
    assert drafts_needed(model, 3, fresh, waiting=False, horizon=5)
    picks = [model.choose(3, req_ids=fresh, waiting=False, horizon=5 - i) for i in range(3)]
    assert picks == ["trispec"] * 3
    # A measured kind that out-runs plain decoding is used in a short tail; no
    # exploration starts there, however overdue.
    model = CostModel(warmup=1, run_length=2, explore_every=2, kinds=("sd", "plain"))
    model.choose(2, req_ids=["x", "y"], waiting=False, horizon=100)
    picks = []
    for _ in range(12):
        picks.append(model.choose(1, req_ids=["x"], waiting=False, horizon=100))
        model.observe(picks[-1], 1, 1.0, 20 if picks[-1] == "sd" else 10)
    assert "plain" in picks[4:]  # explored now and then while the horizon is long
    tail = []
    for left in range(10, 0, -1):
        tail.append(model.choose(1, req_ids=["x"], waiting=False, horizon=left))
        model.observe(tail[-1], 1, 1.0, 20 if tail[-1] == "sd" else 10)
    assert tail == ["sd"] * 10


def test_a_batch_horizon_is_its_longest_requests_tokens_left():
    assert batch_horizon([128, 128], [120, 100], [500, 500]) == 28
    assert batch_horizon([None, 16], [3, 2], [40, 900]) == 40  # no max_tokens: the context
    assert batch_horizon([64], [10], [20]) == 20  # the context ends first
    assert batch_horizon([], [], []) == 0


def test_a_draining_batch_stops_a_losing_warm_up_after_its_first_timed_step():
    """Half the batch accepts nothing: ranked by the slowest request's pace, SD's first
    timed step puts it at 0.6 of plain decoding, and its warm-up ends there (the
    switch step and that one) instead of running on to `warmup` samples; later
    explorations still re-try it. By throughput the same SD steps win, and the
    warm-up runs in full."""
    model = CostModel(warmup=3, run_length=4, explore_every=48)
    picks = "".join(k[0] for k in batch_run(model, 120, False, [5, 5, 5, 5, 1, 1, 1, 1]))
    assert picks.startswith("pppp" + "ss" + "p" * 40), picks
    assert "s" in picks[48:]
    busy = CostModel(warmup=3, run_length=4, explore_every=48)
    picks = "".join(k[0] for k in batch_run(busy, 20, True, [5, 5, 5, 5, 1, 1, 1, 1]))
    assert picks.startswith("pppp" + "ssss"), picks


def bare_batch_run(model: CostModel, steps: int, waiting: bool, bare: set[str], reqs=REQS):
    """`batch_run`, with the drafter consulted as the engine does: only where
    `drafts_needed`, and then the requests in `bare` get no draft. Returns the picks
    and how many steps the drafter ran in."""
    picks, drafter_runs = [], 0
    for _ in range(steps):
        needed = drafts_needed(model, 8, reqs, waiting=waiting)
        drafter_runs += needed
        undrafted = needed and bool(bare & set(reqs))
        prediction = model.settled(8, ("sd", "plain"), reqs, waiting)
        kind = model.choose(
            8, allowed=("sd", "plain"), req_ids=reqs, waiting=waiting, undrafted=undrafted
        )
        if not needed:
            assert kind == prediction == "plain"
        tokens = [1 if r in bare or kind == "plain" else 5 for r in reqs]
        per = dict(zip(reqs, tokens, strict=True))
        model.observe(kind, 8, 1.0 if kind == "sd" else 0.6, sum(per.values()), per)
        picks.append(kind)
    return picks, drafter_runs


def test_a_draining_batch_measures_no_drafted_kind_while_a_request_has_no_draft():
    """r7 never gets a draft (chat text ngram finds nothing in): by the slowest request's
    pace no SD step can win, so a draining batch starts no SD warm-up or exploration
    (without the bar it spent a warm-up run on SD to learn it), and the drafter runs
    in a doubling wait's worth of steps only. Requests waiting (throughput), the bar
    does not apply; once r7 has left, SD is warmed up and wins."""
    kinds = ("sd", "plain")
    barred = CostModel(warmup=3, run_length=4, explore_every=48, kinds=kinds)
    picks, drafter_runs = bare_batch_run(barred, 120, waiting=False, bare={"r7"})
    assert picks == ["plain"] * 120
    assert 4 <= drafter_runs <= 12  # plain's warm-up, then the checks 1, 2, 4, ... apart
    unbarred = CostModel(warmup=3, run_length=4, explore_every=48, kinds=kinds)
    assert "sd" in batch_run(unbarred, 120, False, [5] * 7 + [1])  # what the bar saves
    busy = CostModel(warmup=3, run_length=4, explore_every=48, kinds=kinds)
    picks, _ = bare_batch_run(busy, 20, waiting=True, bare={"r7"})
    assert picks[4:8] == ["sd"] * 4  # warmed up: throughput is what serves the queue
    # r7 finishes: the drafted rest of the batch (still class 8) warms SD up and uses it,
    # once the wait is over (at most `explore_every` decisions).
    barred.bare[8] = (barred.decisions[8] + 48, 48)
    picks, _ = bare_batch_run(barred, 120, waiting=False, bare={"r7"}, reqs=REQS[:7])
    assert picks[:47] == ["plain"] * 47 and picks[47:51] == ["sd"] * 4
    assert picks.count("sd") >= 60


def test_a_joining_request_lifts_the_bar():
    """The wait belongs to the batch whose drafts showed it: a request that joins (its
    drafts unknown) ends it, and the drafter runs again for the next decision."""
    model = CostModel(warmup=3, run_length=4, explore_every=48, kinds=("sd", "plain"))
    bare_batch_run(model, 40, waiting=False, bare={"r7"})
    assert model.bare[8][0] > model.decisions[8] + 1  # waiting
    assert not drafts_needed(model, 8, REQS, waiting=False)
    joined = [*REQS[:7], "new"]
    assert drafts_needed(model, 8, joined, waiting=False)
    assert model.choose(8, allowed=("sd", "plain"), req_ids=joined, waiting=False) == "sd"
    assert not model.bare


def test_the_bars_wait_doubles_once_per_decision_up_to_the_exploration_interval():
    model = CostModel(explore_every=8)
    model.decisions[8] = 10
    waits = []
    for _ in range(6):
        model._back_off(8)
        model._back_off(8)  # a barred re-measurement and exploration in one decision
        waits.append(model.bare[8][1])
        model.decisions[8] = model.bare[8][0]
    assert waits == [1, 2, 4, 8, 8, 8]


def test_requests_held_back_only_by_the_token_budget_do_not_wait_for_a_slot():
    # The budget ran out with slots free: they join in the next steps.
    assert waiting_for_slots(40, 24, 256, 4096, 4096) == 0
    assert waiting_for_slots(40, 24, 50, 4096, 4096) == 14  # more than the free slots
    assert waiting_for_slots(40, 256, 256, 4096, 4096) == 40  # no slot free
    # Budget left over: something else (KV blocks, a slot) held them back.
    assert waiting_for_slots(40, 24, 256, 1000, 4096) == 40
    assert waiting_for_slots(0, 24, 256, 4096, 4096) == 0


def bare_picks(num_reqs: int, steps: int = 12) -> list[str]:
    """A fresh model's picks over a draining batch of `num_reqs` in which some request
    never has a draft (every kind's step: 1 s, one token per request)."""
    reqs = REQS[:num_reqs]
    model = CostModel(warmup=2, run_length=3, explore_every=48)
    picks = []
    for _ in range(steps):
        kind = model.choose(num_reqs, req_ids=reqs, waiting=False, undrafted=True)
        model.observe(kind, num_reqs, 1.0, num_reqs, dict.fromkeys(reqs, 1))
        picks.append(kind)
    return picks


def test_below_escalates_from_the_bar_leaves_the_trispec_step_alone():
    """Below `escalates_from` the proxy alone may complete a request without drafts
    (its own next token), so a bare request does not bar the TriSpec step there; SD
    stays barred. From `escalates_from` on both are."""
    picks = bare_picks(4)
    assert picks[:6] == ["plain"] * 3 + ["trispec"] * 3 and "sd" not in picks
    assert bare_picks(8) == ["plain"] * 12


@pytest.mark.parametrize(
    ("drafted_secs", "drafted_tokens", "then"), [(0.07, 4, "trispec"), (0.2, 1, "sd")]
)
def test_with_drafts_the_trispec_step_is_rated_by_its_drafted_steps(
    drafted_secs, drafted_tokens, then
):
    """Timed only on steps without drafts (one token in 0.16 s: 6.25 tok/s) the TriSpec
    step looks clearly slower than SD (4 tokens in 0.16 s); where drafts exist it is
    tried once on them, then rated by those steps alone: ahead of SD where its proxy
    trusts whole drafts (4 tokens in 0.07 s), behind where it escalates them (one token
    in 0.2 s: its run stops at its first step, and it is not tried again until another
    request joins)."""
    model = CostModel(kinds=("trispec", "sd", "plain"), warmup=2, explore_every=1000)
    for kind, secs, tokens in (("plain", 1 / 7, 1), ("sd", 0.16, 4), ("trispec", 0.16, 1)):
        for _ in range(3):  # the first is a switch, not timed
            model.observe(kind, 1, secs, tokens, drafted=kind == "sd")
    undrafted = kinds_for(model.kinds, drafted=False)
    assert model.choose(1, allowed=undrafted, req_ids=["a"]) == "plain"
    picks = []
    for _ in range(12):
        kind = model.choose(1, req_ids=["a"])
        secs, tokens = {
            "trispec": (drafted_secs, drafted_tokens),
            "sd": (0.16, 4),
            "plain": (1 / 7, 1),
        }[kind]
        model.observe(kind, 1, secs, tokens, drafted=kind != "plain")
        picks.append(kind)
    # one run (cut short where its steps lose by half), then the better of the two
    tried = picks.index(then) if then == "sd" else model.run_length
    assert picks[:tried] == ["trispec"] * tried and tried >= 1, picks
    assert picks[tried:] == [then] * (12 - tried), picks
    rate = drafted_tokens / drafted_secs
    assert model.rates()["trispec_drafted"][1] == pytest.approx(rate, abs=0.01)
    # At batch 1 a request joining is a new workload: tried on its drafted steps again
    assert model.choose(1, req_ids=["b"]) == "trispec"


def regret_share(model: CostModel, cls: int = 1) -> float:
    return model.regret.get(cls, 0.0) / model.spent[cls]


def serve_one_at_a_time(model: CostModel, requests: int, tokens: int) -> tuple[float, list]:
    """Requests one after another at batch 1, as a 2-core AVX2 CPU runs them: a plain
    step 1 s, an SD step over its drafts 1.5 s, both one token (drafts rarely accepted);
    a TriSpec step 1 s for one token, plus 25 s entering a run (the proxy's catch-up
    over the context) and 15 s in the step after one (the target's), about what the
    real pair's catch-ups cost there in plain steps. Each request joining re-tries the
    TriSpec step. Returns the seconds taken and the kinds run."""
    total, picks, previous = 0.0, [], None
    for r in range(requests):
        rid = f"r{r}"
        for t in range(tokens):
            kind = model.choose(1, req_ids=[rid], waiting=False, horizon=tokens - t)
            secs = {"trispec": 1.0, "sd": 1.5, "plain": 1.0}[kind]
            if kind == "trispec" and previous != "trispec":
                secs += 25.0
            if previous == "trispec" and kind != "trispec":
                secs += 15.0
            model.observe(kind, 1, secs, 1, {rid: 1})
            total += secs
            picks.append(kind)
            previous = kind
    return total, picks


def test_learning_runs_stay_within_the_exploration_budget():
    """Re-tries and explorations whose switches cost several steps are charged as
    regret (their seconds beyond what the choice would have taken for their tokens);
    once that is over the budget no run starts until the choice's steps bring it back
    under: learning costs about `explore_budget` of the time, and still goes on."""
    free = CostModel(explore_budget=1.0, min_budget=1.0)
    free_secs, _ = serve_one_at_a_time(free, 20, 128)
    bounded = CostModel(explore_budget=0.05, min_budget=0.05)  # a fixed budget
    secs, picks = serve_one_at_a_time(bounded, 20, 128)
    assert regret_share(free) > 0.1  # without the budget, learning costs more
    overshoot = (25.0 + 15.0 + 4 * 0.5) / bounded.spent[1]  # one run past the budget
    assert regret_share(bounded) <= 0.05 + overshoot
    assert secs < 0.9 * free_secs
    assert picks[200:].count("trispec") > 0  # still re-tried


def test_a_costly_switch_step_is_charged_and_holds_the_next_exploration():
    """The step after a TriSpec run pays the target's catch-up: booked as that run's
    cost (here the warm-up's), it holds the next TriSpec run back until the budget has
    room for it, which the same model without it starts at once; SD, which costs little
    to try, is still explored meanwhile."""

    def feed(extra: float) -> list[str]:
        model = CostModel(
            warmup=1, run_length=2, explore_every=8, explore_budget=0.05, min_budget=0.05
        )
        picks, previous = [], None
        for _ in range(150):
            kind = model.choose(1)
            secs = 1.0 + (extra if previous == "trispec" and kind != "trispec" else 0.0)
            model.observe(kind, 1, secs, {"trispec": 9, "sd": 9, "plain": 10}[kind])
            picks.append(kind)
            previous = kind
        return picks

    def next_trispec(picks: list[str]) -> int:  # after the warm-up
        return next(i for i in range(8, len(picks)) if picks[i] == "trispec")

    cheap, costly = feed(0.0), feed(4.0)
    assert cheap[:8] == costly[:8] and "trispec" in cheap[8:16]
    assert next_trispec(cheap) + 8 <= next_trispec(costly)
    assert "sd" in costly[8 : next_trispec(costly)]


def test_a_learning_run_starts_only_where_its_expected_cost_fits_the_budget():
    """Each learning run of a kind is expected to cost what its latest one did (its
    steps' regret and the step after it, which pays the TriSpec run's catch-up): it
    starts only where that fits in the budget, so learning does not overshoot it by a
    run each time, and still goes on."""
    model = CostModel(explore_budget=0.05, min_budget=0.05)  # a fixed budget
    starts, previous = 0, None
    for r in range(12):
        rid = f"r{r}"
        for t in range(128):
            expected = {k: model.run_cost.get((1, k), 0.0) for k in ("trispec", "sd")}
            regret, spent = model.regret.get(1, 0.0), model.spent.get(1, 0.0)
            kind = model.choose(1, req_ids=[rid], waiting=False, horizon=128 - t)
            if model.learning_choice and kind != previous and expected[kind] > 0:
                starts += 1  # a learning run starts, with its cost known from the last
                assert regret + expected[kind] <= 0.05 * spent
            secs = {"trispec": 1.0, "sd": 1.5, "plain": 1.0}[kind]
            if kind == "trispec" and previous != "trispec":
                secs += 25.0  # the proxy's catch-up
            if previous == "trispec" and kind != "trispec":
                secs += 15.0  # the target's
            model.observe(kind, 1, secs, 1, {rid: 1})
            previous = kind
    assert starts >= 2
    assert model.run_cost[(1, "trispec")] >= 25.0 + 15.0  # the catch-ups are the run's
    # Only runs of unknown cost can overshoot: one per kind.
    first_runs = (25.0 + 15.0 + 4 * 0.5) / model.spent[1]
    assert regret_share(model) <= 0.05 + first_runs
    # A later engine knows what the runs cost (`cost_memory`): none overshoots there.
    later = CostModel(explore_budget=0.05, min_budget=0.05)
    later.restore(json.loads(json.dumps(model.snapshot())))
    assert later.run_cost == model.run_cost


def test_warm_ups_before_the_first_choice_are_not_held():
    model = CostModel(warmup=2, explore_every=1000, explore_budget=0.0)
    picks = run(model, {"trispec": 5, "sd": 6, "plain": 10}, 1, 12)
    assert {"trispec", "sd", "plain"} <= set(picks)
    assert not model.over_budget(2)  # a class never chosen in is never held


def test_an_exploration_held_by_the_budget_spares_the_drafter():
    """Over the budget, `settled` predicts plain decoding where exploration is due, so
    the drafter need not run; the prediction is the decision."""
    model = CostModel(warmup=1, run_length=2, explore_every=4, explore_budget=0.05)
    run(model, {"trispec": 2, "sd": 2, "plain": 10}, 1, 12)
    assert model.over_budget(1, "trispec") and model.over_budget(1, "sd")
    assert not drafts_needed(model, 1)
    assert model.choose(1) == "plain"


def test_the_budget_halves_while_learning_confirms_the_choice():
    """Each learning run that leaves the choice as it was halves the class's budget
    (down to `min_budget`), so where speculation never wins, learning costs less and
    less; a fixed budget keeps paying its share."""
    fixed = CostModel(explore_budget=0.05, min_budget=0.05)
    fixed_secs, _ = serve_one_at_a_time(fixed, 40, 128)
    halving = CostModel(explore_budget=0.05, min_budget=0.02)
    secs, picks = serve_one_at_a_time(halving, 40, 128)
    assert halving.budget[1] < 0.05 and fixed.budget[1] == 0.05
    assert regret_share(halving) < regret_share(fixed)
    assert secs < fixed_secs
    assert "trispec" in picks[100:]  # still re-tried


def test_a_learning_run_that_moves_the_choice_resets_the_budget():
    model = CostModel(
        warmup=1, run_length=2, explore_every=4, explore_budget=0.5, weight=1.0, max_backoff=1
    )
    run(model, {"trispec": 2, "sd": 8, "plain": 10}, 1, 40)
    assert model.best[1] == "plain" and model.budget[1] < 0.5
    for _ in range(80):  # SD now wins
        run(model, {"trispec": 2, "sd": 30, "plain": 10}, 1, 1)
        if model.best[1] == "sd":
            break
    assert model.best[1] == "sd" and model.budget[1] == 0.5  # reset as the choice moved


def test_a_restored_budget_stays_within_the_models_bounds():
    model = CostModel(explore_budget=0.05, min_budget=0.01)
    model.restore({"stats": [], "budget": {"1": 0.5, "8": 0.0, "16": 0.02}})
    assert model.budget == {1: 0.05, 8: 0.01, 16: 0.02}
    again = CostModel(min_budget=0.01)
    again.restore(model.snapshot())
    assert again.budget == model.budget
    with pytest.raises(ValueError):
        CostModel().restore({"stats": [], "budget": {"1": float("nan")}})
    with pytest.raises(ValueError):
        CostModel().restore({"stats": [], "budget": {"1": "low"}})
