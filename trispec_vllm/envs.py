"""Every environment variable trispec-vllm reads, in one place.

Each is read when asked for (not at import), so tests and `monkeypatch.setenv`
see the current value. vLLM's own variables (VLLM_CPU_KVCACHE_SPACE, ...) are
vLLM's business and are not listed here.
"""

from __future__ import annotations

import os
from pathlib import Path

# name -> (default, what it does)
VARIABLES: dict[str, tuple[str | None, str]] = {
    "TRISPEC_CACHE": (
        None,
        "Cache root of the real-model fetcher and the tiny demo pair "
        "(default ~/.cache/trispec-vllm).",
    ),
    "TRISPEC_COST_DIR": (
        None,
        "Folder of the cost-aware step's measurements kept across engine restarts "
        "(`cost_memory`; default <TRISPEC_CACHE>/costs).",
    ),
    "TRISPEC_DEBUG": (None, "Set to 1 for extra start-up logging (proxy vocabulary check)."),
    "TRISPEC_KERNELS": (
        "auto",
        "Kernel backend for CUDA tensors: 'auto' (time Triton against torch once per "
        "shape class, keep the faster), 'triton' or 'torch'.",
    ),
    "TRISPEC_CPU_SAMPLING_FIX": (
        None,
        "Set to 1 to give every engine on CPU (stock SD too) the rejection-sampler fix "
        "TriSpec's runner installs (vLLM 0.32's CPU expand kernel bug).",
    ),
    "TRISPEC_CPU_GEMM_MIN_ROWS": (
        None,
        "On CPU, pad the inputs of vLLM's linear layers to at least this many rows in every "
        "engine (`trispec-vllm cpu-env` sets it where it measured a gain; `cpu_gemm`).",
    ),
    "TRISPEC_CHECK_RANKS": (
        None,
        "Set to 1 to compare every step's routing across tensor-parallel ranks and raise "
        "on a difference (one small all-gather per step; the tests turn it on).",
    ),
    "TRISPEC_TCMALLOC": (
        None,
        "Path of libtcmalloc for `trispec-vllm cpu-env` and the demo to preload "
        "(default: found through the dynamic linker's cache).",
    ),
    "TRISPEC_SKIP_VERSION_CHECK": (
        None,
        "Set to 1 to import trispec-vllm next to a vLLM other than the pinned one.",
    ),
}


def get(name: str) -> str | None:
    """The variable's value, or its default (KeyError for a name not listed above)."""
    default, _ = VARIABLES[name]
    return os.environ.get(name, default)


def flag(name: str) -> bool:
    """True when the variable is set to 1."""
    return get(name) == "1"


def cache_root() -> Path:
    """Where downloaded and generated models are cached (outside the repository)."""
    root = get("TRISPEC_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "trispec-vllm"


def cost_dir() -> Path:
    """Where the cost-aware step keeps its measurements (`policy/cost_file.py`)."""
    folder = get("TRISPEC_COST_DIR")
    return Path(folder).expanduser() if folder else cache_root() / "costs"


def kernel_backend() -> str:
    return get("TRISPEC_KERNELS") or "auto"
