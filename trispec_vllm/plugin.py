"""vLLM general-plugin entry point (`vllm.general_plugins`: trispec).

vLLM calls `register()` in every process it starts (front end, engine core,
workers, Ray actors), sometimes more than once; it applies the patches listed
in `trispec_vllm.engine.patches`.
"""

from __future__ import annotations

_registered = False


def register() -> None:
    """Apply TriSpec's vLLM patches; idempotent and cheap."""
    global _registered
    if _registered:
        return
    from trispec_vllm.engine.patches import apply_trispec_patches

    apply_trispec_patches()
    _registered = True


def is_registered() -> bool:
    return _registered
