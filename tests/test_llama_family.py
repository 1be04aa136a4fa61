"""TriSpec on a tiny Llama-family set (500-token vocabulary, 3-layer target) in vLLM.

Issue 17: with the proxy trusted almost everywhere (proxy = target, lambda
0.05), the target's catch-up forward crashed in the embedding lookup. vLLM
0.32's scheduler gives a new one-token prompt that joins running requests
`num_speculative_tokens` placeholder drafts of id -1; vLLM clamps them to 0
in its own input ids only, and the catch-up batch read the raw -1 from the
runner's token table. Every TriSpec run here must equal vLLM's own
non-speculative greedy output token for token.
"""

from __future__ import annotations

import pytest

from tests.test_engine import close, make_llm

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

K = 3
MAX_TOKENS = 48
NGRAM = {
    "method": "ngram",
    "num_speculative_tokens": K,
    "prompt_lookup_min": 1,
    "prompt_lookup_max": 3,
}
_BASE = [
    "def add(a, b): return a + b\n",
    "the cat sat on the mat. ",
    "x = [1, 2, 3]\n",
    "hello world hello world ",
    "for i in range(10): print(i)\n",
]
ONE_TOKEN = {9: "a", 12: "x", 15: "("}  # single tokens of the tiny tokenizer
PROMPTS = [ONE_TOKEN.get(i, _BASE[i % 5] * (1 + i % 4) + f"# case {i}") for i in range(16)]
FIRST_WAVE = 8  # PROMPTS[:8] start first; the rest (one-token prompts among them) join later


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    from trispec_vllm.testing import make_tiny_llama_pair

    return make_tiny_llama_pair(tmp_path_factory.mktemp("tiny_llama"))


def generate_in_waves(llm) -> tuple[list[list[int]], list[int]]:
    """(output token ids, prompt lengths) of PROMPTS, greedy. The second wave is added
    once every request of the first has its first token, so the one-token prompts
    join a batch of decoding requests: the case in which vLLM 0.32 schedules them
    with placeholder drafts."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    engine = llm.llm_engine
    done: dict[str, object] = {}
    started: set[str] = set()

    def step() -> None:
        for out in engine.step():
            if out.outputs and out.outputs[0].token_ids:
                started.add(out.request_id)
            if out.finished:
                done[out.request_id] = out

    first = [str(i) for i in range(FIRST_WAVE)]
    for i in range(FIRST_WAVE):
        engine.add_request(first[i], PROMPTS[i], params)
    while not started.issuperset(first):
        step()
    assert len(done) < FIRST_WAVE  # the first wave is still decoding
    for i in range(FIRST_WAVE, len(PROMPTS)):
        engine.add_request(str(i), PROMPTS[i], params)
    while engine.has_unfinished_requests():
        step()
    outs = [done[str(i)] for i in range(len(PROMPTS))]
    return [list(o.outputs[0].token_ids) for o in outs], [len(o.prompt_token_ids) for o in outs]


@pytest.fixture(scope="module")
def reference(llama_pair) -> list[list[int]]:
    """vLLM's own greedy outputs: no speculative_config, no TriSpec."""
    llm = make_llm(llama_pair)
    ids, prompt_lens = generate_in_waves(llm)
    close(llm)
    assert [prompt_lens[i] for i in ONE_TOKEN] == [1] * len(ONE_TOKEN)
    assert len(set(prompt_lens)) > 5  # mixed lengths
    assert all(len(t) == MAX_TOKENS for t in ids)
    return ids


def _spec(pair, drafter: str) -> dict:
    if drafter == "ngram":
        return NGRAM
    return {"method": "draft_model", "model": pair.draft, "num_speculative_tokens": K}


@pytest.mark.parametrize("drafter", ["ngram", "draft_model"])
def test_trusting_proxy_equal_to_target_equals_plain_greedy(llama_pair, reference, drafter):
    """Proxy = target at lambda 0.05: almost every decoding request is completed by the
    proxy, so the target runs on sub-batches with catch-up (issue 17 crashed here)."""
    llm = make_llm(
        llama_pair,
        _spec(llama_pair, drafter),
        {"proxy_model": llama_pair.target, "margin_threshold": 0.05},
    )
    got, _ = generate_in_waves(llm)
    c = llm.collective_rpc("trispec_counters")[0]
    close(llm)
    assert got == reference
    assert c["proxy_completions"] > 0 and c["catchup_tokens"] > 0
    assert c["target_steps"] < c["proxy_steps"]


def test_lossless_mode_equals_plain_greedy(llama_pair, reference):
    """lambda > 1: standard speculative decoding (1-layer draft model, 2-layer proxy)."""
    llm = make_llm(
        llama_pair,
        _spec(llama_pair, "draft_model"),
        {"proxy_model": llama_pair.proxy, "margin_threshold": 1.5},
    )
    got, _ = generate_in_waves(llm)
    c = llm.collective_rpc("trispec_counters")[0]
    close(llm)
    assert got == reference
    assert c["proxy_completions"] == 0 and c["target_steps"] == c["proxy_steps"]
