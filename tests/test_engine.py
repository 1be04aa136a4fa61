"""TriSpec inside vLLM's engine on tiny random models (CPU, fp32).

Engines are expensive (about 15 s each): each configuration starts once per
module and serves every test that needs it.
"""

from __future__ import annotations

import gc
import os
import re

import pytest

from trispec_vllm.metrics import COUNTERS

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

K = 3
MAX_TOKENS = 64
NGRAM = {
    "method": "ngram",
    "num_speculative_tokens": K,
    "prompt_lookup_max": 3,
    "prompt_lookup_min": 1,
}


def prompts(n: int = 16) -> list[str]:
    """Mixed lengths, with repeats so the ngram drafter finds matches."""
    base = [
        "def add(a, b): return a + b\n",
        "the cat sat on the mat. ",
        "x = [1, 2, 3]\n",
        "hello world hello world ",
        "for i in range(10): print(i)\n",
    ]
    return [base[i % 5] * (1 + i % 4) + f"# case {i}" for i in range(n)]


def make_llm(tiny_pair, spec=None, trispec=None, enforce_eager=True, **kwargs):
    """An fp32 engine on the pair's target (any family's tiny pair). The routing tests
    pin the step kind: `cost_aware` is off unless the section sets it."""
    from vllm import LLM

    if trispec:
        trispec = {"cost_aware": False, **trispec}
    extra = {"additional_config": {"trispec": trispec}} if trispec else {}
    return LLM(
        model=tiny_pair.target,
        dtype="float32",
        max_model_len=512,
        enforce_eager=enforce_eager,
        speculative_config=spec,
        seed=0,
        **extra,
        **kwargs,
    )


def close(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def greedy(max_tokens=MAX_TOKENS):
    from vllm import SamplingParams

    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


REGEX = r"[0-9]{3}-[a-z]{4}"


def constrained(max_tokens: int = 16):
    """Greedy under a structured output (`REGEX`): vLLM masks the logits with the
    grammar's bitmask in `sample_tokens`, after TriSpec's step has made them."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    grammar = StructuredOutputsParams(regex=REGEX)
    return SamplingParams(temperature=0, max_tokens=max_tokens, structured_outputs=grammar)


def token_ids(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


def counters(llm) -> dict[str, int]:
    return llm.collective_rpc("trispec_counters")[0]


def in_groups(llm, size: int) -> list[list[int]]:
    """Greedy token ids of `prompts()`, generated `size` requests at a time (small
    batches: whole steps can skip the target, and kinds are chosen per batch size)."""
    ps = prompts()
    got = []
    for i in range(0, len(ps), size):
        got += token_ids(llm.generate(ps[i : i + size], greedy()))
    return got


LONG_PROMPTS = ["import os\n" * 25 + "def main():", "the cat sat on the mat. " * 14]


@pytest.fixture(scope="module")
def reference_all(tiny_pair):
    """vLLM's own non-speculative greedy outputs (texts too), and the texts of the
    first four prompts under `constrained()`."""
    llm = make_llm(tiny_pair)
    outs = llm.generate(prompts() + LONG_PROMPTS, greedy())
    regex = [o.outputs[0].text for o in llm.generate(prompts()[:4], constrained())]
    close(llm)
    return token_ids(outs), [o.outputs[0].text for o in outs], regex


@pytest.fixture(scope="module")
def reference(reference_all):
    return reference_all[0][:16]


@pytest.mark.parametrize("drafter", ["ngram", "draft_model"])
def test_lossless_mode_equals_plain_greedy(tiny_pair, reference, drafter):
    spec = (
        NGRAM
        if drafter == "ngram"
        else {"method": "draft_model", "model": tiny_pair.proxy, "num_speculative_tokens": K}
    )
    llm = make_llm(tiny_pair, spec, {"proxy_model": tiny_pair.proxy, "margin_threshold": 1.5})
    got = token_ids(llm.generate(prompts(), greedy()))
    c = counters(llm)
    close(llm)
    assert got == reference
    assert c["proxy_completions"] == 0 and c["escalations"] > 0
    assert c["target_steps"] == c["proxy_steps"]
    assert c["emitted_tokens"] >= 16 * MAX_TOKENS  # tokens past max_tokens are cut by vLLM


def test_proxy_equal_to_target_skips_target_steps_exactly(tiny_pair, reference):
    llm = make_llm(
        tiny_pair,
        NGRAM,
        {"proxy_model": tiny_pair.target, "margin_threshold": 0.5},
        disable_log_stats=False,
    )
    got = in_groups(llm, 2)
    c = counters(llm)
    metrics = {m.name: m.value for m in llm.get_metrics() if m.name.startswith("trispec:")}
    close(llm)
    assert got == reference
    assert c["proxy_completions"] > 0 and c["catchup_tokens"] > 0
    assert c["target_steps"] < 0.8 * c["proxy_steps"], c
    # The same counts reach LLM.get_metrics() through vLLM's stats path.
    for name in COUNTERS:
        assert metrics["trispec:" + name] == c[name], name


@pytest.mark.parametrize("proxy_copy", [False, True], ids=["proxy-is-drafter", "separate-proxy"])
def test_smaller_proxy_follows_the_reference_rules(tiny_pair, tmp_path, proxy_copy):
    """Draft model = proxy checkpoint: the drafter's own margins route (one copy loaded,
    `route_own_drafts`); a copy of it as the proxy: the proxy pass and the paper's rule."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.oracle import trispec_generate

    proxy_path = tiny_pair.proxy
    if proxy_copy:
        proxy_path = str(shutil.copytree(tiny_pair.proxy, tmp_path / "proxy"))
    spec = {"method": "draft_model", "model": tiny_pair.proxy, "num_speculative_tokens": K}
    cfg = {"proxy_model": proxy_path, "margin_threshold": 0.5, "max_skips": 4}
    llm = make_llm(tiny_pair, spec, cfg)
    ps = prompts(6)
    got = token_ids(llm.generate(ps, greedy(32)))
    c = counters(llm)
    # Lossy routing under a grammar: the proxy's rows are masked like the target's.
    texts = [o.outputs[0].text for o in llm.generate(ps[:3], constrained())]
    close(llm)
    assert c["proxy_completions"] > 0 and c["escalations"] > 0
    assert all(re.fullmatch(REGEX, t) for t in texts), texts

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_pair.target)
    target = AutoModelForCausalLM.from_pretrained(tiny_pair.target).eval()
    proxy = AutoModelForCausalLM.from_pretrained(tiny_pair.proxy).eval()
    for p, g in zip(ps, got, strict=True):
        ids = tok(p)["input_ids"]
        want = trispec_generate(target, proxy, proxy, ids, 32, K, 0.5, 4, not proxy_copy)
        assert g == want


