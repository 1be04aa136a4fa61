"""benchmarks/cost_model.py: pass-cost interpolation and the step arithmetic."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "cost_model.py"
_spec = importlib.util.spec_from_file_location("cost_model", _PATH)
cm = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("cost_model", cm)  # dataclasses look their module up
_spec.loader.exec_module(cm)


def costs(target: dict[int, float], proxy: dict[int, float] | None = None) -> cm.PassCosts:
    return cm.PassCosts("test", {"target": target, "proxy": proxy or target})


def test_cost_interpolates_between_sizes_and_extends_past_the_ends():
    c = costs({1: 1.0, 4: 2.0, 8: 4.0})
    assert [c.cost("target", n) for n in (1, 2, 4, 6, 8, 16)] == pytest.approx(
        [1.0, 4 / 3, 2.0, 3.0, 4.0, 8.0]
    )
    assert c.cost("target", 0) == 0.0
    assert cm.PassCosts.from_json(c.to_json()).seconds == c.seconds


def test_when_a_pass_costs_its_tokens_ngram_sd_loses_to_plain_decoding():
    linear = costs({1: 1.0, 64: 64.0})  # compute-bound: time grows with tokens
    flat = costs({1: 1.0, 64: 1.0})  # memory-bound: tokens in a pass are free
    plain = cm.StepShape("plain", batch=1, k=3, tokens_per_step=1.0)
    sd = cm.StepShape("ngram", batch=1, k=3, tokens_per_step=2.0)
    assert cm.tokens_per_s(sd, linear) < cm.tokens_per_s(plain, linear)
    assert cm.tokens_per_s(sd, flat) == pytest.approx(2 * cm.tokens_per_s(plain, flat))


def test_trispec_step_pays_the_proxy_always_and_the_target_by_its_share():
    c = costs({1: 3.0, 8: 3.0}, {1: 1.0, 8: 1.0})
    shape = cm.StepShape(
        "trispec",
        batch=2,
        k=3,
        tokens_per_step=4.0,
        proxy_share=1.0,
        target_share=0.5,
        target_tokens=4,
    )
    assert cm.step_seconds(shape, c) == pytest.approx(1.0 + 0.5 * 3.0)
    # The cost-aware step's plain steps are one target pass over the batch each.
    mixed = cm.StepShape("trispec", batch=2, k=3, tokens_per_step=2.0, plain_share=1.0)
    mixed.target_share = 0.0
    assert cm.step_seconds(mixed, c) == pytest.approx(3.0)


def test_pass_seconds_is_bilinear_in_batch_and_tokens_per_request():
    """32 tokens as 8 requests x 4 and as 32 x 1 cost what each shape was timed at,
    not one by-tokens figure."""
    c = cm.PassCosts(
        "test",
        {"target": {32: 9.0}},
        {"target": {(8, 1): 1.0, (8, 4): 2.0, (32, 1): 4.0, (32, 4): 8.0}},
    )
    assert c.pass_seconds("target", 8, 4) == pytest.approx(2.0)
    assert c.pass_seconds("target", 32, 1) == pytest.approx(4.0)
    assert c.pass_seconds("target", 20, 2.5) == pytest.approx((1.5 + 6.0) / 2)
    assert c.pass_seconds("target", 0, 1) == 0.0
    back = cm.PassCosts.from_json(c.to_json())
    assert back.shapes == c.shapes and back.seconds == c.seconds
    # Without timed shapes, the by-tokens table.
    assert cm.PassCosts("t", {"target": {32: 9.0}}).pass_seconds("target", 8, 4) == 9.0


def test_calibration_fits_the_plain_rows_and_scales_every_pass_at_that_batch():
    def raw(b: int) -> dict:  # one prefill step, then 10 decode steps of b tokens
        return {"engine_steps": 11, "vllm:request_success": b, "vllm:generation_tokens": 11 * b}

    rows = [
        {"config": "no speculation", "batch": b, "trispec": None, "raw": raw(b), "tpot_s": s}
        for b, s in ((1, 0.5), (8, 2.0))
    ]
    c = cm.PassCosts(
        "test",
        {"target": {1: 1.0, 8: 4.0}, "proxy": {1: 1.0}},
        {"target": {(1, 1): 1.0, (1, 4): 2.0, (8, 1): 4.0}, "proxy": {(1, 1): 1.0}},
    )
    scaled = cm.calibrate(rows, c)
    assert scaled.pass_seconds("target", 1, 4) == pytest.approx(1.0)  # x 0.5
    assert scaled.pass_seconds("target", 8, 1) == pytest.approx(2.0)  # x 0.5
    assert scaled.pass_seconds("proxy", 1, 1) == pytest.approx(0.5)
    plain = cm.check(rows, c)
    assert [e["predicted_decode_tok_s"] for e in plain] == pytest.approx(
        [e["measured_decode_tok_s"] for e in plain]
    )
    assert all(e["fit"] and e["error"] is None for e in plain)


def test_shape_of_reads_a_speed_run_row():
    raw = {
        "engine_steps": 11,
        "vllm:request_success": 1,
        "vllm:generation_tokens": 21,
        "worker:target_steps": 5,
        "worker:proxy_steps": 10,
        "worker:escalations": 5,
        "worker:catchup_tokens": 3,
        "worker:proxy_catchup_tokens": 0,
    }
    row = {"config": "TriSpec ngram lambda=0.5", "batch": 1, "trispec": {}, "raw": raw}
    s = cm.shape_of(row)
    assert (s.kind, s.k, s.tokens_per_step) == ("trispec", 3, 2.0)
    assert s.target_share == pytest.approx(5 / 11) and s.target_tokens == pytest.approx(4)
    assert s.target_reqs == pytest.approx(1) and s.plain_share == 0.0
    plain = cm.shape_of({"config": "no speculation", "batch": 1, "trispec": None, "raw": raw})
    assert plain.kind == "plain"


def test_projection_gives_trispec_rows_their_own_pass_costs():
    """TriSpec's routed steps run without CUDA graphs: its rows project on the
    device's eager costs, vLLM's rows on the graph-replayed ones."""
    raw = {
        "engine_steps": 11,
        "vllm:request_success": 1,
        "vllm:generation_tokens": 21,
        "worker:target_steps": 11,
        "worker:proxy_steps": 0,
        "worker:escalations": 10,
    }
    rows = [
        {"config": "no speculation", "batch": 1, "trispec": None, "raw": raw, "tpot_s": 2.0},
        {"config": "TriSpec default", "batch": 1, "trispec": {}, "raw": raw, "tpot_s": 2.0},
    ]
    here = costs({1: 1.0, 4: 1.0})
    graphs, eager = costs({1: 0.1, 4: 0.1}), costs({1: 0.3, 4: 0.3})
    plain, tri = cm.check(rows, here, graphs, eager)
    alike = cm.check(rows, here, graphs)[1]
    assert tri["projected_tok_s"] < alike["projected_tok_s"]
    assert plain["projected_tok_s"] == cm.check(rows, here, graphs)[0]["projected_tok_s"]
