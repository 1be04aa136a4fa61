"""Host-device copies per engine step, counted in TriSpec's own code.

Every `.cpu()`, `.tolist()`, `.item()` and `.to(device)` TriSpec's files make
is counted (trispec_vllm.testing.transfers); on a GPU each blocking one stalls
the host. A routed step keeps one blocking copy, the proxy's margins (top-1
and margin packed together), and at most one non-blocking upload from pinned
memory (the target sub-batch's inputs and row indices packed together).
"""

from __future__ import annotations

import pytest

from tests.test_engine import NGRAM, close, greedy, make_llm, prompts

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

MAX_BLOCKING = 1
MAX_NON_BLOCKING = 1


def test_transfers_per_step(tiny_pair, monkeypatch):
    from trispec_vllm.testing.transfers import count_transfers

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the runner in this process
    llm = make_llm(tiny_pair, NGRAM, {"proxy_model": tiny_pair.proxy, "margin_threshold": 0.5})
    runner = llm.collective_rpc(lambda worker: worker.model_runner)[0]
    steps: list[tuple[dict, dict]] = []
    execute = runner.execute_model

    with count_transfers() as counter:

        def counted(*args, **kwargs):
            routed, native = runner.trispec_routed_steps, runner.trispec.stats.native_target_steps
            target = runner.trispec.stats.target_steps
            steps.append((counter.snapshot(), {}))
            out = execute(*args, **kwargs)
            steps[-1][1].update(
                routed=runner.trispec_routed_steps > routed,
                sub_batch=runner.trispec.stats.target_steps > target
                and runner.trispec.stats.native_target_steps == native,
            )
            return out

        runner.execute_model = counted
        llm.generate(prompts(8), greedy(32))
        steps.append((counter.snapshot(), {}))
    sites = dict(counter.sites)
    close(llm)

    per_step = []
    for (before, info), (after, _) in zip(steps, steps[1:], strict=False):
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in ("blocking", "non_blocking")}
        per_step.append((delta, info))
    routed = [(d, i) for d, i in per_step if i["routed"]]
    assert any(i["sub_batch"] for _, i in routed), "no step ran a target sub-batch"
    assert any(not i["sub_batch"] for _, i in routed)
    worst = max(d["blocking"] for d, _ in routed)
    assert worst <= MAX_BLOCKING, (worst, sites)
    assert max(d["non_blocking"] for d, _ in routed) <= MAX_NON_BLOCKING, sites