def test_target_as_drafter_and_proxy_skips_target_steps_exactly(tiny_pair, reference):
    """Proxy = drafter = target at lambda 0.05: the drafter's trusted drafts are the
    target's own greedy tokens, so the output must equal plain greedy decoding while
    most steps skip the target (catch-up, and the no-bonus emission, exact)."""
    spec = {"method": "draft_model", "model": tiny_pair.target, "num_speculative_tokens": K}
    llm = make_llm(tiny_pair, spec, {"proxy_model": tiny_pair.target, "margin_threshold": 0.05})
    got = in_groups(llm, 2)
    c = counters(llm)
    close(llm)
    assert got == reference
    assert c["proxy_completions"] > 0 and c["catchup_tokens"] > 0
    assert c["target_steps"] < 0.8 * c["proxy_steps"], c


def test_preemption_keeps_lossless_output(tiny_pair, reference, monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    # 16 requests x ~160 tokens need ~2,600 slots: 48 blocks of 16 force preemption.
    llm = make_llm(
        tiny_pair,
        NGRAM,
        {"proxy_model": tiny_pair.proxy, "margin_threshold": 1.5},
        kv_cache_memory_bytes=48 * 16 * 2 * 1 * 64 * 4 * 10,
        disable_log_stats=False,
    )
    got = token_ids(llm.generate(prompts(), greedy()))
    metrics = {m.name: m for m in llm.get_metrics()}
    close(llm)
    assert got == reference
    assert metrics["vllm:num_preemptions"].value > 0


def test_aborting_half_the_requests_leaves_the_others_unchanged(tiny_pair, reference):
    llm = make_llm(tiny_pair, NGRAM, {"proxy_model": tiny_pair.target, "margin_threshold": 0.5})
    engine = llm.llm_engine
    ps = prompts()
    for i, p in enumerate(ps):
        engine.add_request(str(i), p, greedy())
    done: dict[str, list[int]] = {}
    steps = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = list(out.outputs[0].token_ids)
        steps += 1
        if steps == 5:
            engine.abort_request([str(i) for i in range(0, 16, 2)])
    close(llm)
    for i in range(1, 16, 2):
        assert done[str(i)] == reference[i]
    assert all(str(i) not in done or len(done[str(i)]) < MAX_TOKENS for i in range(0, 16, 2))


def test_unsupported_drafter_is_refused_before_weights_load(tiny_pair):
    from trispec_vllm.config import TriSpecConfigError
    from trispec_vllm.engine.config_hook import validate_engine_config

    class Spec:
        method = "eagle3"

    class Model:
        @staticmethod
        def get_vocab_size():
            return 512

    class Cfg:
        speculative_config = Spec()
        model_config = Model()

    from trispec_vllm.config import make_config

    with pytest.raises(TriSpecConfigError, match="'eagle3' is not supported"):
        validate_engine_config(make_config(proxy_model=tiny_pair.proxy), Cfg())
    assert os.path.isdir(tiny_pair.proxy)
    # Multimodal and encoder-decoder models: refused before the drafter is looked at.
    for attr, kind in (("is_multimodal_model", "a multimodal"), ("is_encoder_decoder", "an enc")):
        setattr(Model, attr, True)
        with pytest.raises(TriSpecConfigError, match=f"text decoders only, .* is {kind}"):
            validate_engine_config(make_config(proxy_model=tiny_pair.proxy), Cfg())
        setattr(Model, attr, False)
    # A drafter with its own KV cache cannot skip steps: disable_by_batch_size refused.
    Spec.method = "draft_model"
    cfg = make_config(proxy_model=tiny_pair.proxy, disable_by_batch_size=8)
    with pytest.raises(TriSpecConfigError, match="disable_by_batch_size works with the ngram"):
        validate_engine_config(cfg, Cfg())
    cfg = make_config(proxy_model=tiny_pair.proxy, max_holds=1)
    with pytest.raises(TriSpecConfigError, match="max_holds works with the ngram"):
        validate_engine_config(cfg, Cfg())


@pytest.fixture(scope="module")
def proxy_is_target_llm(tiny_pair, reference_all):
    """Exact routing at lambda 0.5 (proxy = target), small chunks force chunked prefill.
    (After `reference_all`: closing an in-process engine tears down vLLM's process-wide
    parallel groups, which an engine still open needs.)"""
    llm = make_llm(
        tiny_pair,
        NGRAM,
        {"proxy_model": tiny_pair.target, "margin_threshold": 0.5},
        max_num_batched_tokens=64,
        max_num_seqs=8,
    )
    yield llm
    close(llm)


def test_chunked_prefill_of_long_prompts(proxy_is_target_llm, reference_all):
    got = token_ids(proxy_is_target_llm.generate(LONG_PROMPTS, greedy()))
    assert got == reference_all[0][16:]


def test_n_greater_than_one_and_logprobs(proxy_is_target_llm, reference):
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=2)
    outs = proxy_is_target_llm.generate(prompts()[:3], params)
    for out, ref in zip(outs, reference[:3], strict=True):
        completion = out.outputs[0]
        assert list(completion.token_ids) == ref
        # One logprob entry per token; the chosen token is the most likely one.
        assert len(completion.logprobs) == MAX_TOKENS
        for tok, lp in zip(completion.token_ids, completion.logprobs, strict=True):
            assert lp[tok].rank == 1
    # vLLM allows n > 1 with sampling only; every sample gets its full length.
    params = SamplingParams(temperature=1.5, max_tokens=16, ignore_eos=True, n=3, seed=1)
    (out,) = proxy_is_target_llm.generate(prompts()[:1], params)
    samples = [list(c.token_ids) for c in out.outputs]
    assert len(samples) == 3 and all(len(s) == 16 for s in samples)
    assert len({tuple(s) for s in samples}) > 1  # three samples, not one answer thrice
    (again,) = proxy_is_target_llm.generate(prompts()[:1], params)
    assert [list(c.token_ids) for c in again.outputs] == samples  # seeded: reproducible


