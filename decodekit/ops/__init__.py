"""decodekit's public functional API: validation, backend dispatch, torch.library registration."""

from decodekit.ops.rng import Stream, philox_uniform
from decodekit.ops.sampling import SampleOutput, apply_penalties, mask_logits, sample, top_k_top_p_renorm

__all__ = [
    "SampleOutput",
    "Stream",
    "apply_penalties",
    "mask_logits",
    "philox_uniform",
    "sample",
    "top_k_top_p_renorm",
]
