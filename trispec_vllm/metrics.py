"""TriSpec's counters: counted per step in the worker, exported by vLLM's stat loggers.

A step's counts travel from the worker to the front end inside vLLM's own
stats path (the scheduler's per-step stats); the front end adds them to
Prometheus counters named `trispec:<name>` in vLLM's registry, so they show
up in `LLM.get_metrics()` and on a server's `/metrics`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

# Prometheus names (exactly these) and their help texts.
COUNTERS = {
    "proxy_steps": "Engine steps with a proxy pass.",
    "target_steps": "Engine steps in which the target model ran.",
    "escalations": "Request-steps sent to the target.",
    "proxy_completions": "Request-steps completed by the proxy alone.",
    "emitted_tokens": "Tokens output by TriSpec steps.",
}


@dataclass
class TriSpecStats:
    proxy_steps: int = 0
    target_steps: int = 0
    escalations: int = 0
    proxy_completions: int = 0
    emitted_tokens: int = 0
    catchup_tokens: int = 0

    def add(self, other: TriSpecStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


STATS_KEY = "trispec"
PREFIX = "trispec:"


def unregister_trispec_metrics(registry=None) -> None:
    """Drop earlier TriSpec collectors (a process may build several engines)."""
    from prometheus_client import REGISTRY

    registry = registry or REGISTRY
    for collector in list(registry._collector_to_names):
        if getattr(collector, "_name", "").startswith(PREFIX):
            registry.unregister(collector)


class PrometheusCounters:
    """The `trispec:*` counters, one child per engine label set."""

    def __init__(self, counter_cls, labelnames, per_engine_labelvalues) -> None:
        unregister_trispec_metrics()
        self.counters = {}
        for name, doc in COUNTERS.items():
            counter = counter_cls(name=PREFIX + name, documentation=doc, labelnames=labelnames)
            self.counters[name] = {
                idx: counter.labels(*values) for idx, values in per_engine_labelvalues.items()
            }

    def observe(self, step: dict[str, int], engine_idx: int = 0) -> None:
        for name, per_engine in self.counters.items():
            value = step.get(name, 0)
            if value:
                per_engine[engine_idx].inc(value)
