"""Policy 'pyramid' (PyramidSD fuzzy acceptance) and adaptive lambda inside vLLM.

Each check picks thresholds at which the fuzzy rule's output is known exactly
from plain greedy decoding of one model, so the test has one right answer:
- PSD_A with proxy = target: the qualifier's exact verification plus the
  target stage give the target's greedy output, whatever tau_T lets through;
- PSD_F with tau_q = 0 and a tau_t every divergence passes: drafts never pass
  the qualifier and the target keeps every qualifier token, so the output is
  the proxy's own greedy decoding;
- PSD_F with tau_t = 0: the target replaces the first candidate token every
  step, so the output is the target's greedy decoding.
Sampling: PSD_A with proxy = target samples the target's distribution
(chi-square, fixed seeds) and seeded requests do not depend on their
neighbours. Adaptive lambda: output stays lossless when its floor is above 1,
and lambda moves with the proxy's observed disagreement.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from tests.test_engine import (
    NGRAM,
    REGEX,
    K,
    close,
    constrained,
    counters,
    greedy,
    make_llm,
    prompts,
    token_ids,
)
from tests.test_sampling import assert_target_distribution, sample_many

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

N_PROMPTS = 8


def draft_spec(pair) -> dict:
    return {"method": "draft_model", "model": pair.proxy, "num_speculative_tokens": K}


@pytest.fixture(scope="module")
def plain_outputs(tiny_pair):
    """Non-speculative greedy outputs of the target (texts of the first four prompts
    under `constrained()` too), and of the proxy continuing from the target's first
    token (a TriSpec engine samples the prefill's token from the target, whatever the
    policy)."""
    from tests.test_engine import MAX_TOKENS

    llm = make_llm(tiny_pair)
    outs = llm.generate(prompts(N_PROMPTS), greedy(MAX_TOKENS))
    regex = [o.outputs[0].text for o in llm.generate(prompts(4), constrained())]
    close(llm)
    target = token_ids(outs)
    llm = make_llm(dataclasses.replace(tiny_pair, target=tiny_pair.proxy))
    seeded = [
        {"prompt_token_ids": list(o.prompt_token_ids) + [t[0]]}
        for o, t in zip(outs, target, strict=True)
    ]
    rest = token_ids(llm.generate(seeded, greedy(MAX_TOKENS - 1)))
    close(llm)
    proxy = [t[:1] + r for t, r in zip(target, rest, strict=True)]
    return {"target": target, "proxy": proxy, "regex": regex}


def run(tiny_pair, spec, trispec):
    llm = make_llm(tiny_pair, spec, trispec)
    got = token_ids(llm.generate(prompts(N_PROMPTS), greedy()))
    c = counters(llm)
    close(llm)
    return got, c


def test_psd_a_with_proxy_equal_to_target_is_the_targets_greedy(tiny_pair, plain_outputs):
    got, c = run(
        tiny_pair,
        draft_spec(tiny_pair),
        {
            "proxy_model": tiny_pair.target,
            "policy": "pyramid",
            "pyramid_variant": "psd_a",
            "tau_t": 10.0,
        },
    )
    assert got == plain_outputs["target"]
    assert c["fuzzy_accepted_tokens"] > 0 and c["proxy_accepted_tokens"] > 0
    assert c["proxy_completions"] == 0  # PyramidSD sends every window to the target


def test_psd_f_without_target_veto_is_the_proxys_greedy(tiny_pair, plain_outputs):
    """...except under a grammar: PyramidSD draws its tokens outside vLLM's sampler,
    which applies the grammar's bitmask, so such requests get standard SD (the
    target's constrained output) while their free neighbours keep the proxy's."""
    from vllm import SamplingParams

    from tests.test_engine import MAX_TOKENS

    section = {"proxy_model": tiny_pair.proxy, "policy": "pyramid", "tau_q": 0.0, "tau_t": 10.0}
    llm = make_llm(tiny_pair, NGRAM, section)
    got = token_ids(llm.generate(prompts(N_PROMPTS), greedy()))
    c = counters(llm)
    mixed = llm.generate(prompts(4), [constrained() if i % 2 == 0 else greedy() for i in range(4)])
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=2)
    with_logprobs = llm.generate(prompts(4), params)
    close(llm)
    # vLLM's logprobs name the tokens PyramidSD emits, not those its sampler chose.
    for out, want in zip(with_logprobs, plain_outputs["proxy"], strict=False):
        completion = out.outputs[0]
        assert list(completion.token_ids) == want
        for token, entry in zip(completion.token_ids, completion.logprobs, strict=True):
            assert token in entry and len(entry) <= 3
            top = max(e.logprob for e in entry.values())
            assert (entry[token].rank == 1) == (entry[token].logprob == top)
    assert got == plain_outputs["proxy"]
    assert c["fuzzy_accepted_tokens"] > 0
    for i in (0, 2):
        assert re.fullmatch(REGEX, mixed[i].outputs[0].text)
        assert mixed[i].outputs[0].text == plain_outputs["regex"][i]
    for i in (1, 3):
        assert list(mixed[i].outputs[0].token_ids) == plain_outputs["proxy"][i]


def test_psd_f_with_zero_target_threshold_is_the_targets_greedy(tiny_pair, plain_outputs):
    got, c = run(
        tiny_pair,
        draft_spec(tiny_pair),
        {"proxy_model": tiny_pair.proxy, "policy": "pyramid", "tau_q": 10.0, "tau_t": 0.0},
    )
    assert got == plain_outputs["target"]
    assert c["fuzzy_accepted_tokens"] == 0
    assert c["proxy_accepted_tokens"] > 0  # the qualifier let drafts through


def test_adaptive_lambda_above_one_is_lossless(tiny_pair, plain_outputs):
    got, c = run(
        tiny_pair,
        NGRAM,
        {
            "proxy_model": tiny_pair.proxy,
            "adaptive_lambda": True,
            "margin_threshold": 1.5,
            "lambda_min": 1.2,
            "lambda_max": 2.0,
        },
    )
    assert got == plain_outputs["target"]
    assert c["proxy_completions"] == 0 and c["lambda_count"] > 0


def test_adaptive_lambda_follows_the_observed_disagreement(tiny_pair):
    """The tiny proxy disagrees with the target often: with a 1% goal lambda must
    rise from its start; with a 90% goal it must fall."""
    means = {}
    for goal in (0.01, 0.9):
        _, c = run(
            tiny_pair,
            NGRAM,
            {
                "proxy_model": tiny_pair.proxy,
                "adaptive_lambda": True,
                "margin_threshold": 0.5,
                "target_disagreement": goal,
                "adaptive_rate": 0.05,
                "lambda_max": 1.5,
            },
        )
        assert c["adaptive_trials"] > 0
        means[goal] = c["lambda_sum"] / c["lambda_count"]
    assert means[0.01] > 0.5 > means[0.9], means


def test_psd_a_with_proxy_equal_to_target_samples_the_targets_distribution(
    soft_pair, exact_marginals
):
    """The qualifier's exact speculative sampling against a deterministic drafter
    samples Q = P_T, and the target keeps it: the target's distribution."""
    llm = make_llm(
        soft_pair,
        draft_spec(soft_pair),
        {
            "proxy_model": soft_pair.target,
            "policy": "pyramid",
            "pyramid_variant": "psd_a",
            "tau_t": 10.0,
        },
    )
    samples = sample_many(llm)
    c = counters(llm)
    close(llm)
    assert c["fuzzy_accepted_tokens"] > 0
    assert_target_distribution(samples, exact_marginals)


