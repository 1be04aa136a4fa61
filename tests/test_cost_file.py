"""The cost-aware step's measurements kept across engines (pure logic and files)."""

from __future__ import annotations

import json
import time

import pytest

from trispec_vllm.policy.cost import CostModel, drafts_needed
from trispec_vllm.policy.cost_file import CostFile, describe, merge

KEY = {"target": "t", "hardware": {"name": "cpu", "threads": 2}}
SPEED = {"trispec": 3, "sd": 4, "plain": 10}  # tokens per one-second step


def measured(num_reqs: int = 8, steps: int = 60) -> CostModel:
    """A model that warmed up at `num_reqs` requests, where plain decoding wins."""
    model = CostModel(warmup=2, explore_every=8, run_length=3)
    for _ in range(steps):
        kind = model.choose(num_reqs)
        model.observe(kind, num_reqs, 1.0, SPEED[kind])
    return model


def first_picks(model: CostModel, num_reqs: int, steps: int) -> list[str]:
    picks = []
    for _ in range(steps):
        kind = model.choose(num_reqs)
        model.observe(kind, num_reqs, 1.0, SPEED[kind])
        picks.append(kind)
    return picks


def test_a_restored_model_needs_no_warm_up_and_no_drafter():
    cold = CostModel(warmup=2, explore_every=8, run_length=3)
    assert "sd" in first_picks(cold, 8, 8)  # a fresh model warms the kinds up
    warm = CostModel(warmup=2, explore_every=8, run_length=3)
    assert warm.restore(measured().snapshot()) >= 2
    assert not drafts_needed(warm, 8)  # plain decoding is settled from the start
    picks = first_picks(warm, 8, 8)
    assert picks == ["plain"] * 8  # exploration waits for its (restored) interval
    assert warm.rates()["plain"][8] == 10.0


def test_exploration_still_runs_after_a_restore_so_a_changed_workload_is_noticed():
    warm = CostModel(warmup=2, explore_every=8, run_length=3, max_backoff=2)
    warm.restore(measured().snapshot())
    picks = []
    for _ in range(200):  # drafts now pay: SD emits four times plain decoding's tokens
        kind = warm.choose(8)
        warm.observe(kind, 8, 1.0, {**SPEED, "sd": 40}[kind])
        picks.append(kind)
    assert picks[:8] == ["plain"] * 8
    assert picks[-10:].count("sd") >= 8, picks


def test_the_snapshot_round_trips_through_json_and_keeps_only_known_kinds():
    snap = json.loads(json.dumps(measured().snapshot()))
    lossless = CostModel(kinds=("sd", "plain"))
    lossless.restore(snap)
    assert {kind for _, kind in lossless.stats} <= {"sd", "plain"}
    assert lossless.rates()["sd"] == measured().rates()["sd"]


@pytest.mark.parametrize(
    "snapshot",
    [
        {"stats": [[8, "plain", 0.0, 1.0, 3]]},  # no time
        {"stats": [[8, "plain", float("nan"), 1.0, 3]]},
        {"stats": [[8, "plain", 1.0, 1.0]]},  # a field short
        {"stats": [[0, "plain", 1.0, 1.0, 3]]},  # no such class
        {"stats": [[8, None, 1.0, 1.0, 3]]},
        {"stats": [["x", "plain", 1.0, 1.0, 3]]},
        {"stats": 5},
        {"stats": [], "interval": {"8": "soon"}},
        {"stats": [], "run_cost": [[1, "sd", float("inf")]]},
        {"stats": [], "run_cost": [[1, "sd", -1.0]]},
        {"stats": [], "run_cost": [[0, "sd", 1.0]]},
        {"stats": [], "run_cost": [[1, None, 1.0]]},
        {"stats": [], "run_cost": [[1, "sd"]]},
        {"stats": [], "run_cost": 5},
    ],
)
def test_a_malformed_snapshot_is_refused_and_changes_nothing(snapshot):
    model = measured()
    before = model.snapshot()
    with pytest.raises(ValueError):
        model.restore(snapshot)
    assert model.snapshot() == before


def test_a_restored_interval_stays_within_the_models_bounds():
    model = CostModel(explore_every=8, max_backoff=4)
    model.restore({"stats": [], "interval": {"8": 10_000, "16": 1}})
    assert model.interval == {8: 32, 16: 8}


def test_the_file_carries_a_model_to_the_next_engine(tmp_path):
    saved = measured()
    assert CostFile(tmp_path, KEY).save(saved)
    fresh = CostModel()
    assert CostFile(tmp_path, KEY).load(fresh) == len(saved.stats)
    assert fresh.rates() == saved.rates()


def test_every_kind_survives_the_file_the_draft_kind_included(tmp_path):
    """The file's merge and listing read every kind, not only a default model's."""
    kinds = ("trispec", "sd", "draft", "plain")
    saved = CostModel(kinds=kinds, warmup=1, run_length=2)
    for _ in range(12):
        kind = saved.choose(8)
        saved.observe(kind, 8, 1.0, {"trispec": 9, "sd": 10, "draft": 12, "plain": 8}[kind])
    assert set(saved.rates()) == set(kinds)
    assert CostFile(tmp_path, KEY).save(saved)
    fresh = CostModel(kinds=kinds)
    assert CostFile(tmp_path, KEY).load(fresh) == len(saved.stats)
    assert fresh.rates() == saved.rates()
    assert describe(tmp_path)[0]["rates"] == saved.rates()


