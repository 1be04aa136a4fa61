"""One host-to-device copy for the small index tensors of a step.

A routed step builds its sub-batch (token ids, positions, slots, sequence
lengths, block table) and its row indices on the host. Copied one by one, each
`.to(device)` from pageable memory blocks the host; packed into one int64
buffer in pinned memory, they travel in a single non-blocking copy and are
viewed and cast back on the device. The buffer comes from torch's caching
host allocator, which reuses a pinned block only after the copy that read it
has finished, so a later step can never overwrite data still in flight.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pin_memory_available() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_pin_memory_available()


def upload(tensors: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """`tensors` (integer CPU tensors) on `device`, same shapes and dtypes, in one copy."""
    sizes = [t.numel() for t in tensors]
    packed = torch.empty(sum(sizes), dtype=torch.int64, pin_memory=pin_memory_available())
    torch.cat([t.reshape(-1).to(torch.int64) for t in tensors], out=packed)
    on_device = packed.to(device, non_blocking=True)
    out, start = [], 0
    for t, n in zip(tensors, sizes, strict=True):
        out.append(on_device[start : start + n].view(t.shape).to(t.dtype))
        start += n
    return out
