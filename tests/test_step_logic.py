"""The engine step's pure parts: watermarks, the target sub-batch, planning, greedy verify."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trispec_vllm.config import make_config
from trispec_vllm.policy.batch import StepBatch
from trispec_vllm.policy.sampling import greedy_verify
from trispec_vllm.policy.step import TriSpecStep
from trispec_vllm.policy.target_batch import build_target_batch
from trispec_vllm.policy.watermarks import Watermarks


def test_watermark_settles_on_accepted_tokens_and_resets_on_preemption():
    w = Watermarks()
    assert w.settle("a", 10).watermark == 0  # new request: no target KV yet
    w.target_ran("a", 14)  # target wrote positions [0, 14), two drafts then rejected
    assert w.settle("a", 12).watermark == 12  # only kept tokens count
    w.proxy_completed("a")
    assert w.settle("a", 16).watermark == 12 and w.settle("a", 16).skips == 1
    assert w.settle("a", 0).watermark == 0  # preempted: recomputed from scratch
    w.forget(["b"])
    assert "a" not in w


def test_target_batch_catches_up_from_the_watermark():
    block_size = 4
    table = torch.tensor([[7, 3, 9, 0], [2, 5, 0, 0], [1, 8, 6, 4]], dtype=torch.int32)
    tokens = np.arange(3 * 16).reshape(3, 16)
    rows = np.array([0, 2])
    tb = build_target_batch(
        rows,
        watermarks=np.array([5, 9]),
        num_computed=np.array([8, 9]),
        num_scheduled=np.array([3, 2]),
        token_ids=tokens,
        block_table=table,
        block_size=block_size,
    )
    assert tb.positions.tolist() == [5, 6, 7, 8, 9, 10, 9, 10]
    assert tb.token_ids.tolist() == [5, 6, 7, 8, 9, 10, 32 + 9, 32 + 10]
    assert tb.query_start_loc.tolist() == [0, 6, 8] and tb.seq_lens.tolist() == [11, 11]
    assert tb.step_offsets.tolist() == [3, 6]  # first scheduled token of each request
    # position 5 of row 0 lives in block 3 (second block), offset 1
    assert tb.slot_mapping.tolist()[:1] == [3 * 4 + 1]
    assert tb.slot_mapping.tolist()[6] == 6 * 4 + 1  # row 2, position 9: third block


def step_batch(num_drafts, drafts, computed=(10, 10), prompt=(4, 4), trust=(True, True)):
    n = np.array(num_drafts)
    return StepBatch(
        req_ids=[f"r{i}" for i in range(len(n))],
        num_scheduled=n + 1,
        num_computed=np.array(computed),
        num_prompt=np.array(prompt),
        num_drafts=n,
        draft_tokens=torch.tensor(drafts),
        trust_allowed=np.array(trust),
    )


def confident_logits(tokens, vocab=16, peak=20.0):
    logits = torch.zeros(len(tokens), vocab)
    logits[torch.arange(len(tokens)), torch.tensor(tokens)] = peak
    return logits


def test_plan_routes_each_request_and_forces_after_max_skips():
    step = TriSpecStep(make_config(proxy_model="p", max_skips=1))
    batch = step_batch([2, 1], [3, 4, 5])
    # Request 0: the proxy agrees with both drafts, confident everywhere -> Case I.
    # Request 1: the proxy rejects its draft but is unsure there -> escalated.
    logits = confident_logits([3, 4, 9, 6, 2])
    logits[3, 7] = 20.0  # tie on request 1's first position: margin 0
    plan = step.plan(batch, logits)
    assert plan.decision.proxy_completes.tolist() == [True, False]
    assert plan.escalated_rows.tolist() == [1]
    assert plan.sample_row_offsets.tolist() == [0, 3]
    step.finish(batch, plan, None)
    plan = step.plan(batch, logits)  # request 0 has used its one skip
    assert plan.decision.proxy_completes.tolist() == [False, False]


def test_plan_never_trusts_prefill_or_sampled_requests():
    step = TriSpecStep(make_config(proxy_model="p"))
    batch = step_batch([0, 0], [], computed=(0, 10), trust=(True, False))
    plan = step.plan(batch, confident_logits([1, 2]))
    assert plan.decision.proxy_completes.tolist() == [False, False]
    assert plan.decision.trusted_len.tolist() == [0, 0]


def test_ride_along_sends_everyone_once_the_target_runs():
    step = TriSpecStep(make_config(proxy_model="p", ride_along="all"))
    batch = step_batch([2, 1], [3, 4, 5])
    logits = confident_logits([3, 4, 9, 6, 2])
    logits[3, 7] = 20.0
    plan = step.plan(batch, logits)
    assert plan.escalated_rows.tolist() == [0, 1]
    assert plan.decision.trusted_len.tolist() == [2, 0]  # request 0 keeps its trusted drafts


def test_greedy_verify_matches_the_rule():
    logits = confident_logits([3, 4, 9, 1, 2, 5])  # request 0: 2 drafts; request 1: 2 drafts
    sampled = torch.full((3, 3), 42, dtype=torch.int32)
    out = greedy_verify(
        logits,
        np.array([2, 2, 0]),
        torch.tensor([3, 4, 1, 7]),
        np.array([True, True, False]),
        sampled,
    )
    assert out[0].tolist() == [3, 4, 9]  # both drafts kept, bonus
    assert out[1].tolist() == [1, 2, -1]  # first kept, second rejected -> correction
    assert out[2].tolist() == [42, 42, 42]  # not a greedy row: untouched


def test_cpu_expand_fix_matches_vllms_documented_semantics():
    from trispec_vllm.engine.cpu_workarounds import expand_batch_to_tokens

    x = torch.tensor([0.5, -1.0, 2.0])
    cu = torch.tensor([2, 5, 6], dtype=torch.int32)
    out = expand_batch_to_tokens(x, cu, 6, replace_from=-1, replace_to=1)
    assert out.tolist() == [0.5, 0.5, 1.0, 1.0, 1.0, 2.0]
    assert out.dtype == torch.float32
    assert expand_batch_to_tokens(torch.tensor([3, 4]), torch.tensor([0, 2]), 2).tolist() == [4, 4]


def test_plain_steps_need_a_full_batch_and_a_caught_up_target():
    step = TriSpecStep(make_config(proxy_model="p", disable_by_batch_size=2))
    assert not step.speculation_disabled(1) and step.speculation_disabled(2)
    ids, computed = ["a", "b"], np.array([5, 7])
    assert not step.target_up_to_date(ids, computed)  # new requests: no target KV yet
    step.plain_step(ids, np.array([0, 0]), np.array([5, 7]), 0.1)  # vLLM ran the prompts
    assert step.target_up_to_date(ids, computed)
    assert step.stats.plain_steps == 1 and step.stats.target_steps == 1
    # The proxy sat out: its watermark is still 0, so it catches up when it next runs.
    assert step.proxy_watermarks(step_batch([0, 0], [], computed=(5, 7))).tolist() == [0, 0]
    step.watermarks.proxy_completed("a")
    assert not step.target_up_to_date(ids, np.array([8, 7]))  # "a" moved on without it
    assert step.skip_proxy(step_batch([0, 0], [], computed=(5, 7)))
    off = TriSpecStep(make_config(proxy_model="p"))
    assert not off.speculation_disabled(10**6)


def test_drop_bonus_ends_a_drafter_proxy_step_at_its_last_draft():
    from trispec_vllm.policy.sampling import drop_bonus

    sampled = torch.tensor([[5, 6, 0, -1], [7, -1, -1, -1], [1, 2, 3, 4], [8, 9, -1, -1]])
    num_drafts = np.array([2, 2, 3, 1])
    rows = np.array([True, True, False, True])
    drop_bonus(sampled, rows, num_drafts)
    assert sampled.tolist() == [
        [5, 6, -1, -1],  # every draft accepted: the blank row's bonus is dropped
        [7, -1, -1, -1],  # rejected at the second draft: nothing to drop
        [1, 2, 3, 4],  # not completed by the drafter-proxy: untouched
        [8, -1, -1, -1],
    ]
    drop_bonus(sampled, np.zeros(4, bool), num_drafts)  # no rows: a no-op


def test_relabel_logprobs_names_the_emitted_tokens():
    """Where a token vLLM sampled is replaced, its logprobs entry is the emitted
    token's, from the same logits row, with its rank; the rest stays."""
    from trispec_vllm.policy.sampling import relabel_logprobs

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn((5, 12), generator=gen)  # request 0: rows 0-2, request 1: rows 3-4
    offsets = np.array([0, 3])
    before = torch.tensor([[4, 7, -1], [2, -1, -1]])
    after = torch.tensor([[4, 9, 1], [2, -1, -1]])  # request 0: position 1 replaced, 2 added
    n = 2
    logprobs = logits.log_softmax(-1)
    rows = [0, 1, 2, 3, 3, 3]  # the logits row of each (request, position), clamped
    ids = torch.stack([torch.tensor([max(int(t), 0) for t in before.flatten()])], 1)
    top = logprobs[rows].topk(n, dim=-1)
    token_ids = torch.cat([ids, top.indices], 1)
    values = torch.cat([logprobs[rows].gather(1, ids), top.values], 1)
    ranks = torch.zeros(len(rows), dtype=torch.long)
    kept = (token_ids.clone(), values.clone())
    relabel_logprobs(token_ids, values, ranks, before, after, logits, offsets)
    for flat, row, token in ((1, 1, 9), (2, 2, 1)):
        assert token_ids[flat, 0] == token
        assert values[flat, 0] == pytest.approx(float(logprobs[row, token]))
        assert ranks[flat] == int((logprobs[row] >= logprobs[row, token]).sum())
    unchanged = [0, 3, 4, 5]
    assert torch.equal(token_ids[unchanged], kept[0][unchanged])
    assert torch.equal(values[unchanged], kept[1][unchanged])
    assert torch.equal(token_ids[:, 1:], kept[0][:, 1:])  # the top-n columns stay
    # Processed modes read the request's temperature; logits modes skip the softmax.
    relabel_logprobs(token_ids, values, ranks, before, after, logits, offsets, None, "raw_logits")
    assert values[1, 0] == pytest.approx(float(logits[1, 9]))
    temps = np.array([0.5, 0.0])
    relabel_logprobs(
        token_ids, values, ranks, before, after, logits, offsets, temps, "processed_logprobs"
    )
    assert values[1, 0] == pytest.approx(float((logits[1] / 0.5).log_softmax(-1)[9]))


