"""Per-request adaptive lambda: steer each request's trust threshold online.

A fixed lambda trusts the proxy as much on a request where it agrees with the
target 95% of the time as on one where it agrees 60%. The controller keeps one
lambda per request and moves it after every step in which the target scored
positions the proxy had scored too. Each such position is a trial; it fails
when the proxy would have trusted it (margin >= the request's lambda) and the
target's top-1 differs from the proxy's. Per trial

    lambda <- clip(lambda + rate * (failed - target_disagreement), lo, hi)

(a Robbins-Monro step), so lambda settles where the share of failed trials
equals `target_disagreement`: the share of positions where trusting the proxy
would emit a token the target would not have chosen. Requests the proxy gets
wrong are trusted less, those it gets right more, and a request whose lambda
is too high to trust anything still drifts down and is probed again. Bounded
by [lo, hi]; hi above 1 lets a request fall back to lossless speculative
decoding.

One step moves lambda down by only rate * target_disagreement (0.001 at the
defaults), so a single answer of a few hundred tokens barely leaves its start.
With `learn_start` the controller also keeps an engine-wide lambda, moved by
every trial of every request with the same rule, and a new request starts
there instead of at `initial`: a server learns the threshold over its first
requests and each request then only corrects for its own content.
No vLLM import: unit-tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class AdaptiveLambda:
    initial: float
    target_disagreement: float = 0.05
    rate: float = 0.02
    lo: float = 0.05
    hi: float = 1.0
    learn_start: bool = False
    _lam: dict[str, float] = field(default_factory=dict)
    _trials: dict[str, int] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=dict)
    total_trials: int = 0  # over all requests, finished ones included
    total_failures: int = 0
    start: float = field(init=False)  # where new requests begin

    def __post_init__(self) -> None:
        if not self.lo <= self.initial <= self.hi:
            raise ValueError(f"initial lambda {self.initial} outside [{self.lo}, {self.hi}]")
        self.start = self.initial

    def lambdas(self, req_ids: Iterable[str]) -> np.ndarray:
        """Current lambda of each request; a new one is pinned at `start`."""
        return np.array([self._lam.setdefault(r, self.start) for r in req_ids], dtype=np.float32)

    def _step(self, lam: float, failed: int) -> float:
        lam += self.rate * (failed - self.target_disagreement)
        return min(self.hi, max(self.lo, lam))

    def observe(self, req_id: str, margins: np.ndarray, agree: np.ndarray) -> float:
        """Update one request from the positions the target checked this step."""
        lam = self._lam.get(req_id, self.start)
        for m, ok in zip(np.asarray(margins).tolist(), np.asarray(agree).tolist(), strict=True):
            failed = int(m >= lam and not ok)
            self._trials[req_id] = self._trials.get(req_id, 0) + 1
            self._failures[req_id] = self._failures.get(req_id, 0) + failed
            self.total_trials += 1
            self.total_failures += failed
            lam = self._step(lam, failed)
            if self.learn_start:
                self.start = self._step(self.start, failed)
        self._lam[req_id] = lam
        return lam

    def observed_disagreement(self, req_id: str) -> float | None:
        """Share of this request's trials that failed (None before any)."""
        n = self._trials.get(req_id, 0)
        return self._failures.get(req_id, 0) / n if n else None

    def forget(self, live: Iterable[str]) -> None:
        """Drop finished requests."""
        keep = set(live)
        for d in (self._lam, self._trials, self._failures):
            for r in [r for r in d if r not in keep]:
                del d[r]

    def snapshot(self) -> dict[str, float]:
        return dict(self._lam)
