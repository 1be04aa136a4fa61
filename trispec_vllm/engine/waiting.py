"""How many requests wait for a slot, told to the model runner (patch 11).

The cost-aware step ranks step kinds by throughput while requests wait, and by
the pace of the batch's slowest request when none does (`policy/cost.py`). Only
vLLM's scheduler knows its queue; its `SchedulerOutput` reaches every worker, so
the count rides on it as one extra attribute, set for TriSpec engines only
(`scheduler_hooks` wraps `Scheduler.schedule`).
"""

from __future__ import annotations

from trispec_vllm.policy.cost import waiting_for_slots

WAITING_ATTR = "trispec_waiting"  # SchedulerOutput attribute: requests left waiting


def note_waiting(scheduler, scheduler_output) -> None:
    """Set on the step's output the number of requests left waiting for a slot
    (`waiting_for_slots`, from vLLM's own `get_request_counts`)."""
    running, waiting = scheduler.get_request_counts()
    count = waiting_for_slots(
        waiting,
        running,
        scheduler.max_num_running_reqs,
        scheduler_output.total_num_scheduled_tokens,
        scheduler.max_num_scheduled_tokens,
    )
    setattr(scheduler_output, WAITING_ATTR, count)
