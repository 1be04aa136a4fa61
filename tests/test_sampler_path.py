"""Which steps may use vLLM's plain sampler (engine/sampler_path.py)."""

from types import SimpleNamespace

import pytest

from trispec_vllm.engine.sampler_path import samples_plainly


def spec(*drafts: int) -> SimpleNamespace:
    return SimpleNamespace(max_spec_len=max(drafts))


def sampling(**changed) -> SimpleNamespace:
    fields = {
        "all_greedy": True,
        "max_num_logprobs": None,
        "logprob_token_ids": None,
        "no_penalties": True,
        "bad_words_token_ids": {},
        "thinking_budget_state_holder": None,
    }
    return SimpleNamespace(**{**fields, **changed})


def test_a_greedy_step_without_drafts_samples_plainly():
    assert samples_plainly(spec(0, 0, 0), sampling())


def test_a_step_with_a_draft_or_without_metadata_does_not():
    assert not samples_plainly(spec(0, 3, 0), sampling())
    assert not samples_plainly(None, sampling())


class Tracking:
    def has_tracked_requests(self) -> bool:
        return True


@pytest.mark.parametrize(
    "changed",
    [
        {"all_greedy": False},
        {"max_num_logprobs": 0},
        {"logprob_token_ids": {0: [5]}},
        {"no_penalties": False},
        {"bad_words_token_ids": {0: [[7]]}},
        {"thinking_budget_state_holder": Tracking()},
    ],
)
def test_any_option_the_two_samplers_treat_apart_keeps_the_rejection_sampler(changed):
    assert not samples_plainly(spec(0), sampling(**changed))
