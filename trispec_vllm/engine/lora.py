"""LoRA adapters under TriSpec: the target's own passes carry vLLM's adapter mapping.

vLLM tells its LoRA layers which adapter each token and each logits row uses, for
its own batch (`set_active_loras` in `_prepare_inputs`). TriSpec's target passes
run a sub-batch of their own (the escalated requests, from their watermarks), so
each sets the mapping of its tokens before it runs, and the mapping of its logits
rows before the target's logits are computed; with vLLM's mapping they ran with
the wrong adapters (or failed on a shape mismatch). The proxy carries no adapter,
so a request with one never trusts it (`batch_inputs.step_batch`).
"""

from __future__ import annotations

import numpy as np

from trispec_vllm.policy.target_batch import TargetBatch


def enabled(runner, model) -> bool:
    """Whether `model` is the runner's LoRA-wrapped target (vLLM's `enable_lora`)."""
    return model is runner.model and getattr(runner, "lora_config", None) is not None


def token_adapters(runner, tb: TargetBatch) -> np.ndarray:
    """[tb.num_tokens] the adapter id of each token of `tb` (0: none)."""
    per_request = runner.input_batch.request_lora_mapping[tb.rows]
    return np.repeat(per_request, np.diff(tb.query_start_loc.numpy()))


def activate(runner, tokens: np.ndarray, rows: np.ndarray) -> None:
    """Set the adapters of a pass's tokens and of the logits rows computed after it."""
    runner._set_active_loras(
        tuple(rows.tolist()),
        tuple(tokens.tolist()),
        set(runner.input_batch.lora_id_to_lora_request.values()),
    )
