"""vLLM's prefix cache under TriSpec (tiny random models, CPU, fp32).

A request that starts on another request's cached blocks reads KV that one model
may not have written: the target skips the steps the proxy completes, the proxy
skips SD and plain steps. These tests build exactly that case (a long lossy
answer, then a request whose prompt is that prompt plus the answer) and check
the new request's output against vLLM without speculation.
"""

from __future__ import annotations

import pytest

from tests.test_engine import NGRAM, close, counters, greedy, make_llm, token_ids

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

BLOCK = 32  # the smallest block vLLM's CPU attention takes
FIRST = "def fibonacci(n):\n    # return the n-th number\n"
FIRST_TOKENS = 60  # blocks past the prompt, all within max_skips steps
NEXT_TOKENS = 40


def engine(tiny_pair, trispec=None):
    return make_llm(tiny_pair, NGRAM if trispec else None, trispec, block_size=BLOCK)


@pytest.fixture(scope="module")
def conversation(tiny_pair):
    """(the first prompt's token ids, those + its greedy answer, the greedy
    continuation of that, and the same with an active min_tokens), from vLLM without
    speculation (prefix caching on, vLLM's default)."""
    llm = engine(tiny_pair)
    prompt = llm.get_tokenizer().encode(FIRST)
    (first,) = llm.generate([{"prompt_token_ids": prompt}], greedy(FIRST_TOKENS))
    second_prompt = prompt + list(first.outputs[0].token_ids)
    (second,) = llm.generate([{"prompt_token_ids": second_prompt}], greedy(NEXT_TOKENS))
    (lossless,) = llm.generate([{"prompt_token_ids": second_prompt}], never_trusting())
    close(llm)
    return (
        prompt,
        second_prompt,
        list(second.outputs[0].token_ids),
        list(lossless.outputs[0].token_ids),
    )


def never_trusting():
    """Greedy with an active min_tokens: a request TriSpec never lets trust the proxy
    (the target verifies every step), so its tokens are all the target's."""
    from vllm import SamplingParams

    return SamplingParams(
        temperature=0, max_tokens=NEXT_TOKENS, min_tokens=NEXT_TOKENS, ignore_eos=True
    )


def follow_up(tiny_pair, cfg, conversation, params):
    """Serve the first prompt, then the follow-up on its cached blocks."""
    prompt, second_prompt = conversation[:2]
    llm = engine(tiny_pair, cfg)
    llm.generate([{"prompt_token_ids": prompt}], greedy(FIRST_TOKENS))
    got = token_ids(llm.generate([{"prompt_token_ids": second_prompt}], params))[0]
    c = counters(llm)
    close(llm)
    return got, c


def test_cached_blocks_the_target_skipped_are_recomputed(tiny_pair, conversation):
    """The first answer is the proxy's throughout (proxy = target at lambda 0, which
    always trusts it, and up to 64 steps without the target: more than the answer
    takes), so its blocks past the prompt are full but lack the target's KV. The
    follow-up never trusts the proxy (an active min_tokens), so every token is the
    target's: reading those blocks unrecomputed would change them."""
    cfg = {"proxy_model": tiny_pair.target, "margin_threshold": 0.0, "max_skips": 64}
    got, c = follow_up(tiny_pair, cfg, conversation, never_trusting())
    assert got == conversation[3]
    assert c["prefix_cached_tokens"] >= BLOCK, c
    assert 0 < c["prefix_target_recomputed"] < c["prefix_cached_tokens"], c


def test_cached_blocks_the_proxy_skipped_are_recomputed(tiny_pair, conversation):
    """With the cost-aware step the proxy sits out SD and plain steps, so cached
    blocks can lack its KV; the follow-up trusts the proxy (proxy = target, exact),
    so a proxy reading unwritten KV would change its tokens."""
    cfg = {"proxy_model": tiny_pair.target, "margin_threshold": 0.05, "cost_aware": True}
    got, c = follow_up(tiny_pair, cfg, conversation, greedy(NEXT_TOKENS))
    assert got == conversation[2]
    assert c["prefix_cached_tokens"] >= BLOCK, c
    assert c["prefix_proxy_recomputed"] > 0, c
    assert c["trispec_kind_steps"] > 0, c


def test_lossless_engine_reads_cached_prompt_blocks_without_recomputing(tiny_pair, conversation):
    """Prompt blocks are always the target's: a lossless engine reuses them as vLLM
    does (no target recompute) and still equals plain greedy."""
    cfg = {"proxy_model": tiny_pair.proxy, "margin_threshold": 1.5}
    second_prompt, want = conversation[1], conversation[2]
    llm = engine(tiny_pair, cfg)
    # The long prompt first (all of it prefilled by the target), then again.
    first = token_ids(llm.generate([{"prompt_token_ids": second_prompt}], greedy(NEXT_TOKENS)))
    again = token_ids(llm.generate([{"prompt_token_ids": second_prompt}], greedy(NEXT_TOKENS)))
    c = counters(llm)
    close(llm)
    assert first == again == [want]
    assert c["prefix_cached_tokens"] >= len(second_prompt) - BLOCK, c
    assert c["prefix_target_recomputed"] == 0, c
