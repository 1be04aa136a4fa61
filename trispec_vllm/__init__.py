"""trispec-vllm: three-stage speculative decoding (drafter -> proxy -> target) for vLLM."""

from importlib import metadata

from trispec_vllm.version_check import SUPPORTED_VLLM, check_vllm_version

check_vllm_version()

try:
    __version__ = metadata.version("trispec-vllm")
except metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"
__all__ = ["SUPPORTED_VLLM", "__version__"]
