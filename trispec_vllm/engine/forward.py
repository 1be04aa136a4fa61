"""One model over a routed sub-batch of its own (catch-up positions included).

The target runs only for escalated requests, from each request's watermark
(the first position with no target KV) to the end of its scheduled tokens, so
its batch is not vLLM's: positions, slots and attention metadata are rebuilt
here from the policy's `TargetBatch`, on the same paged KV cache and block
table, and the model runs on its own attention layers only.
"""

from __future__ import annotations

import numpy as np
import torch
from vllm.forward_context import set_forward_context
from vllm.v1.attention.backend import CommonAttentionMetadata

from trispec_vllm.policy.batch import StepBatch
from trispec_vllm.policy.sampling import sampled_hidden_rows
from trispec_vllm.policy.target_batch import TargetBatch, build_target_batch


def forward_sub_batch(runner, tb: TargetBatch, layer_names: list[str], model) -> torch.Tensor:
    """`model`'s hidden states ([tb.num_tokens, H]) over the sub-batch `tb`."""
    dev = runner.device
    qsl_cpu = tb.query_start_loc
    slot = tb.slot_mapping.to(dev)
    cm = CommonAttentionMetadata(
        query_start_loc=qsl_cpu.to(dev),
        query_start_loc_cpu=qsl_cpu,
        seq_lens=tb.seq_lens.to(dev),
        num_reqs=tb.num_reqs,
        num_actual_tokens=tb.num_tokens,
        max_query_len=tb.max_query_len,
        max_seq_len=tb.max_seq_len,
        block_table_tensor=tb.block_table.to(dev),
        slot_mapping=slot,
        causal=True,
        positions=tb.positions.to(dev),
        seq_lens_cpu_upper_bound=tb.seq_lens,
    )
    layers = set(layer_names)
    attn_md = {}
    for group in runner.attn_groups[0]:
        names = [n for n in group.layer_names if n in layers]
        if names:
            md = group.build_metadata(cm, 0)
            attn_md.update(dict.fromkeys(names, md))
    with set_forward_context(
        attn_md,
        runner.vllm_config,
        num_tokens=tb.num_tokens,
        slot_mapping=dict.fromkeys(layers, slot),
    ):
        return model(input_ids=tb.token_ids.to(dev), positions=tb.positions.to(dev))


def step_token_map(
    batch: StepBatch, tb: TargetBatch, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices into the sub-batch's hidden states, matching indices into the full
    batch's) of this step's scheduled tokens, for the requests the sub-batch holds."""
    full_start = np.zeros(len(batch.req_ids), dtype=np.int64)
    np.cumsum(batch.num_scheduled[:-1], out=full_start[1:])
    src, dst = [], []
    for i, r in enumerate(tb.rows):
        s = int(batch.num_scheduled[r])
        src.append(tb.step_offsets[i] + np.arange(s))
        dst.append(full_start[r] + np.arange(s))
    return (
        torch.from_numpy(np.concatenate(src)).to(device),
        torch.from_numpy(np.concatenate(dst)).to(device),
    )


def proxy_catchup(runner, proxy, batch: StepBatch, proxy_wm: np.ndarray) -> torch.Tensor:
    """The proxy over every request from its watermark (the tokens of steps it
    skipped, then this step's); returns its logits at the sampled rows."""
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
    )
    hidden = forward_sub_batch(runner, tb, runner.proxy_layer_names(), proxy)
    idx = sampled_hidden_rows(batch, tb, np.zeros(rows.size, dtype=np.int64))
    return proxy.compute_logits(hidden[torch.from_numpy(idx).to(runner.device)])
