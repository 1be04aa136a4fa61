"""Which physical KV blocks hold complete KV for the target and for the proxy.

vLLM's prefix cache hands a new request the blocks of an earlier request with the
same token prefix and counts their positions as computed. Under TriSpec a block
can be full in vLLM's eyes while one model has not written all of it: the target
skips the steps the proxy completes (it catches up when it next runs), and the
proxy skips SD and plain steps. So the ledger books a block as complete for a
model once that model's settled watermark has passed the block's end, and drops
the booking when vLLM hands the block out fresh (new content). A request that
starts on cached blocks starts each model's watermark at the end of its longest
run of leading blocks complete for that model; the model recomputes the rest
with the catch-up it already does.

A hybrid model (sliding-window and full-attention layers, say) has one KV cache
group per layer kind, each with blocks of its own: `GroupLedgers` keeps one
ledger per group, and a request may trust a cached position only where every
group holds it. A sliding-window group hands out vLLM's null block for the
positions that fell out of its window; no layer reads them, so it counts as
complete.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

MODELS = ("target", "proxy")


class BlockLedger:
    """Per model, the physical blocks (vLLM's KV manager ids) with complete KV; per
    live request, its block ids in order, as the scheduler handed them out."""

    def __init__(self, block_size: int, null_block: int | None = None) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        self.null_block = null_block  # vLLM's placeholder id: never holds KV anyone reads
        self._complete: dict[str, set[int]] = {m: set() for m in MODELS}
        self._blocks: dict[str, list[int]] = {}
        # Per (model, request): how many of its leading blocks are booked already.
        self._booked: dict[tuple[str, str], int] = {}

    def start(self, req_id: str, block_ids: Sequence[int], num_cached: int) -> dict[str, int]:
        """A request (new, or resumed after preemption) starts on `block_ids`, of which
        the first `num_cached` positions are prefix-cache hits; returns per model how
        many of them hold KV that model may read."""
        hits = num_cached // self.block_size
        self._fresh(block_ids[hits:])
        self._blocks[req_id] = list(block_ids)
        trusted = {}
        for model in MODELS:
            done = self._complete[model]
            n = 0
            while n < hits and (block_ids[n] in done or block_ids[n] == self.null_block):
                n += 1
            trusted[model] = min(n * self.block_size, num_cached)
            self._booked[(model, req_id)] = n
        return trusted

    def extend(self, req_id: str, block_ids: Sequence[int]) -> None:
        """New blocks for a running request (always fresh)."""
        self._fresh(block_ids)
        self._blocks.setdefault(req_id, []).extend(block_ids)

    def book(self, model: str, req_id: str, watermark: int) -> None:
        """`model`'s KV of this request is valid below `watermark`: its blocks that
        end at or below it are complete."""
        blocks = self._blocks.get(req_id)
        if blocks is None:
            return
        full = min(watermark // self.block_size, len(blocks))
        key = (model, req_id)
        first = self._booked.get(key, 0)
        if full > first:
            self._complete[model].update(blocks[first:full])
        # A watermark that moved back books from there again when it advances.
        self._booked[key] = full

    def forget(self, live_req_ids: Iterable[str]) -> None:
        """Drop finished requests' block lists (their blocks' bookings stay: a freed
        block keeps its content until vLLM hands it out fresh)."""
        live = set(live_req_ids)
        for req_id in [r for r in self._blocks if r not in live]:
            del self._blocks[req_id]
        for key in [k for k in self._booked if k[1] not in live]:
            del self._booked[key]

    def is_complete(self, model: str, block: int) -> bool:
        return block in self._complete[model]

    def _fresh(self, block_ids: Iterable[int]) -> None:
        ids = set(block_ids)
        if ids:
            for done in self._complete.values():
                done -= ids


class GroupLedgers:
    """One `BlockLedger` per KV cache group, used as one: block ids come per group,
    in the groups' order, as vLLM's scheduler output gives them."""

    def __init__(self, block_sizes: Sequence[int], null_block: int | None = None) -> None:
        if not block_sizes:
            raise ValueError("need at least one KV cache group")
        self.groups = [BlockLedger(size, null_block) for size in block_sizes]

    def start(
        self, req_id: str, block_ids: Sequence[Sequence[int]], num_cached: int
    ) -> dict[str, int]:
        """As `BlockLedger.start`; per model, the positions every group holds."""
        trusted = [g.start(req_id, ids, num_cached) for g, ids in self._paired(block_ids)]
        return {m: min(t[m] for t in trusted) for m in MODELS}

    def extend(self, req_id: str, block_ids: Sequence[Sequence[int]]) -> None:
        for g, ids in self._paired(block_ids):
            g.extend(req_id, ids)

    def book(self, model: str, req_id: str, watermark: int) -> None:
        for g in self.groups:
            g.book(model, req_id, watermark)

    def forget(self, live_req_ids: Iterable[str]) -> None:
        live = list(live_req_ids)
        for g in self.groups:
            g.forget(live)

    def _paired(self, block_ids: Sequence[Sequence[int]]):
        if len(block_ids) != len(self.groups):
            raise ValueError(f"{len(block_ids)} block lists for {len(self.groups)} KV cache groups")
        return zip(self.groups, block_ids, strict=True)
