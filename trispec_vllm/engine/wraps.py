"""The one way trispec-vllm wraps a vLLM attribute: once per process, marked.

Every process-wide patch in `patches.py` goes through `wrap_once`, so applying
the patches twice (the plugin entry point runs in every vLLM process, and tests
apply them again) never stacks a wrap on a wrap.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

HOOK_MARK = "_trispec_hook"


def is_wrapped(fn: Any) -> bool:
    return bool(getattr(fn, HOOK_MARK, False))


def wrap_once(
    owner: Any, name: str, make: Callable[[Callable], Callable], *, static: bool = False
) -> bool:
    """Replace `owner.name` by `make(original)` (`functools.wraps`-ed and marked), unless
    it is already a wrap; `static`: store it as a staticmethod of the class `owner`.
    Returns whether it wrapped."""
    original = getattr(owner, name)
    if is_wrapped(original):
        return False
    wrapped = functools.wraps(original)(make(original))
    setattr(wrapped, HOOK_MARK, True)
    setattr(owner, name, staticmethod(wrapped) if static else wrapped)
    return True