def test_another_key_a_stale_file_or_a_broken_one_is_ignored(tmp_path):
    CostFile(tmp_path, KEY).save(measured())
    other = {**KEY, "hardware": {"name": "cpu", "threads": 4}}
    assert CostFile(tmp_path, other).load(CostModel()) == 0
    assert CostFile(tmp_path, KEY, max_age_s=-1.0).load(CostModel()) == 0
    file = CostFile(tmp_path, KEY)
    for broken in ("{not json", "[]", json.dumps({"format": 99})):
        file.path.write_text(broken)
        assert file.load(CostModel()) == 0
    payload = {"format": 1, "key": file.key, "saved_at": time.time(), "snapshot": {"stats": 3}}
    file.path.write_text(json.dumps(payload))
    assert file.load(CostModel()) == 0
    assert file.save(measured())  # the next save replaces it
    assert file.load(CostModel()) > 0


def test_a_file_of_the_same_key_is_read_as_stale_by_its_age(tmp_path):
    file = CostFile(tmp_path, KEY, max_age_s=3600)
    file.save(measured())
    payload = json.loads(file.path.read_text())
    payload["saved_at"] -= 7200
    file.path.write_text(json.dumps(payload))
    assert file.load(CostModel()) == 0


def test_a_save_keeps_the_classes_another_engine_measured(tmp_path):
    CostFile(tmp_path, KEY).save(measured(num_reqs=1))
    CostFile(tmp_path, KEY).save(measured(num_reqs=8))
    both = CostModel()
    CostFile(tmp_path, KEY).load(both)
    assert {cls for cls, _ in both.stats} == {1, 8}


def test_merge_prefers_this_engines_rows_and_drops_a_malformed_file():
    mine = {"stats": [[8, "plain", 1.0, 8.0, 5]], "interval": {}}
    theirs = {"stats": [[8, "plain", 2.0, 8.0, 5], [1, "sd", 1.0, 2.0, 4]], "interval": {}}
    assert merge(theirs, mine)["stats"] == [[1, "sd", 1.0, 2.0, 4], [8, "plain", 1.0, 8.0, 5]]
    assert merge({"stats": [[1, "sd", -1.0, 2.0, 4]]}, mine)["stats"] == mine["stats"]


def test_an_unwritable_folder_loses_nothing_but_the_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    file = CostFile(blocker / "costs", KEY)  # a folder under a file: cannot exist
    assert file.save(measured()) is False
    assert file.load(CostModel()) == 0


def test_the_costs_command_lists_and_clears_the_kept_files(tmp_path, monkeypatch, capsys):
    from trispec_vllm.cli import main

    monkeypatch.setenv("TRISPEC_COST_DIR", str(tmp_path))
    assert main(["costs"]) == 0
    assert "no kept measurements" in capsys.readouterr().out
    CostFile(tmp_path, {**KEY, "target": ["/models/t", None]}).save(measured())
    (tmp_path / "costs-broken.json").write_text("{")
    assert main(["costs"]) == 0
    out = capsys.readouterr().out
    assert "target /models/t" in out and "plain tok/s: batch <= 8: 10.0" in out
    assert "costs-broken.json: unreadable" in out
    assert main(["costs", "--clear"]) == 0
    assert not list(tmp_path.glob("costs-*.json"))


def test_a_memory_that_cannot_start_leaves_the_engine_measuring_afresh(monkeypatch, caplog):
    from types import SimpleNamespace

    from trispec_vllm.engine import cost_memory

    def broken(*_):
        raise RuntimeError("no device name")

    monkeypatch.setattr(cost_memory, "cost_key", broken)
    runner = SimpleNamespace(vllm_config=None, device=None)
    cfg = SimpleNamespace(cost_memory=True)
    assert cost_memory.open_memory(runner, cfg, CostModel()) is None
    assert "cost_memory is off" in caplog.text
    assert cost_memory.open_memory(runner, SimpleNamespace(cost_memory=False), CostModel()) is None


def test_restored_means_are_re_based_by_this_engines_own_steps():
    """A kept step time describes the machine as it was: this engine's first timed
    step of a kind outweighs it sooner than the EWMA's weight would let it."""
    warm = CostModel(warmup=2, explore_every=8, run_length=3)
    warm.restore(measured().snapshot())
    for _ in range(2):  # the first step of a kind in a class is a switch: not timed
        kind = warm.choose(8)
        warm.observe(kind, 8, 2.0, SPEED[kind])
    # the kept step time (1 s) counts as one sample next to this engine's first (2 s)
    assert kind == "plain" and warm.stats[(8, "plain")].seconds == 1.5


def test_the_trispec_steps_drafted_means_round_trip():
    model = CostModel()
    for _ in range(3):
        model.observe("trispec", 1, 0.1, 4, drafted=True)
    snap = json.loads(json.dumps(model.snapshot()))
    assert snap["drafted"] and snap["drafted"][0][0] == 1
    warm = CostModel()
    warm.restore(snap)
    assert warm.rates()["trispec_drafted"] == model.rates()["trispec_drafted"]
    lossless = CostModel(kinds=("sd", "plain"))
    lossless.restore(snap)
    assert not lossless.drafted


@pytest.mark.parametrize(
    "drafted", [[[1, 0.0, 4.0, 3]], [[1, 0.1, 4.0]], [[0, 0.1, 4.0, 3]], [[1, 0.1, -1.0, 3]], 7]
)
def test_malformed_drafted_means_are_refused(drafted):
    model = CostModel()
    with pytest.raises(ValueError):
        model.restore({"stats": [], "drafted": drafted})
    assert not model.drafted
