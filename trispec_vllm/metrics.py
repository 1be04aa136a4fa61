"""TriSpec's counters: counted per step in the worker, exported by vLLM's stat loggers.

A step's counts travel from the worker to the front end inside vLLM's own
stats path (the scheduler's per-step stats); the front end adds them to
Prometheus counters named `trispec:<name>` in vLLM's registry, so they show
up in `LLM.get_metrics()` and on a server's `/metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

# Prometheus names (exactly these) and their help texts.
COUNTERS = {
    "proxy_steps": "Engine steps with a proxy pass.",
    "target_steps": "Engine steps in which the target model ran.",
    "escalations": "Request-steps sent to the target.",
    "proxy_completions": "Request-steps completed by the proxy alone.",
    "held_escalations": "Escalated request-steps that waited for a later target pass (max_holds).",
    "emitted_tokens": "Tokens output by TriSpec steps.",
    "fuzzy_accepted_tokens": "Candidate tokens the target accepted under policy 'pyramid'.",
    "trispec_kind_steps": "Decoding steps the cost-aware choice ran as TriSpec steps.",
    "sd_kind_steps": "Decoding steps the cost-aware choice ran as standard SD (no proxy pass).",
    "plain_kind_steps": "Decoding steps the cost-aware choice ran as plain decoding (no drafts).",
    "draft_kind_steps": "Decoding steps the cost-aware choice ran as SD on the proxy's drafts.",
    "proxy_drafted_tokens": "Drafts the proxy wrote for those steps.",
    "draft_kind_tokens": "Tokens those steps emitted (accepted drafts and one token of the "
    "target's per request).",
    "draft_kind_trusted": "Request-steps of those steps the proxy completed on its own "
    "drafts' margins (lossy mode), without the target.",
    "drafter_updates": "Optimiser steps the learned drafter took (online learning).",
}


@dataclass
class TriSpecStats:
    proxy_steps: int = 0
    target_steps: int = 0
    escalations: int = 0
    proxy_completions: int = 0
    held_escalations: int = 0
    held_without_tokens: int = 0  # of them, held with no trusted draft (the step emitted none)
    emitted_tokens: int = 0
    fuzzy_accepted_tokens: int = 0
    trispec_kind_steps: int = 0
    sd_kind_steps: int = 0
    plain_kind_steps: int = 0
    draft_kind_steps: int = 0
    proxy_drafted_tokens: int = 0
    draft_kind_tokens: int = 0
    draft_kind_trusted: int = 0
    catchup_tokens: int = 0
    proxy_catchup_tokens: int = 0  # tokens the proxy caught up after skipped steps
    native_target_steps: int = 0  # target passes run on vLLM's own batch (no sub-batch)
    plain_steps: int = 0  # steps vLLM ran on its own (speculation disabled by batch size)
    prompt_steps_without_proxy: int = 0  # TriSpec steps with prompt chunks run as SD
    proxy_prompt_tokens: int = 0  # prompt-chunk tokens the proxy read in their own step
    plain_steps_without_drafter: int = 0  # settled plain decoding: the drafter did not run
    prefix_cached_tokens: int = 0  # positions requests started with from vLLM's prefix cache
    prefix_target_recomputed: int = 0  # of them, positions the target had not written
    prefix_proxy_recomputed: int = 0  # of them, positions the proxy had not written
    routing_fallbacks: int = 0  # steps whose routing failed and fell back to standard SD
    decode_request_steps: int = 0  # request-steps routed (prefill steps excluded)
    proxy_accepted_tokens: int = 0  # sum of tau_a over them
    drafter_updates: int = 0  # learned drafter: optimiser steps
    drafter_windows: int = 0  # learned drafter: training windows recorded
    drafter_loss_sum: float = 0.0  # learned drafter: sum of the updates' losses
    # Adaptive lambda: sum and count of the lambdas requests were routed with, and the
    # would-be-trusted positions the target checked (trials) and overruled (failures).
    lambda_sum: float = 0.0
    lambda_count: int = 0
    adaptive_trials: int = 0
    adaptive_failures: int = 0
    # Seconds per phase of the step (prepare, proxy, route, target, sample_and_draft).
    times: dict[str, float] = field(default_factory=dict)
    # Per-step observations for the histograms (not accumulated).
    margins: list[float] = field(default_factory=list, repr=False)
    lambdas: list[float] = field(default_factory=list, repr=False)  # adaptive lambda per request
    catchup_lengths: list[int] = field(default_factory=list, repr=False)
    drafter_losses: list[float] = field(default_factory=list, repr=False)
    # Per request id: [decode steps, completed by the proxy, escalated, tokens emitted].
    per_request: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def add(self, other: TriSpecStats) -> None:
        for name in COUNTED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.add_times(**other.times)

    def add_requests(self, other: TriSpecStats) -> None:
        """Accumulate the per-request counts too (the log interval does, totals do not)."""
        for req_id, counts in other.per_request.items():
            mine = self.per_request.setdefault(req_id, [0] * len(counts))
            for i, c in enumerate(counts):
                mine[i] += c

    def request_summary(self, limit: int = 8) -> str:
        """One line for the log: the busiest requests of the interval first."""
        busiest = sorted(self.per_request.items(), key=lambda kv: -kv[1][0])
        parts = [
            f"{req_id}: {steps} steps, {proxy} by the proxy, {escalated} escalated, {tokens} tokens"
            for req_id, (steps, proxy, escalated, tokens) in busiest[:limit]
        ]
        if len(busiest) > limit:
            parts.append(f"and {len(busiest) - limit} more")
        return "; ".join(parts)

    def add_times(self, **seconds: float) -> None:
        for phase, value in seconds.items():
            self.times[phase] = self.times.get(phase, 0.0) + value

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> TriSpecStats:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


COUNTED = (
    *COUNTERS,
    "catchup_tokens",
    "proxy_catchup_tokens",
    "native_target_steps",
    "plain_steps",
    "prompt_steps_without_proxy",
    "proxy_prompt_tokens",
    "plain_steps_without_drafter",
    "prefix_cached_tokens",
    "prefix_target_recomputed",
    "prefix_proxy_recomputed",
    "routing_fallbacks",
    "held_without_tokens",
    "decode_request_steps",
    "proxy_accepted_tokens",
    "lambda_sum",
    "lambda_count",
    "adaptive_trials",
    "adaptive_failures",
    "drafter_windows",
    "drafter_loss_sum",
)
MARGIN_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
CATCHUP_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)
LOSS_BUCKETS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
# Per-step observation lists (TriSpecStats fields) -> Prometheus histograms.
HISTOGRAMS = {
    "margins": (
        "proxy_margin",
        "Proxy top-1 minus top-2 probability at draft and bonus positions.",
        MARGIN_BUCKETS,
    ),
    "lambdas": ("lambda", "Adaptive lambda of each routed request, per step.", MARGIN_BUCKETS),
    "catchup_lengths": (
        "catchup_length",
        "Tokens the target caught up per escalated request-step.",
        CATCHUP_BUCKETS,
    ),
    "drafter_losses": (
        "drafter_loss",
        "Training loss of each learned-drafter update (DVI's schedule).",
        LOSS_BUCKETS,
    ),
}
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
    """The `trispec:*` counters and histograms, one child per engine label set."""

    def __init__(self, counter_cls, histogram_cls, labelnames, per_engine_labelvalues) -> None:
        unregister_trispec_metrics()

        def per_engine(metric):
            return {idx: metric.labels(*values) for idx, values in per_engine_labelvalues.items()}

        self.counters = {
            name: per_engine(
                counter_cls(name=PREFIX + name, documentation=doc, labelnames=labelnames)
            )
            for name, doc in COUNTERS.items()
        }
        self.histograms = {
            key: per_engine(
                histogram_cls(
                    name=PREFIX + name, documentation=doc, labelnames=labelnames, buckets=buckets
                )
            )
            for key, (name, doc, buckets) in HISTOGRAMS.items()
        }

    def observe(self, step: dict, engine_idx: int = 0) -> None:
        for name, children in self.counters.items():
            value = step.get(name, 0)
            if value:
                children[engine_idx].inc(value)
        for key, children in self.histograms.items():
            for value in step.get(key, ()):
                children[engine_idx].observe(value)
