"""Inputs of the target's pass over the escalated sub-batch (no vLLM import).

Each escalated request contributes the tokens from its target watermark to
the end of this step's scheduled tokens: the catch-up tokens the proxy
alone completed earlier, then this step's input token and drafts. Positions
are absolute, so the target writes its KV into the request's own paged
blocks (the slots the proxy's layers use for their own cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TargetBatch:
    rows: np.ndarray  # [R] input-batch rows of the escalated requests
    token_ids: torch.Tensor  # [T] int
    positions: torch.Tensor  # [T] int64
    slot_mapping: torch.Tensor  # [T] int64
    query_start_loc: torch.Tensor  # [R+1] int32
    seq_lens: torch.Tensor  # [R] int32
    block_table: torch.Tensor  # [R, max_blocks] int32
    step_offsets: np.ndarray  # [R] index in token_ids of each request's first scheduled token
    max_query_len: int
    max_seq_len: int

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.numel())

    @property
    def num_reqs(self) -> int:
        return int(self.rows.size)


def build_target_batch(
    rows: np.ndarray,
    watermarks: np.ndarray,
    num_computed: np.ndarray,
    num_scheduled: np.ndarray,
    token_ids: np.ndarray,
    block_table: torch.Tensor,
    block_size: int,
) -> TargetBatch:
    """Gather the target's inputs for the input-batch `rows` (all arrays by row).

    watermarks/num_computed/num_scheduled are per selected row; token_ids and
    block_table are the runner's whole per-row arrays (tokens include drafts).
    """
    starts = watermarks.astype(np.int64)
    ends = (num_computed + num_scheduled).astype(np.int64)
    if (starts > num_computed).any() or (starts < 0).any():
        raise ValueError("a target watermark lies past the request's computed tokens")
    lens = ends - starts
    total = int(lens.sum())
    req_of_tok = np.repeat(np.arange(rows.size), lens)
    cu = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(lens, out=cu[1:])
    positions = np.arange(total, dtype=np.int64) - np.repeat(cu[:-1] - starts, lens)
    ids = token_ids[rows[req_of_tok], positions]
    bt_rows = block_table[torch.from_numpy(rows.astype(np.int64))]
    pos_t = torch.from_numpy(positions)
    block_idx = pos_t // block_size
    block_ids = bt_rows[torch.from_numpy(req_of_tok), block_idx].to(torch.int64)
    slots = block_ids * block_size + pos_t % block_size
    return TargetBatch(
        rows=rows,
        token_ids=torch.from_numpy(np.ascontiguousarray(ids)).to(torch.int32),
        positions=pos_t,
        slot_mapping=slots,
        query_start_loc=torch.from_numpy(cu.astype(np.int32)),
        seq_lens=torch.from_numpy(ends.astype(np.int32)),
        block_table=bt_rows,
        step_offsets=(cu[:-1] + (num_computed - starts)).astype(np.int64),
        max_query_len=int(lens.max()) if rows.size else 0,
        max_seq_len=int(ends.max()) if rows.size else 0,
    )
