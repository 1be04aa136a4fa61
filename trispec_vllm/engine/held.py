"""A step that emits nothing for a request with drafts: vLLM's rollback (patch 12).

With `max_holds` a request the proxy was unsure about at its first
position waits a step and emits no token. vLLM 0.32's scheduler rolls a
request's rejected drafts back only when the step emitted at least one token
for it (`Scheduler.update_from_output`), so such a step would leave the request
counted as having computed its last token (and its drafts), with nothing left
to schedule. In TriSpec engines (sync scheduling only) that step is rolled back
here, before vLLM books the output: none of its scheduled tokens was kept.
Stock vLLM never emits nothing for a request whose step reached its last token
in sync scheduling, so nothing else changes.
"""

from __future__ import annotations


def roll_back_empty_steps(scheduler, scheduler_output, model_runner_output) -> None:
    """Undo the step of every request that reached its last token (a decoding step, with
    drafts or without) and emitted none; a prompt chunk emits none by design."""
    sampled = model_runner_output.sampled_token_ids
    index = model_runner_output.req_id_to_index
    if not sampled:
        return
    for req_id, scheduled in scheduler_output.num_scheduled_tokens.items():
        request = scheduler.requests.get(req_id)
        i = index.get(req_id)
        if request is None or i is None or len(sampled[i]):
            continue
        if request.num_computed_tokens >= request.num_tokens:
            request.num_computed_tokens -= scheduled
