"""`proxy_vocab` in vLLM's engine (CPU, tiny pair, fp32): the proxy's logits cover the
subset only, and routing follows the paper's rule on a proxy so restricted, with the
proxy as its own pass and as the drafter; refused where it would lose exactness."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.test_engine import K, close, counters, greedy, make_llm, prompts, token_ids
from trispec_vllm.config import TriSpecConfigError, make_config

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

SIZE = 256  # of the tiny pair's 512 ids: single bytes, then the special tokens


class Restricted(torch.nn.Module):
    """A Hugging Face model whose logits are -inf outside `ids` (the oracle's proxy)."""

    def __init__(self, model, ids: torch.Tensor) -> None:
        super().__init__()
        self.model, self.ids = model, ids

    def forward(self, input_ids):
        logits = self.model(input_ids).logits
        masked = torch.full_like(logits, float("-inf"))
        masked[..., self.ids] = logits[..., self.ids]
        return SimpleNamespace(logits=masked)


def proxy_logit_rows(worker) -> tuple[int, int, int]:
    """(finite, -inf, all) logits of the proxy (its own model, or the drafter's) on a
    random hidden row."""
    runner = worker.model_runner
    model = runner.trispec_proxy or runner.drafter.model
    hidden = torch.randn(1, model.config.hidden_size, device=runner.device)
    logits = model.compute_logits(hidden)
    return int(torch.isfinite(logits).sum()), int(torch.isneginf(logits).sum()), logits.numel()


@pytest.mark.parametrize("proxy_copy", [False, True], ids=["proxy-is-drafter", "separate-proxy"])
def test_restricted_proxy_follows_the_reference_rules(tiny_pair, tmp_path, proxy_copy, monkeypatch):
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.oracle import trispec_generate
    from trispec_vllm.policy.vocab import subset_ids

    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # collective_rpc(fn)
    proxy_path = tiny_pair.proxy
    if proxy_copy:
        proxy_path = str(shutil.copytree(tiny_pair.proxy, tmp_path / "proxy"))
    spec = {"method": "draft_model", "model": tiny_pair.proxy, "num_speculative_tokens": K}
    cfg = {"proxy_model": proxy_path, "margin_threshold": 0.5, "max_skips": 4, "proxy_vocab": SIZE}
    llm = make_llm(tiny_pair, spec, cfg)
    try:
        ((finite, masked, total),) = llm.collective_rpc(proxy_logit_rows)
        ps = prompts(6)
        got = token_ids(llm.generate(ps, greedy(32)))
        c = counters(llm)
    finally:
        close(llm)

    tok = AutoTokenizer.from_pretrained(tiny_pair.target)
    special = set(tok.all_special_ids) | set(tok.added_tokens_decoder)
    ids = subset_ids(SIZE, len(tok), special)
    assert finite == ids.numel() and masked == total - finite > 0
    assert c["escalations"] > 0
    target = AutoModelForCausalLM.from_pretrained(tiny_pair.target).eval()
    proxy = Restricted(AutoModelForCausalLM.from_pretrained(tiny_pair.proxy).eval(), ids)
    drafter = AutoModelForCausalLM.from_pretrained(tiny_pair.proxy).eval()
    if not proxy_copy:
        drafter = proxy  # the drafter's model is the proxy: it drafts from the subset too
        assert c["proxy_completions"] > 0
    for p, g in zip(ps, got, strict=True):
        ids_p = tok(p)["input_ids"]
        want = trispec_generate(target, proxy, drafter, ids_p, 32, K, 0.5, 4, not proxy_copy)
        assert g == want


def test_proxy_vocab_refused_where_it_would_lose_exactness_or_split(tiny_pair):
    from trispec_vllm.engine.config_hook import check_subset_vocab

    def vllm_config(model: str, tp: int = 1, runner: str = "generate"):
        return SimpleNamespace(
            model_config=SimpleNamespace(model=model, runner_type=runner),
            parallel_config=SimpleNamespace(tensor_parallel_size=tp),
        )

    cfg = make_config(proxy_model=tiny_pair.proxy, proxy_vocab=SIZE)
    check_subset_vocab(cfg, vllm_config(tiny_pair.target))
    with pytest.raises(TriSpecConfigError, match="tensor_parallel_size 1"):
        check_subset_vocab(cfg, vllm_config(tiny_pair.target, tp=2))
    same = make_config(proxy_model=tiny_pair.target, proxy_vocab=SIZE)
    with pytest.raises(TriSpecConfigError, match="its own proxy"):
        check_subset_vocab(same, vllm_config(tiny_pair.target + "/"))
    # the proxy's own config (its load), whose model is the proxy: not refused
    check_subset_vocab(cfg, vllm_config(tiny_pair.proxy, runner="draft"))
    check_subset_vocab(make_config(proxy_model=tiny_pair.target), vllm_config(tiny_pair.target))
