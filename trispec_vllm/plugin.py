"""vLLM general-plugin entry point (`vllm.general_plugins`: trispec).

vLLM calls `register()` in every process it starts (front end, engine core,
workers, Ray actors), sometimes more than once. It only wraps the platform's
config hook, so engines without a `trispec` section run stock vLLM code, with
one opt-in exception: `TRISPEC_CPU_SAMPLING_FIX=1` gives every engine on CPU
the rejection-sampler fix TriSpec's own runner installs (stock vLLM 0.32's
speculative sampling at temperature > 0 draws from the wrong distribution on
CPU), so stock SD can be compared with TriSpec on equal terms.
"""

from __future__ import annotations

import os

SAMPLING_FIX_ENV = "TRISPEC_CPU_SAMPLING_FIX"

_registered = False


def register() -> None:
    """Install TriSpec's config hook; idempotent and cheap."""
    global _registered
    if _registered:
        return
    from trispec_vllm import seam

    seam.install_config_hook()
    if os.environ.get(SAMPLING_FIX_ENV) == "1":
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            seam.install_cpu_sampling_fix()
    _registered = True


def is_registered() -> bool:
    return _registered
