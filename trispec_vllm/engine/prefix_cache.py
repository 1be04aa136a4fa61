"""vLLM's prefix cache under TriSpec: which cached positions each model may read.

The scheduler's block hand-outs (new requests with their cache hits, resumed
requests, new blocks of running ones) go into the policy's `BlockLedger`; a
request that starts on cached blocks starts each model's watermark at the part of
them that model has written, and each step books the settled watermarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from vllm.v1.attention.backends.utils import NULL_BLOCK_ID

from trispec_vllm.policy.kv_blocks import GroupLedgers
from trispec_vllm.policy.step import TriSpecStep


def ledger_for(vllm_config, kv_cache_config) -> GroupLedgers | None:
    """The ledgers of every KV cache group when vLLM's prefix caching is on (None: no
    request starts on cached KV, and every watermark starts at 0)."""
    if not vllm_config.cache_config.enable_prefix_caching:
        return None
    sizes = [g.kv_cache_spec.block_size for g in kv_cache_config.kv_cache_groups]
    return GroupLedgers(sizes, null_block=NULL_BLOCK_ID)


def admit(ledger: GroupLedgers, step: TriSpecStep, scheduler_output) -> None:
    """Read this step's block hand-outs; start new and resumed requests."""
    empty = [[] for _ in ledger.groups]
    for new in scheduler_output.scheduled_new_reqs:
        _start(ledger, step, new.req_id, new.block_ids, new.num_computed_tokens)
    cached = scheduler_output.scheduled_cached_reqs
    for i, req_id in enumerate(cached.req_ids):
        block_ids = cached.new_block_ids[i]
        if req_id in cached.resumed_req_ids:
            ids = block_ids if block_ids is not None else empty
            _start(ledger, step, req_id, ids, cached.num_computed_tokens[i])
        elif block_ids is not None:
            ledger.extend(req_id, block_ids)


def book(ledger: GroupLedgers, step: TriSpecStep, req_ids: Sequence[str], computed: np.ndarray):
    """Book each request's blocks below its settled watermarks (start of a step)."""
    for req_id, c in zip(req_ids, computed, strict=True):
        ledger.book("target", req_id, step.watermarks.settle(req_id, int(c)).watermark)
        ledger.book("proxy", req_id, step.proxy_marks.settle(req_id, int(c)).watermark)


def _start(
    ledger: GroupLedgers,
    step: TriSpecStep,
    req_id: str,
    block_ids: Sequence[Sequence[int]],
    num_cached: int,
) -> None:
    trusted = ledger.start(req_id, block_ids, num_cached)
    step.start_request(req_id, trusted["target"], trusted["proxy"])
    if num_cached:
        stats = step.stats
        stats.prefix_cached_tokens += num_cached
        stats.prefix_target_recomputed += num_cached - trusted["target"]
        stats.prefix_proxy_recomputed += num_cached - trusted["proxy"]