def test_stop_strings_and_max_tokens(proxy_is_target_llm, reference_all):
    from vllm import SamplingParams

    texts = reference_all[1]
    stops = [texts[i][20:23] for i in range(4)]
    params = [SamplingParams(temperature=0, max_tokens=MAX_TOKENS, stop=[s]) for s in stops]
    params.append(SamplingParams(temperature=0, max_tokens=7, ignore_eos=True))
    outs = proxy_is_target_llm.generate(prompts()[:5], params)
    for i in range(4):
        assert outs[i].outputs[0].text == texts[i][: texts[i].find(stops[i])]
        assert outs[i].outputs[0].finish_reason == "stop"
    assert len(outs[4].outputs[0].token_ids) == 7
    assert outs[4].outputs[0].finish_reason == "length"


def test_structured_outputs_keep_their_grammar_and_their_neighbours(
    proxy_is_target_llm, reference_all
):
    """Requests under a grammar next to free ones: vLLM's sampler masks whichever
    model's logits a row holds, so exact routing gives vLLM's own constrained output."""
    params = [constrained() if i % 2 == 0 else greedy() for i in range(4)]
    outs = proxy_is_target_llm.generate(prompts()[:4], params)
    for i in (0, 2):
        assert re.fullmatch(REGEX, outs[i].outputs[0].text)
        assert outs[i].outputs[0].text == reference_all[2][i]
    for i in (1, 3):
        assert list(outs[i].outputs[0].token_ids) == reference_all[0][i]


