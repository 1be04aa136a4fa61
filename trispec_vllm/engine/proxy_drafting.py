"""The proxy drafts for every decoding request (the ``draft`` kind).

Greedy and autoregressive, as vLLM's draft_model drafter, on TriSpec's own
forward over the proxy's layers of the paged KV cache: the first pass reads
each request's tokens from the proxy's watermark to the token just sampled
(the catch-up of the steps it skipped), each further pass one draft. The
target verifies every draft in the next step (an SD step), so outputs stay
exactly what the target decides. Lengths: `policy/proxy_drafts.py`.

With `record`, the passes' logits are kept as the next step's proxy rows
(`StepState.own`, as the proxy-as-drafter path keeps vLLM's drafter's): the
margins of the proxy's own drafts come free with drafting, so in lossy mode the
verifying step routes on them (a request whose drafts the proxy all trusts
skips the target) without a proxy pass of its own.
"""

from __future__ import annotations

import numpy as np
import torch

from trispec_vllm.engine.forward import forward_sub_batch
from trispec_vllm.engine.upload import upload
from trispec_vllm.policy.proxy_drafts import proxy_draft_lengths
from trispec_vllm.policy.target_batch import build_target_batch


def fill_drafts(
    runner, drafts: list[list[int]], sampled: list[list[int]], k: int, record: bool = False
) -> int:
    """Give each request that sampled a token up to `k` drafts of the proxy in place of
    the drafter's (`drafts` and `sampled` by input-batch row; a request without room
    for one keeps the drafter's); returns the number of drafts written. `record`: keep
    each draft's logits in `runner.trispec_state.own` ([R, L, V], R the drafted rows)."""
    ib = runner.input_batch
    runner.trispec_state.own = None
    num_reqs = len(drafts)
    bt = ib.block_table[0]
    n = ib.num_tokens_no_spec[:num_reqs].astype(np.int64)
    wanted = np.array([bool(len(s)) for s in sampled], dtype=bool)
    lengths = proxy_draft_lengths(
        k,
        n,
        bt.num_blocks_per_row[:num_reqs].astype(np.int64) * bt.block_size,
        runner.max_model_len,
        wanted,
    )
    rows = np.nonzero(lengths)[0]
    if not rows.size:
        return 0
    marks = runner.trispec.proxy_marks
    req_ids = [ib.req_ids[int(r)] for r in rows]
    # The next step's computed tokens end before the token just sampled.
    starts = np.array(
        [marks.settle(r, int(c) - 1).watermark for r, c in zip(req_ids, n[rows], strict=True)],
        dtype=np.int64,
    )
    tokens = ib.token_ids_cpu
    names = runner.proxy_layer_names()
    block_table = bt.get_cpu_tensor()
    out = np.zeros((rows.size, int(lengths.max())), dtype=np.int64)
    live = np.ones(rows.size, dtype=bool)
    own = None
    for j in range(out.shape[1]):
        # Pass j feeds the token at position n - 1 + j (the sampled one, then drafts).
        at = n[rows] - 1 + j
        sel = np.nonzero(live)[0]
        tb = build_target_batch(
            rows[sel],
            starts[sel] if j == 0 else at[sel],
            at[sel],
            np.ones(sel.size, dtype=np.int64),
            tokens,
            block_table,
            bt.block_size,
            req_ids=[req_ids[i] for i in sel],
        )
        hidden = forward_sub_batch(runner, tb, names, runner.trispec_proxy, "proxy drafting")
        (last,) = upload([tb.query_start_loc[1:].to(torch.int64) - 1], runner.device)
        logits = runner.trispec_proxy.compute_logits(hidden[last])
        out[sel, j] = logits.argmax(dim=-1).cpu().numpy()
        if record:
            if own is None:
                own = logits.new_zeros((rows.size, out.shape[1], logits.shape[1]))
            own[torch.from_numpy(sel).to(own.device), j] = logits
        # The draft is the next pass's input: the row's scratch slots past its
        # tokens, where vLLM writes the scheduled drafts itself.
        tokens[rows[sel], at[sel] + 1] = out[sel, j]
        live[sel] = lengths[rows[sel]] > j + 1
    for i, r in enumerate(rows):
        drafts[int(r)] = out[i, : int(lengths[r])].tolist()
        # Positions up to the token just sampled hold the proxy's KV of real tokens.
        marks.target_ran(req_ids[i], int(n[r]))
    if own is not None:
        runner.trispec_state.own = (req_ids, own)
    return int(lengths.sum())
