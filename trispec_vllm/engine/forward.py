"""One model over a routed sub-batch of its own (catch-up positions included).

The target runs only for escalated requests, from each request's watermark
(the first position with no target KV) to the end of its scheduled tokens, so
its batch is not vLLM's: positions, slots and attention metadata are rebuilt
here from the policy's `TargetBatch`, on the same paged KV cache and block
tables, and the model runs on its own attention layers only. A hybrid model
(sliding-window and full-attention layers) has one KV cache group per layer
kind, each with its own block table: every group gets its own slots and
metadata. Recurrent layers (Mamba and the like) keep a state that cannot be
recomputed from a position, so such models are refused when the KV cache is made.
"""

from __future__ import annotations

import numpy as np
import torch
from vllm.forward_context import set_forward_context
from vllm.v1.attention.backend import CommonAttentionMetadata
from vllm.v1.kv_cache_interface import AttentionSpec, UniformTypeKVCacheSpecs

from trispec_vllm.engine import lora
from trispec_vllm.engine.upload import upload
from trispec_vllm.policy.batch import StepBatch
from trispec_vllm.policy.sampling import sampled_hidden_rows
from trispec_vllm.policy.target_batch import (
    TargetBatch,
    build_target_batch,
    check_target_batch,
    in_group,
    split_target_batch,
)


def check_kv_cache_kinds(kv_cache_config, model_name: str) -> None:
    """Refuse a model with KV cache groups TriSpec's own passes cannot serve: each
    catch-up recomputes a request's KV from a position, which attention layers allow
    and recurrent layers (whose state holds the whole past) do not."""
    for group in kv_cache_config.kv_cache_groups:
        spec = group.kv_cache_spec
        specs = (
            spec.kv_cache_specs.values() if isinstance(spec, UniformTypeKVCacheSpecs) else [spec]
        )
        for s in specs:
            if not isinstance(s, AttentionSpec):
                raise ValueError(
                    f"TriSpec cannot serve {model_name}: its layers "
                    f"{group.layer_names[:4]} keep a {type(s).__name__} state, which "
                    "TriSpec's catch-up passes cannot recompute from a position (only "
                    "attention KV caches can be). Serve it without the `trispec` section."
                )


def forward_sub_batch(
    runner, tb: TargetBatch, layer_names: list[str], model, what: str = "target catch-up"
) -> torch.Tensor:
    """`model`'s hidden states ([tb.num_tokens, H]) over the sub-batch `tb`, in as
    many passes as vLLM's token budget (`max_num_batched_tokens`) needs: catch-up
    tokens come on top of what the scheduler budgeted, and vLLM's buffers and
    compiled shape ranges end at the budget."""
    check_inputs(runner, tb, what)
    budget = runner.max_num_tokens  # vLLM: scheduler_config.max_num_batched_tokens
    pieces = split_target_batch(tb, budget)
    if len(pieces) == 1:
        return _forward(runner, tb, layer_names, model)
    return torch.cat([_forward(runner, p, layer_names, model).clone() for p in pieces])


def check_inputs(runner, tb: TargetBatch, what: str) -> None:
    """Token ids, positions and KV slots of a custom forward in range, or an error
    naming the requests and values (not an opaque IndexError inside the model)."""
    req_ids = [runner.input_batch.req_ids[int(r)] for r in tb.rows]
    groups = runner.kv_cache_config.kv_cache_groups
    for gid, view in enumerate(in_groups(runner, tb, req_ids)):
        bt = runner.input_batch.block_table[gid]
        check_target_batch(
            view,
            req_ids,
            vocab_size=runner.model_config.get_vocab_size(),
            num_slots=runner.kv_cache_config.num_blocks * groups[gid].kv_cache_spec.block_size,
            block_size=bt.block_size,
            allocated_blocks=bt.num_blocks_per_row[tb.rows],
            max_model_len=runner.max_model_len,
            what=what,
        )