def test_sampling_requests_use_the_proxy_without_disturbing_greedy_ones(
    proxy_is_target_llm, reference
):
    from vllm import SamplingParams

    before = counters(proxy_is_target_llm)
    sampled = [
        SamplingParams(temperature=0.8, max_tokens=MAX_TOKENS, ignore_eos=True, seed=s)
        for s in range(4)
    ]
    outs = proxy_is_target_llm.generate(prompts()[:4], sampled)
    after = counters(proxy_is_target_llm)
    assert all(len(o.outputs[0].token_ids) == MAX_TOKENS for o in outs)
    # Sampled requests are trusted on the temperature-scaled margins too.
    assert after["proxy_completions"] > before["proxy_completions"]
    mixed = [greedy() if i % 2 else sampled[i] for i in range(4)]
    outs = proxy_is_target_llm.generate(prompts()[:4], mixed)
    for i in (1, 3):
        assert list(outs[i].outputs[0].token_ids) == reference[i]


def test_over_long_prompt_is_refused_and_the_engine_keeps_serving(proxy_is_target_llm, reference):
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match="maximum context length"):
        proxy_is_target_llm.generate(["the cat sat on the mat. " * 80], greedy())
    assert token_ids(proxy_is_target_llm.generate(prompts()[:2], greedy())) == reference[:2]


def test_torch_compiled_engine_is_lossless_too(tiny_pair, reference):
    """vLLM compiles the model by default on CPU; TriSpec keeps that (no CUDA graphs).
    The TriSpec step runs in every step (the cost-aware step may leave it untried in
    a batch where a request has no draft)."""
    from vllm import LLM

    cfg = {"proxy_model": tiny_pair.target, "margin_threshold": 0.5, "cost_aware": False}
    llm = LLM(
        model=tiny_pair.target,
        dtype="float32",
        max_model_len=512,
        seed=0,
        speculative_config=NGRAM,
        additional_config={"trispec": cfg},
    )
    got = token_ids(llm.generate(prompts()[:4], greedy()))
    c = counters(llm)
    close(llm)
    assert got == reference[:4]
    assert c["proxy_completions"] > 0