def test_a_batch_without_temperatures_is_greedy_for_routing_and_pyramid():
    """`StepBatch.temperature=None` has one meaning, greedy, in every stage."""
    from dataclasses import replace

    from trispec_vllm.policy.sampling import pyramid_tokens

    unset = step_batch([2, 1], [3, 4, 5])
    greedy = replace(unset, temperature=np.zeros(2))
    sampled = replace(unset, temperature=np.full(2, 0.7))
    assert unset.sampled().tolist() == [False, False]
    assert sampled.sampled().tolist() == [True, True]
    assert unset.request_temperatures().tolist() == [0.0, 0.0]
    # Request 0: the proxy confidently rejects its second draft and is unsure at the
    # bonus position. Greedy Case I trusts it through that rejection; a sampled request
    # needs every position of its step trusted.
    logits = confident_logits([3, 8, 9, 6, 2])
    logits[2, 10] = 20.0
    step = TriSpecStep(make_config(proxy_model="p", max_skips=8))
    completes = {
        name: step.plan(b, logits).decision.proxy_completes.tolist()[0]
        for name, b in (("unset", unset), ("greedy", greedy), ("sampled", sampled))
    }
    assert completes == {"unset": True, "greedy": True, "sampled": False}

    # PyramidSD: without temperatures the qualifier's own token is its argmax, not a
    # sample. Every draft qualifies and every position passes the target (JS <= ln 2),
    # so each request's tokens are its drafts, then the qualifier's token at a bonus row
    # where sampling would pick the argmax only 15% of the time.
    cfg = make_config(proxy_model="p", policy="pyramid", tau_q=1.0, tau_t=1.0)
    pstep = TriSpecStep(cfg)
    proxy = confident_logits([3, 8, 0, 6, 0])
    proxy[[2, 4]] = 0.0
    proxy[2, 10] = proxy[4, 11] = 1.0
    target = confident_logits([3, 4, 11, 6, 12])
    torch.manual_seed(0)
    for b in (unset, greedy):
        plan = pstep.plan(b, proxy)
        tokens, _ = pyramid_tokens(cfg, b, plan, proxy, target, {})
        assert tokens[0, :3].tolist() == [3, 4, 10] and tokens[1, :2].tolist() == [5, 11]


