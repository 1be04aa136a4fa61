"""vLLM's prepared input batch, read into the policy's `StepBatch`.

Which requests may trust the proxy depends on their settings: penalties, bad
words, allowed-token masks, logit bias, an active min_tokens and a LoRA adapter
(which the proxy does not carry) change the distribution in ways the proxy's
margins do not see, so such requests never skip the target. Truncations (top-k,
top-p, min-p and a structured output's grammar mask) keep a request out of
PyramidSD's rule, which draws its tokens from whole distributions outside vLLM's
sampler.
"""

from __future__ import annotations

import numpy as np
import torch
from vllm.v1.sample.logits_processor.builtin import (
    LogitBiasLogitsProcessor,
    MinPLogitsProcessor,
    MinTokensLogitsProcessor,
)

from trispec_vllm.policy.batch import StepBatch


def step_batch(
    input_batch,
    req_ids: list[str],
    num_sched: np.ndarray,
    spec_meta,
    grammar: np.ndarray | None = None,
) -> StepBatch:
    """The policy's view of this step (`input_batch`: vLLM's InputBatch; `grammar`:
    [B] bool, requests with a structured output, whose grammar's bitmask vLLM applies
    to the logits in `sample_tokens`)."""
    ib = input_batch
    b = len(req_ids)
    num_computed = ib.num_computed_tokens_cpu[:b].astype(np.int64)
    if spec_meta is None:
        num_drafts = np.zeros(b, dtype=np.int64)
        drafts = torch.zeros(0, dtype=torch.long)
    else:
        num_drafts = np.asarray(spec_meta.num_draft_tokens, dtype=np.int64)
        drafts = host_drafts(ib.token_ids_cpu, num_computed, num_sched, num_drafts)
    greedy = np.array([r in ib.greedy_reqs for r in req_ids], dtype=bool)
    plain = ib.frequency_penalties_cpu[:b] == 0
    plain &= ib.presence_penalties_cpu[:b] == 0
    plain &= ib.repetition_penalties_cpu[:b] == 1
    plain &= ib.request_lora_mapping[:b] == 0  # the proxy carries no LoRA adapter
    for row in ib.bad_words_token_ids:
        if row < b:
            plain[row] = False
    if ib.allowed_token_ids_mask_cpu_tensor is not None:
        plain &= ~ib.allowed_token_ids_mask_cpu_tensor[:b].any(dim=1).numpy()
    biased, min_p = processed_rows(ib.logitsprocs, b)
    plain &= ~biased
    untruncated = ~min_p & np.array(
        [r not in ib.top_k_reqs and r not in ib.top_p_reqs for r in req_ids], dtype=bool
    )
    if grammar is not None:
        untruncated &= ~grammar
    return StepBatch(
        req_ids=req_ids,
        mixed_sampling=bool(greedy.any() and not greedy.all()),
        num_scheduled=num_sched.astype(np.int64),
        num_computed=num_computed,
        num_prompt=ib.num_prompt_tokens[:b].astype(np.int64),
        num_drafts=num_drafts,
        draft_tokens=drafts,
        trust_allowed=plain,
        temperature=np.where(greedy, 0.0, ib.temperature_cpu[:b]).astype(np.float32),
        plain_greedy=plain & greedy,
        untruncated=untruncated,
    )


def grammar_rows(requests, req_ids: list[str], scheduler_output) -> np.ndarray | None:
    """[B] bool: requests with a structured output (`requests`: the runner's request
    states), None when the step has none (vLLM's scheduler says so)."""
    if not getattr(scheduler_output, "has_structured_output_requests", True):
        return None
    return np.array(
        [
            getattr(requests[r].sampling_params, "structured_outputs", None) is not None
            for r in req_ids
        ],
        dtype=bool,
    )


def host_drafts(
    token_ids_cpu: np.ndarray, num_computed: np.ndarray, num_sched: np.ndarray, num_drafts
) -> torch.Tensor:
    """[sum(num_drafts)] the drafts vLLM scheduled, read from the runner's host token
    table (the last num_drafts of each request's scheduled tokens), so the step needs
    no device-to-host copy of `SpecDecodeMetadata.draft_token_ids`. The values are
    the ones vLLM's rejection sampler sees: placeholder drafts stay -1 here as there
    (vLLM clamps them to 0 in the model's input ids only)."""
    end = num_computed + num_sched.astype(np.int64)
    rows = np.repeat(np.arange(len(num_drafts)), num_drafts)
    cols = np.concatenate([np.arange(e - n, e) for e, n in zip(end, num_drafts, strict=True)])
    return torch.from_numpy(token_ids_cpu[rows, cols.astype(np.int64)].astype(np.int64))


def processed_rows(logitsprocs, b: int) -> tuple[np.ndarray, np.ndarray]:
    """[B] bool masks of the rows vLLM's built-in logits processors change this step:
    (logit_bias or an active min_tokens, which can move the argmax, so such requests
    never trust the proxy; min_p, a truncation like top-k/top-p)."""
    biased = np.zeros(b, dtype=bool)
    min_p = np.zeros(b, dtype=bool)
    for proc in getattr(logitsprocs, "all", ()):
        if isinstance(proc, LogitBiasLogitsProcessor):
            biased[[i for i in proc.biases if i < b]] = True
        elif isinstance(proc, MinTokensLogitsProcessor):
            biased[[i for i in proc.min_toks if i < b]] = True
        elif isinstance(proc, MinPLogitsProcessor) and proc.min_p_count:
            min_p |= proc.min_p_cpu[:b] > 0
    return biased, min_p