def test_cost_aware_lossless_runs_no_proxy_and_equals_plain_greedy(tiny_pair, reference):
    """Lossless mode with the cost-aware step: standard SD, SD on the proxy's drafts and
    plain steps are the candidates (a TriSpec step would add the proxy pass to the
    same target work), and switching between them never changes a token. Four slots
    for sixteen requests: requests wait, so kinds rank by throughput and are tried (a
    batch nothing waits behind tries no SD run in a step where a request has no draft).
    Steps that propose no drafts skip vLLM's draft call to the worker (patch 13)."""
    cfg = {"proxy_model": tiny_pair.proxy, "margin_threshold": 1.5, "cost_aware": True}
    llm = make_llm(tiny_pair, NGRAM, cfg, max_num_seqs=4)
    core = llm.llm_engine.engine_core.engine_core  # in this process
    calls = {"take": 0, "step": 0}
    take, update = core.model_executor.take_draft_token_ids, core.scheduler.update_from_output

    def counted(name, fn):
        def call(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return call

    core.model_executor.take_draft_token_ids = counted("take", take)
    core.scheduler.update_from_output = counted("step", update)
    got = token_ids(llm.generate(prompts(), greedy()))
    c = counters(llm)
    close(llm)
    assert got == reference
    assert c["proxy_steps"] == 0 and c["trispec_kind_steps"] == 0
    assert c["sd_kind_steps"] > 0 and c["plain_kind_steps"] > 0, c
    assert 0 < calls["take"] <= calls["step"] - c["plain_kind_steps"], (calls, c)


def test_cost_aware_ranks_a_batch_nothing_waits_behind_by_its_slowest_request(tiny_pair, reference):
    """Requests submitted together fill the batch and leave none waiting: the
    scheduler's count reaches the runner (patch 11), and the cost-aware step ranks
    kinds by the slowest request's pace; a lone request is ranked by throughput."""
    cfg = {"proxy_model": tiny_pair.proxy, "margin_threshold": 1.5, "cost_aware": True}
    llm = make_llm(tiny_pair, NGRAM, cfg)
    got = token_ids(llm.generate(prompts()[:8], greedy()))
    together = counters(llm)["cost_objectives"]
    got += token_ids(llm.generate(prompts()[8:9], greedy()))
    alone = counters(llm)["cost_objectives"]
    learning = counters(llm)["cost_learning"]
    close(llm)
    assert got == reference[:9]
    # Every decoding class booked its seconds, and the regret its learning was charged.
    assert {"1", "8"} <= set(learning), learning
    assert all(0 <= v["regret_s"] <= v["seconds"] for v in learning.values()), learning
    assert together.get("slowest request", 0) > 0, together
    assert alone.get("one request", 0) > together.get("one request", 0), (together, alone)


def test_a_batch_prefilled_over_several_steps_waits_for_no_slot(tiny_pair, reference):
    """Eight prompts over a 48-token budget are prefilled over several steps; the
    requests left waiting meanwhile wait for the budget, not a slot (patch 11), so
    the batch is ranked by its slowest request from its first decoding step."""
    cfg = {"proxy_model": tiny_pair.proxy, "margin_threshold": 1.5, "cost_aware": True}
    llm = make_llm(tiny_pair, NGRAM, cfg, max_num_batched_tokens=48)
    got = token_ids(llm.generate(prompts()[:8], greedy()))
    objectives = counters(llm)["cost_objectives"]
    close(llm)
    assert got == reference[:8]
    assert objectives.get("slowest request", 0) > 0, objectives
    assert objectives.get("throughput", 0) == 0, objectives  # (lone first steps: "one request")


def test_cost_aware_proxy_equal_to_target_switches_kinds_exactly(tiny_pair, reference):
    """Proxy = target at lambda 0.05 is exact in every kind of step, so the output must
    equal plain greedy while the cost-aware step tries all three kinds (two slots for
    sixteen requests: requests wait, so kinds rank by throughput and are tried)."""
    cfg = {"proxy_model": tiny_pair.target, "margin_threshold": 0.05, "cost_aware": True}
    llm = make_llm(tiny_pair, NGRAM, cfg, max_num_seqs=2)
    got = token_ids(llm.generate(prompts(), greedy()))
    c = counters(llm)
    close(llm)
    assert got == reference
    for kind in ("trispec", "sd", "plain"):
        assert c[f"{kind}_kind_steps"] > 0, c


@pytest.mark.parametrize("lam", [1.5, 0.05], ids=["lossless", "trusted"])
def test_proxy_drafted_steps_keep_every_token_of_plain_greedy(
    tiny_pair, reference, reference_all, lam
):
    """The draft kind: the proxy drafts in place of the ngram drafter (here the target's
    own checkpoint, so its drafts are right), drafts near a request's next KV block
    included (block size 32, 64 tokens per request). Lossless, the target verifies
    every draft. Lossy, the verifying step routes on the margins the drafting passes
    gave, so a request whose drafts the proxy all trusts completes without the target;
    the trusted drafts are the target's greedy tokens here, so the output stays plain
    greedy's through the proxy's KV bookkeeping across draft, TriSpec, SD and plain
    steps (a stale position would change a draft, and with it a trusted token)."""
    cfg = {
        "proxy_model": tiny_pair.target,
        "margin_threshold": lam,
        "cost_aware": True,
        "proxy_drafting": True,
    }
    llm = make_llm(tiny_pair, NGRAM, cfg, block_size=32)
    # Under a grammar first, while the fresh engine tries every kind (the scheduler
    # validates the proxy's drafts like any drafter's).
    texts = [o.outputs[0].text for o in llm.generate(prompts()[:4], constrained())]
    under_grammar = counters(llm)["draft_kind_steps"]
    got = in_groups(llm, 4)
    c = counters(llm)
    close(llm)
    assert got == reference
    assert texts == reference_all[2] and under_grammar > 0
    assert c["draft_kind_steps"] > 0 and c["proxy_drafted_tokens"] > 0, c
    if lam > 1:
        # The target accepts the drafts of its own checkpoint: a step emits every draft
        # and one token more per request (garbage drafts would leave one a request).
        assert c["draft_kind_tokens"] >= 0.8 * c["proxy_drafted_tokens"], c
        assert c["trispec_kind_steps"] == 0 and c["proxy_steps"] == 0, c
        assert c["draft_kind_trusted"] == 0, c
    else:
        assert c["draft_kind_trusted"] > 0, c


def test_held_escalations_keep_plain_greedy_with_fewer_target_steps(tiny_pair, reference):
    """max_holds with the target's own checkpoint as proxy (exact trust): a held
    request reaches the target the next step, so the output stays plain greedy's, held
    requests that emit nothing (vLLM's rollback patch, their drafts proposed again)
    included; whole steps skip the target, so it runs in fewer steps than without."""
    counts = {}
    for holds in (0, 2):
        cfg = {"proxy_model": tiny_pair.target, "margin_threshold": 0.5, "max_holds": holds}
        llm = make_llm(tiny_pair, NGRAM, cfg)
        got = in_groups(llm, 8)
        counts[holds] = counters(llm)
        close(llm)
        assert got == reference, holds
    c = counts[2]
    assert c["held_escalations"] > 0 and c["held_without_tokens"] > 0, c
    assert counts[0]["held_escalations"] == 0
    assert c["target_steps"] < counts[0]["target_steps"], counts


def test_cost_memory_carries_the_measurements_to_the_next_engine(tiny_pair, reference, tmp_path):
    """An engine saves the cost-aware step's measurements (every 64 measured steps and
    at shutdown); the next engine of the same setup starts from them, before its
    first request, and its lossless output is still plain greedy. Another section
    (another key) starts from nothing."""
    cfg = {"proxy_model": tiny_pair.proxy, "margin_threshold": 1.5, "cost_aware": True}
    llm = make_llm(tiny_pair, NGRAM, cfg)
    first = token_ids(llm.generate(prompts(), greedy()))
    measured = counters(llm)["cost_rates"]
    close(llm)
    files = list((tmp_path / "costs").glob("costs-*.json"))
    assert len(files) == 1, files
    llm = make_llm(tiny_pair, NGRAM, cfg)
    restored = counters(llm)["cost_rates"]
    second = token_ids(llm.generate(prompts()[:4], greedy()))
    close(llm)
    assert first == reference and second == reference[:4]
    assert restored == measured and measured
    other = make_llm(tiny_pair, NGRAM, {**cfg, "max_skips": 3})
    assert counters(other)["cost_rates"] == {}
    close(other)


def test_cost_aware_step_with_prompt_chunks_runs_no_proxy_pass(tiny_pair, reference_all):
    """A step that carries prompt chunks (small chunks, long prompts beside decoding
    requests) runs as standard SD when a TriSpec step was chosen: the proxy does not
    read the chunks; it catches them up later, and the output stays exact (proxy =
    target at lambda 0.05 is exact in every kind of step). The draft model drafts in
    every step, so the TriSpec step is a candidate (and warmed up) in every step,
    those with prompt chunks included (batches of four, below `escalates_from`)."""
    cfg = {"proxy_model": tiny_pair.target, "margin_threshold": 0.05, "cost_aware": True}
    spec = {"method": "draft_model", "model": tiny_pair.proxy, "num_speculative_tokens": K}
    llm = make_llm(tiny_pair, spec, cfg, max_num_batched_tokens=64, max_num_seqs=4)
    refs = reference_all[0]
    got, want = [], []
    for i in range(0, 16, 2):  # long prompts arrive beside short ones already decoding
        got += token_ids(llm.generate(prompts()[i : i + 2] + LONG_PROMPTS, greedy()))
        want += refs[i : i + 2] + refs[16:]
    c = counters(llm)
    close(llm)
    assert got == want
    assert c["prompt_steps_without_proxy"] > 0, c
    assert c["proxy_prompt_tokens"] == 0, c
    assert c["trispec_kind_steps"] > 0, c
