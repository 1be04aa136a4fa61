"""Small bf16 matmuls padded (TRISPEC_CPU_GEMM_MIN_ROWS, patch 14) in vLLM's engine:
every linear layer of the engine's models pads, and lossless TriSpec still gives
vLLM's own non-speculative greedy output token for token (CPU, tiny pair in bf16)."""

from __future__ import annotations

import pytest

from tests.test_engine import NGRAM, close, greedy, prompts, token_ids

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm


def bf16_llm(pair, **kwargs):
    from vllm import LLM

    return LLM(
        model=pair.target, dtype="bfloat16", max_model_len=512, enforce_eager=True, seed=0, **kwargs
    )


def padded_layers(worker) -> tuple[int, int]:
    """(linear layers that pad, linear layers) of the worker's models."""
    runner = worker.model_runner
    models = [runner.model, *[m for m in vars(runner).values() if hasattr(m, "lm_head")]]
    layers = [m for model in models for m in model.modules() if hasattr(m, "cpu_linear")]
    pads = [m for m in layers if getattr(m.cpu_linear, "trispec_min_rows", None) == 4]
    return len(pads), len(layers)


def test_padded_engines_pad_every_linear_and_stay_lossless(tiny_pair, monkeypatch):
    from vllm.model_executor.layers import utils

    from trispec_vllm.engine.patches import apply_trispec_patches

    # The tests' engines run in this process (conftest), where the plugin registered
    # before this test set the variable: apply the patches again, as a fresh engine
    # process does, and put vLLM's dispatch back afterwards.
    monkeypatch.setattr(utils, "dispatch_cpu_unquantized_gemm", utils.dispatch_cpu_unquantized_gemm)
    monkeypatch.setenv("TRISPEC_CPU_GEMM_MIN_ROWS", "4")
    apply_trispec_patches()
    # collective_rpc with a function needs vLLM's pickle-based serialization.
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    batch = prompts(8)
    llm = bf16_llm(tiny_pair)
    try:
        (plain_layers,) = llm.collective_rpc(padded_layers)
        reference = token_ids(llm.generate(batch, greedy(32), use_tqdm=False))
    finally:
        close(llm)
    section = {"proxy_model": tiny_pair.proxy, "margin_threshold": 1.5}
    llm = bf16_llm(tiny_pair, speculative_config=NGRAM, additional_config={"trispec": section})
    try:
        (trispec_layers,) = llm.collective_rpc(padded_layers)
        got = token_ids(llm.generate(batch, greedy(32), use_tqdm=False))
    finally:
        close(llm)
    assert plain_layers[0] == plain_layers[1] > 0, plain_layers
    assert trispec_layers[0] == trispec_layers[1] > plain_layers[1], trispec_layers  # + proxy
    assert got == reference
