"""Per-request target bookkeeping: how far the target's KV cache is valid.

The proxy runs on every scheduled token, so its KV cache is always complete.
The target runs only when a request escalates; its KV is valid up to the
request's watermark, and the next target pass starts there ("catch-up").

After a target pass over positions [w, end), only positions below the
request's next num_computed_tokens hold tokens that were kept (rejected
drafts are overwritten later), so the watermark settles the next time the
request is seen: w = min(end, num_computed_tokens). Taking the min with
num_computed_tokens every step also resets it when vLLM preempts the request
and recomputes it from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TargetProgress:
    watermark: int = 0  # target KV valid for positions [0, watermark)
    pending_end: int | None = None  # end of the last target pass, not yet settled
    skips: int = 0  # consecutive steps completed by the proxy alone


class Watermarks:
    """Target progress of every live request, keyed by vLLM request id."""

    def __init__(self) -> None:
        self._reqs: dict[str, TargetProgress] = {}

    def settle(self, req_id: str, num_computed_tokens: int) -> TargetProgress:
        """Bring a request's watermark up to date at the start of a step."""
        st = self._reqs.setdefault(req_id, TargetProgress())
        if st.pending_end is not None:
            st.watermark = st.pending_end
            st.pending_end = None
        st.watermark = min(st.watermark, num_computed_tokens)
        return st

    def start(self, req_id: str, watermark: int) -> None:
        """A request (re)starts with valid KV below `watermark` (prefix-cache hits)."""
        self._reqs[req_id] = TargetProgress(watermark=watermark)

    def target_ran(self, req_id: str, end: int) -> None:
        st = self._reqs[req_id]
        st.pending_end = end
        st.skips = 0

    def proxy_completed(self, req_id: str) -> None:
        self._reqs[req_id].skips += 1

    def forget(self, live_req_ids) -> None:
        """Drop finished or aborted requests."""
        live = set(live_req_ids)
        for req_id in [r for r in self._reqs if r not in live]:
            del self._reqs[req_id]

    def __contains__(self, req_id: str) -> bool:
        return req_id in self._reqs

    def __len__(self) -> int:
        return len(self._reqs)
