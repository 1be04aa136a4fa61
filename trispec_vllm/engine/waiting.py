"""How many requests wait for a slot, told to the model runner (patch 11).

The cost-aware step ranks step kinds by throughput while requests wait, and by
the pace of the batch's slowest request when none does (`policy/cost.py`). Only
vLLM's scheduler knows its queue; its `SchedulerOutput` reaches every worker, so
the count rides on it as one extra attribute, set for TriSpec engines only.
"""

from __future__ import annotations

import functools

from trispec_vllm.engine.config_hook import engine_section
from trispec_vllm.policy.cost import waiting_for_slots

WAITING_ATTR = "trispec_waiting"  # SchedulerOutput attribute: requests left waiting
HOOK_MARK = "_trispec_waiting_hook"


def patch_scheduler_waiting() -> None:
    """Wrap `Scheduler.schedule`: its output carries the number of requests that
    were left waiting for a slot (`waiting_for_slots`, from vLLM's own
    `get_request_counts`)."""
    from vllm.v1.core.sched.scheduler import Scheduler

    schedule = Scheduler.schedule
    if getattr(schedule, HOOK_MARK, False):
        return

    @functools.wraps(schedule)
    def counted(self, *args, **kwargs):
        out = schedule(self, *args, **kwargs)
        if engine_section(self) is not None:
            running, waiting = self.get_request_counts()
            count = waiting_for_slots(
                waiting,
                running,
                self.max_num_running_reqs,
                out.total_num_scheduled_tokens,
                self.max_num_scheduled_tokens,
            )
            setattr(out, WAITING_ATTR, count)
        return out

    setattr(counted, HOOK_MARK, True)
    Scheduler.schedule = counted
