"""Shared fixtures: tiny random models written once per test session."""

from __future__ import annotations

import os

import pytest

# vLLM on CPU sizes its KV cache from this (GiB); without it, it claims most of RAM.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    from trispec_vllm.testing import make_tiny_pair

    return make_tiny_pair(tmp_path_factory.mktemp("tiny_models"))
