"""The proxy's vocabulary subset (`proxy_vocab`): which ids, and logits spread back."""

from __future__ import annotations

import pytest
import torch

from trispec_vllm.config import TriSpecConfigError, make_config
from trispec_vllm.policy.vocab import expand_logits, prefix_length, subset_ids


def test_subset_is_the_lowest_ids_and_the_special_tokens_in_range():
    ids = subset_ids(5, 12, [10, 3, 11, 20, 11])
    assert ids.tolist() == [0, 1, 2, 3, 4, 10, 11]
    assert prefix_length(ids) == 5
    assert subset_ids(50, 12).tolist() == list(range(12))  # covers the vocabulary
    with pytest.raises(ValueError, match="positive"):
        subset_ids(0, 12)


def test_prefix_length_stops_at_the_first_gap():
    assert prefix_length(torch.tensor([0, 1, 2, 7])) == 3
    assert prefix_length(torch.tensor([1, 2])) == 0
    assert prefix_length(torch.tensor([], dtype=torch.int64)) == 0


@pytest.mark.parametrize("ids", [[0, 1, 2, 3, 4, 10, 11], [0, 1, 2], [2, 5, 9]])
def test_expanded_logits_keep_the_subset_and_mask_the_rest(ids):
    ids = torch.tensor(ids)
    full = torch.randn(3, 12)
    got = expand_logits(full[:, ids], ids, 12, prefix_length(ids))
    assert got.shape == (3, 12)
    assert torch.equal(got[:, ids], full[:, ids])
    rest = torch.ones(12, dtype=torch.bool)
    rest[ids] = False
    assert torch.isneginf(got[:, rest]).all()
    # softmax and argmax over the expanded row are those of the subset
    assert torch.equal(got.argmax(-1), ids[full[:, ids].argmax(-1)])
    assert torch.allclose(got.softmax(-1)[:, ids], full[:, ids].softmax(-1))


def test_proxy_vocab_is_checked_by_the_section():
    assert make_config(proxy_model="p").proxy_vocab is None
    assert make_config(proxy_model="p", proxy_vocab=32768).proxy_vocab == 32768
    with pytest.raises(TriSpecConfigError, match="proxy_vocab"):
        make_config(proxy_model="p", proxy_vocab=10)
    with pytest.raises(TriSpecConfigError, match="proxy_vocab"):  # margin policy only
        make_config(proxy_model="p", policy="pyramid", proxy_vocab=32768)
