"""200 concurrent streaming requests, a quarter aborted, against a lossless TriSpec server."""

from __future__ import annotations

import asyncio
import re

import pytest

pytest.importorskip("vllm")
pytest.importorskip("openai")
pytestmark = pytest.mark.vllm

from trispec_vllm.testing.load import reference_answers, run_load  # noqa: E402
from trispec_vllm.testing.server import TINY_SERVER_ARGS, Server  # noqa: E402

COMMON = TINY_SERVER_ARGS


def lossless_server(tiny_pair, log, *extra):
    return Server(
        [
            "serve",
            tiny_pair.target,
            "--proxy-model",
            tiny_pair.proxy,
            "--margin-threshold",
            "1.5",
            *COMMON,
            *extra,
        ],
        log,
    )


def check_load(server, max_tokens=(4, 48)):
    ref = asyncio.run(reference_answers(server.url, "tiny", max_tokens[1]))
    res = asyncio.run(
        run_load(server.url, "tiny", ref, requests=200, abort_share=0.25, max_tokens=max_tokens)
    )
    assert not res.errors, res.errors[:3]
    assert not res.mismatches, res.mismatches[:3]
    assert res.completed + res.aborted == 200 and 25 <= res.aborted <= 75
    # Still serving, still exact.
    again = asyncio.run(reference_answers(server.url, "tiny", max_tokens[1]))
    assert again == ref
    return res


def test_concurrent_streams_with_aborts(tiny_pair, tmp_path):
    server = lossless_server(tiny_pair, tmp_path / "server.log")
    try:
        check_load(server)
    finally:
        server.stop()


def test_concurrent_streams_under_preemption(tiny_pair, tmp_path):
    # Room for about 576 tokens (9 KV layers x 512 B per token here) while requests grow
    # to ~130 tokens each: running requests run out of blocks and get preempted.
    server = lossless_server(
        tiny_pair, tmp_path / "server.log", "--kv-cache-memory-bytes", str(576 * 9 * 512)
    )
    try:
        check_load(server, max_tokens=(64, 100))
        preempted = re.search(
            r"^vllm:num_preemptions_total{[^}]*} ([0-9.e+]+)$", server.metrics(), re.M
        )
        assert preempted and float(preempted[1]) > 0
    finally:
        server.stop()