def test_target_batch_clamps_placeholder_drafts_and_names_bad_requests():
    from trispec_vllm.policy.target_batch import TargetBatchError, check_target_batch

    table = torch.tensor([[7, 3, 0, 0], [2, 0, 0, 0]], dtype=torch.int32)
    tokens = np.full((2, 16), -1, dtype=np.int32)
    tokens[0, :7] = [10, 11, 12, 13, 14, 15, 16]
    tokens[1, :1] = [21]  # a one-token prompt scheduled with 3 placeholder drafts (-1)
    rows = np.array([0, 1])
    tb = build_target_batch(
        rows, np.array([4, 0]), np.array([5, 0]), np.array([2, 4]), tokens, table, 4, ["a", "b"]
    )
    # vLLM feeds its own model 0 at a placeholder draft: so does the custom forward.
    assert tb.token_ids.tolist() == [14, 15, 16, 21, 0, 0, 0]
    kw = dict(vocab_size=100, num_slots=64, block_size=4, allocated_blocks=np.array([2, 1]))
    check_target_batch(tb, ["a", "b"], **kw)
    with pytest.raises(TargetBatchError, match=r"vocabulary \[0, 16\): request a: positions \[6\]"):
        check_target_batch(tb, ["a", "b"], **{**kw, "vocab_size": 16})
    with pytest.raises(TargetBatchError, match=r"KV slots outside \[0, 8\).*request b"):
        check_target_batch(tb, ["a", "b"], **{**kw, "num_slots": 8})
    with pytest.raises(
        TargetBatchError, match=r"allocated KV blocks.*request a: positions \[4, 5, 6\]"
    ):
        check_target_batch(tb, ["a", "b"], **{**kw, "allocated_blocks": np.array([1, 1])})
    # A catch-up token that was never written stays as it is and is an error.
    tokens[0, 4] = -1
    bad = build_target_batch(
        rows[:1], np.array([4]), np.array([5]), np.array([2]), tokens, table, 4, ["a"]
    )
    with pytest.raises(TargetBatchError, match=r"request a: positions \[4\] hold \[-1\]"):
        check_target_batch(bad, ["a"], **kw)
    with pytest.raises(TargetBatchError, match=r"request b: watermark 3, computed 2"):
        build_target_batch(
            rows, np.array([4, 3]), np.array([5, 2]), np.array([2, 1]), tokens, table, 4, ["a", "b"]
        )


