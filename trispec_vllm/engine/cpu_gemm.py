"""Small CPU matmuls padded to a few rows (patch 14).

vLLM's CPU linear layers run oneDNN's bf16 matmul. On an AMD EPYC with AVX512-BF16
(2 cores), with the weights streamed from memory as in a decoding pass, its kernel
for one or two rows of activations took 1.2-1.4x as long as for four
(`benchmarks/cpu_gemm.py`): a one-token decoding pass cost more than a pass over a
four-token draft. Padding such inputs with zero rows to `min_rows` gives the
single-row passes of plain decoding, of the proxy and of steps without drafts the
faster kernel. Rows are independent in a matmul, so the padding changes no row's
result beyond the kernels' own rounding. Whether it pays depends on the CPU and
its oneDNN build, so `trispec-vllm cpu-env` measures it (`measure_gain`) and sets
TRISPEC_CPU_GEMM_MIN_ROWS only where it does.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from trispec_vllm.engine.wraps import wrap_once

Linear = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

MIN_ROWS = 4  # the padded row count measured (1-2 rows slow, 3-6 fast, 7+ slow again)
MIN_GAIN = 1.05  # the measured speed-up of a one-row pass that turns padding on


def padded_linear(linear: Linear, min_rows: int) -> Linear:
    """`linear` with 2-D bf16 inputs of fewer than `min_rows` rows padded by zero rows."""

    def run(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.shape[0]
        if x.dim() != 2 or not 0 < rows < min_rows or x.dtype != torch.bfloat16:
            return linear(x, weight, bias)
        padded = x.new_zeros((min_rows, x.shape[1]))
        padded[:rows] = x
        return linear(padded, weight, bias)[:rows]

    run.trispec_min_rows = min_rows  # type: ignore[attr-defined]
    run.trispec_inner = linear  # type: ignore[attr-defined]
    return run


def install_gemm_padding(min_rows: int) -> None:
    """Wrap `dispatch_cpu_unquantized_gemm` so every layer it sets up pads its inputs
    to `min_rows` rows (idempotent; layers built before the call keep their linear)."""
    from vllm.model_executor.layers import utils

    def make(original):
        def dispatch(layer: torch.nn.Module, remove_weight: bool) -> None:
            original(layer, remove_weight)
            linear = getattr(layer, "cpu_linear", None)
            if linear is not None and getattr(linear, "trispec_min_rows", None) is None:
                layer.cpu_linear = padded_linear(linear, min_rows)

        return dispatch

    if wrap_once(utils, "dispatch_cpu_unquantized_gemm", make):
        utils.dispatch_cpu_unquantized_gemm.trispec_min_rows = min_rows


def linear_layer(shape: tuple[int, int], dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """A layer of random `dtype` weights of `shape` (out, in) with the CPU linear vLLM's
    dispatch gives it on this machine, unpadded (`cpu_linear`)."""
    from vllm.model_executor.layers import utils

    mod = torch.nn.Module()
    mod.weight = torch.nn.Parameter(torch.randn(shape, dtype=dtype), requires_grad=False)
    mod.bias = None
    utils.dispatch_cpu_unquantized_gemm(mod, False)
    mod.cpu_linear = getattr(mod.cpu_linear, "trispec_inner", mod.cpu_linear)
    return mod


def measure_gain(
    threads: int,
    min_rows: int = MIN_ROWS,
    shape: tuple[int, int] = (8192, 2048),
    layers: int = 12,
    rounds: int = 5,
) -> float:
    """How much faster vLLM's CPU linear runs one row padded to `min_rows` than one
    row as it is: median over interleaved rounds, each pass over `layers` bf16
    weights of `shape` (about 400 MB, streamed from memory as in decoding)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        mods = [linear_layer(shape) for _ in range(layers)]
        x = torch.randn(1, shape[1], dtype=torch.bfloat16)

        def seconds(pad: bool) -> float:
            t0 = time.perf_counter()
            for mod in mods:
                run = padded_linear(mod.cpu_linear, min_rows) if pad else mod.cpu_linear
                run(x, mod.weight, None)
            return time.perf_counter() - t0

        seconds(False), seconds(True)  # warm-up
        ratios = [seconds(False) / seconds(True) for _ in range(rounds)]
        return statistics.median(ratios)
    finally:
        torch.set_num_threads(before)
