"""The proxy's logits over a vocabulary subset (`proxy_vocab`, policy/vocab.py).

Every vLLM decoder computes its logits through one `LogitsProcessor`, handed
the model's LM head (`compute_logits`). The proxy's processor is wrapped on
that instance: it is handed a head of the subset's rows instead (made once per
head, through the head's own quant method, so vLLM's CPU GEMM dispatch sets it
up as it does any linear layer), and its [R, N] logits are spread back to the
whole vocabulary with -inf elsewhere, so every reader (margins, vLLM's sampler,
the learned drafter's teacher) sees the usual [R, V] rows. Soft-capping and
logit scales stay the processor's own.
"""

from __future__ import annotations

import torch
from torch import nn

from trispec_vllm.config import TriSpecConfigError
from trispec_vllm.policy.vocab import expand_logits, prefix_length, subset_ids


def special_ids(model_config) -> set[int]:
    """Ids the subset always holds: the tokenizer's special and added tokens and the
    model's end-of-sequence ids (config and generation config)."""
    from vllm.tokenizers.registry import cached_tokenizer_from_config

    ids: set[int] = set()
    tok = cached_tokenizer_from_config(model_config)
    if tok is not None:
        ids.update(getattr(tok, "all_special_ids", None) or ())
        ids.update(getattr(tok, "added_tokens_decoder", None) or {})
    gen = model_config.try_get_generation_config() or {}
    config_eos = getattr(model_config.hf_text_config, "eos_token_id", None)
    for eos in (config_eos, gen.get("eos_token_id")):
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list | tuple):
            ids.update(int(e) for e in eos)
    return ids


def logits_processor(model: nn.Module) -> nn.Module:
    """The model's one vLLM `LogitsProcessor` (TriSpecConfigError where it has none)."""
    from vllm.model_executor.layers.logits_processor import LogitsProcessor

    found = [m for m in model.modules() if isinstance(m, LogitsProcessor)]
    if len(found) != 1 or found[0].logits_as_input:
        raise TriSpecConfigError(
            f"proxy_vocab: the proxy ({type(model).__name__}) does not compute its logits "
            "through one vLLM LogitsProcessor over an LM head; leave proxy_vocab unset"
        )
    return found[0]


def sub_head(lm_head: nn.Module, ids: torch.Tensor) -> nn.Module:
    """A head of `lm_head`'s rows `ids`, set up by its own (unquantized) method."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    method = getattr(lm_head, "quant_method", None)
    if not isinstance(method, UnquantizedEmbeddingMethod | UnquantizedLinearMethod):
        raise TriSpecConfigError(
            f"proxy_vocab needs an unquantized LM head on the proxy (got "
            f"{type(method).__name__}); leave proxy_vocab unset"
        )
    if getattr(lm_head, "tp_size", 1) > 1:
        raise TriSpecConfigError("proxy_vocab needs tensor_parallel_size 1")
    head = nn.Module()
    weight = lm_head.weight.detach()[ids.to(lm_head.weight.device)].contiguous()
    head.weight = nn.Parameter(weight, requires_grad=False)
    head.tp_size = 1
    head.quant_method = method
    method.process_weights_after_loading(head)
    return head


def install_proxy_vocab(model: nn.Module, ids: torch.Tensor, vocab_size: int) -> int:
    """Make `model`'s logits cover `ids` only (the rest -inf); idempotent. Returns the
    subset's size."""
    proc = logits_processor(model)
    if getattr(proc, "trispec_vocab", None) is not None:
        return int(proc.trispec_vocab.numel())
    forward = proc.forward
    prefix = prefix_length(ids)
    heads: dict[int, tuple[nn.Module, torch.Tensor]] = {}

    def subset_of(lm_head: nn.Module) -> tuple[nn.Module, torch.Tensor]:
        key = id(lm_head)
        if key not in heads:
            head = sub_head(lm_head, ids)
            heads[key] = (head, ids.to(head.weight.device))
        return heads[key]

    def subset_forward(lm_head, hidden_states, embedding_bias=None, skip_gather=False):
        head, on_device = subset_of(lm_head)
        bias = None if embedding_bias is None else embedding_bias[on_device]
        sub = forward(head, hidden_states, bias, skip_gather)
        return None if sub is None else expand_logits(sub, on_device, vocab_size, prefix)

    proc.forward = subset_forward
    proc.trispec_vocab = ids
    # The head vLLM's decoders hand their processor, set up now (at load) rather than in
    # the first step; a head handed otherwise is set up when first seen.
    if isinstance(getattr(model, "lm_head", None), nn.Module):
        subset_of(model.lm_head)
    return int(ids.numel())


def apply_proxy_vocab(model: nn.Module, model_config, size: int) -> int:
    """Restrict the proxy `model`'s logits to the `size` lowest ids plus the special
    tokens of the target's tokenizer (they share it); returns the subset's size (the
    vocabulary's, unrestricted, where `size` covers it)."""
    vocab = model_config.get_vocab_size()
    if size >= vocab:
        return vocab  # the whole vocabulary: nothing to restrict
    ids = subset_ids(size, vocab, special_ids(model_config))
    return install_proxy_vocab(model, ids, vocab)
