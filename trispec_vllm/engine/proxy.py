"""Load and run the proxy model inside vLLM's model runner.

The proxy is built the way vLLM's `draft_model` drafter builds its draft:
`get_model` with its own layer-name prefix, so its attention layers register
in the engine's static forward context, get KV cache in the same paged
blocks as the target's, and read the same per-step attention metadata.
"""

from __future__ import annotations

from torch import nn

PROXY_PREFIX = "trispec_proxy"


def proxy_model_config(vllm_config, proxy_model: str, max_model_len: int | None):
    """vLLM's ModelConfig of the proxy, as the target's (None: the proxy's own longest
    context, derived from its config)."""
    from vllm.config import ModelConfig

    target = vllm_config.model_config
    return ModelConfig(
        model=proxy_model,
        runner="draft",
        tokenizer=target.tokenizer,
        tokenizer_mode=target.tokenizer_mode,
        trust_remote_code=target.trust_remote_code,
        dtype=target.dtype,
        seed=target.seed,
        max_model_len=max_model_len,
        enforce_eager=target.enforce_eager,
        max_logprobs=target.max_logprobs,
    )


def load_proxy(vllm_config, proxy_model: str) -> nn.Module:
    """Build the proxy next to the target (call before the KV cache is sized)."""
    from vllm.compilation.backends import set_model_tag
    from vllm.config.utils import replace
    from vllm.model_executor.model_loader import get_model

    max_len = vllm_config.model_config.max_model_len
    proxy_config = proxy_model_config(vllm_config, proxy_model, max_len)
    proxy_vllm_config = replace(vllm_config, model_config=proxy_config, quant_config=None)
    with set_model_tag(PROXY_PREFIX):
        return get_model(vllm_config=proxy_vllm_config, prefix=PROXY_PREFIX)


def is_proxy_layer(layer_name: str) -> bool:
    return layer_name.startswith(PROXY_PREFIX + ".")
