"""The prefix cache's block ledger (pure logic, no vLLM)."""

from __future__ import annotations

import pytest

from trispec_vllm.policy.kv_blocks import BlockLedger, GroupLedgers


def test_cached_blocks_are_trusted_only_as_far_as_each_model_wrote_them():
    ledger = BlockLedger(block_size=4)
    assert ledger.start("a", [7, 8, 9], num_cached=0) == {"target": 0, "proxy": 0}
    ledger.book("target", "a", watermark=5)  # block 7 complete, 8 not
    ledger.book("proxy", "a", watermark=12)  # all three
    assert ledger.is_complete("target", 7) and not ledger.is_complete("target", 8)
    # b hits a's three blocks: the target may read 4 positions, the proxy all 12.
    assert ledger.start("b", [7, 8, 9, 3], num_cached=12) == {"target": 4, "proxy": 12}
    # The trusted part never exceeds the hits.
    assert ledger.start("c", [7, 8, 9], num_cached=8) == {"target": 4, "proxy": 8}


def test_a_block_handed_out_fresh_loses_its_booking():
    ledger = BlockLedger(block_size=4)
    ledger.start("a", [1, 2], num_cached=0)
    ledger.book("target", "a", 8)
    ledger.book("proxy", "a", 8)
    ledger.forget([])  # a finished: its blocks keep their content (and bookings)
    assert ledger.is_complete("target", 2)
    ledger.start("b", [5, 2], num_cached=0)  # block 2 reused with new content
    assert not ledger.is_complete("target", 2) and not ledger.is_complete("proxy", 2)
    assert ledger.is_complete("target", 1)
    ledger.extend("b", [1])  # a running request's new block is fresh too
    assert not ledger.is_complete("target", 1)
    assert ledger.start("c", [1, 2], num_cached=8) == {"target": 0, "proxy": 0}


def test_a_run_of_complete_blocks_stops_at_the_first_gap():
    ledger = BlockLedger(block_size=2)
    ledger.start("a", [1, 2, 3], 0)
    ledger.book("target", "a", 6)
    ledger.start("x", [2], 0)  # block 2 reused fresh: a gap in a's run
    assert ledger.start("b", [1, 2, 3], num_cached=6)["target"] == 2


def test_booking_follows_the_watermark_in_steps_and_back():
    ledger = BlockLedger(block_size=2)
    ledger.start("a", [1, 2], 0)
    ledger.extend("a", [3])
    ledger.book("target", "a", 3)
    assert [ledger.is_complete("target", b) for b in (1, 2, 3)] == [True, False, False]
    ledger.book("target", "a", 1)  # moved back: nothing new, nothing unbooked
    ledger.book("target", "a", 6)
    assert all(ledger.is_complete("target", b) for b in (1, 2, 3))
    ledger.book("target", "unknown", 6)  # a request the ledger never saw: no-op


def test_forget_drops_finished_requests_only():
    ledger = BlockLedger(block_size=2)
    ledger.start("a", [1], 0)
    ledger.start("b", [2], 0)
    ledger.forget(["b"])
    ledger.book("target", "a", 2)  # forgotten: its block list is gone
    ledger.book("target", "b", 2)
    assert not ledger.is_complete("target", 1) and ledger.is_complete("target", 2)


def test_block_size_must_be_positive():
    with pytest.raises(ValueError, match="block_size"):
        BlockLedger(0)


def test_every_kv_cache_group_must_hold_a_cached_position():
    """A hybrid model's groups: a position is trusted where every group's block is
    complete; the null block (a sliding window's dropped positions) counts as complete."""
    ledgers = GroupLedgers([4, 4], null_block=0)
    ledgers.start("a", [[7, 8, 9], [17, 18, 19]], num_cached=0)
    ledgers.book("target", "a", 12)
    ledgers.book("proxy", "a", 12)
    assert ledgers.start("b", [[7, 8, 9], [17, 18, 19]], 12) == {"target": 12, "proxy": 12}
    # Group 1's second block handed out fresh to another request: both groups stop there.
    ledgers.start("c", [[5], [18]], 0)
    assert ledgers.start("d", [[7, 8, 9], [17, 18, 19]], 12) == {"target": 4, "proxy": 4}
    # Out-of-window positions come as the null block, which nobody reads.
    assert ledgers.start("e", [[7, 8, 9], [0, 0, 19]], 12) == {"target": 12, "proxy": 12}
    ledgers.forget(["e"])
    with pytest.raises(ValueError, match="2 KV cache groups"):
        ledgers.extend("e", [[1]])
