"""trispec-vllm: three-stage speculative decoding (drafter -> proxy -> target) for vLLM."""

from trispec_vllm.version_check import SUPPORTED_VLLM, check_vllm_version

check_vllm_version()

__version__ = "0.1.0"
__all__ = ["SUPPORTED_VLLM", "__version__"]
