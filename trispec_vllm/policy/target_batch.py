"""Inputs of the target's pass over the escalated sub-batch (no vLLM import).

Each escalated request contributes the tokens from its target watermark to
the end of this step's scheduled tokens: the catch-up tokens the proxy
alone completed earlier, then this step's input token and drafts. Positions
are absolute, so the target writes its KV into the request's own paged
blocks (the slots the proxy's layers use for their own cache).

The token ids come from vLLM's per-row token table (`token_ids_cpu`), not
from the ids vLLM feeds its own model. The two differ at placeholder drafts:
vLLM 0.32's scheduler schedules a new one-token request next to running ones
with `num_speculative_tokens` draft slots of id -1 (uniform decode shape), its
runner writes them into the token table and clamps them to 0 only in the
model's `input_ids` (`GPUModelRunner._preprocess`). So this step's scheduled
tokens get the same clamp here; everything else must already be a real token,
and `check_target_batch` says which request broke that before any forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

PLACEHOLDER_TOKEN = -1  # vLLM 0.32's id of a scheduled draft slot holding no draft
_SHOWN = 8  # offending values listed per request in an error message


class TargetBatchError(ValueError):
    """A custom forward's inputs are out of range; the message names the requests."""


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
    req_ids: Sequence[str] | None = None,
) -> TargetBatch:
    """Gather the target's inputs for the input-batch `rows` (all arrays by row).

    watermarks/num_computed/num_scheduled are per selected row; token_ids and
    block_table are the runner's whole per-row arrays (tokens include drafts).
    `req_ids` (per selected row) name the requests in error messages.
    Placeholder drafts (-1) among this step's scheduled tokens become 0, as in
    vLLM's own input ids; catch-up tokens are taken as they are.
    """
    names = _names(rows, req_ids)
    starts = watermarks.astype(np.int64)
    ends = (num_computed + num_scheduled).astype(np.int64)
    bad = (starts > num_computed) | (starts < 0)
    if bad.any():
        raise TargetBatchError(
            "a watermark lies outside the request's computed tokens: "
            + "; ".join(
                f"request {names[i]}: watermark {int(starts[i])}, computed {int(num_computed[i])}"
                for i in np.nonzero(bad)[0]
            )
        )
    lens = ends - starts
    total = int(lens.sum())
    req_of_tok = np.repeat(np.arange(rows.size), lens)
    cu = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(lens, out=cu[1:])
    positions = np.arange(total, dtype=np.int64) - np.repeat(cu[:-1] - starts, lens)
    past = positions >= token_ids.shape[1]
    if past.any():
        raise TargetBatchError(
            f"positions past the token table ({token_ids.shape[1]} per request): "
            + _listing(names, req_of_tok, past, positions, positions)
        )
    ids = token_ids[rows[req_of_tok], positions]
    scheduled = positions >= np.repeat(num_computed.astype(np.int64), lens)
    ids = np.where(scheduled & (ids == PLACEHOLDER_TOKEN), 0, ids)
    bt_rows, slots = _paged(rows, req_of_tok, positions, block_table, block_size, names)
    return TargetBatch(
        rows=rows,
        token_ids=torch.from_numpy(np.ascontiguousarray(ids)).to(torch.int32),
        positions=torch.from_numpy(positions),
        slot_mapping=slots,
        query_start_loc=torch.from_numpy(cu.astype(np.int32)),
        seq_lens=torch.from_numpy(ends.astype(np.int32)),
        block_table=bt_rows,
        step_offsets=(cu[:-1] + (num_computed - starts)).astype(np.int64),
        max_query_len=int(lens.max()) if rows.size else 0,
        max_seq_len=int(ends.max()) if rows.size else 0,
    )


def in_group(
    tb: TargetBatch,
    block_table: torch.Tensor,
    block_size: int,
    req_ids: Sequence[str] | None = None,
) -> TargetBatch:
    """`tb` in another KV cache group of the model (a hybrid model's sliding-window
    layers, say): the same tokens and positions, that group's block-table rows and
    KV slots. `block_table` and `block_size` are the group's, as in `build_target_batch`."""
    req_of_tok = np.repeat(np.arange(tb.num_reqs), np.diff(tb.query_start_loc.numpy()))
    positions = tb.positions.numpy()
    names = _names(tb.rows, req_ids)
    bt_rows, slots = _paged(tb.rows, req_of_tok, positions, block_table, block_size, names)
    return replace(tb, block_table=bt_rows, slot_mapping=slots)


