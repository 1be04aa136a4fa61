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

import functools

NO_DRAFTS_ATTR = "trispec_no_drafts"  # ModelRunnerOutput / Scheduler attribute
HOOK_MARK = "_trispec_draft_call_hook"


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


def patch_draft_call() -> None:
    """Wrap `Scheduler.update_from_output` (keeps the output's mark) and
    `EngineCore.post_step` (skips the draft request after a marked output)."""
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.engine.core import EngineCore

    update = Scheduler.update_from_output
    if getattr(update, HOOK_MARK, False):
        return

    @functools.wraps(update)
    def noted(self, scheduler_output, model_runner_output, *args, **kwargs):
        note_output(self, model_runner_output)
        return update(self, scheduler_output, model_runner_output, *args, **kwargs)

    post_step = EngineCore.post_step

    @functools.wraps(post_step)
    def skipped(self, model_executed: bool) -> None:
        if model_executed and getattr(self.scheduler, NO_DRAFTS_ATTR, False):
            return
        post_step(self, model_executed)

    for fn in (noted, skipped):
        setattr(fn, HOOK_MARK, True)
    Scheduler.update_from_output = noted
    EngineCore.post_step = skipped
