"""A fixed-size fingerprint of a step's routing, for checking that ranks agree.

Under tensor parallelism every rank runs the same policy on identical inputs
(vLLM all-gathers the logits on every rank, and the scheduler's output is
broadcast), so the ranks take the same routing decision by construction. If
they ever did not, their collectives would hang or mix batches; comparing
fingerprints turns that into an error that names the step and the ranks.
"""

from __future__ import annotations

import zlib

import numpy as np

from trispec_vllm.policy.batch import StepPlan

FINGERPRINT_SIZE = 4


def routing_fingerprint(plan: StepPlan) -> np.ndarray:
    """[4] float32: rows in the batch, and 24-bit checksums of the escalated rows,
    the trusted lengths and the proxy completions (values exact in float32, the
    dtype every collective backend gathers: vLLM's CPU shared-memory all-gather
    has no int64)."""
    d = plan.decision

    def crc(a) -> int:
        data = np.ascontiguousarray(np.asarray(a, dtype=np.int64)).tobytes()
        return zlib.crc32(data) & 0xFFFFFF

    return np.array(
        [
            len(plan.sample_row_offsets),
            crc(plan.escalated_rows),
            crc(d.trusted_len.numpy()),
            crc(d.proxy_completes.numpy()) ^ int(plan.proxy_ran),
        ],
        dtype=np.float32,
    )


def disagreeing_ranks(gathered: np.ndarray) -> list[int]:
    """Ranks whose fingerprint ([world, 4]) differs from rank 0's."""
    return [r for r in range(1, len(gathered)) if not np.array_equal(gathered[r], gathered[0])]
