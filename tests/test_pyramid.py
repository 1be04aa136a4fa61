"""PyramidSD's fuzzy acceptance rule and the divergences it uses (no vLLM)."""

from __future__ import annotations

import math

import pytest
import torch

from trispec_vllm.kernels import divergence_reference, point_mass_divergence
from trispec_vllm.kernels.divergence import KINDS
from trispec_vllm.policy.pyramid import PAD, first_target_failure, qualifier_accepts, target_verify


def test_divergences_match_their_definitions():
    p = torch.tensor([[0.7, 0.2, 0.1]])
    q = torch.tensor([[0.2, 0.5, 0.3]])
    m = 0.5 * (p + q)

    def kl(a, b):
        return float((a * (a / b).log()).sum())

    got = {k: float(divergence_reference(p.log(), q.log(), None, k)) for k in KINDS}
    assert got["js"] == pytest.approx(0.5 * kl(p, m) + 0.5 * kl(q, m), rel=1e-5)
    assert got["kl"] == pytest.approx(kl(q, p), rel=1e-5)  # checked model first, as FSD
    assert got["tv"] == pytest.approx(0.5 * float((p - q).abs().sum()), rel=1e-5)


def test_divergence_bounds_identity_and_temperature():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 300, generator=g) * 4
    b = torch.randn(6, 300, generator=g) * 4
    js = divergence_reference(a, b, None, "js")
    assert torch.all(js >= 0) and torch.all(js <= math.log(2) + 1e-6)
    assert torch.all(divergence_reference(a, b, None, "tv") <= 1 + 1e-6)
    for k in KINDS:
        assert torch.allclose(divergence_reference(a, a, None, k), torch.zeros(6), atol=1e-6)
    t = torch.full((6,), 2.0)
    assert torch.allclose(divergence_reference(a, b, t, "js"), divergence_reference(a / 2, b / 2))


def test_divergence_survives_underflow_and_masked_entries():
    a = torch.zeros(2, 50)
    b = torch.zeros(2, 50)
    a[0, :10], b[0, :10] = -200.0, -210.0  # probabilities below fp32's smallest normal
    a[1, :5] = float("-inf")  # masked: probability 0 in P only
    for k in ("js", "tv"):
        out = divergence_reference(a, b, None, k)
        assert torch.all(torch.isfinite(out)), (k, out)
    # KL(Q || P) is infinite where Q has mass P lacks, finite the other way round.
    assert math.isinf(float(divergence_reference(a[1:], b[1:], None, "kl")[0]))
    assert math.isfinite(float(divergence_reference(b[1:], a[1:], None, "kl")[0]))


@pytest.mark.parametrize("kind", KINDS)
def test_point_mass_divergence_equals_the_full_divergence(kind):
    q = torch.tensor([0.05, 0.3, 0.5, 0.9, 0.999])
    for i, qi in enumerate(q.tolist()):
        rest = (1 - qi) / 3
        checker = torch.tensor([[qi, rest, rest, rest]]).log()
        point = torch.tensor([[0.0, -1e4, -1e4, -1e4]])  # all mass on token 0
        want = float(divergence_reference(checker, point, None, kind))
        assert float(point_mass_divergence(q[i : i + 1], kind)) == pytest.approx(want, abs=1e-4)
    # Monotone: the test is a floor on the qualifier's probability of the draft.
    assert torch.all(point_mass_divergence(q, kind).diff() < 0)


def test_unknown_divergence_is_refused():
    with pytest.raises(ValueError, match="unknown divergence 'hellinger'"):
        divergence_reference(torch.zeros(1, 3), torch.zeros(1, 3), None, "hellinger")


DRAFTS = torch.tensor([[5, 6, 7], [5, 6, 7], [5, 6, 7], [8, PAD, PAD]])
NUM = torch.tensor([3, 3, 3, 1])


def test_qualifier_keeps_the_leading_passing_drafts():
    passes = torch.tensor(
        [[True, True, True], [True, False, True], [False, True, True], [True, True, True]]
    )
    # The last request has one draft: its later verdicts are ignored.
    assert qualifier_accepts(DRAFTS, NUM, passes).tolist() == [3, 1, 0, 1]


def test_target_keeps_the_whole_candidate_when_every_position_passes():
    a = torch.tensor([3, 1, 0, 1])
    c = torch.tensor([9, 19, 29, 39])
    t_pass = torch.ones(4, 4, dtype=torch.bool)
    d = target_verify(DRAFTS, a, c, t_pass, torch.full((4,), 99))
    assert d.tokens.tolist() == [
        [5, 6, 7, 9],
        [5, 19, PAD, PAD],
        [29, PAD, PAD, PAD],
        [8, 39, PAD, PAD],
    ]
    assert d.num_emitted.tolist() == [4, 2, 1, 2]
    assert d.target_accepted.tolist() == [4, 2, 1, 2]


def test_target_replaces_the_first_failing_position():
    a = torch.tensor([3, 1, 0, 1])
    c = torch.tensor([9, 19, 29, 39])
    t_pass = torch.tensor(
        [
            [True, False, True, True],  # fails at 1: d_1 then the target's token
            [True, False, True, True],  # fails at the qualifier's token c
            [False, True, True, True],  # fails at once: only the target's token
            [True, True, False, False],  # passes through c; later positions do not matter
        ]
    )
    t_fail = first_target_failure(a, t_pass)
    assert t_fail.tolist() == [1, 1, 0, 2]
    d = target_verify(DRAFTS, a, c, t_pass, torch.tensor([70, 71, 72, 73]))
    assert d.tokens.tolist() == [
        [5, 70, PAD, PAD],
        [5, 71, PAD, PAD],
        [72, PAD, PAD, PAD],
        [8, 39, PAD, PAD],
    ]
    assert d.num_emitted.tolist() == [2, 2, 1, 2]
    assert d.target_accepted.tolist() == [1, 1, 0, 2]
