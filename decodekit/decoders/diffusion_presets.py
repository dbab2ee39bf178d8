"""Named presets of :class:`~decodekit.decoders.MaskedDiffusionDecoder`: the published samplers
(research note ``diffusion_nar_hybrid.md`` sections 1-4) as knob sets, validated once.

Every knob, its published default and the presets that read it:

=================  ==========================================================================
knob               meaning (published default)
=================  ==========================================================================
steps              denoising steps for the whole canvas. llada: split evenly over the blocks
                   (``steps % num_blocks == 0``); default = gen_length ("best when steps equal
                   the response length", LLaDA FAQ). dream: default = gen_length (Dream's eval
                   script). mdlm: default 128 (MDLM ``sampling.steps``). fast_dllm: only used
                   without ``threshold``/``factor`` (then as llada).
block_length       semi-autoregressive commit window (llada, fast_dllm); gen_length must be a
                   multiple. llada default = gen_length (one block); fast_dllm default 32.
remasking          llada / fast_dllm: ``"low_confidence"`` (probability of the proposal under the
                   untempered softmax, default) or ``"random"`` (uniform Philox noise).
cfg_scale          llada: classifier-free guidance ``u + (w + 1)(c - u)``, the unconditional pass
                   with the prompt replaced by masks (default 0 = off; doubles the rows).
suppress_token_ids llada's ``logits_eos_inf`` generalised: ids whose logits are set to -inf
                   before proposing (default none).
alg                dream: ``"origin"`` (each masked slot revealed w.p. 1 - s/t, the default),
                   ``"maskgit_plus"`` (top-1 probability), ``"topk_margin"`` (p1 - p2),
                   ``"entropy"`` (negative entropy); confidences under the tempered, top-k/top-p
                   filtered distribution.
alg_temp           dream, top-k algs: 0/None = commit the k most confident (default); t > 0 =
                   draw the k positions from ``softmax(confidence / t)`` without replacement
                   (Dream's ``multinomial``; here Gumbel-top-k in ``denoise_step``).
eps                dream: 1e-3, mdlm: 1e-5; the time grid ``linspace(1, eps, steps + 1)``.
shift_logits       dream: True (AR-initialised model: position j uses the logits of j - 1);
                   False elsewhere.
threshold          fast_dllm: commit every masked slot of the block with confidence >= tau and
                   always the most confident one (default 0.9); steps become adaptive.
factor             fast_dllm: the ``1 - factor / (n + 1)`` rule instead of ``threshold``
                   (default None).
cache              fast_dllm (any preset accepts it): ``"none"`` (recompute the canvas every
                   step, default), ``"prefix"`` (K/V before the current block reused inside the
                   block), ``"dual"`` (prefix and suffix reused, only the block recomputed).
refresh_every      with a cache: also recompute the whole canvas every n steps inside a block
                   (default None: only at each block's first step, as Fast-dLLM).
predictor          mdlm: ``"ddpm"`` or ``"ddpm_cache"`` (default; reuses the model output when
                   no token changed, same tokens, fewer calls).
noise_removal      mdlm: a final greedy step that fills what the last step left masked
                   (default True).
=================  ==========================================================================

The mask token is never proposed (its logit is suppressed in every preset, MDLM's SUBS rule);
the published LLaDA/Dream loops rely on a trained model giving it ~0 probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PRESETS = ("llada", "dream", "fast_dllm", "mdlm")
REMASKING = ("low_confidence", "random")
DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
CACHES = ("none", "prefix", "dual")
PREDICTORS = ("ddpm", "ddpm_cache")

# knobs each preset reads (others raise, so a typo'd combination never silently does nothing)
_KNOBS = {
    "llada": {"steps", "block_length", "remasking", "cfg_scale", "suppress_token_ids", "cache", "refresh_every"},
    "dream": {"steps", "alg", "alg_temp", "eps", "shift_logits", "suppress_token_ids", "cache", "refresh_every"},
    "fast_dllm": {"steps", "block_length", "remasking", "threshold", "factor", "suppress_token_ids", "cache",
                  "refresh_every"},
    "mdlm": {"steps", "eps", "predictor", "noise_removal", "suppress_token_ids", "cache", "refresh_every"},
}
_DEFAULTS = {
    "llada": dict(remasking="low_confidence"),
    "dream": dict(alg="origin", eps=1e-3, shift_logits=True),
    "fast_dllm": dict(block_length=32, remasking="low_confidence", threshold=0.9),
    "mdlm": dict(steps=128, eps=1e-5, predictor="ddpm_cache", noise_removal=True),
}


@dataclass(frozen=True)
class DiffusionConfig:
    """A resolved preset (see the module docstring for every knob). ``steps`` / ``block_length``
    None mean "gen_length" and are fixed per ``generate`` call by :meth:`plan`."""

    preset: str
    steps: int | None = None
    block_length: int | None = None
    remasking: str = "low_confidence"
    cfg_scale: float = 0.0
    suppress_token_ids: tuple = field(default_factory=tuple)
    alg: str = "origin"
    alg_temp: float = 0.0
    eps: float = 1e-3
    shift_logits: bool = False
    threshold: float | None = None
    factor: float | None = None
    cache: str = "none"
    refresh_every: int | None = None
    predictor: str = "ddpm_cache"
    noise_removal: bool = True

    @property
    def adaptive(self) -> bool:
        """Fast-dLLM's parallel rules: a block ends when it has no mask, not after fixed steps."""
        return self.threshold is not None or self.factor is not None

    def plan(self, gen_length: int) -> tuple[int, int]:
        """``(block_length, steps_per_block)`` for a canvas of ``gen_length``; ValueError when the
        lengths do not divide as the preset requires."""
        block = gen_length if self.block_length is None else self.block_length
        if gen_length % block:
            raise ValueError(f"block_length={block} must divide max_new_tokens (gen_length) = {gen_length}")
        blocks = gen_length // block
        steps = self.steps if self.steps is not None else gen_length
        if self.adaptive:
            return block, block  # at most one step per token of the block
        if steps % blocks:
            raise ValueError(f"steps={steps} must be a multiple of the number of blocks "
                             f"{blocks} (= max_new_tokens {gen_length} / block_length {block})")
        return block, steps // blocks


