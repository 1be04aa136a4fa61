"""Helpers for tests and demos that need no download (tiny random models)."""

from trispec_vllm.testing.tiny_models import (
    TinyLlamaPair,
    TinyPair,
    make_tiny_family_pair,
    make_tiny_llama_pair,
    make_tiny_lora,
    make_tiny_pair,
    make_tokenizer,
)

__all__ = [
    "TinyLlamaPair",
    "TinyPair",
    "make_tiny_family_pair",
    "make_tiny_llama_pair",
    "make_tiny_lora",
    "make_tiny_pair",
    "make_tokenizer",
]