def _paged(
    rows: np.ndarray,
    req_of_tok: np.ndarray,
    positions: np.ndarray,
    block_table: torch.Tensor,
    block_size: int,
    names: Sequence[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the rows' block-table rows [R, max_blocks], each token's KV slot [T])."""
    outside = positions // block_size >= block_table.shape[1]
    if outside.any():
        raise TargetBatchError(
            f"positions past the block table ({block_table.shape[1]} blocks of "
            f"{block_size}): " + _listing(names, req_of_tok, outside, positions, positions)
        )
    bt_rows = block_table[torch.from_numpy(rows.astype(np.int64))]
    pos_t = torch.from_numpy(positions)
    block_ids = bt_rows[torch.from_numpy(req_of_tok), pos_t // block_size].to(torch.int64)
    return bt_rows, block_ids * block_size + pos_t % block_size


def _names(rows: np.ndarray, req_ids: Sequence[str] | None) -> list[str]:
    if req_ids is None:
        return [f"<row {int(r)}>" for r in rows]
    if len(req_ids) != rows.size:
        raise ValueError(f"{len(req_ids)} request ids for {rows.size} rows")
    return [str(r) for r in req_ids]


def _listing(
    names: Sequence[str],
    req_of_tok: np.ndarray,
    mask: np.ndarray,
    positions: np.ndarray,
    values: np.ndarray,
) -> str:
    """'request R: positions [..] hold [..]' for the masked tokens, request by request."""
    parts = []
    for i in np.unique(req_of_tok[mask]):
        sel = mask & (req_of_tok == i)
        pos, val = positions[sel], values[sel]
        more = f" (+{pos.size - _SHOWN} more)" if pos.size > _SHOWN else ""
        parts.append(
            f"request {names[int(i)]}: positions {pos[:_SHOWN].tolist()} "
            f"hold {val[:_SHOWN].tolist()}{more}"
        )
    return "; ".join(parts)


def check_target_batch(
    tb: TargetBatch,
    req_ids: Sequence[str] | None,
    *,
    vocab_size: int,
    num_slots: int,
    block_size: int | None = None,
    allocated_blocks: np.ndarray | None = None,
    max_model_len: int | None = None,
    what: str = "target",
) -> None:
    """Raise TargetBatchError, naming the requests and values, unless every token id
    is in [0, vocab_size), every position in [0, max_model_len) and below its
    request's sequence length, every position inside the request's allocated
    blocks (`allocated_blocks`, per tb row) and every slot in [0, num_slots)."""
    if not tb.num_tokens:
        return
    names = _names(tb.rows, req_ids)
    cu = tb.query_start_loc.numpy().astype(np.int64)
    req_of_tok = np.repeat(np.arange(tb.num_reqs), np.diff(cu))
    ids = tb.token_ids.numpy().astype(np.int64)
    pos = tb.positions.numpy().astype(np.int64)
    slots = tb.slot_mapping.numpy().astype(np.int64)
    problems = []

    def add(label: str, mask: np.ndarray, values: np.ndarray) -> None:
        if mask.any():
            problems.append(f"{label}: " + _listing(names, req_of_tok, mask, pos, values))

    add(f"token ids outside the vocabulary [0, {vocab_size})", (ids < 0) | (ids >= vocab_size), ids)
    seq_len = tb.seq_lens.numpy().astype(np.int64)[req_of_tok]
    bad_pos = (pos < 0) | (pos >= seq_len)
    if max_model_len is not None:
        bad_pos |= pos >= max_model_len
    add(f"positions outside [0, sequence length) or [0, {max_model_len})", bad_pos, pos)
    if allocated_blocks is not None and block_size is not None:
        alloc = np.asarray(allocated_blocks, dtype=np.int64)[req_of_tok]
        add(
            f"positions past the request's allocated KV blocks (blocks of {block_size})",
            pos // block_size >= alloc,
            pos,
        )
    add(f"KV slots outside [0, {num_slots})", (slots < 0) | (slots >= num_slots), slots)
    if problems:
        raise TargetBatchError(
            f"TriSpec {what} forward has inputs out of range: " + " | ".join(problems)
        )


def split_target_batch(tb: TargetBatch, max_tokens: int) -> list[TargetBatch]:
    """Cut `tb` into consecutive passes of at most `max_tokens` tokens each.

    vLLM sizes its buffers and compiled shape ranges for `max_num_batched_tokens`,
    but catch-up adds tokens the scheduler never budgeted. The flat token list is
    cut into windows in order; a request cut in two continues in the next window
    from where it stopped (its earlier positions' KV is written by then, as in a
    chunked prefill), so running the windows in order and concatenating their
    outputs gives the hidden states of one pass over `tb`. `step_offsets` of a
    window is relative to it and clipped at 0 (only the whole batch's is meaningful).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if tb.num_tokens <= max_tokens:
        return [tb]
    qsl = tb.query_start_loc.numpy().astype(np.int64)
    positions = tb.positions.numpy()
    pieces = []
    for lo in range(0, tb.num_tokens, max_tokens):
        hi = min(lo + max_tokens, tb.num_tokens)
        first = int(np.searchsorted(qsl, lo, side="right")) - 1
        last = int(np.searchsorted(qsl, hi, side="left"))  # requests starting before hi
        reqs = np.arange(first, last)
        starts = np.maximum(qsl[reqs], lo)
        ends = np.minimum(qsl[reqs + 1], hi)
        lens = ends - starts
        cu = np.zeros(reqs.size + 1, dtype=np.int64)
        np.cumsum(lens, out=cu[1:])
        seq_lens = positions[ends - 1] + 1
        pieces.append(
            TargetBatch(
                rows=tb.rows[reqs],
                token_ids=tb.token_ids[lo:hi],
                positions=tb.positions[lo:hi],
                slot_mapping=tb.slot_mapping[lo:hi],
                query_start_loc=torch.from_numpy(cu.astype(np.int32)),
                seq_lens=torch.from_numpy(seq_lens.astype(np.int32)),
                block_table=tb.block_table[torch.from_numpy(reqs)],
                step_offsets=np.maximum(tb.step_offsets[reqs] - lo, 0),
                max_query_len=int(lens.max()),
                max_seq_len=int(seq_lens.max()),
            )
        )
    return pieces
