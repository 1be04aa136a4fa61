"""vLLM's prefix cache under TriSpec: which cached positions each model may read.

The scheduler's block hand-outs (new requests with their cache hits, resumed
requests, new blocks of running ones) go into the policy's `BlockLedger`; a
request that starts on cached blocks starts each model's watermark at the part of
them that model has written, and each step books the settled watermarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trispec_vllm.policy.kv_blocks import BlockLedger
from trispec_vllm.policy.step import TriSpecStep


def ledger_for(vllm_config, kv_cache_config) -> BlockLedger | None:
    """A ledger when vLLM's prefix caching is on (None: no request starts on cached
    KV, and every watermark starts at 0)."""
    groups = kv_cache_config.kv_cache_groups  # TriSpec serves one group (checked per step)
    if not vllm_config.cache_config.enable_prefix_caching or len(groups) != 1:
        return None
    return BlockLedger(groups[0].kv_cache_spec.block_size)


def admit(ledger: BlockLedger, step: TriSpecStep, scheduler_output) -> None:
    """Read this step's block hand-outs; start new and resumed requests."""
    for new in scheduler_output.scheduled_new_reqs:
        _start(ledger, step, new.req_id, new.block_ids[0], new.num_computed_tokens)
    cached = scheduler_output.scheduled_cached_reqs
    for i, req_id in enumerate(cached.req_ids):
        block_ids = cached.new_block_ids[i]
        if req_id in cached.resumed_req_ids:
            ids = block_ids[0] if block_ids is not None else []
            _start(ledger, step, req_id, ids, cached.num_computed_tokens[i])
        elif block_ids is not None:
            ledger.extend(req_id, block_ids[0])


def book(ledger: BlockLedger, step: TriSpecStep, req_ids: Sequence[str], computed: np.ndarray):
    """Book each request's blocks below its settled watermarks (start of a step)."""
    for req_id, c in zip(req_ids, computed, strict=True):
        ledger.book("target", req_id, step.watermarks.settle(req_id, int(c)).watermark)
        ledger.book("proxy", req_id, step.proxy_marks.settle(req_id, int(c)).watermark)


def _start(ledger, step, req_id: str, block_ids: Sequence[int], num_cached: int) -> None:
    trusted = ledger.start(req_id, block_ids, num_cached)
    step.start_request(req_id, trusted["target"], trusted["proxy"])
    if num_cached:
        stats = step.stats
        stats.prefix_cached_tokens += num_cached
        stats.prefix_target_recomputed += num_cached - trusted["target"]
        stats.prefix_proxy_recomputed += num_cached - trusted["proxy"]
