"""Steps without drafts sample as vLLM's no-speculation engine does.

With a speculative config, vLLM 0.32 builds spec-decode metadata for every step
and sends it through its rejection sampler, drafts or not: it copies the bonus
rows out of the logits and runs the verification kernels over no draft. The
cost-aware step's plain steps (and an SD step that found no draft) pay that for
nothing; at batch 8 on the 2-core CPU that was about 1.2 ms of a 150 ms step
(docs/benchmarks.md). Where the sampler's result cannot differ, TriSpec hands such
a step to vLLM's plain sampler instead: every row greedy (the argmax either
way), no logprobs, and nothing that reads drafts (penalties and bad words see
the previous step's drafts on the rejection path, the thinking budget too).
The output has the shape the rejection sampler gives a step without drafts
([B, 1]), so vLLM's bookkeeping reads it the same.
"""

from __future__ import annotations

from typing import Any


def samples_plainly(spec_meta: Any, sampling: Any) -> bool:
    """Whether a step with spec-decode metadata `spec_meta` (vLLM's
    `SpecDecodeMetadata`) and sampling metadata `sampling` may use vLLM's plain
    sampler: no drafts, and no sampling option that would tell the two apart."""
    if spec_meta is None or spec_meta.max_spec_len != 0:
        return False
    holder = sampling.thinking_budget_state_holder
    return (
        bool(sampling.all_greedy)
        and sampling.max_num_logprobs is None
        and not sampling.logprob_token_ids
        and bool(sampling.no_penalties)
        and not sampling.bad_words_token_ids
        and (holder is None or not holder.has_tracked_requests())
    )
