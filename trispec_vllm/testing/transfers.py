"""Count the host-device copies TriSpec's own code makes (a test instrument).

On a GPU every `Tensor.cpu()`, `.tolist()`, `.item()` and `.to(device)` from
pageable memory blocks the host until the copy is done; on CPU they are
no-ops, but counting the calls still holds the number a GPU step would pay.
Only calls made directly from TriSpec's files (`trispec_vllm/`, `kernels/`)
count: vLLM's own copies are vLLM's business. `.to(device, non_blocking=True)`
is counted apart: from pinned memory it does not block the host.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch

_ROOTS = tuple(
    str(p)
    for p in (Path(__file__).resolve().parents[1], Path(__file__).resolve().parents[2] / "kernels")
)
_TESTING = str(Path(__file__).resolve().parent)


def _from_trispec() -> bool:
    caller = sys._getframe(2).f_code.co_filename
    return caller.startswith(_ROOTS) and not caller.startswith(_TESTING)


def _names_a_device(args, kwargs) -> bool:
    if "device" in kwargs:
        return True
    return any(isinstance(a, torch.device | str) for a in args) or any(
        isinstance(a, torch.Tensor) for a in args
    )


class TransferCounter:
    """Counts by kind: 'blocking' (cpu, tolist, item, to(device)) and 'non_blocking'."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.sites: Counter[str] = Counter()

    def _record(self, kind: str) -> None:
        frame = sys._getframe(2)
        self.counts[kind] += 1
        self.sites[f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"] += 1

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


@contextlib.contextmanager
def count_transfers() -> Iterator[TransferCounter]:
    """Patch the four Tensor methods for the duration of the block."""
    counter = TransferCounter()
    originals = {name: getattr(torch.Tensor, name) for name in ("cpu", "tolist", "item", "to")}

    def wrap(name):
        original = originals[name]

        def method(self, *args, **kwargs):
            if _from_trispec():
                if name != "to":
                    counter._record("blocking")
                elif _names_a_device(args, kwargs):
                    counter._record("non_blocking" if kwargs.get("non_blocking") else "blocking")
            return original(self, *args, **kwargs)

        return method

    try:
        for name in originals:
            setattr(torch.Tensor, name, wrap(name))
        yield counter
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
