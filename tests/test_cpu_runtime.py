"""The CPU runtime set-up: what it adds, and that a user's own values win."""

from __future__ import annotations

from pathlib import Path

import pytest

from trispec_vllm import cpu_runtime
from trispec_vllm.cli import main

LIBS = [Path("/opt/libtcmalloc_minimal.so.4"), Path("/venv/lib/libiomp5.so")]


def test_a_two_core_machine_gets_its_reserved_core_back_and_both_libraries():
    added = cpu_runtime.recommended({}, cores=2, libraries=LIBS, gemm_rows=4)
    assert added == {
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "NUMBA_THREADING_LAYER": "workqueue",
        "LD_PRELOAD": "/opt/libtcmalloc_minimal.so.4:/venv/lib/libiomp5.so",
        "TRISPEC_CPU_GEMM_MIN_ROWS": "4",
    }
    assert "TRISPEC_CPU_GEMM_MIN_ROWS" not in cpu_runtime.recommended(
        {}, cores=2, libraries=LIBS, gemm_rows=0
    )


def test_a_larger_machine_keeps_vllms_reserved_core():
    added = cpu_runtime.recommended({}, cores=16, libraries=LIBS, gemm_rows=0)
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in added
    assert "LD_PRELOAD" in added


def test_values_the_user_set_are_never_changed():
    mine = {
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "1",
        "LD_PRELOAD": "/my/lib.so",
        "NUMBA_THREADING_LAYER": "omp",
        "TRISPEC_CPU_GEMM_MIN_ROWS": "0",
    }
    environ = dict(mine)
    assert cpu_runtime.recommended(environ, cores=2, libraries=LIBS) == {}
    assert cpu_runtime.apply(environ) == {}
    assert environ == mine
    assert not cpu_runtime.keep_torch_threads(environ)


def test_no_library_found_means_no_preload():
    assert "LD_PRELOAD" not in cpu_runtime.recommended({}, cores=2, libraries=[], gemm_rows=0)


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
    monkeypatch.setenv("TRISPEC_CPU_GEMM_MIN_ROWS", "0")
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
    monkeypatch.setenv("TRISPEC_CPU_GEMM_MIN_ROWS", "0")
    monkeypatch.setattr(cpu_runtime, "native_bf16_matmul", lambda: False)
    assert main(["cpu-env"]) == 0
    got = capsys.readouterr()
    assert got.out.startswith(f"export LD_PRELOAD='{lib}")
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in got.out
    assert "--dtype float32" in got.err and "--dtype" not in got.out
    monkeypatch.setattr(cpu_runtime, "native_bf16_matmul", lambda: True)
    assert main(["cpu-env"]) == 0
    assert "--dtype" not in capsys.readouterr().err


def test_the_ngram_drafter_gets_numbas_own_thread_pool(monkeypatch):
    """numba's OpenMP layer shares torch's threads; the runner picks workqueue before
    vLLM builds its ngram drafter, unless the user chose a layer."""
    from numba import config

    monkeypatch.setattr(config, "THREADING_LAYER", "default")
    assert cpu_runtime.keep_torch_threads({})
    assert config.THREADING_LAYER == "workqueue"
    assert not cpu_runtime.keep_torch_threads({})  # already selected


def test_the_gemm_padding_is_measured_once_per_cpu_and_kept(monkeypatch, tmp_path):
    from trispec_vllm.engine import cpu_gemm

    monkeypatch.setenv("TRISPEC_CACHE", str(tmp_path))
    calls = []

    def gain(threads):
        calls.append(threads)
        return 1.3

    monkeypatch.setattr(cpu_gemm, "measure_gain", gain)
    assert cpu_runtime.gemm_min_rows(2) == cpu_gemm.MIN_ROWS
    assert cpu_runtime.gemm_min_rows(2) == cpu_gemm.MIN_ROWS
    assert calls == [2]  # kept in the cache folder
    monkeypatch.setattr(cpu_gemm, "measure_gain", lambda threads: 1.0)
    assert cpu_runtime.gemm_min_rows(3) == 0  # no gain on 3 threads: no padding
    added = cpu_runtime.recommended({}, cores=2, libraries=[])
    assert added["TRISPEC_CPU_GEMM_MIN_ROWS"] == str(cpu_gemm.MIN_ROWS)


