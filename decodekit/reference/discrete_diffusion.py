"""Plain-PyTorch score-based discrete diffusion (SEDD): the executable spec of the
`discrete_diffusion` op family.

One reverse step of SEDD's samplers (Lou, Meng & Ermon 2024, ``louaaron/Score-Entropy-Discrete-
Diffusion/sampling.py``) at every canvas position: from the model's output over the vocabulary
build the concrete score, turn it into the probabilities of the next token under the chosen
graph and sampler, and draw the next token. Every backend must give the same integers as
``discrete_diffusion_step`` below; ``[B, L, V]`` temporaries are fine here and nowhere else.

Notation per canvas position ``(b, l)``: current token ``x = tokens[b, l]``, model row
``s = scores[b, l, :]`` read as float32, ``V`` the vocabulary size (the absorbing graph's mask id
is a vocabulary entry), ``sigma = sigma[b]`` the total noise at the current time, ``dsigma =
dsigma[b]`` (Euler: ``rate(t) * dt``; analytic: ``sigma(t) - sigma(t - dt)``; final: ``sigma``).

**Graphs** (forward process ``p_t(. | x0) = exp(sigma Q)``):

* ``absorbing``: every token jumps to ``mask_id`` at rate 1; ``p_t = e^-sigma delta(x0) +
  (1 - e^-sigma) delta(mask)``. Positions with ``x != mask_id`` never change in the reverse process.
* ``uniform``: every token jumps to each token at rate ``1 / V``; ``p_t = e^-sigma delta(x0) +
  (1 - e^-sigma) / V``.

**1. Concrete score** ``S_y ~ p_t(y at l) / p_t(x at l)`` (ratios, ``S_x = 1`` by definition):

* ``log_score`` (a SEDD score network, log of the ratios): ``S_y = exp(s_y)`` for ``y != x``.
* ``clean_logits`` (a network that predicts the clean token, MDLM / LLaDA style: ``p = softmax(s)``
  over the vocabulary, the mask column excluded on the absorbing graph). The exact conversion
  (RADD, Ou et al. 2024, for absorbing; the same Bayes rule for uniform):
  ``S_y = sum_x0 p(x0) p_t(y | x0) / p_t(x | x0)``, which is

  - absorbing, ``x = mask``: ``S_y = p_y / expm1(sigma)`` (the masked factor ``e^-sigma /
    (1 - e^-sigma)``), ``y != mask``;
  - uniform, ``a = e^-sigma``, ``c = -expm1(-sigma) / V``:
    ``S_y = 1 + p_y a / c - p_x a / (a + c)``, ``y != x`` (clamped at 0 against rounding).

**2. Transition weights** ``P_y >= 0`` (unnormalised; ``P_x`` is the weight of staying):

* ``euler`` (``EulerPredictor``: ``onehot(x) + dsigma * reverse_rate``), rates ``R_y = S_y`` on the
  absorbing graph at a masked position (``y != mask``), ``R_y = S_y / V`` on the uniform graph:
  ``P_y = dsigma R_y`` for ``y != x`` and ``P_x = max(0, 1 - sum_{y != x} P_y)``.
* ``analytic`` (``AnalyticPredictor``, Tweedie tau-leaping: staggered score times the transposed
  transition over ``dsigma``), with ``E = expm1(dsigma)`` and ``sum S`` over the whole row
  including ``S_x = 1``:

  - absorbing, ``x = mask``: ``P_y = S_y E`` for ``y != mask``;
    ``P_mask = max(0, (E + 1) - E sum S)``;
  - uniform: ``stag_y = S_y (E + 1) - E sum S / V``; ``P_y = max(0, stag_y) (1 - e^-dsigma) / V``
    for ``y != x`` and ``P_x = max(0, stag_x) (1 - (V - 1)(1 - e^-dsigma) / V)``.
* ``final`` (SEDD's ``Denoiser``, ``noise_removal``): ``analytic`` with ``dsigma = sigma`` as given,
  and on the absorbing graph ``P_mask = 0`` so every masked position receives a real token.

**3. Draw**: ``u_y = uniform(seed, offset, DIFFUSION_TOKEN, c0 = (l * V + y) mod 2**32)``; the new
token is the first index of the maximum of ``log P_y - log(-log u_y)`` over ``{y : P_y > 0}``
(Gumbel-max: a categorical draw from ``P / sum P``, SEDD's ``sample_categorical``); a NaN key
(an infinite weight whose uniform is exactly 0) counts as -inf.

**Untouched positions** keep their token without reading ``s``: ``fixed[b, l]`` (SEDD's projector:
prompt tokens anywhere in the canvas) and, on the absorbing graph, every ``x != mask_id``.

**Invalid positions** get ``-1``: ``x`` outside ``[0, V)``; a NaN or +inf in ``s``; ``clean_logits``
with every softmax entry -inf; a non-finite ``S_y`` or ``sum S``; no ``y`` with ``P_y > 0``.
"""

from __future__ import annotations

import enum

import torch

from decodekit.reference import rng
from decodekit.reference.rng import Stream
from decodekit.reference.sampling import first_argmax

NEG_INF = float("-inf")


class Graph(enum.IntEnum):
    ABSORBING = 0
    UNIFORM = 1


class Sampler(enum.IntEnum):
    EULER = 0
    ANALYTIC = 1
    FINAL = 2


class Parameterization(enum.IntEnum):
    LOG_SCORE = 0
    CLEAN_LOGITS = 1


