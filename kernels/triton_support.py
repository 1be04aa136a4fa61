"""Whether Triton runs a kernel here, and if it pays.

On CUDA tensors each kernel has two implementations: the Triton kernel and its
torch reference. `TRISPEC_KERNELS` picks one for every kernel (`triton`,
`torch`), or, by default (`auto`), `run` times both on the first call of each
kernel and shape class (rows rounded up to a power of two, same vocabulary and
dtype) and keeps the faster, logging the times: "Triton if it pays" is then
decided on the GPU that serves, not on the one that wrote the code. A Triton
kernel that fails on its first call falls back to torch with a warning.
CPU tensors always take the torch reference.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trispec_vllm import envs

try:  # Triton is optional: the torch references need none.
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    HAS_TRITON = False

logger = logging.getLogger("vllm.trispec")

BACKEND_ENV = "TRISPEC_KERNELS"
BACKENDS = ("auto", "triton", "torch")
REPEATS = 5


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1, where Triton kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(t: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on this tensor (CUDA, Triton installed)."""
    return HAS_TRITON and t.is_cuda


def backend_mode() -> str:
    mode = envs.kernel_backend()
    if mode not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be one of {', '.join(BACKENDS)}; got {mode!r}")
    return mode


@dataclass(frozen=True)
class Choice:
    backend: str  # "triton" or "torch"
    triton_ms: float | None  # None: the Triton kernel failed here
    torch_ms: float


_choices: dict[tuple, Choice] = {}


def choices() -> dict[tuple, Choice]:
    """What `auto` chose so far, per (kernel, device, dtype, vocabulary, rows bucket)."""
    return dict(_choices)


def cuda_ms(fn: Callable, args: tuple, repeats: int = REPEATS) -> float:
    """Mean milliseconds of fn(*args) on the GPU after one warm-up (compile) call."""
    fn(*args)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn(*args)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3 / repeats


def measure(
    triton_fn: Callable, reference_fn: Callable, args: tuple, timer: Callable | None = None
) -> Choice:
    """Time both implementations on the same arguments and pick the faster."""
    timer = timer or cuda_ms
    try:
        triton_ms = timer(triton_fn, args)
    except Exception as exc:  # noqa: BLE001 - any failure means: use the reference
        logger.warning("TriSpec: Triton kernel failed here (%s); using torch", exc)
        return Choice("torch", None, timer(reference_fn, args))
    torch_ms = timer(reference_fn, args)
    return Choice("triton" if triton_ms <= torch_ms else "torch", triton_ms, torch_ms)


def run(name: str, t: torch.Tensor, triton_fn: Callable, reference_fn: Callable, *args):
    """Run kernel `name` on args with the implementation chosen for tensors like t."""
    if not use_triton(t):
        return reference_fn(*args)
    mode = backend_mode()
    if mode != "auto":
        return (triton_fn if mode == "triton" else reference_fn)(*args)
    rows = max(int(t.shape[0]), 1)
    key = (name, str(t.device), t.dtype, int(t.shape[-1]), 1 << (rows - 1).bit_length())
    choice = _choices.get(key)
    if choice is None:
        choice = _choices[key] = measure(triton_fn, reference_fn, args)
        logger.info(
            "TriSpec kernels: %s on %s x %d (%s): Triton %s ms, torch %.3f ms -> %s",
            name,
            key[4],
            key[3],
            t.dtype,
            "failed" if choice.triton_ms is None else f"{choice.triton_ms:.3f}",
            choice.torch_ms,
            choice.backend,
        )
    return (triton_fn if choice.backend == "triton" else reference_fn)(*args)
