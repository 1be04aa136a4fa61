"""Shared fixtures: tiny random models written once per test session."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

# vLLM on CPU sizes its KV cache from this (GiB); without it, it claims most of RAM.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# Offline engines (`LLM`) run their engine core in the test process: the same engine,
# scheduler and worker, without spawning a process that imports vLLM again (about
# 25 s of each engine's start here). Servers and the demo run as users run them:
# their subprocesses drop this (trispec_vllm.testing.server.user_env).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# The cost-aware step keeps its measurements across engines (`cost_memory`): never in
# the user's cache, and (`fresh_cost_memory`) never from one test to the next.
os.environ.setdefault("TRISPEC_COST_DIR", tempfile.mkdtemp(prefix="trispec-costs-"))


@pytest.fixture(autouse=True)
def fresh_cost_memory(tmp_path, monkeypatch):
    """Each test's engines start without another test's measurements."""
    monkeypatch.setenv("TRISPEC_COST_DIR", str(tmp_path / "costs"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.get_closest_marker("vllm") is not None:
        _cpu_kernel_overrides_once()


LLVMLITE_FFI = ("llvmlite.binding.ffi",)


def _cpu_kernel_overrides_once() -> None:
    """With engine cores in one process, vLLM 0.32's CPU worker would re-register its
    Triton-kernel overrides at every engine start, scanning every loaded module; once
    the ngram drafter has imported numba, that scan fails on llvmlite's library
    wrapper (AttributeError: '_lib_fn_wrapper' object has no attribute 'get'). A
    process needs the registration once (it rebinds module attributes for good), as
    each engine process of a user's run does: so the test process registers once."""
    try:
        from vllm.platforms.cpu import CpuPlatform
    except ImportError:
        return
    register = CpuPlatform.register_triton_kernel_overrides
    if getattr(register, "trispec_once", False):
        return
    done = []

    def once(cls) -> None:
        if not done:
            # The scan reads every loaded module; numba's llvmlite library wrapper, loaded
            # when a test before the first engine used the ngram drafter, answers any
            # attribute (`__dict__` too) with a function: leave it out of the scan.
            hidden = {m: sys.modules.pop(m) for m in LLVMLITE_FFI if m in sys.modules}
            try:
                register()
            finally:
                sys.modules.update(hidden)
            done.append(True)

    once.trispec_once = True
    CpuPlatform.register_triton_kernel_overrides = classmethod(once)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    from trispec_vllm.testing import make_tiny_pair

    return make_tiny_pair(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def soft_pair(tmp_path_factory):
    """The tiny pair with logits a quarter as peaky, so that sampling samples."""
    from trispec_vllm.testing import make_tiny_pair

    return make_tiny_pair(tmp_path_factory.mktemp("soft_pair"), logit_scale=6.0)


@pytest.fixture(scope="session")
def exact_marginals(soft_pair) -> tuple[dict[int, float], dict[int, float]]:
    """The soft target's exact distributions of the 2nd and 3rd tokens sampled from
    tests.test_sampling.PROMPT at its TEMPERATURE."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.test_sampling import PROMPT, TEMPERATURE

    tok = AutoTokenizer.from_pretrained(soft_pair.target)
    model = AutoModelForCausalLM.from_pretrained(soft_pair.target, dtype=torch.float32).eval()
    ids = torch.tensor(tok(PROMPT)["input_ids"])

    def next_probs(contexts: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = model(contexts).logits[:, -1].double()
        return (logits / TEMPERATURE).softmax(-1)

    p1 = next_probs(ids[None])[0]  # [V]
    t1 = torch.arange(p1.numel())
    ctx2 = torch.cat([ids.expand(t1.numel(), -1), t1[:, None]], dim=1)
    p2_given = next_probs(ctx2)  # [V, V]
    joint12 = p1[:, None] * p2_given
    p2 = joint12.sum(0)
    # Third token: every (t1, t2) pair with non-negligible mass (the rest is < 1e-3).
    keep = (joint12 > 1e-8).nonzero()
    mass = joint12[keep[:, 0], keep[:, 1]]
    ctx3 = torch.cat([ids.expand(len(keep), -1), keep], dim=1)
    p3 = (mass[:, None] * next_probs(ctx3)).sum(0)
    assert float(mass.sum()) > 0.999
    return (
        {i: float(v) for i, v in enumerate(p2) if v > 0},
        {i: float(v) for i, v in enumerate(p3 / p3.sum()) if v > 0},
    )