def test_padded_small_matmuls_give_the_same_rows(monkeypatch):
    import torch
    from vllm.model_executor.layers import utils

    from trispec_vllm.engine import cpu_gemm

    monkeypatch.setattr(utils, "dispatch_cpu_unquantized_gemm", utils.dispatch_cpu_unquantized_gemm)
    cpu_gemm.install_gemm_padding(4)
    cpu_gemm.install_gemm_padding(4)  # idempotent
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(
        torch.randn(64, 32, dtype=torch.bfloat16), requires_grad=False
    )
    utils.dispatch_cpu_unquantized_gemm(layer, False)
    assert layer.cpu_linear.trispec_min_rows == 4
    assert layer.cpu_linear.trispec_inner.__name__ != "run"  # wrapped once
    seen = []
    inner = layer.cpu_linear.trispec_inner
    padded = cpu_gemm.padded_linear(lambda x, w, b: seen.append(x.shape[0]) or inner(x, w, b), 4)
    for rows in (1, 2, 3, 4, 7):
        x = torch.randn(rows, 32, dtype=torch.bfloat16)
        out = padded(x, layer.weight, None)
        assert out.shape == (rows, 64)
        ref = torch.nn.functional.linear(x.float(), layer.weight.float())
        torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.02)
    assert seen == [4, 4, 4, 4, 7]  # fewer rows than 4 padded, none cut
    assert padded(torch.randn(2, 32), layer.weight.float(), None).shape == (2, 64)
    assert seen[-1] == 2  # float32 inputs are left as they are


def test_a_gemm_padding_that_is_no_row_count_is_named(monkeypatch):
    from trispec_vllm.engine.patches import apply_trispec_patches

    monkeypatch.setenv("TRISPEC_CPU_GEMM_MIN_ROWS", "four")
    with pytest.raises(ValueError, match="TRISPEC_CPU_GEMM_MIN_ROWS must be a row count"):
        apply_trispec_patches()


def test_bf16_checkpoints_run_in_float32_where_the_cpu_has_no_bf16_matmul(monkeypatch):
    assert cpu_runtime.preferred_dtype("bfloat16", native=False) == "float32"
    assert cpu_runtime.preferred_dtype("bfloat16", native=True) == "bfloat16"
    assert cpu_runtime.preferred_dtype("float16", native=False) == "float16"
    monkeypatch.setattr(cpu_runtime, "native_bf16_matmul", lambda: None)  # not a CPU build
    assert cpu_runtime.preferred_dtype("bfloat16") == "bfloat16"


def test_this_machine_answers_the_bf16_question_as_vllms_layer_set_up_does():
    """vLLM's own dispatch falls back to torch's linear exactly where the check says no."""
    pytest.importorskip("vllm")
    import torch
    from vllm.model_executor.layers import utils

    layer = torch.nn.Module()
    weight = torch.zeros(64, 64, dtype=torch.bfloat16)
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    layer.bias = None
    utils.dispatch_cpu_unquantized_gemm(layer, False)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    assert layer.cpu_linear(x, layer.weight, None).shape == (3, 64)
    names = layer.cpu_linear.__code__.co_names
    assert "onednn_mm" in names or "linear" in names  # vLLM's two paths on such a CPU
    assert cpu_runtime.native_bf16_matmul() is ("onednn_mm" in names)


def test_a_bf16_engine_on_such_a_cpu_is_told_to_use_float32(monkeypatch, caplog):
    import logging

    import torch

    from trispec_vllm.engine import config_hook

    class Model:
        dtype = torch.bfloat16

    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(cpu_runtime, "native_bf16_matmul", lambda: False)
    monkeypatch.setattr(config_hook, "dtype_warned", False)
    config_hook.warn_cpu_dtype(Model())
    assert "dtype float32" in caplog.text
    caplog.clear()
    config_hook.warn_cpu_dtype(Model())
    assert caplog.text == ""  # once per process
    monkeypatch.setattr(config_hook, "dtype_warned", False)
    Model.dtype = torch.float32
    config_hook.warn_cpu_dtype(Model())
    monkeypatch.setattr(cpu_runtime, "native_bf16_matmul", lambda: True)
    Model.dtype = torch.bfloat16
    config_hook.warn_cpu_dtype(Model())
    assert caplog.text == ""
