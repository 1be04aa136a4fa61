"""Every vLLM extension point TriSpec overrides, in one place.

- the platform's `check_and_update_config`, wrapped so a `trispec` section in
  `additional_config` is validated before any weights load and selects
  TriSpec's worker;
Keep this module thin: decisions live in the pure modules (config, router).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from trispec_vllm.config import (
    SUPPORTED_DRAFTERS,
    TriSpecConfig,
    TriSpecConfigError,
    parse_trispec_config,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig

logger = logging.getLogger("trispec_vllm")
_HOOK_MARK = "_trispec_hook"


def install_config_hook() -> None:
    """Wrap the current platform's config hook (once per process)."""
    from vllm.platforms import current_platform

    platform_cls = type(current_platform)
    original = platform_cls.check_and_update_config
    if getattr(original, _HOOK_MARK, False):
        return

    @functools.wraps(original)
    def check_and_update_config(vllm_config: VllmConfig) -> None:
        cfg = parse_trispec_config(vllm_config.additional_config)
        if cfg is not None:
            validate_engine_config(cfg, vllm_config)
        original(vllm_config)

    setattr(check_and_update_config, _HOOK_MARK, True)
    platform_cls.check_and_update_config = staticmethod(check_and_update_config)


def validate_engine_config(cfg: TriSpecConfig, vllm_config: VllmConfig) -> None:
    """Fail with a clear message on settings TriSpec cannot serve (no weights read)."""
    spec = vllm_config.speculative_config
    if spec is None:
        raise TriSpecConfigError(
            "TriSpec needs a drafter: set speculative_config, e.g. "
            '{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}'
        )
    if spec.method not in SUPPORTED_DRAFTERS:
        raise TriSpecConfigError(
            f"speculative_config method '{spec.method}' is not supported by TriSpec yet; "
            f"use one of {', '.join(SUPPORTED_DRAFTERS)} (EAGLE-style drafters need the "
            "proxy adapter, which is not built yet)"
        )
    check_proxy_vocab(cfg.proxy_model, vllm_config.model_config.get_vocab_size())


def check_proxy_vocab(proxy_model: str, target_vocab: int) -> None:
    """The proxy must exist and share the target's vocabulary (checked from config.json)."""
    path = Path(proxy_model).expanduser()
    if not path.exists():
        raise TriSpecConfigError(
            f"proxy_model '{proxy_model}' does not exist (give a local model directory; "
            "models are not downloaded from a hub by TriSpec)"
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise TriSpecConfigError(f"proxy_model '{proxy_model}' has no config.json")
    proxy_cfg = json.loads(config_file.read_text())
    text_cfg = proxy_cfg.get("text_config", proxy_cfg)
    vocab = text_cfg.get("vocab_size")
    if vocab != target_vocab:
        raise TriSpecConfigError(
            f"proxy_model '{proxy_model}' has a vocabulary of {vocab} tokens but the target "
            f"has {target_vocab}: the proxy must share the target's tokenizer and vocabulary"
        )
    if os.environ.get("TRISPEC_DEBUG"):
        logger.info("TriSpec proxy %s: vocabulary %d matches the target", proxy_model, vocab)
