"""TriSpec with temperature > 0 inside vLLM (tiny models, CPU, fp32).

Sampled requests are verified by the proxy with the standard speculative
sampling rule (vLLM's rejection sampler over the proxy's rows) when the
router trusts it, by the target otherwise. Checked here:
- lossless mode: the distribution of the sampled tokens equals the target's
  (chi-square against the exact marginals computed with transformers, fixed
  seeds, so the verdict is deterministic);
- proxy = target at lambda 0.5: the trusted path samples the target's
  distribution too, and the proxy does complete sampled requests;
- proxy = drafter = target at lambda 0: the drafter-proxy completes sampled
  requests with the speculative-sampling rule over its own rows, exactly;
- per-request seeds: the same output run after run and whatever the batch
  neighbours are, with a smaller proxy at lambda 0.5.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from tests.test_engine import NGRAM, K, close, counters, make_llm, prompts, token_ids

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

TEMPERATURE = 2.0  # vLLM's largest; with the soft pair below, entropy ~2.4 nats
PROMPT = "the cat sat on the mat. "
SAMPLES = 600


def draft_spec(tiny_pair) -> dict:
    return {"method": "draft_model", "model": tiny_pair.proxy, "num_speculative_tokens": K}


def chi_square_pvalue(observed: Counter, expected: dict[int, float], n: int) -> float:
    """Pearson's test, bins with an expected count under 5 pooled; Wilson-Hilferty tail."""
    big = [t for t, p in expected.items() if p * n >= 5]
    bins = [(observed.get(t, 0), expected[t] * n) for t in big]
    rest_obs = n - sum(o for o, _ in bins)
    rest_exp = n - sum(e for _, e in bins)
    if rest_exp >= 5:
        bins.append((rest_obs, rest_exp))
    stat = sum((o - e) ** 2 / e for o, e in bins)
    df = len(bins) - 1
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def sample_many(llm, n: int = SAMPLES) -> list[list[int]]:
    from vllm import SamplingParams

    params = [
        SamplingParams(temperature=TEMPERATURE, max_tokens=3, ignore_eos=True, seed=s)
        for s in range(n)
    ]
    return token_ids(llm.generate([PROMPT] * n, params, use_tqdm=False))


def assert_target_distribution(samples: list[list[int]], exact) -> None:
    p2, p3 = exact
    n = len(samples)
    for pos, expected in ((1, p2), (2, p3)):
        seen = Counter(s[pos] for s in samples)
        assert len(seen) > 10  # really sampled, not collapsed onto the drafts
        pvalue = chi_square_pvalue(seen, expected, n)
        assert pvalue > 1e-3, (pos, pvalue, seen.most_common(5))


def test_lossless_sampling_has_the_targets_distribution(soft_pair, exact_marginals):
    llm = make_llm(
        soft_pair,
        draft_spec(soft_pair),
        {"proxy_model": soft_pair.proxy, "margin_threshold": 1.5},
    )
    samples = sample_many(llm)
    c = counters(llm)
    close(llm)
    assert c["proxy_completions"] == 0 and c["escalations"] > 0
    assert_target_distribution(samples, exact_marginals)


def test_trusted_proxy_samples_with_the_rejection_rule(soft_pair, exact_marginals):
    """proxy = target: trusted steps verify with the proxy's rows, and those are
    the target's, so the distribution must still be the target's."""
    llm = make_llm(
        soft_pair,
        draft_spec(soft_pair),
        {"proxy_model": soft_pair.target, "margin_threshold": 0.05},
    )
    samples = sample_many(llm)
    c = counters(llm)
    close(llm)
    assert c["proxy_completions"] > 0
    assert_target_distribution(samples, exact_marginals)


def test_drafter_proxy_samples_with_the_rejection_rule(soft_pair, exact_marginals):
    """Proxy = drafter = target at lambda 0: the drafter's own rows complete every
    decoding step (its drafts are argmax tokens, verified by speculative sampling
    against those rows), and the rows are the target's: the target's distribution."""
    # One draft: the third token then sits past the drafter's last row, where a
    # step that accepted its draft must end (there is no proxy row to sample from).
    spec = {"method": "draft_model", "model": soft_pair.target, "num_speculative_tokens": 1}
    llm = make_llm(soft_pair, spec, {"proxy_model": soft_pair.target, "margin_threshold": 0.0})
    samples = sample_many(llm)
    c = counters(llm)
    # top-p requests too: vLLM's sampler truncates the drafter's rows as the target's.
    from vllm import SamplingParams

    nucleus = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=24, ignore_eos=True, seed=3)
    outs = token_ids(llm.generate(prompts(4), nucleus))
    after = counters(llm)
    close(llm)
    assert c["proxy_completions"] > SAMPLES / 2, c
    assert_target_distribution(samples, exact_marginals)
    assert all(len(o) == 24 for o in outs)
    assert after["proxy_completions"] > c["proxy_completions"]


@pytest.fixture(scope="module")
def lossy_llm(soft_pair):
    llm = make_llm(soft_pair, NGRAM, {"proxy_model": soft_pair.proxy, "margin_threshold": 0.5})
    yield llm
    close(llm)


def test_seeded_requests_repeat_whatever_their_neighbours(lossy_llm):
    from vllm import SamplingParams

    def params(seed):
        return SamplingParams(temperature=1.0, max_tokens=48, ignore_eos=True, seed=seed)

    ps = prompts(8)
    before = counters(lossy_llm)
    alone = [token_ids(lossy_llm.generate([ps[i]], params(100 + i)))[0] for i in (0, 3)]
    crowd = token_ids(lossy_llm.generate(ps, [params(100 + i) for i in range(8)]))
    again = token_ids(lossy_llm.generate(ps[::-1], [params(100 + i) for i in range(8)][::-1]))
    after = counters(lossy_llm)
    assert crowd[0] == alone[0] and crowd[3] == alone[1]
    assert again[::-1] == crowd
    assert after["proxy_completions"] > before["proxy_completions"]  # the proxy did work
    assert after["escalations"] > before["escalations"]


def test_sampled_and_greedy_requests_share_a_batch(lossy_llm):
    from vllm import SamplingParams

    greedy = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    ps = prompts(4)
    want = token_ids(lossy_llm.generate(ps, greedy))
    mixed = [
        greedy if i % 2 else SamplingParams(temperature=1.0, max_tokens=32, seed=i)
        for i in range(4)
    ]
    got = token_ids(lossy_llm.generate(ps, mixed))
    assert got[1] == want[1] and got[3] == want[3]
    assert all(0 < len(g) <= 32 and np.all(np.array(g) >= 0) for g in got)