def test_expiring_ride_along_lines_up_forced_escalations():
    """Request 0 is trusted but one skip short of max_skips when request 1 escalates:
    under 'expiring' it rides along (its counter restarts with the batch's), under
    'none' it stays with the proxy and is forced alone next step."""
    logits = confident_logits([3, 4, 9, 6, 2])
    logits[3, 7] = 20.0  # request 1 unsure at its first position: escalated
    for mode, riding in (("none", False), ("expiring", True)):
        step = TriSpecStep(make_config(proxy_model="p", max_skips=2, ride_along=mode))
        batch = step_batch([2, 1], [3, 4, 5])
        calm = confident_logits([3, 4, 9, 6, 2])  # request 1 confident too: Case I
        calm[4, 2] = 0.0
        calm[4, 11] = 20.0  # proxy's own token at request 1's bonus row
        plan = step.plan(batch, calm)
        step.finish(batch, plan, None)  # both completed by the proxy: one skip each
        plan = step.plan(batch, logits)
        assert plan.decision.proxy_completes.tolist() == [not riding, False], mode
        assert plan.decision.trusted_len.tolist() == [2 if riding else 0, 0]
        step.finish(batch, plan, None)
        plan = step.plan(batch, calm)
        # 'none': request 0 has used its two skips and is forced on its own.
        assert plan.decision.proxy_completes.tolist() == [riding, True], mode
    # A request with skips to spare does not ride along under 'expiring'.
    step = TriSpecStep(make_config(proxy_model="p", max_skips=4, ride_along="expiring"))
    plan = step.plan(step_batch([2, 1], [3, 4, 5]), logits)
    assert plan.escalated_rows.tolist() == [1]


