"""Inside the runner: host-device copies per step, and a routing failure's fallback.

Both need the model runner in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0),
and vLLM 0.32 on CPU cannot build a second in-process engine in one process,
so this module holds the suite's only one: proxy = target at lambda 0.05 (the
proxy completes most steps, forced escalations run target sub-batches).

Copies: every `.cpu()`, `.tolist()`, `.item()` and `.to(device)` TriSpec's files
make is counted (trispec_vllm.testing.transfers); on a GPU each blocking one
stalls the host. A routed step keeps one blocking copy, the proxy's margins
(top-1 and margin packed), and non-blocking uploads from pinned memory: per
sub-batch forward (the proxy's catch-up, the target's), one for its inputs
and one for its row indices, so at most four; before, a step with a target
sub-batch made 15 blocking copies.
"""

from __future__ import annotations

import pytest

from tests.test_engine import NGRAM, close, greedy, make_llm, prompts, token_ids

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

MAX_BLOCKING = 1
MAX_NON_BLOCKING = 4  # 2 per sub-batch forward: proxy catch-up and target


@pytest.fixture(scope="module")
def engine(tiny_pair):
    mp = pytest.MonkeyPatch()
    mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the runner in this process
    llm = make_llm(tiny_pair, NGRAM, {"proxy_model": tiny_pair.target, "margin_threshold": 0.05})
    runner = llm.collective_rpc(lambda worker: worker.model_runner)[0]
    yield llm, runner
    close(llm)
    mp.undo()


def generate_pairs(llm, n=8, max_tokens=32) -> list[list[int]]:
    """Two requests at a time, so whole steps can skip the target."""
    ps = prompts(n)
    out: list[list[int]] = []
    for i in range(0, n, 2):
        out += token_ids(llm.generate(ps[i : i + 2], greedy(max_tokens)))
    return out


def test_transfers_per_step(engine):
    from trispec_vllm.testing.transfers import count_transfers

    llm, runner = engine
    steps: list[tuple[dict, dict]] = []
    execute = runner.execute_model
    stats = runner.trispec.stats

    def counted(*args, **kwargs):
        routed, native, target = runner.trispec_routed_steps, stats.native_target_steps, 0
        target = stats.target_steps
        steps.append((counter.snapshot(), {}))
        out = execute(*args, **kwargs)
        steps[-1][1].update(
            routed=runner.trispec_routed_steps > routed,
            sub_batch=stats.target_steps > target and stats.native_target_steps == native,
        )
        return out

    with count_transfers() as counter:
        runner.execute_model = counted
        try:
            generate_pairs(llm)
        finally:
            del runner.execute_model
        steps.append((counter.snapshot(), {}))
    sites = dict(counter.sites)

    routed = []
    for (before, info), (after, _) in zip(steps, steps[1:], strict=False):
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in ("blocking", "non_blocking")}
        if info["routed"]:
            routed.append((delta, info))
    assert any(i["sub_batch"] for _, i in routed), "no step ran a target sub-batch"
    assert any(not i["sub_batch"] for _, i in routed)
    assert max(d["blocking"] for d, _ in routed) <= MAX_BLOCKING, sites
    assert max(d["non_blocking"] for d, _ in routed) <= MAX_NON_BLOCKING, sites


def test_a_routing_failure_falls_back_to_sd_and_keeps_every_output(engine):
    """One step's routing raises: that step is standard SD, logged, and the engine goes
    on; proxy = target is exact in both kinds of step, so every output is unchanged."""
    llm, runner = engine
    want = generate_pairs(llm)
    plan = runner.trispec.plan
    calls = {"n": 0}

    def failing(batch, proxy_logits, own_drafts=None):
        calls["n"] += 1
        if proxy_logits is not None and calls["n"] in (5, 9):
            raise RuntimeError("injected routing failure")
        return plan(batch, proxy_logits, own_drafts=own_drafts)

    before = runner.trispec.stats.routing_fallbacks
    runner.trispec.plan = failing
    try:
        got = generate_pairs(llm)
    finally:
        del runner.trispec.plan
    assert runner.trispec.stats.routing_fallbacks - before == 2
    assert got == want


def test_a_plain_choice_the_target_cannot_follow_is_one_sd_catch_up_step():
    """After a TriSpec run the target lags behind the tokens the proxy completed, so
    a plain choice cannot be vLLM's own step: it runs as SD without drafts (the
    catch-up plus plain decoding), never as another TriSpec step that would leave
    the target behind again; without a choice yet, the cost model picks."""
    from types import SimpleNamespace

    from trispec_vllm.engine.model_runner import TriSpecRunnerMixin
    from trispec_vllm.policy.cost import CostModel

    cost = CostModel(kinds=("trispec", "sd", "plain"))
    runner = SimpleNamespace(trispec_next_kind="plain", trispec_cost=cost)
    assert TriSpecRunnerMixin._step_kind(runner, 3) == "sd"
    for kind in ("trispec", "sd"):
        runner.trispec_next_kind = kind
        assert TriSpecRunnerMixin._step_kind(runner, 3) == kind
    runner.trispec_next_kind = None
    runner._choose_kind = lambda n, allowed, horizon: allowed
    runner._horizon = lambda n: None
    assert TriSpecRunnerMixin._step_kind(runner, 3) == ("trispec", "sd")


def test_the_horizon_is_the_longest_requests_tokens_left_when_nothing_waits():
    from types import SimpleNamespace

    import numpy as np

    from trispec_vllm.engine.model_runner import TriSpecRunnerMixin

    params = {"a": SimpleNamespace(max_tokens=128), "b": SimpleNamespace(max_tokens=None)}
    runner = SimpleNamespace(
        trispec_waiting=False,
        max_model_len=1000,
        requests={r: SimpleNamespace(sampling_params=p) for r, p in params.items()},
        input_batch=SimpleNamespace(
            req_ids=["a", "b"],
            num_tokens_no_spec=np.array([400, 990]),
            num_prompt_tokens=np.array([300, 980]),
        ),
    )
    assert TriSpecRunnerMixin._horizon(runner, 2) == 28  # a: 128 - 100 tokens made
    assert TriSpecRunnerMixin._horizon(runner, 1) == 28
    runner.input_batch.num_tokens_no_spec[1] = 900  # b: 100 tokens of context left
    assert TriSpecRunnerMixin._horizon(runner, 2) == 100
    runner.trispec_waiting = True
    assert TriSpecRunnerMixin._horizon(runner, 2) is None
