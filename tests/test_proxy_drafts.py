"""How many drafts the proxy writes per request (pure logic, no vLLM)."""

from __future__ import annotations

import numpy as np

from trispec_vllm.policy.proxy_drafts import proxy_draft_lengths


def test_drafts_stay_inside_the_allocated_blocks_and_the_context():
    """Request 0 has room for k; request 1's drafts would cross into a block it does not
    have yet (KV written at positions up to n + L - 2); request 2 is at the end of the
    context; request 3 got a draft from the drafter (not wanted)."""
    lengths = proxy_draft_lengths(
        k=3,
        num_tokens=np.array([10, 31, 62, 10]),
        allocated_slots=np.array([32, 32, 64, 32]),
        max_model_len=64,
        wanted=np.array([True, True, True, False]),
    )
    assert lengths.tolist() == [3, 2, 2, 0]


def test_no_room_gives_no_draft_never_a_negative_count():
    lengths = proxy_draft_lengths(
        k=4,
        num_tokens=np.array([33, 64]),
        allocated_slots=np.array([32, 64]),
        max_model_len=64,
        wanted=np.array([True, True]),
    )
    assert lengths.tolist() == [0, 0]
