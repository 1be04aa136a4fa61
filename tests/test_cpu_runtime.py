"""The CPU runtime set-up: what it adds, and that a user's own values win."""

from __future__ import annotations

from pathlib import Path

import pytest

from trispec_vllm import cpu_runtime
from trispec_vllm.cli import main

LIBS = [Path("/opt/libtcmalloc_minimal.so.4"), Path("/venv/lib/libiomp5.so")]


def test_a_two_core_machine_gets_its_reserved_core_back_and_both_libraries():
    added = cpu_runtime.recommended({}, cores=2, libraries=LIBS)
    assert added == {
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "NUMBA_THREADING_LAYER": "workqueue",
        "LD_PRELOAD": "/opt/libtcmalloc_minimal.so.4:/venv/lib/libiomp5.so",
    }


def test_a_larger_machine_keeps_vllms_reserved_core():
    added = cpu_runtime.recommended({}, cores=16, libraries=LIBS)
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in added
    assert "LD_PRELOAD" in added


def test_values_the_user_set_are_never_changed():
    mine = {
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "1",
        "LD_PRELOAD": "/my/lib.so",
        "NUMBA_THREADING_LAYER": "omp",
    }
    environ = dict(mine)
    assert cpu_runtime.recommended(environ, cores=2, libraries=LIBS) == {}
    assert cpu_runtime.apply(environ) == {}
    assert environ == mine
    assert not cpu_runtime.keep_torch_threads(environ)


def test_no_library_found_means_no_preload():
    assert "LD_PRELOAD" not in cpu_runtime.recommended({}, cores=2, libraries=[])


def test_a_tcmalloc_path_that_does_not_exist_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TRISPEC_TCMALLOC", str(tmp_path / "missing.so"))
    with pytest.raises(FileNotFoundError, match="TRISPEC_TCMALLOC"):
        cpu_runtime.find_tcmalloc()
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    monkeypatch.setenv("TRISPEC_TCMALLOC", str(lib))
    assert cpu_runtime.find_tcmalloc() == lib


def test_a_missing_tcmalloc_is_named_with_how_to_get_it(monkeypatch, capsys):
    monkeypatch.setattr(cpu_runtime, "find_tcmalloc", lambda: None)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    (line,) = [m for m in cpu_runtime.missing() if "tcmalloc" in m]
    assert "libtcmalloc-minimal4" in line and "TRISPEC_TCMALLOC" in line
    assert main(["cpu-env"]) == 0
    captured = capsys.readouterr()
    assert "libtcmalloc-minimal4" in captured.err  # stdout stays `eval`-able
    assert "tcmalloc" not in captured.out
    # A user who set LD_PRELOAD chose their libraries: nothing to say.
    assert cpu_runtime.missing({"LD_PRELOAD": "/x.so"}) == []


def test_cpu_env_prints_shell_exports(monkeypatch, capsys, tmp_path):
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    monkeypatch.setenv("TRISPEC_TCMALLOC", str(lib))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    monkeypatch.setenv("NUMBA_THREADING_LAYER", "workqueue")
    assert main(["cpu-env"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"export LD_PRELOAD='{lib}")
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in out


def test_the_ngram_drafter_gets_numbas_own_thread_pool(monkeypatch):
    """numba's OpenMP layer shares torch's threads; the runner picks workqueue before
    vLLM builds its ngram drafter, unless the user chose a layer."""
    from numba import config

    monkeypatch.setattr(config, "THREADING_LAYER", "default")
    assert cpu_runtime.keep_torch_threads({})
    assert config.THREADING_LAYER == "workqueue"
    assert not cpu_runtime.keep_torch_threads({})  # already selected
