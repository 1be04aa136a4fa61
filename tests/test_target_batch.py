"""Splitting a catch-up sub-batch into passes that fit vLLM's token budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trispec_vllm.policy.target_batch import (
    TargetBatchError,
    build_target_batch,
    in_group,
    split_target_batch,
)


def batch(rng: np.random.Generator, n_reqs: int):
    block_size = 4
    computed = rng.integers(0, 30, n_reqs)
    watermarks = np.array([rng.integers(0, c + 1) for c in computed])
    scheduled = rng.integers(1, 9, n_reqs)
    table = torch.from_numpy(rng.permutation(16 * n_reqs).reshape(n_reqs, 16).astype(np.int32))
    tokens = rng.integers(0, 500, (n_reqs, 64))
    return build_target_batch(
        np.arange(n_reqs), watermarks, computed, scheduled, tokens, table, block_size
    )


@pytest.mark.parametrize("seed", range(20))
def test_windows_cover_the_batch_in_order_and_fit_the_budget(seed):
    rng = np.random.default_rng(seed)
    tb = batch(rng, int(rng.integers(1, 6)))
    limit = int(rng.integers(1, max(2, tb.num_tokens + 2)))
    pieces = split_target_batch(tb, limit)
    assert all(0 < p.num_tokens <= limit for p in pieces)
    for name in ("token_ids", "positions", "slot_mapping"):
        joined = torch.cat([getattr(p, name) for p in pieces])
        assert torch.equal(joined, getattr(tb, name)), name
    # Each request's slices continue where the previous window stopped, and each
    # window's metadata describes exactly its own slices.
    seen: dict[int, int] = {}
    for p in pieces:
        qsl = p.query_start_loc.tolist()
        assert qsl[0] == 0 and qsl[-1] == p.num_tokens
        for i, row in enumerate(p.rows.tolist()):
            pos = p.positions[qsl[i] : qsl[i + 1]].tolist()
            assert pos == list(range(pos[0], pos[0] + len(pos)))
            assert pos[0] == seen.get(row, int(tb.positions[tb.query_start_loc[row]]))
            seen[row] = pos[-1] + 1
            assert int(p.seq_lens[i]) == pos[-1] + 1
            assert torch.equal(p.block_table[i], tb.block_table[row])
        assert p.max_query_len == max(np.diff(qsl)) and p.max_seq_len == int(p.seq_lens.max())
    assert seen == {r: int(s) for r, s in zip(tb.rows.tolist(), tb.seq_lens.tolist(), strict=True)}


def test_a_batch_within_budget_is_one_pass():
    tb = batch(np.random.default_rng(0), 3)
    assert split_target_batch(tb, tb.num_tokens) == [tb]
    with pytest.raises(ValueError, match="positive"):
        split_target_batch(tb, 0)


@pytest.mark.parametrize("seed", range(10))
def test_another_kv_cache_group_gets_its_own_slots_for_the_same_tokens(seed):
    """A hybrid model's second group (its own block table and block size): the same
    tokens and positions, each slot in that group's block of the position, as if the
    batch had been built on that group's table."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5))
    computed = rng.integers(0, 30, n)
    watermarks = np.array([rng.integers(0, c + 1) for c in computed])
    scheduled = rng.integers(1, 9, n)
    tokens = rng.integers(0, 500, (n, 64))
    rows = np.arange(n)
    table0 = torch.from_numpy(rng.permutation(16 * n).reshape(n, 16).astype(np.int32))
    table1 = torch.from_numpy(rng.permutation(8 * n).reshape(n, 8).astype(np.int32) + 100)
    tb = build_target_batch(rows, watermarks, computed, scheduled, tokens, table0, 4)
    want = build_target_batch(rows, watermarks, computed, scheduled, tokens, table1, 8)
    got = in_group(tb, table1, 8)
    for name in ("token_ids", "positions", "slot_mapping", "block_table", "query_start_loc"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert not torch.equal(got.slot_mapping, tb.slot_mapping)
    with pytest.raises(TargetBatchError, match="past the block table"):
        in_group(tb, table1[:, :1], 1, req_ids=[f"r{i}" for i in range(n)])
