"""TriSpec's counts from the worker to vLLM's stat loggers and `LLM.get_metrics()`.

A step's counts ride vLLM's worker -> scheduler stats channel (the KV
connector's stats slot: KV connectors are refused with TriSpec, so it is
otherwise unused); the front end takes them out again before vLLM's own
loggers see the stats, and adds them to `trispec:*` Prometheus counters and to
the periodic log line.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from trispec_vllm.config import parse_trispec_config
from trispec_vllm.engine.wraps import wrap_once
from trispec_vllm.metrics import PREFIX, STATS_KEY, PrometheusCounters, TriSpecStats

logger = logging.getLogger("vllm.trispec")


def attach_step_stats(out, step: TriSpecStats) -> None:
    """Put one step's counts into the runner's output (worker side)."""
    from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorStats
    from vllm.v1.outputs import KVConnectorOutput

    if out.kv_connector_output is None:
        out.kv_connector_output = KVConnectorOutput(
            kv_connector_stats=KVConnectorStats(data={STATS_KEY: step.as_dict()})
        )


def split_stats(scheduler_stats):
    """(TriSpec's step counts or None, scheduler_stats without them)."""
    payload = getattr(scheduler_stats, "kv_connector_stats", None)
    if not payload or STATS_KEY not in payload:
        return None, scheduler_stats
    rest = {k: v for k, v in payload.items() if k != STATS_KEY} or None
    return payload[STATS_KEY], dataclasses.replace(scheduler_stats, kv_connector_stats=rest)


def worker_counters(step, cost=None) -> dict[str, Any]:
    """A worker's running totals, adaptive lambda's engine-wide start (a level) and
    the cost-aware step's measured tok/s per kind and batch-size class (levels) and
    its ranked choices per objective (throughput, slowest request), and per class
    the regret its learning was charged against its decoding seconds."""
    out = step.stats.as_dict()
    if step.adaptive is not None:
        out["adaptive_start_lambda"] = step.adaptive.start
    if cost is not None:
        rates = cost.rates()
        out["cost_rates"] = {k: {str(c): r for c, r in v.items()} for k, v in rates.items()}
        out["cost_objectives"] = dict(cost.objectives)
        out["cost_learning"] = {
            str(c): {"regret_s": round(r, 3), "seconds": round(s, 3)}
            for c, (r, s) in cost.learning().items()
        }
    return out


def patch_metrics_reader() -> None:
    """`LLM.get_metrics()` lists `vllm:*` metrics only; add the `trispec:*` counters."""
    from vllm.v1.engine import llm_engine

    def make(original):
        def get_metrics_snapshot():
            from prometheus_client import REGISTRY
            from vllm.v1.metrics.reader import Counter

            collected = original()
            for metric in REGISTRY.collect():
                if metric.name.startswith(PREFIX) and metric.type == "counter":
                    for sample in metric.samples:
                        if sample.name == metric.name + "_total":
                            counter = Counter(
                                name=metric.name, labels=sample.labels, value=int(sample.value)
                            )
                            collected.append(counter)
            return collected

        return get_metrics_snapshot

    wrap_once(llm_engine, "get_metrics_snapshot", make)


def patch_stat_loggers() -> None:
    """Teach vLLM's Prometheus and logging stat loggers about TriSpec's counts."""
    from vllm.v1.metrics import loggers

    def make_prometheus_init(prom_init):
        def prometheus_init(self, vllm_config, *args, **kwargs):
            prom_init(self, vllm_config, *args, **kwargs)
            self.trispec_counters = None
            if parse_trispec_config(vllm_config.additional_config) is not None:
                self.trispec_counters = PrometheusCounters(
                    self._counter_cls,
                    self._histogram_cls,
                    ["model_name", "engine"],
                    self.per_engine_labelvalues,
                )

        return prometheus_init

    def make_prometheus_record(prom_record):
        def prometheus_record(self, scheduler_stats, iteration_stats, *args, **kwargs):
            step, scheduler_stats = split_stats(scheduler_stats)
            engine_idx = kwargs.get("engine_idx", args[1] if len(args) > 1 else 0)
            if step and getattr(self, "trispec_counters", None) is not None:
                self.trispec_counters.observe(step, engine_idx)
            return prom_record(self, scheduler_stats, iteration_stats, *args, **kwargs)

        return prometheus_record

    def make_logging_record(log_record):
        def logging_record(self, scheduler_stats, iteration_stats, *args, **kwargs):
            step, scheduler_stats = split_stats(scheduler_stats)
            if step:
                acc = getattr(self, "trispec_interval", None) or TriSpecStats()
                stats = TriSpecStats.from_dict(step)
                acc.add(stats)
                acc.add_requests(stats)
                self.trispec_interval = acc
                self.trispec_interval_steps = getattr(self, "trispec_interval_steps", 0) + 1
            return log_record(self, scheduler_stats, iteration_stats, *args, **kwargs)

        return logging_record

    def make_logging_log(log_log):
        def logging_log(self):
            log_log(self)
            log_interval(self)

        return logging_log

    prom = loggers.PrometheusStatLogger
    wrap_once(prom, "__init__", make_prometheus_init)
    wrap_once(prom, "record", make_prometheus_record)
    wrap_once(loggers.LoggingStatLogger, "record", make_logging_record)
    wrap_once(loggers.LoggingStatLogger, "log", make_logging_log)


def log_interval(stat_logger) -> None:
    """The periodic TriSpec lines of a logging stat logger, for the steps since the last."""
    acc = getattr(stat_logger, "trispec_interval", None)
    steps = getattr(stat_logger, "trispec_interval_steps", 0)
    if acc is None or not steps:
        return
    logger.info(
        "TriSpec: %d steps, proxy ran in %d, target in %d (%.0f%%), %d request-steps "
        "completed by the proxy, %d escalated, %d tokens emitted, %d catch-up tokens; "
        "step kinds: %d TriSpec, %d SD, %d draft, %d plain",
        steps,
        acc.proxy_steps,
        acc.target_steps,
        100 * acc.target_steps / steps,
        acc.proxy_completions,
        acc.escalations,
        acc.emitted_tokens,
        acc.catchup_tokens,
        acc.trispec_kind_steps,
        acc.sd_kind_steps,
        acc.draft_kind_steps,
        acc.plain_kind_steps,
    )
    if acc.per_request:
        logger.info("TriSpec requests: %s", acc.request_summary())
    stat_logger.trispec_interval = None
    stat_logger.trispec_interval_steps = 0
