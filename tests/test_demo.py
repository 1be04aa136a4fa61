"""The README's first command: the demo, end to end on the tiny pair, and the real
pair's imports (installed by the same install step)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from trispec_vllm import demo


def test_real_pair_modules_are_installed():
    """Everything the real-pair demo imports beyond the plugin is importable here
    (this suite runs in the environment scripts/setup.sh builds)."""
    demo.check_real_pair_requirements()
    from trispec_vllm import fetch  # the real-pair path's fetcher

    assert callable(fetch.fetch_pair)


def test_missing_module_is_named_before_any_download(monkeypatch):
    monkeypatch.setattr(demo, "REAL_PAIR_MODULES", ("json", "no_such_module_xyz"))
    with pytest.raises(ImportError, match="no_such_module_xyz") as err:
        demo.check_real_pair_requirements()
    assert "json" not in str(err.value)


def _result(label, tps, steps, tokens):
    out = SimpleNamespace(outputs=[SimpleNamespace(text=f"{label} text", token_ids=tokens)])
    return demo.Result(label, [out], tps, steps)


def test_report_says_slower_when_slower():
    results = [
        _result("sd ngram", 10.0, 0.3, [1, 2]),
        _result("sd draft", 20.0, 0.2, [1, 2]),
        _result("tri ngram", 15.0, 0.1, [1, 3]),
        _result("tri draft", 18.0, 0.1, [1, 2]),
    ]
    text = demo.report(results, 0.5)
    assert "0.90x" in text and "slower than" in text and "(tri draft)" in text
    assert "1/1 answers identical" in text
    faster = demo.report(results[:2] + [_result("tri", 30.0, 0.1, [1, 2])] * 2, 0.5)
    assert "1.50x" in faster and "faster than" in faster


@pytest.mark.vllm
def test_tiny_demo_runs_end_to_end(tmp_path):
    """`trispec-vllm demo --tiny` as a user runs it: four engines, one table."""
    cli = Path(sys.executable).with_name("trispec-vllm")
    from trispec_vllm.testing.server import user_env

    env = user_env({"TRISPEC_CACHE": str(tmp_path), "VLLM_CPU_KVCACHE_SPACE": "1"})
    proc = subprocess.run(
        [str(cli), "demo", "--tiny", "--max-tokens", "24"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    rows = re.findall(r"^(vLLM|TriSpec) .*?\s+(\d+\.\d+)\s+(\d+\.\d+)$", out, re.M)
    assert len(rows) == 4, out
    assert all(float(tps) > 0 and 0 < float(steps) <= 1 for _, tps, steps in rows), out
    assert re.search(r"is \d+\.\d\dx the tokens/s of vLLM's best", out), out
    assert out.count("  -> ") == len(demo.TINY_PROMPTS)
    for stream in (out, proc.stderr):  # vLLM logs to stdout; quiet unless --verbose
        assert " INFO " not in stream and " WARNING " not in stream


def test_the_real_pair_runs_in_float32_where_the_cpu_wants_it_and_memory_allows(
    monkeypatch, tmp_path
):
    from trispec_vllm import cpu_runtime

    pair = (tmp_path / "target", tmp_path / "proxy")
    for d in pair:
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"\0" * 1000)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "0")
    monkeypatch.setattr(cpu_runtime, "preferred_dtype", lambda dtype: dtype)
    assert demo.cpu_dtype(pair) == "bfloat16"
    monkeypatch.setattr(cpu_runtime, "preferred_dtype", lambda dtype: "float32")
    assert demo.cpu_dtype(pair) == "float32"
    pages = {"SC_AVPHYS_PAGES": 1, "SC_PAGE_SIZE": 4000}  # 4000 bytes free, 4000 needed
    monkeypatch.setattr(demo.os, "sysconf", pages.__getitem__)
    assert demo.cpu_dtype(pair) == "bfloat16"
