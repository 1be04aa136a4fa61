"""TriSpec's Triton kernels, each with a plain-torch reference.

Installed as `trispec_vllm.kernels` (never as a top-level `kernels`, the name
of a Hugging Face package that transformers probes for). Each public function
dispatches to Triton for CUDA tensors and to the torch reference elsewhere.
"""

from trispec_vllm.kernels.divergence import (
    divergence,
    divergence_reference,
    point_mass_divergence,
)
from trispec_vllm.kernels.margins import MarginResult, top2_margins, top2_margins_reference
from trispec_vllm.kernels.tree_attention import TreeMask, tree_mask, tree_mask_reference

__all__ = [
    "divergence",
    "divergence_reference",
    "point_mass_divergence",
    "MarginResult",
    "TreeMask",
    "top2_margins",
    "top2_margins_reference",
    "tree_mask",
    "tree_mask_reference",
]
