"""Triton kernel of the ``discrete_diffusion`` op family: ``discrete_diffusion_step``.

Semantics are those of decodekit/reference/discrete_diffusion.py (the spec); the raw function at the
end follows the backend contract of decodekit/ops/discrete_diffusion.py: arguments validated,
contiguous and on one device, ``out`` preallocated, no host-device synchronisation.

One program per canvas position. A position that keeps its token (``fixed``, or unmasked on the
absorbing graph) stores it without reading its row. Every other position reads its row at most
twice, in BLOCK-wide tiles, with per-lane state merged once per pass:

1. statistics: NaN / +inf flags; ``clean_logits`` the online max and sum of ``exp(s - max)``,
   ``log_score`` the sum of ``exp(s)``, both over the ordinary entries ``y != x``. With ``x``'s own
   value (one scalar load) they give the row's sum of concrete scores ``sum S`` in closed form;
2. the weight ``P_y`` of every ordinary entry, its Gumbel key ``log P_y - log(-log u_y)`` and a
   per-lane running (max, first index); a tile whose largest ``log P`` plus the largest Gumbel
   noise cannot reach the best key so far skips its Philox rounds, which never changes the winner.

The special entry is ``x`` (on the absorbing graph only masked positions are drawn, so ``x`` is
also the mask): its weight needs ``sum S`` (analytic) or the sum of every move (Euler, summed in
pass 2), so it is weighed last and merged with the lowest-index tie rule.

Arithmetic is float32 with the reference's formulas and operation order (``div_rn`` where it
divides), so tokens match it except on keys that tie to within float rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from decodekit.reference.discrete_diffusion import Graph, Parameterization, Sampler
from decodekit.reference.rng import Stream

from .rng import MAX_GUMBEL_NOISE, contract_uniform

DIFFUSION_TOKEN = tl.constexpr(int(Stream.DIFFUSION_TOKEN))
ABSORBING = tl.constexpr(int(Graph.ABSORBING))
EULER = tl.constexpr(int(Sampler.EULER))
FINAL = tl.constexpr(int(Sampler.FINAL))
LOG_SCORE = tl.constexpr(int(Parameterization.LOG_SCORE))

# Vocabulary tile: 2048 lanes over 8 warps keep enough loads in flight on a GPU; on CPU tensors (the
# interpreter, tests) small tiles make every test row span several tiles.
GPU_BLOCK = 2048
INTERPRETER_BLOCK = 64
MIN_BLOCK = 16


@triton.jit
def _expm1(x):
    """``exp(x) - 1`` of float32 ``x`` without cancellation near 0 (tl has no expm1).

    -1 < x < 2: Taylor series to x^14 (truncation < 4e-9 relative), written ``x + x^2 q(x)`` so the
    leading term is exact; elsewhere ``exp(x) - 1``, whose subtraction amplifies exp's relative
    error by at most 1 / (1 - e^-2) = 1.16 (x >= 2) or e / (e - 1) - 1 = 0.58 (x <= -1).
    Measured through the interpreter against float64 expm1 on 2e5 float32 points of [-30, 90]:
    at most 1.7 ulp on (-1, 2) and 2.4 ulp outside, where numpy's float32 exp (the interpreter's
    tl.exp) is itself off by up to 2.3 ulp; torch.expm1 is within 1 ulp. On a GPU tl.exp is an
    ex2.approx-based approximation, so expect a few ulp there (not measured).
    """
    q = 1.1470745597729725e-11  # 1 / 14!
    q = q * x + 1.6059043836821613e-10  # 1 / 13!
    q = q * x + 2.08767569878681e-09
    q = q * x + 2.505210838544172e-08
    q = q * x + 2.755731922398589e-07
    q = q * x + 2.7557319223985893e-06
    q = q * x + 2.48015873015873e-05
    q = q * x + 1.984126984126984e-04
    q = q * x + 1.388888888888889e-03
    q = q * x + 8.333333333333333e-03
    q = q * x + 4.1666666666666664e-02
    q = q * x + 0.16666666666666666
    q = q * x + 0.5  # 1 / 2!
    series = x + (x * x) * q
    return tl.where((x > -1.0) & (x < 2.0), series, tl.exp(x) - 1.0)


@triton.jit
def _load_ordinary(row_ptr, start, V, x, BLOCK: tl.constexpr):
    """Indices, in-row mask, ordinary mask (``y != x``) and float32 values of the tile at ``start``."""
    index = start + tl.arange(0, BLOCK)
    in_row = index < V
    s = tl.load(row_ptr + index, mask=in_row, other=float("-inf")).to(tl.float32)
    return index, in_row, in_row & (index != x), s


@triton.jit
def _statistics(row_ptr, V, x, PARAM: tl.constexpr, BLOCK: tl.constexpr):
    """Pass 1: (has NaN / +inf, max, sum) over the ordinary entries.

    ``clean_logits``: max ``m`` of ``s_y`` and ``sum exp(s_y - m)`` (online, rescaled when a lane's
    max grows; differences are taken against a finite stand-in so -inf never meets -inf).
    ``log_score``: max unused (0), sum of ``exp(s_y)`` (inf when any overflows: the row is invalid).
    """
    bad = tl.zeros([BLOCK], tl.int32)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    if PARAM == LOG_SCORE:
        m = tl.zeros([BLOCK], tl.float32)  # exp(s) is not shifted
    z = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        index, in_row, ordinary, s = _load_ordinary(row_ptr, start, V, x, BLOCK)
        bad += (in_row & ((s != s) | (s == float("inf")))).to(tl.int32)
        y = tl.where(ordinary, s, float("-inf"))
        if PARAM == LOG_SCORE:
            z += tl.exp(y)
        else:
            m_new = tl.maximum(m, y)
            ms = tl.where(m_new > float("-inf"), m_new, 0.0)
            z = z * tl.exp(m - ms) + tl.exp(y - ms)
            m = m_new
    M = tl.max(m, axis=0)
    Ms = tl.where(M > float("-inf"), M, 0.0)
    return tl.sum(bad, axis=0) > 0, M, tl.sum(z * tl.exp(m - Ms), axis=0)


@triton.jit
def _concrete_score(s, M, Z, em_sigma, k1, pxk2, GRAPH: tl.constexpr, PARAM: tl.constexpr):
    """``S_y`` of ordinary entries ``s`` (step 1 of the spec)."""
    if PARAM == LOG_SCORE:
        score = tl.exp(s)
    else:
        p = tl.div_rn(tl.exp(s - M), Z)
        if GRAPH == ABSORBING:
            score = tl.div_rn(p, em_sigma)
        else:
            score = (1.0 + p * k1) - pxk2
            score = tl.where(score < 0.0, 0.0, score)  # clamp that keeps NaN (an invalid row)
    return score


@triton.jit
def _move_weight(score, Vf, ds, e, et_v, jump, GRAPH: tl.constexpr, SAMPLER: tl.constexpr):
    """``P_y`` of ordinary entries from their ``S_y`` (step 2 of the spec)."""
    if SAMPLER == EULER:
        if GRAPH == ABSORBING:
            weight = ds * score
        else:
            weight = ds * tl.div_rn(score, Vf)
    elif GRAPH == ABSORBING:
        weight = score * e
    else:
        stag = score * (e + 1.0) - et_v
        weight = tl.where(stag < 0.0, 0.0, stag) * jump
    return weight


@triton.jit
def _gumbel_key(weight, u):
    """``log P - log(-log u)``; -inf where ``P <= 0`` and where it is NaN (``P = inf`` with ``u = 0``)."""
    positive = weight > 0.0
    key = tl.where(positive, tl.log(tl.where(positive, weight, 1.0)), float("-inf")) - tl.log(-tl.log(u))
    return tl.where(key == key, key, float("-inf"))


@triton.jit
def _draw(row_ptr, x, V, l, sigma, ds, seed, offset,
          GRAPH: tl.constexpr, SAMPLER: tl.constexpr, PARAM: tl.constexpr, BLOCK: tl.constexpr):
    """The next token of a drawn position (``x`` in ``[0, V)``), or -1 for an invalid row."""
    Vf = V.to(tl.float32)
    has_bad, M_o, Z_o = _statistics(row_ptr, V, x, PARAM, BLOCK)
    s_x = tl.load(row_ptr + x).to(tl.float32)

    # sum_{y != x} S_y in closed form from the statistics; the row's sum S is this plus S_x = 1
    M = M_o
    Z = Z_o
    em_sigma = 1.0
    k1 = 0.0
    pxk2 = 0.0
    invalid = has_bad
    if PARAM == LOG_SCORE:
        others = Z_o
    else:
        em_sigma = _expm1(sigma)
        if GRAPH == ABSORBING:  # x is the mask, which the softmax excludes
            others = tl.div_rn(tl.div_rn(Z_o, Z), em_sigma)
        else:
            M = tl.maximum(M_o, s_x)
            Ms = tl.where(M > float("-inf"), M, 0.0)
            Z_o = Z_o * tl.exp(M_o - Ms)
            Z = Z_o + tl.exp(s_x - Ms)
            a = tl.exp(-sigma)
            c = tl.div_rn(-_expm1(-sigma), Vf)
            k1 = tl.div_rn(a, c)
            pxk2 = tl.div_rn(tl.exp(s_x - Ms), Z) * tl.div_rn(a, a + c)
            # sum_{y != x} (1 + p_y k1 - p_x k2); the clamp at 0 never binds since p_x k2 <= 1
            others = (Vf - 1.0) * (1.0 - pxk2) + k1 * tl.div_rn(Z_o, Z)
            others = tl.where(V > 1, others, 0.0)
        invalid = invalid | (M == float("-inf"))
    total = others + 1.0
    invalid = invalid | (tl.abs(others) == float("inf")) | (others != others) | (tl.abs(total) == float("inf"))

    e = _expm1(ds)
    jump = tl.div_rn(-_expm1(-ds), Vf)
    et_v = tl.div_rn(e * total, Vf)
    base = l.to(tl.int64) * V  # c0 = l * V + y in 32 bits: the ops layer guarantees L * V <= 2**32
    lane_key = tl.full([BLOCK], float("-inf"), tl.float32)
    lane_index = tl.zeros([BLOCK], tl.int32) + V  # V: no positive weight in this lane yet
    moves = tl.zeros([BLOCK], tl.float32)
    best = float("-inf")
    if invalid == 0:
        for start in range(0, V, BLOCK):
            index, in_row, ordinary, s = _load_ordinary(row_ptr, start, V, x, BLOCK)
            score = _concrete_score(s, M, Z, em_sigma, k1, pxk2, GRAPH, PARAM)
            weight = tl.where(ordinary, _move_weight(score, Vf, ds, e, et_v, jump, GRAPH, SAMPLER), 0.0)
            if SAMPLER == EULER:
                moves += weight
            positive = weight > 0.0
            weight = tl.where(positive, weight, 0.0)  # NaN weights (inf * 0) are not positive either
            tile_max = tl.max(weight, axis=0)
            if (tile_max > 0.0) & (tl.log(tile_max) + MAX_GUMBEL_NOISE >= best):
                u = contract_uniform(seed, offset, DIFFUSION_TOKEN, (base + index).to(tl.uint32))
                key = _gumbel_key(weight, u)
                take = positive & ((key > lane_key) | (lane_index == V))
                lane_key = tl.where(take, key, lane_key)
                lane_index = tl.where(take, index, lane_index)
                best = tl.max(tl.where(lane_index < V, lane_key, float("-inf")), axis=0)
    best_key = tl.max(tl.where(lane_index < V, lane_key, float("-inf")), axis=0)
    token = tl.min(tl.where((lane_index < V) & (lane_key == best_key), lane_index, V), axis=0).to(tl.int64)

    # the special entry x: staying put (Euler, uniform analytic) or the mask (absorbing analytic)
    if SAMPLER == EULER:
        stay = 1.0 - tl.sum(moves, axis=0)
    elif GRAPH == ABSORBING:
        stay = (e + 1.0) - e * total
        if SAMPLER == FINAL:
            stay = 0.0
    else:
        stag = (e + 1.0) - et_v
        stay = tl.where(stag < 0.0, 0.0, stag) * (1.0 - (Vf - 1.0) * jump)
    stay = tl.where(stay < 0.0, 0.0, stay)
    u_x = contract_uniform(seed, offset, DIFFUSION_TOKEN, (base + x).to(tl.uint32))
    key_x = _gumbel_key(stay, u_x)
    x_wins = (stay > 0.0) & ((token >= V) | (key_x > best_key) | ((key_x == best_key) & (x < token)))
    token = tl.where(x_wins, x, token)
    return tl.where(invalid | (token >= V), -1, token)


@triton.jit
def _step_kernel(
    scores_ptr, tokens_ptr, sigma_ptr, dsigma_ptr, fixed_ptr, seed_ptr, offset_ptr, out_ptr, L, V, mask_id,
    GRAPH: tl.constexpr, SAMPLER: tl.constexpr, PARAM: tl.constexpr, HAS_FIXED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)  # b * L + l
    b = row // L
    l = row % L
    x = tl.load(tokens_ptr + row)
    in_range = (x >= 0) & (x < V)
    drawn = in_range
    if HAS_FIXED:
        drawn = drawn & (tl.load(fixed_ptr + row) == 0)
    if GRAPH == ABSORBING:
        drawn = drawn & (x == mask_id)
    result = tl.where(in_range, x, -1)
    if drawn:
        result = _draw(scores_ptr + row.to(tl.int64) * V, x, V, l, tl.load(sigma_ptr + b), tl.load(dsigma_ptr + b),
                       tl.load(seed_ptr + b), tl.load(offset_ptr + b), GRAPH, SAMPLER, PARAM, BLOCK)
    tl.store(out_ptr + row, result)


def _vocab_block(vocab: int, device: torch.device) -> int:
    cap = GPU_BLOCK if device.type == "cuda" else INTERPRETER_BLOCK
    return min(cap, max(MIN_BLOCK, triton.next_power_of_2(vocab)))


def discrete_diffusion_step(scores, tokens, sigma, dsigma, fixed, seed, offset, graph, sampler, param, mask_id,
                            out) -> None:
    """Next canvas of one SEDD reverse step into ``out [B, L]`` int64.

    ``scores [B, L, V]`` f32/f16/bf16; ``tokens [B, L]`` int64; ``sigma``/``dsigma`` f32 ``[B]``;
    ``fixed [B, L]`` bool or empty (none fixed); ``seed``/``offset`` int64 ``[B]``; ``graph``,
    ``sampler``, ``param`` the reference's Graph / Sampler / Parameterization codes; ``mask_id``
    the absorbing state (-1 for the uniform graph).
    """
    batch, length, vocab = scores.shape
    block = _vocab_block(vocab, scores.device)
    has_fixed = fixed.numel() > 0
    _step_kernel[(batch * length,)](
        scores, tokens, sigma, dsigma, fixed if has_fixed else tokens, seed, offset, out, length, vocab,
        int(mask_id), GRAPH=int(graph), SAMPLER=int(sampler), PARAM=int(param), HAS_FIXED=has_fixed,
        BLOCK=block, num_warps=8 if block >= 1024 else 4,
    )