def concrete_score(scores, tokens, sigma, graph: int, param: int, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``S [B, L, V]`` float32 (step 1, ``S_x = 1``) and a ``[B, L]`` bool of rows that are invalid.

    ``scores [B, L, V]``; ``tokens [B, L]`` int64 already clamped into ``[0, V)``; ``sigma [B]``.
    """
    s = scores.float()
    vocab = s.shape[-1]
    invalid = torch.isnan(s).any(-1) | (s == float("inf")).any(-1)
    s = torch.where(invalid.unsqueeze(-1), 0.0, s)
    is_x = torch.nn.functional.one_hot(tokens, vocab).bool()
    sig = sigma.float().reshape(-1, 1, 1)
    if param == Parameterization.LOG_SCORE:
        score = torch.exp(s)
    else:
        domain = torch.ones_like(s, dtype=torch.bool)
        if graph == Graph.ABSORBING:
            domain[..., mask_id] = False
        logit = torch.where(domain, s, NEG_INF)
        invalid |= (logit == NEG_INF).all(-1)
        logit = torch.where(invalid.unsqueeze(-1), 0.0, logit)
        p = torch.softmax(logit, dim=-1)
        if graph == Graph.ABSORBING:
            score = p / torch.expm1(sig)
        else:
            a = torch.exp(-sig)
            c = -torch.expm1(-sig) / vocab
            p_x = p.gather(-1, tokens.unsqueeze(-1))
            score = (1.0 + p * (a / c) - p_x * (a / (a + c))).clamp_min(0.0)
    score = torch.where(is_x, 1.0, score)
    invalid |= ~torch.isfinite(score).all(-1) | ~torch.isfinite(score.sum(-1))
    return score, invalid


def transition_weights(score, tokens, dsigma, graph: int, sampler: int, mask_id: int) -> torch.Tensor:
    """``P [B, L, V]`` float32 >= 0 of step 2 from the concrete score ``S [B, L, V]``."""
    vocab = score.shape[-1]
    is_x = torch.nn.functional.one_hot(tokens, vocab).bool()
    ds = dsigma.float().reshape(-1, 1, 1)
    total = score.sum(-1, keepdim=True)
    if sampler == Sampler.EULER:
        rate = score if graph == Graph.ABSORBING else score / vocab
        move = torch.where(is_x, 0.0, ds * rate)
        stay = (1.0 - move.sum(-1, keepdim=True)).clamp_min(0.0)
        return torch.where(is_x, stay, move)
    e = torch.expm1(ds)
    if graph == Graph.ABSORBING:  # only masked positions reach here: x == mask_id
        weights = score * e
        p_mask = ((e + 1.0) - e * total).clamp_min(0.0)
        if sampler == Sampler.FINAL:
            p_mask = torch.zeros_like(p_mask)
        weights[..., mask_id] = p_mask.squeeze(-1)
        return weights
    stag = (score * (e + 1.0) - e * total / vocab).clamp_min(0.0)
    jump = -torch.expm1(-ds) / vocab
    return stag * torch.where(is_x, 1.0 - (vocab - 1) * jump, jump)


def discrete_diffusion_step(
    scores: torch.Tensor,
    tokens: torch.Tensor,
    sigma: torch.Tensor,
    dsigma: torch.Tensor,
    fixed: torch.Tensor | None,
    seed: torch.Tensor,
    offset: torch.Tensor,
    graph: int,
    sampler: int,
    param: int,
    mask_id: int,
) -> torch.Tensor:
    """The next canvas ``[B, L]`` int64 (module docstring).

    ``scores [B, L, V]`` float; ``tokens [B, L]`` int64; ``sigma``, ``dsigma`` float32 ``[B]``;
    ``fixed [B, L]`` bool or None; ``seed``, ``offset`` int64 ``[B]``; ``graph`` a ``Graph``,
    ``sampler`` a ``Sampler``, ``param`` a ``Parameterization``; ``mask_id`` used by the absorbing graph.
    """
    batch, length, vocab = scores.shape
    dev = scores.device
    tokens = tokens.to(torch.int64)
    out_of_range = (tokens < 0) | (tokens >= vocab)
    x = tokens.clamp(0, vocab - 1)
    keep = torch.zeros_like(out_of_range) if fixed is None else fixed.bool()
    if graph == Graph.ABSORBING:
        keep = keep | (x != mask_id)
    score, invalid = concrete_score(scores, x, sigma, graph, param, mask_id)
    weights = transition_weights(score, x, dsigma, graph, sampler, mask_id)

    pos = torch.arange(length, device=dev, dtype=torch.int64)
    c0 = (pos.unsqueeze(-1) * vocab + torch.arange(vocab, device=dev)) & rng.MASK32
    u = rng.uniform(seed.reshape(-1, 1, 1), offset.reshape(-1, 1, 1), Stream.DIFFUSION_TOKEN, c0)
    positive = weights > 0
    key = torch.where(positive, torch.log(torch.where(positive, weights, 1.0)), NEG_INF) - torch.log(-torch.log(u))
    key = torch.where(torch.isnan(key), NEG_INF, key)  # an infinite weight with u == 0: inf - inf
    drawn = first_argmax(key, positive)
    invalid |= ~positive.any(-1)
    new = torch.where(keep, tokens, torch.where(invalid, -1, drawn))
    return torch.where(out_of_range, -1, new)
