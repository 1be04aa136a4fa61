"""No drafts, no call: vLLM's per-step draft request skipped when there is none (patch 13).

An engine with a speculative config asks its worker for the next step's drafts
after every step (`EngineCore.post_step` -> `take_draft_token_ids`), one more
round trip to the worker process. When TriSpec's cost-aware step has chosen plain
decoding, every request's draft list is empty, and taking them would only set
`spec_token_ids = []` on requests whose `schedule()` has already emptied it. The
runner marks such an output (`mark_no_drafts`); the engine core then skips the
call. Outputs without the mark (every stock engine) take the drafts as before.
"""

from __future__ import annotations

NO_DRAFTS_ATTR = "trispec_no_drafts"  # ModelRunnerOutput / Scheduler attribute


def no_drafts(drafts) -> bool:
    """Whether a proposal holds no draft token for any request (a per-request list
    of lists; a tensor of drafts is never empty)."""
    return isinstance(drafts, list) and not any(map(len, drafts))


def mark_no_drafts(out, drafts) -> None:
    """Mark a runner output whose step proposed no drafts (worker side)."""
    from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT

    if out is not None and out is not EMPTY_MODEL_RUNNER_OUTPUT and no_drafts(drafts):
        setattr(out, NO_DRAFTS_ATTR, True)


def note_output(scheduler, model_runner_output) -> None:
    """Keep on the scheduler whether its latest runner output proposed no drafts."""
    setattr(scheduler, NO_DRAFTS_ATTR, getattr(model_runner_output, NO_DRAFTS_ATTR, False))


def skips_draft_call(scheduler) -> bool:
    """Whether the engine core should skip its draft request: the scheduler's latest
    runner output was marked as proposing no drafts."""
    return getattr(scheduler, NO_DRAFTS_ATTR, False)
