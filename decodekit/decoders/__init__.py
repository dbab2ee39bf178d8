"""Decoders of every generation family, all with ``generate(prompts, *, max_new_tokens, sampling,
stop_token_ids, seed) -> GenerationResult`` (see :mod:`decodekit.decoders.base`)."""

from decodekit.decoders.auto import AutoDecoder, NoQualifyingMethodError, Preference, Profile
from decodekit.decoders.autoregressive import AutoregressiveDecoder
from decodekit.decoders.base import Decoder, Request, forward_step
from decodekit.decoders.block_diffusion import BlockDiffusionDecoder
from decodekit.decoders.diffusion_drafter import DiffusionDrafter
from decodekit.decoders.discrete_diffusion import DiscreteDiffusionDecoder
from decodekit.decoders.drafters import DraftProposal, Drafter, NgramDrafter
from decodekit.decoders.mask_predict import MaskPredictDecoder
from decodekit.decoders.masked_diffusion import MaskedDiffusionDecoder
from decodekit.decoders.model_drafters import ModelDrafter
from decodekit.decoders.params import SamplingParams
from decodekit.decoders.plan import ControlTokens, PlanError
from decodekit.decoders.planned_diffusion import PlannedDiffusionDecoder
from decodekit.decoders.result import GenerationResult, RequestStats
from decodekit.decoders.speculative import SpeculativeDecoder
from decodekit.decoders.tree_drafter import TreeDrafter

__all__ = [
    "AutoDecoder",
    "AutoregressiveDecoder",
    "BlockDiffusionDecoder",
    "ControlTokens",
    "Decoder",
    "DiffusionDrafter",
    "DiscreteDiffusionDecoder",
    "DraftProposal",
    "Drafter",
    "GenerationResult",
    "MaskPredictDecoder",
    "MaskedDiffusionDecoder",
    "ModelDrafter",
    "NgramDrafter",
    "NoQualifyingMethodError",
    "PlanError",
    "PlannedDiffusionDecoder",
    "Preference",
    "Profile",
    "Request",
    "RequestStats",
    "SamplingParams",
    "SpeculativeDecoder",
    "TreeDrafter",
    "forward_step",
]
