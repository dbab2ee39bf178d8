"""decodekit's public functional API: validation, backend dispatch, torch.library registration."""

from decodekit.ops.rng import Stream, philox_uniform
from decodekit.ops.sampling import SampleOutput, apply_penalties, mask_logits, sample, top_k_top_p_renorm
from decodekit.ops.spec_verify import (
    METHOD_CODES,
    Tree,
    TreeVerifyOutput,
    VerifyOutput,
    build_tree,
    build_tree_from_topk,
    verify_chain,
    verify_tree,
)

__all__ = [
    "METHOD_CODES",
    "SampleOutput",
    "Stream",
    "Tree",
    "TreeVerifyOutput",
    "VerifyOutput",
    "apply_penalties",
    "build_tree",
    "build_tree_from_topk",
    "mask_logits",
    "philox_uniform",
    "sample",
    "top_k_top_p_renorm",
    "verify_chain",
    "verify_tree",
]
