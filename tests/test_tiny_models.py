"""The tiny model fixtures: loadable, shared vocabulary, peaky and mostly agreeing."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def test_pair_shares_tokenizer_and_vocab(tiny_pair):
    from transformers import AutoTokenizer

    tok_t = AutoTokenizer.from_pretrained(tiny_pair.target)
    tok_p = AutoTokenizer.from_pretrained(tiny_pair.proxy)
    text = "def add(a, b):\n    return a + b  # ünïcode"
    assert tok_t(text)["input_ids"] == tok_p(text)["input_ids"]
    assert tok_t.decode(tok_t(text)["input_ids"]) == text
    vocab = [
        json.loads((Path(p) / "config.json").read_text())["vocab_size"]
        for p in (tiny_pair.target, tiny_pair.proxy, tiny_pair.other_vocab_proxy)
    ]
    assert vocab[0] == vocab[1] == len(tok_t) and vocab[2] != vocab[0]
    sizes = sum(f.stat().st_size for f in Path(tiny_pair.target).iterdir())
    assert sizes < 5 * 2**20


def test_greedy_has_no_near_ties_and_proxy_mostly_agrees(tiny_pair):
    from transformers import AutoModelForCausalLM

    target = AutoModelForCausalLM.from_pretrained(tiny_pair.target)
    proxy = AutoModelForCausalLM.from_pretrained(tiny_pair.proxy)
    ids = torch.randint(0, 500, (4, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lt = target(ids).logits
        lp = proxy(ids).logits
    top = lt.topk(2, dim=-1).values
    assert (top[..., 0] - top[..., 1]).min() > 1e-3  # fp32 noise is ~1e-5
    agree = (lt.argmax(-1) == lp.argmax(-1)).float().mean().item()
    assert 0.3 < agree < 0.98  # the proxy helps but is not the target
