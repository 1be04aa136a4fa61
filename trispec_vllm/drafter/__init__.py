"""TriSpec's learned drafter: a one-layer head over the proxy's hidden states that
learns online from the step's verifications. Select it with
`speculative_config={"method": "custom_class", "model": LEARNED_DRAFTER, ...}`."""

from trispec_vllm.config import LEARNED_DRAFTER
from trispec_vllm.drafter.proposer import LearnedDrafter, StepFeatures

__all__ = ["LEARNED_DRAFTER", "LearnedDrafter", "StepFeatures"]
