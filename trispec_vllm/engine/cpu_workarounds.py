"""vLLM 0.32 CPU bugs TriSpec works around; delete this module on upgrade.

1. The CPU fallback of the rejection sampler's Triton `expand_kernel` casts its
   output to int64 and never writes it back, so float inputs (temperature,
   top-p) come out as uninitialised memory: speculative sampling at
   temperature > 0 samples from a garbage-scaled target distribution.
2. The V1 runner rewinds a seeded request's generator by offset when the token
   it sampled is discarded (a partial prefill chunk); CPU generators have no
   offset, so the state is saved before sampling and put back instead.
3. The CPU rejection sampler can overwrite greedy requests' tokens when sampled
   requests share the batch; greedy verification is deterministic, so it is
   redone for the plain-greedy rows (`trispec_vllm.policy.sampling.greedy_verify`).
"""

from __future__ import annotations

import numpy as np
import torch


def expand_batch_to_tokens(
    x: torch.Tensor,
    cu_num_tokens: torch.Tensor,
    num_tokens: int,
    replace_from: int = 0,
    replace_to: int = 0,
) -> torch.Tensor:
    """vLLM's `rejection_sampler.expand_batch_to_tokens` in plain torch (bug 1)."""
    counts = torch.diff(cu_num_tokens.long(), prepend=cu_num_tokens.new_zeros(1).long())
    out = torch.repeat_interleave(x, counts, output_size=num_tokens)
    if replace_from != replace_to:
        out = torch.where(out == replace_from, torch.full_like(out, replace_to), out)
    return out


def install_cpu_sampling_fix() -> None:
    """Route vLLM's rejection sampler through the plain-torch expand (CPU only)."""
    from vllm.v1.sample import rejection_sampler

    rejection_sampler.expand_batch_to_tokens = expand_batch_to_tokens


def discarded_cpu_generators(runner) -> dict[int, torch.Generator]:
    """Generators of the rows whose sampled token vLLM discards this step (bug 2);
    empty off CPU."""
    if runner.device.type != "cpu":
        return {}
    ib = runner.input_batch
    rows = np.nonzero(runner.discard_request_mask.np[: ib.num_reqs])[0]
    return {int(i): ib.generators[int(i)] for i in rows if int(i) in ib.generators}
