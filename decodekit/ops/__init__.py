"""decodekit's public functional API: validation, backend dispatch, torch.library registration."""

from decodekit.ops.denoise import DenoiseOutput, RemaskOutput, denoise_step, remask_lowest, transfer_schedule
from decodekit.ops.discrete_diffusion import discrete_diffusion_step
from decodekit.ops.paged_kv import kv_append, kv_copy_blocks, pack_custom_mask, paged_attention
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
    "DenoiseOutput",
    "METHOD_CODES",
    "RemaskOutput",
    "SampleOutput",
    "Stream",
    "Tree",
    "TreeVerifyOutput",
    "VerifyOutput",
    "apply_penalties",
    "build_tree",
    "build_tree_from_topk",
    "denoise_step",
    "discrete_diffusion_step",
    "kv_append",
    "kv_copy_blocks",
    "mask_logits",
    "pack_custom_mask",
    "paged_attention",
    "philox_uniform",
    "remask_lowest",
    "sample",
    "top_k_top_p_renorm",
    "transfer_schedule",
    "verify_chain",
    "verify_tree",
]