def in_groups(runner, tb: TargetBatch, req_ids=None) -> list[TargetBatch]:
    """`tb` in each KV cache group (`tb` is built on group 0's block table)."""
    tables = runner.input_batch.block_table
    groups = range(1, len(runner.kv_cache_config.kv_cache_groups))
    return [tb] + [
        in_group(tb, tables[g].get_cpu_tensor(), tables[g].block_size, req_ids) for g in groups
    ]


def _forward(runner, tb: TargetBatch, layer_names: list[str], model) -> torch.Tensor:
    if lora.enabled(runner, model):
        tokens = lora.token_adapters(runner, tb)
        lora.activate(runner, tokens, tokens)
    layers = set(layer_names)
    # Only the groups holding some of the model's layers (a proxy's may be fewer).
    views = [
        (gid, view)
        for gid, view in enumerate(in_groups(runner, tb))
        if any(n in layers for g in runner.attn_groups[gid] for n in g.layer_names)
    ]
    qsl_cpu = tb.query_start_loc
    token_ids, positions, seq_lens, qsl, *paged = upload(
        [tb.token_ids, tb.positions, tb.seq_lens, qsl_cpu]
        + [t for _, v in views for t in (v.block_table, v.slot_mapping)],
        runner.device,
    )
    attn_md, slots = {}, {}
    for i, (gid, _) in enumerate(views):
        block_table, slot = paged[2 * i], paged[2 * i + 1]
        cm = CommonAttentionMetadata(
            query_start_loc=qsl,
            query_start_loc_cpu=qsl_cpu,
            seq_lens=seq_lens,
            num_reqs=tb.num_reqs,
            num_actual_tokens=tb.num_tokens,
            max_query_len=tb.max_query_len,
            max_seq_len=tb.max_seq_len,
            block_table_tensor=block_table,
            slot_mapping=slot,
            causal=True,
            positions=positions,
            seq_lens_cpu_upper_bound=tb.seq_lens,
        )
        for group in runner.attn_groups[gid]:
            names = [n for n in group.layer_names if n in layers]
            if names:
                md = group.build_metadata(cm, 0)
                attn_md.update(dict.fromkeys(names, md))
                slots.update(dict.fromkeys(names, slot))
    with set_forward_context(
        attn_md,
        runner.vllm_config,
        num_tokens=tb.num_tokens,
        slot_mapping=slots,
    ):
        return model(input_ids=token_ids, positions=positions)


def step_token_map(batch: StepBatch, tb: TargetBatch) -> tuple[np.ndarray, np.ndarray]:
    """(indices into the sub-batch's hidden states, matching indices into the full
    batch's) of this step's scheduled tokens, for the requests the sub-batch holds."""
    full_start = np.zeros(len(batch.req_ids), dtype=np.int64)
    np.cumsum(batch.num_scheduled[:-1], out=full_start[1:])
    src, dst = [], []
    for i, r in enumerate(tb.rows):
        s = int(batch.num_scheduled[r])
        src.append(tb.step_offsets[i] + np.arange(s))
        dst.append(full_start[r] + np.arange(s))
    return np.concatenate(src), np.concatenate(dst)


def proxy_catchup(
    runner, proxy, batch: StepBatch, proxy_wm: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """The proxy over every request from its watermark (the tokens of steps it
    skipped, then this step's); returns its (hidden states, logits) at the sampled rows."""
    bt = runner.input_batch.block_table[0]
    rows = np.arange(len(batch.req_ids))
    tb = build_target_batch(
        rows,
        proxy_wm,
        batch.num_computed,
        batch.num_scheduled,
        runner.input_batch.token_ids_cpu,
        bt.get_cpu_tensor(),
        bt.block_size,
        req_ids=batch.req_ids,
    )
    hidden = forward_sub_batch(runner, tb, runner.proxy_layer_names(), proxy, "proxy catch-up")
    idx = sampled_hidden_rows(batch, tb, np.zeros(rows.size, dtype=np.int64))
    (idx_dev,) = upload([torch.from_numpy(idx)], runner.device)
    rows = hidden[idx_dev]
    return rows, proxy.compute_logits(rows)
