"""TriSpec's wraps of vLLM's engine core (patches 11-13), one per method.

Each wrap acts on engines with a `trispec` section only (stock engines run the
wrapped code unchanged) and delegates to the module that holds its concern:
`waiting` (requests left waiting for a slot), `held` (the rollback of a step that
emitted nothing) and `draft_call` (no draft request after a step without drafts).
"""

from __future__ import annotations

from trispec_vllm.engine import draft_call, held, waiting
from trispec_vllm.engine.config_hook import engine_section
from trispec_vllm.engine.wraps import wrap_once


def patch_scheduler() -> None:
    """Wrap `Scheduler.schedule` (11), `Scheduler.update_from_output` (12) and
    `EngineCore.post_step` (13)."""
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.engine.core import EngineCore

    def make_schedule(schedule):
        def counted(self, *args, **kwargs):
            out = schedule(self, *args, **kwargs)
            if engine_section(self) is not None:
                waiting.note_waiting(self, out)
            return out

        return counted

    def make_update(update):
        def booked(self, scheduler_output, model_runner_output, *args, **kwargs):
            section = engine_section(self)
            if section is not None:
                draft_call.note_output(self, model_runner_output)
                if getattr(section, "max_holds", 0):
                    held.roll_back_empty_steps(self, scheduler_output, model_runner_output)
            return update(self, scheduler_output, model_runner_output, *args, **kwargs)

        return booked

    def make_post_step(post_step):
        def skipped(self, model_executed: bool) -> None:
            if model_executed and draft_call.skips_draft_call(self.scheduler):
                return
            post_step(self, model_executed)

        return skipped

    wrap_once(Scheduler, "schedule", make_schedule)
    wrap_once(Scheduler, "update_from_output", make_update)
    wrap_once(EngineCore, "post_step", make_post_step)
