"""Whether Triton can run a given tensor's kernel here."""

from __future__ import annotations

import os

import torch

try:  # Triton is optional: the torch references need none.
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    HAS_TRITON = False


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1, where Triton kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(t: torch.Tensor) -> bool:
    """Dispatch rule: Triton for CUDA tensors, the reference elsewhere."""
    return HAS_TRITON and t.is_cuda
