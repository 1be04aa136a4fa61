"""Shared fixtures: tiny random models written once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    from trispec_vllm.testing import make_tiny_pair

    return make_tiny_pair(tmp_path_factory.mktemp("tiny_models"))