def test_proxy_marks_settle_in_steps_the_proxy_skips():
    """The proxy ran over positions 10..13 (last token + 3 drafts) and one draft was
    kept (12 computed). If the next step skips the proxy, its KV still holds only
    [0, 12): positions 12 and 13 held rejected drafts. A step later (16 computed) the
    proxy must catch up from 12, not from the end of its last pass."""
    drafts = [1, 2, 3, 4, 5, 6]
    for skipped in ("sd", "plain"):
        step = TriSpecStep(make_config(proxy_model="p"))
        step.proxy_ran(step_batch([3, 3], drafts, computed=(10, 10)))
        after = step_batch([3, 3], drafts, computed=(12, 12))
        if skipped == "sd":
            step.begin_step(after)
            step.plan(after, None)
        else:
            step.plain_step(after.req_ids, after.num_computed, np.array([1, 1]), 0.0)
        later = step_batch([3, 3], drafts, computed=(16, 16))
        assert step.proxy_watermarks(later).tolist() == [12, 12], skipped


def test_proxy_marks_hold_the_positions_of_the_steps_own_pass():
    """A step settles the marks first, then the proxy runs over 10..13 and the step is
    routed: with 12 tokens kept, the next step's proxy starts at 12, not back at 10
    (which would redo the last pass's positions in every step)."""
    drafts = [1, 2, 3, 4, 5, 6]
    step = TriSpecStep(make_config(proxy_model="p"))
    now = step_batch([3, 3], drafts, computed=(10, 10))
    step.begin_step(now)
    assert step.proxy_watermarks(now).tolist() == [0, 0]  # new requests: nothing yet
    step.proxy_ran(now)
    step.plan(now, confident_logits([1, 2, 3, 9, 4, 5, 6, 9]))
    nxt = step_batch([3, 3], drafts, computed=(12, 12))
    step.begin_step(nxt)
    assert step.proxy_watermarks(nxt).tolist() == [12, 12]


def test_held_escalation_keeps_its_trusted_prefix_and_is_forced_once_out_of_holds():
    """max_holds: request 1 escalates while request 0 completes with the proxy, so
    request 1 waits: no target row this step, its trusted prefix (none here) is all it
    emits; once it has waited max_holds steps it goes to the target even though request
    0 completes again."""
    logits = confident_logits([3, 4, 9, 6, 2])
    logits[3, 7] = 20.0  # request 1 unsure at its first position
    batch = step_batch([2, 1], [3, 4, 5])
    for max_holds in (1, 2):
        step = TriSpecStep(make_config(proxy_model="p", max_holds=max_holds))
        for held in range(max_holds):
            plan = step.plan(batch, logits)
            assert plan.escalated_rows.tolist() == [] and plan.held.tolist() == [False, True]
            assert plan.held_tokens.tolist() == [[-1, -1, -1], [-1, -1, -1]]
            stats = step.finish(batch, plan, None)
            assert stats.target_steps == 0 and stats.held_escalations == 1
            assert stats.held_without_tokens == 1
            assert step.held == {"r1": held + 1}
        plan = step.plan(batch, logits)
        assert plan.held is None and plan.escalated_rows.tolist() == [1]
    # Without holds the target runs at once for request 1.
    plain = TriSpecStep(make_config(proxy_model="p"))
    assert plain.plan(batch, logits).escalated_rows.tolist() == [1]


