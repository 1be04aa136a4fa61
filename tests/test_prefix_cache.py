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
FIRST_TOKENS = 150  # several blocks past the prompt
NEXT_TOKENS = 40


def engine(tiny_pair, trispec=None):
    return make_llm(tiny_pair, NGRAM if trispec else None, trispec, block_size=BLOCK)


@pytest.fixture(scope="module")
def conversation(tiny_pair):
    """(first prompt's token ids + its greedy answer, the greedy continuation of
    that), from vLLM without speculation (prefix caching on, vLLM's default)."""
    llm = engine(tiny_pair)
    prompt = llm.get_tokenizer().encode(FIRST)
    (first,) = llm.generate([{"prompt_token_ids": prompt}], greedy(FIRST_TOKENS))
    second_prompt = prompt + list(first.outputs[0].token_ids)
    (second,) = llm.generate([{"prompt_token_ids": second_prompt}], greedy(NEXT_TOKENS))
    close(llm)
    return prompt, second_prompt, list(second.outputs[0].token_ids)


def follow_up(tiny_pair, cfg, conversation, second_params):
    """Serve the first prompt, then the follow-up on its cached blocks."""
    from vllm import SamplingParams

    prompt, second_prompt, _ = conversation
    llm = engine(tiny_pair, cfg)
    llm.generate([{"prompt_token_ids": prompt}], greedy(FIRST_TOKENS))
    params = SamplingParams(temperature=0, max_tokens=NEXT_TOKENS, ignore_eos=True, **second_params)
    got = token_ids(llm.generate([{"prompt_token_ids": second_prompt}], params))[0]
    c = counters(llm)
    close(llm)
    return got, c


def test_cached_blocks_the_target_skipped_are_recomputed(tiny_pair, conversation):
    """The first answer is the proxy's almost throughout (proxy = target at lambda
    0.05, up to 16 skipped target steps), so its last blocks are full but lack the
    target's KV. The follow-up never trusts the proxy (a zero logit bias), so every
    token is the target's: reading those blocks unrecomputed would change them."""
    cfg = {"proxy_model": tiny_pair.target, "margin_threshold": 0.05, "max_skips": 16}
    got, c = follow_up(tiny_pair, cfg, conversation, {"logit_bias": {0: 0.0}})
    assert got == conversation[2]
    assert c["prefix_cached_tokens"] >= BLOCK, c
    assert 0 < c["prefix_target_recomputed"] < c["prefix_cached_tokens"], c


def test_cached_blocks_the_proxy_skipped_are_recomputed(tiny_pair, conversation):
    """With the cost-aware step the proxy sits out SD and plain steps, so cached
    blocks can lack its KV; the follow-up trusts the proxy (proxy = target, exact),
    so a proxy reading unwritten KV would change its tokens."""
    cfg = {"proxy_model": tiny_pair.target, "margin_threshold": 0.05, "cost_aware": True}
    got, c = follow_up(tiny_pair, cfg, conversation, {})
    assert got == conversation[2]
    assert c["prefix_cached_tokens"] >= BLOCK, c
    assert c["prefix_proxy_recomputed"] > 0, c
    assert c["trispec_kind_steps"] > 0, c


def test_lossless_engine_reads_cached_prompt_blocks_without_recomputing(tiny_pair, conversation):
    """Prompt blocks are always the target's: a lossless engine reuses them as vLLM
    does (no target recompute) and still equals plain greedy."""
    cfg = {"proxy_model": tiny_pair.proxy, "margin_threshold": 1.5}
    prompt, second_prompt, want = conversation
    llm = engine(tiny_pair, cfg)
    # The long prompt first (all of it prefilled by the target), then again.
    first = token_ids(llm.generate([{"prompt_token_ids": second_prompt}], greedy(NEXT_TOKENS)))
    again = token_ids(llm.generate([{"prompt_token_ids": second_prompt}], greedy(NEXT_TOKENS)))
    c = counters(llm)
    close(llm)
    assert first == again == [want]
    assert c["prefix_cached_tokens"] >= len(second_prompt) - BLOCK, c
    assert c["prefix_target_recomputed"] == 0, c