def test_pyramid_seeded_requests_repeat_whatever_their_neighbours(tiny_pair):
    from vllm import SamplingParams

    llm = make_llm(
        tiny_pair, draft_spec(tiny_pair), {"proxy_model": tiny_pair.proxy, "policy": "pyramid"}
    )

    def params(seed):
        return SamplingParams(temperature=1.0, max_tokens=32, ignore_eos=True, seed=seed)

    ps = prompts(6)
    alone = token_ids(llm.generate([ps[2]], params(102)))[0]
    crowd = token_ids(llm.generate(ps, [params(100 + i) for i in range(6)]))
    again = token_ids(llm.generate(ps[::-1], [params(100 + i) for i in range(6)][::-1]))
    c = counters(llm)
    close(llm)
    assert crowd[2] == alone and again[::-1] == crowd
    assert c["fuzzy_accepted_tokens"] > 0


def run_shrinking_batch(tiny_pair, plain_outputs, trispec: dict) -> dict:
    """8 requests of 8..64 tokens (the batch shrinks as they finish), proxy = target at
    lambda 0.05 plus `trispec`; checks the output equals plain greedy, returns counters."""
    from vllm import SamplingParams

    section = {"proxy_model": tiny_pair.target, "margin_threshold": 0.05, **trispec}
    llm = make_llm(tiny_pair, NGRAM, section)
    lengths = [8, 16, 24, 32, 40, 48, 56, 64]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in lengths]
    got = token_ids(llm.generate(prompts(N_PROMPTS), params))
    c = counters(llm)
    close(llm)
    assert got == [p[:n] for p, n in zip(plain_outputs["target"], lengths, strict=True)]
    return c


def test_steps_without_the_proxy_keep_proxy_equal_to_target_exact(tiny_pair, plain_outputs):
    """Above max_proxy_batch the proxy sits out (standard SD on the target); when the
    batch shrinks it catches its KV cache up. proxy = target at lambda 0.05 trusts the
    proxy almost everywhere, so any gap in its cache would change the output."""
    c = run_shrinking_batch(tiny_pair, plain_outputs, {"max_proxy_batch": 3})
    assert c["proxy_catchup_tokens"] > 0  # the proxy did sit out, then caught up
    assert c["proxy_steps"] < c["target_steps"] + c["proxy_completions"]
    assert c["proxy_completions"] > 0  # and was trusted afterwards


def test_batches_with_speculation_disabled_keep_proxy_equal_to_target_exact(
    tiny_pair, plain_outputs
):
    """At disable_by_batch_size requests or more, steps are vLLM's own plain decoding
    (no drafts, no proxy); as requests finish the batch shrinks, the proxy catches its
    KV up and is trusted again. Proxy = target at lambda 0.05: any gap in either
    model's cache would change the output."""
    c = run_shrinking_batch(tiny_pair, plain_outputs, {"disable_by_batch_size": 4})
    assert c["plain_steps"] > 0  # vLLM's own steps while 4+ requests ran
    assert c["proxy_catchup_tokens"] > 0  # then the proxy caught up
    assert c["proxy_completions"] > 0  # and was trusted
