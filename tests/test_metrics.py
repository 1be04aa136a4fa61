"""The trispec:* Prometheus collectors, fed step dicts as the stats path delivers them."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Histogram

from trispec_vllm.metrics import PrometheusCounters, TriSpecStats, unregister_trispec_metrics


def value(name, **labels):
    return REGISTRY.get_sample_value(name, labels)


def test_counters_and_histograms_accumulate_per_engine():
    prom = PrometheusCounters(
        Counter, Histogram, ["model_name", "engine"], {0: ["m", "0"], 1: ["m", "1"]}
    )
    step = TriSpecStats(
        proxy_steps=1,
        target_steps=1,
        escalations=2,
        proxy_completions=3,
        emitted_tokens=7,
        margins=[0.02, 0.55, 1.0],
        catchup_lengths=[0, 5],
    )
    prom.observe(step.as_dict(), engine_idx=1)
    prom.observe(step.as_dict(), engine_idx=1)
    assert value("trispec:proxy_completions_total", model_name="m", engine="1") == 6
    assert value("trispec:proxy_completions_total", model_name="m", engine="0") == 0
    assert value("trispec:proxy_margin_count", model_name="m", engine="1") == 6
    assert value("trispec:proxy_margin_bucket", model_name="m", engine="1", le="0.5") == 2
    assert value("trispec:catchup_length_bucket", model_name="m", engine="1", le="4.0") == 2
    # A second engine in the same process replaces, not duplicates, the collectors.
    PrometheusCounters(Counter, Histogram, ["model_name", "engine"], {0: ["m", "0"]})
    assert value("trispec:proxy_steps_total", model_name="m", engine="1") is None
    unregister_trispec_metrics()


def test_stats_accumulate_counts_not_observations():
    total = TriSpecStats()
    total.add(TriSpecStats(proxy_steps=1, catchup_tokens=4, margins=[0.3]))
    total.add(TriSpecStats.from_dict({"proxy_steps": 1, "margins": [0.1], "unknown": 1}))
    assert total.proxy_steps == 2 and total.catchup_tokens == 4 and total.margins == []


def test_per_request_counts_accumulate_for_the_log_line():
    interval = TriSpecStats()
    for completes in (True, False, True):
        step = TriSpecStats(per_request={"a": [1, int(completes), int(not completes), 2]})
        step.per_request["b"] = [1, 0, 1, 1]
        interval.add_requests(step)
    interval.add_requests(TriSpecStats(per_request={"c": [1, 1, 0, 4]}))
    assert interval.per_request["a"] == [3, 2, 1, 6]
    line = interval.request_summary(limit=2)
    assert line.startswith("a: 3 steps, 2 by the proxy, 1 escalated, 6 tokens; b: 3 steps")
    assert line.endswith("and 1 more")
