"""vLLM general-plugin entry point (`vllm.general_plugins`: trispec).

vLLM calls `register()` in every process it starts (front end, engine core,
workers, Ray actors), sometimes more than once. It only wraps the platform's
config hook, so engines without a `trispec` section run stock vLLM code.
"""

from __future__ import annotations

_registered = False


def register() -> None:
    """Install TriSpec's config hook; idempotent and cheap."""
    global _registered
    if _registered:
        return
    from trispec_vllm import seam

    seam.install_config_hook()
    _registered = True


def is_registered() -> bool:
    return _registered
