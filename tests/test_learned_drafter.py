"""The learned drafter inside vLLM's engine (tiny models, CPU): exact where it must be
while it learns, and a restarted engine continues from the saved head."""

from __future__ import annotations

import pytest

from tests.test_engine import close, counters, greedy, make_llm, prompts, token_ids

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

LEARNED = {
    "method": "custom_class",
    "model": "trispec_vllm.drafter.LearnedDrafter",
    "num_speculative_tokens": 3,
}
# Learn fast, so that a short run takes many optimiser steps.
FAST = {"drafter_update_every": 1, "drafter_min_examples": 4, "drafter_batch": 8}
TOKENS = 40


@pytest.fixture(scope="module")
def want(tiny_pair):
    llm = make_llm(tiny_pair)
    out = token_ids(llm.generate(prompts(8), greedy(TOKENS)))
    close(llm)
    return out


@pytest.fixture(scope="module")
def head_path(tmp_path_factory):
    return tmp_path_factory.mktemp("drafter") / "head.pt"


@pytest.fixture(scope="module")
def lossless_run(tiny_pair, head_path):
    """Lossless mode with learning on; the head is saved at shutdown. The proxy is the
    target itself, so that the next engine can trust it and stay exact."""
    llm = make_llm(
        tiny_pair,
        spec=LEARNED,
        trispec={
            "proxy_model": tiny_pair.target,
            "margin_threshold": 2.0,
            "drafter_checkpoint": str(head_path),
            **FAST,
        },
    )
    out = token_ids(llm.generate(prompts(8), greedy(TOKENS)))
    c = counters(llm)
    close(llm)
    return out, c


def test_lossless_with_learning_equals_plain_greedy(lossless_run, want):
    out, c = lossless_run
    assert c["drafter_updates"] > 10  # it learned while serving
    assert c["drafter_windows"] > 0
    assert c["proxy_completions"] == 0
    assert out == want


def test_head_is_saved_at_shutdown_with_its_updates(lossless_run, head_path, tiny_pair):
    from trispec_vllm.drafter import checkpoint
    from trispec_vllm.drafter.head import fingerprint

    _, c = lossless_run
    saved = checkpoint.load(head_path, fingerprint(tiny_pair.target))
    assert saved["learner"]["updates"] == c["drafter_updates"]


def test_restart_continues_from_the_saved_head_and_trusting_stays_exact(
    lossless_run, head_path, tiny_pair, want
):
    """proxy = target at a low lambda (the proxy is trusted often, so the drafts decide
    what it completes): still plain greedy, with a head loaded from the checkpoint."""
    _, first = lossless_run
    llm = make_llm(
        tiny_pair,
        spec=LEARNED,
        trispec={
            "proxy_model": tiny_pair.target,
            "margin_threshold": 0.05,
            "drafter_checkpoint": str(head_path),
            **FAST,
        },
    )
    try:
        started = llm.collective_rpc("trispec_drafter")[0]["updates"]
        out = token_ids(llm.generate(prompts(8), greedy(TOKENS)))
        c = counters(llm)
    finally:
        close(llm)
    assert started == first["drafter_updates"]
    assert c["proxy_completions"] > 0 and c["drafter_updates"] > 0
    assert out == want