def make_config(preset: str, vocab_size: int, **knobs) -> DiffusionConfig:
    """Validate ``knobs`` (None = the preset's published default) into a :class:`DiffusionConfig`."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    given = {k: v for k, v in knobs.items() if v is not None}
    unknown = set(given) - _KNOBS[preset]
    if unknown:
        raise ValueError(f"preset {preset!r} does not use {sorted(unknown)}; it takes {sorted(_KNOBS[preset])}")
    values = {**_DEFAULTS[preset], **given}
    if "factor" in given and "threshold" not in given:
        values["threshold"] = None  # factor replaces the default threshold rule
    if values.get("threshold") is not None and values.get("factor") is not None:
        raise ValueError("give either threshold or factor, not both")

    def positive_int(name):
        v = values.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")

    for name in ("steps", "block_length", "refresh_every"):
        positive_int(name)
    choices = (("remasking", REMASKING), ("alg", DREAM_ALGS), ("cache", CACHES), ("predictor", PREDICTORS))
    for name, allowed in choices:
        if name in values and values[name] not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {values[name]!r}")
    cfg = values.get("cfg_scale", 0.0)
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not math.isfinite(cfg) or cfg < 0:
        raise ValueError(f"cfg_scale must be a finite float >= 0, got {cfg!r}")
    alg_temp = values.get("alg_temp", 0.0)
    if isinstance(alg_temp, bool) or not isinstance(alg_temp, (int, float)) or not math.isfinite(alg_temp) \
            or alg_temp < 0:
        raise ValueError(f"alg_temp must be a finite float >= 0, got {alg_temp!r}")
    if alg_temp and values.get("alg") == "origin":
        raise ValueError("alg_temp applies to the top-k algs (maskgit_plus, topk_margin, entropy), not 'origin'")
    eps = values.get("eps", 1e-3)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ValueError(f"eps must be a float in (0, 1), got {eps!r}")
    tau = values.get("threshold")
    if tau is not None and (isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau <= 1):
        raise ValueError(f"threshold must be in (0, 1], got {tau!r}")
    factor = values.get("factor")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))
                               or not math.isfinite(factor) or factor < 0):
        raise ValueError(f"factor must be a finite float >= 0, got {factor!r}")
    ids = tuple(values.get("suppress_token_ids", ()))
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size:
            raise ValueError(f"suppress_token_ids must be token ids in [0, {vocab_size}), got {t!r}")
    values["suppress_token_ids"] = ids
    for name in ("shift_logits", "noise_removal"):
        if name in values and not isinstance(values[name], bool):
            raise TypeError(f"{name} must be a bool, got {type(values[name]).__name__}")
    return DiffusionConfig(preset=preset, **values)
