"""TriSpec on a hybrid-attention model: a tiny Llama whose layers alternate between
sliding-window and full attention (as Gemma 2 and 3 do).

vLLM gives such a model one KV cache group per layer kind, each with its own block
table and, past the window, null blocks in place of the sliding layers' old KV.
TriSpec's own passes (the target's catch-up, the proxy's) must write and read every
group's slots; with prefix caching a request may trust cached KV only where every
group holds it. Every run here must equal vLLM's own greedy output token for token.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.test_engine import close, make_llm

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

MAX_TOKENS = 48
NGRAM = {
    "method": "ngram",
    "num_speculative_tokens": 3,
    "prompt_lookup_min": 1,
    "prompt_lookup_max": 3,
}
# Long shared prefixes: the second pass hits the prefix cache past the sliding window.
_PREFIX = "def add(a, b): return a + b\n" * 3
PROMPTS = [
    _PREFIX + "# one",
    _PREFIX + "x = [1, 2, 3]\n",
    "the cat sat on the mat. the cat",
    "hello world hello world ",
    "a",
    "for i in range(10): print(i)\n" * 2,
]
BLOCK_SIZE = 16  # blocks of the sliding layers fall out of the window within a request
WINDOW = 32


@pytest.fixture(scope="module")
def hybrid_pair(tmp_path_factory):
    from trispec_vllm.testing import make_tiny_llama_pair

    return make_tiny_llama_pair(tmp_path_factory.mktemp("tiny_hybrid"), sliding_window=WINDOW)


def twice(llm) -> list[list[int]]:
    """Greedy outputs of PROMPTS, then of PROMPTS again (prefix-cache hits)."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = []
    for _ in range(2):
        done = llm.generate(PROMPTS, params, use_tqdm=False)
        outs += [list(o.outputs[0].token_ids) for o in done]
    return outs


def engine(pair, spec=None, trispec=None, **kwargs):
    return make_llm(
        pair, spec, trispec, block_size=BLOCK_SIZE, enable_prefix_caching=True, **kwargs
    )


@pytest.fixture(scope="module")
def reference(hybrid_pair) -> list[list[int]]:
    llm = engine(hybrid_pair)
    ids = twice(llm)
    close(llm)
    assert all(len(t) == MAX_TOKENS for t in ids)
    assert len(PROMPTS[0]) > WINDOW + BLOCK_SIZE  # past the window
    return ids


def test_trusting_proxy_equal_to_target_equals_plain_greedy(hybrid_pair, reference):
    """Proxy = target at lambda 0.05: the target mostly runs on catch-up sub-batches,
    over both KV cache groups."""
    llm = engine(hybrid_pair, NGRAM, {"proxy_model": hybrid_pair.target, "margin_threshold": 0.05})
    got = twice(llm)
    c = llm.collective_rpc("trispec_counters")[0]
    close(llm)
    assert got == reference
    assert c["proxy_completions"] > 0 and c["catchup_tokens"] > 0
    assert c["prefix_cached_tokens"] > 0


def test_lossless_mode_equals_plain_greedy(hybrid_pair, reference):
    """lambda > 1 over vLLM's draft_model drafter (a 1-layer draft, a 2-layer proxy)."""
    draft = {"method": "draft_model", "model": hybrid_pair.draft, "num_speculative_tokens": 3}
    llm = engine(hybrid_pair, draft, {"proxy_model": hybrid_pair.proxy, "margin_threshold": 1.5})
    got = twice(llm)
    c = llm.collective_rpc("trispec_counters")[0]
    close(llm)
    assert got == reference
    assert c["proxy_completions"] == 0 and c["proxy_steps"] > 0


def test_a_recurrent_state_is_refused_with_a_clear_error():
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    from trispec_vllm.engine.forward import check_kv_cache_kinds

    attn = FullAttentionSpec(block_size=16, num_kv_heads=1, head_size=64, dtype="float32")
    ok = SimpleNamespace(kv_cache_groups=[SimpleNamespace(kv_cache_spec=attn, layer_names=["a"])])
    check_kv_cache_kinds(ok, "m")
    state = SimpleNamespace(kv_cache_spec=object(), layer_names=["model.layers.1.mixer"])
    with pytest.raises(ValueError, match="cannot serve m: its layers .*mixer.* object state"):
        check_kv_cache_kinds(SimpleNamespace(kv_cache_groups=[*ok.kv_cache_groups, state]), "m")


def test_tensor_parallel_hybrid_equals_plain_tp2(hybrid_pair, monkeypatch):
    """TP = 2 on both KV cache groups: proxy = target at lambda 0.05 against vLLM's own
    greedy output at TP = 2; every rank routes alike (TRISPEC_CHECK_RANKS)."""
    from tests.test_tensor_parallel import TP_ENV

    for k, v in TP_ENV.items():
        monkeypatch.setenv(k, v)

    def tp2(spec=None, trispec=None):
        llm = engine(hybrid_pair, spec, trispec, tensor_parallel_size=2)
        got = twice(llm)
        c = llm.collective_rpc("trispec_counters")[0] if trispec else {}
        close(llm)
        return got, c

    want, _ = tp2()
    got, c = tp2(NGRAM, {"proxy_model": hybrid_pair.target, "margin_threshold": 0.05})
    assert got == want
    assert c["proxy_completions"] > 0 and c["catchup_tokens"] > 0
