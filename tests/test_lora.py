"""LoRA adapters in a TriSpec engine (tiny pair, CPU): the target's routed passes
carry vLLM's adapter mapping, and a request with an adapter never trusts the proxy,
which has none. Before, the first routed pass over a batch with an adapter failed
inside vLLM's LoRA ops and took the engine down."""

from __future__ import annotations

import pytest

from tests.test_engine import NGRAM, close, counters, greedy, make_llm, prompts, token_ids

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

# max_loras 2: vLLM 0.32's CPU LoRA ops read "no adapter" (-1) as the last slot, so
# with one slot its own engine applies the adapter to every request of a mixed batch.
LORA = {"enable_lora": True, "max_lora_rank": 8, "max_loras": 2}
TOKENS = 32


@pytest.fixture(scope="module")
def adapter(tiny_pair, tmp_path_factory):
    from trispec_vllm.testing import make_tiny_lora

    return make_tiny_lora(tiny_pair.target, tmp_path_factory.mktemp("lora"))


def mixed(llm, adapter) -> list[list[int]]:
    """Greedy ids of 8 prompts, two at a time, the first of each pair with the adapter."""
    from vllm.lora.request import LoRARequest

    lora = LoRARequest("tiny", 1, adapter)
    ps = prompts(8)
    got = []
    for i in range(0, len(ps), 2):
        got += token_ids(llm.generate(ps[i : i + 2], greedy(TOKENS), lora_request=[lora, None]))
    return got


@pytest.fixture(scope="module")
def plain(tiny_pair, adapter) -> list[list[int]]:
    """vLLM's own non-speculative output of `mixed`; the adapter changes every answer."""
    llm = make_llm(tiny_pair, **LORA)
    got = mixed(llm, adapter)
    base = token_ids(llm.generate(prompts(8)[0::2], greedy(TOKENS)))
    close(llm)
    assert all(g != b for g, b in zip(got[0::2], base, strict=True))
    return got


def test_exact_routing_with_adapters_equals_vllms_output(tiny_pair, adapter, plain):
    """Proxy = target at lambda 0.05: requests without an adapter skip the target and
    are caught up in its routed passes, beside requests with one."""
    section = {"proxy_model": tiny_pair.target, "margin_threshold": 0.05}
    llm = make_llm(tiny_pair, NGRAM, section, **LORA)
    got = mixed(llm, adapter)
    c = counters(llm)
    close(llm)
    assert got == plain
    assert c["proxy_completions"] > 0 and c["catchup_tokens"] > 0


def test_lossy_routing_leaves_requests_with_an_adapter_exact(tiny_pair, adapter, plain):
    section = {"proxy_model": tiny_pair.proxy, "margin_threshold": 0.5}
    llm = make_llm(tiny_pair, NGRAM, section, **LORA)
    got = mixed(llm, adapter)
    c = counters(llm)
    close(llm)
    assert got[0::2] == plain[0::2]
    assert c["proxy_completions"] > 0