def test_a_request_due_at_max_skips_completes_in_a_step_without_the_target():
    """Request 0 has used its skips; alone it would be forced to the target. In a step
    where request 1's escalation waits, the target does not run, so request 0 completes
    with the proxy (and rides the pass that request 1 forces next step)."""
    logits = confident_logits([3, 4, 9, 6, 2])
    logits[3, 7] = 20.0
    calm = confident_logits([3, 4, 9, 6, 2])
    calm[4, 2], calm[4, 11] = 0.0, 20.0  # request 1 confident too
    batch = step_batch([2, 1], [3, 4, 5])
    step = TriSpecStep(make_config(proxy_model="p", max_skips=1, max_holds=1))
    step.finish(batch, step.plan(batch, calm), None)  # both complete: one skip each
    plan = step.plan(batch, logits)
    assert plan.held.tolist() == [False, True]
    assert plan.decision.proxy_completes.tolist() == [True, False]
    step.finish(batch, plan, None)
    plan = step.plan(batch, calm)  # both due now: the target runs for both
    assert plan.held is None and plan.escalated_rows.tolist() == [0, 1]


def test_a_hold_needs_every_escalation_to_wait_and_someone_moving():
    from trispec_vllm.policy.hold import held_rows, held_tokens

    esc = np.array([False, True, True])
    ok = np.ones(3, bool)
    assert held_rows(esc, ok, ~esc).tolist() == [False, True, True]
    # One escalation that may not wait (forced): the target runs, nobody is held.
    assert not held_rows(esc, np.array([True, True, False]), ~esc).any()
    # Nobody completes (batch 1, or every request unsure): no hold.
    assert not held_rows(np.array([True]), np.array([True]), np.array([False])).any()
    assert not held_rows(np.ones(3, bool), ok, np.zeros(3, bool)).any()
    drafts = np.array([[5, 6, 7], [8, 9, 10]])
    tokens = held_tokens(drafts, np.array([2, 1]), np.array([True, False]))
    assert tokens.tolist() == [[5, 6, -1, -1], [-1, -1, -1, -1]]


def test_a_held_step_that_emitted_nothing_is_rolled_back_in_the_scheduler():
    """vLLM rolls back rejected drafts only for requests that emitted a token; the
    patch undoes the whole step of a decoding request (drafts or none) that emitted
    none, and leaves a prompt chunk (which emits none by design) alone."""
    from types import SimpleNamespace

    from trispec_vllm.engine.held import roll_back_empty_steps

    def req(computed, tokens):
        return SimpleNamespace(num_computed_tokens=computed, num_tokens=tokens)

    # After scheduling: a/b decoded 1 + 3 drafts, c 1 token, d a prompt chunk.
    reqs = {"a": req(14, 11), "b": req(14, 11), "c": req(11, 11), "d": req(40, 90)}
    sched_out = SimpleNamespace(num_scheduled_tokens={"a": 4, "b": 4, "c": 1, "d": 32})
    out = SimpleNamespace(
        sampled_token_ids=[[], [7], [], []], req_id_to_index={"a": 0, "b": 1, "c": 2, "d": 3}
    )
    roll_back_empty_steps(SimpleNamespace(requests=reqs), sched_out, out)
    # a and c were held with nothing (back to their last token); b emitted (vLLM's own
    # rollback); d's chunk stays computed.
    assert [reqs[r].num_computed_tokens for r in "abcd"] == [10, 14, 10, 40]
