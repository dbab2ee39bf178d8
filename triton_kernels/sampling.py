"""Triton kernels of the ``sampling`` op family: sample, apply_penalties, mask_logits, top_k_top_p_renorm.

Semantics are those of decodekit/reference/sampling.py (the spec); the raw functions at the end
follow the backend contract: arguments already validated, contiguous and on one device, outputs
preallocated, no host-device synchronisation.

Every row-wise kernel runs one program per row and streams the row in BLOCK-wide tiles, so any V
works and nothing outside the row is touched. Passes accumulate per lane and reduce across the
block once at the end, so the tile loop carries no barrier and its loads pipeline. Nothing is
sorted:

1. one summary pass: max (and its first index), min, NaN / +inf flags;
2. top-k: bisection on an orderable integer key of the value. The largest key K with
   count(key >= K) >= k is exactly the k-th largest value, duplicates counted (<= 32 passes);
3. top-p: bisection for the smallest key K with mass(key > K) < top_p * (mass of the top-k set).
   Keeping {key >= K} keeps token i iff the mass strictly above it is < top_p * total, ties of the
   last kept value included: the reference rule (<= 32 passes);
4. one final pass over the kept set {key >= tau} (with min-p and the Gumbel-max draw for ``sample``).

A filter that is off costs no pass, so plain temperature sampling reads the row twice.
"""

from __future__ import annotations

import triton
import triton.language as tl

from decodekit.reference.rng import Stream

from .rng import contract_uniform

SAMPLE_TOKEN = tl.constexpr(int(Stream.SAMPLE_TOKEN))
MIN_BLOCK = 128
# 2048 lanes over 8 warps = 8 values per thread: enough loads in flight per pass, and the final
# pass (Philox state + per-lane argmax) still fits in 128 registers without spills (ptxas, sm_90a).
MAX_BLOCK = 2048
PENALTY_BLOCK = 1024


# ---------------------------------------------------------------------------------------------
# Shared row helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _load_tile(row_ptr, start, V, BLOCK: tl.constexpr):
    """Indices, in-row mask and float32 values of the tile at ``start`` (lanes past V read -inf)."""
    index = start + tl.arange(0, BLOCK)
    in_row = index < V
    x = tl.load(row_ptr + index, mask=in_row, other=float("-inf")).to(tl.float32)
    return index, in_row, x


@triton.jit
def _orderable_key(x):
    """int32 key ordered like the (non-NaN) floats ``x``; -0.0 and +0.0 share one key.

    Equals the contract's unsigned key ``bits ^ (sign ? 0xFFFFFFFF : 0x80000000)`` minus 2**31, so
    plain signed compares order it.
    """
    bits = tl.where(x == 0.0, 0.0, x).to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _row_summary(row_ptr, V, BLOCK: tl.constexpr):
    """One pass over a row: (max, first index of the max, min, has NaN, has +inf).

    max / min are meaningless for rows with NaN, which every caller handles apart.
    """
    lane_max = tl.full([BLOCK], float("-inf"), tl.float32)
    lane_first = tl.zeros([BLOCK], tl.int32)
    lane_min = tl.full([BLOCK], float("inf"), tl.float32)
    nan_lanes = tl.zeros([BLOCK], tl.int32)
    pos_inf_lanes = tl.zeros([BLOCK], tl.int32)
    for start in range(0, V, BLOCK):
        index, in_row, x = _load_tile(row_ptr, start, V, BLOCK)
        # strictly greater: each lane keeps the first index of its maximum
        newer = x > lane_max
        lane_first = tl.where(newer, index, lane_first)
        lane_max = tl.where(newer, x, lane_max)
        lane_min = tl.minimum(lane_min, tl.where(in_row, x, float("inf")))
        nan_lanes += (x != x).to(tl.int32)
        pos_inf_lanes += (x == float("inf")).to(tl.int32)
    x_max = tl.max(lane_max, axis=0)
    first_max = tl.min(tl.where(lane_max == x_max, lane_first, V), axis=0)
    x_min = tl.min(lane_min, axis=0)
    return x_max, first_max, x_min, tl.sum(nan_lanes, axis=0) > 0, tl.sum(pos_inf_lanes, axis=0) > 0


@triton.jit
def _count_at_least(row_ptr, V, key_bound, BLOCK: tl.constexpr):
    """Number of entries of the row with key >= ``key_bound``."""
    lane_count = tl.zeros([BLOCK], tl.int32)
    for start in range(0, V, BLOCK):
        index, in_row, x = _load_tile(row_ptr, start, V, BLOCK)
        lane_count += (in_row & (_orderable_key(x) >= key_bound)).to(tl.int32)
    return tl.sum(lane_count, axis=0)


@triton.jit
def _kth_largest_key(row_ptr, V, k, key_min, key_max, BLOCK: tl.constexpr):
    """Key of the k-th largest entry (duplicates counted): the largest K with count(key >= K) >= k.

    Bisection on [key_min, key_max] in int64 so the midpoint cannot overflow; <= 32 passes.
    """
    lo = key_min.to(tl.int64)  # count(key >= key_min) == V >= k
    hi = key_max.to(tl.int64)
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2
        enough = _count_at_least(row_ptr, V, mid.to(tl.int32), BLOCK) >= k
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, hi, mid - 1)
    return lo.to(tl.int32)


@triton.jit
def _candidate_mass(x, key, top_k_key, z_max, temperature, PROBS: tl.constexpr):
    """Unnormalised top-p mass per lane; 0 outside the top-k set and for entries never kept.

    Logits: exp(x / temperature - z_max), never keeping -inf. Probabilities: the value itself,
    never keeping p <= 0. Lanes past V read -inf, so they never count either way.
    """
    if PROBS:
        in_set = (key >= top_k_key) & (x > 0.0)
        mass = x
    else:
        in_set = (key >= top_k_key) & (x > float("-inf"))
        mass = tl.exp(tl.div_rn(x, temperature) - z_max)
    return tl.where(in_set, mass, 0.0)


@triton.jit
def _mass_above(row_ptr, V, key_bound, top_k_key, z_max, temperature, PROBS: tl.constexpr, BLOCK: tl.constexpr):
    """Candidate mass of the entries with key > ``key_bound`` (strictly), float32 accumulation."""
    lane_mass = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        index, in_row, x = _load_tile(row_ptr, start, V, BLOCK)
        key = _orderable_key(x)
        mass = _candidate_mass(x, key, top_k_key, z_max, temperature, PROBS)
        lane_mass += tl.where(key > key_bound, mass, 0.0)
    return tl.sum(lane_mass, axis=0)


@triton.jit
def _top_p_key(row_ptr, V, top_p, top_k_key, key_max, z_max, temperature, PROBS: tl.constexpr, BLOCK: tl.constexpr):
    """Smallest key K >= top_k_key with mass(key > K) < top_p * (mass of the top-k set).

    mass(key > K) only drops at attained keys, so K is the key of an entry (or top_k_key, itself
    attained): {key >= K} keeps every tie of its last value, as the reference does. A NaN limit
    (a +inf logit under mask_logits) leaves K = key_max, as the reference's sorted scan does.
    """
    # top_k_key - 1 cannot wrap: rows reaching here have no NaN, so keys are >= key(-inf) > INT32_MIN
    limit = top_p * _mass_above(row_ptr, V, top_k_key - 1, top_k_key, z_max, temperature, PROBS, BLOCK)
    lo = top_k_key.to(tl.int64)
    hi = key_max.to(tl.int64)  # mass(key > key_max) == 0 < limit
    while lo < hi:
        mid = lo + (hi - lo) // 2
        below = _mass_above(row_ptr, V, mid.to(tl.int32), top_k_key, z_max, temperature, PROBS, BLOCK) < limit
        hi = tl.where(below, mid, hi)
        lo = tl.where(below, lo, mid + 1)
    return lo.to(tl.int32)


@triton.jit
def _kept_threshold(
    row_ptr, V, top_k, top_p, x_min, x_max, z_max, temperature, PROBS: tl.constexpr, BLOCK: tl.constexpr
):
    """Key tau such that top-k then top-p keep exactly the candidates with key >= tau.

    Only for rows without NaN. ``top_k`` 0 or >= V and ``top_p`` 1 are off and cost no pass.
    """
    tau = _orderable_key(x_min)
    if (top_k > 0) & (top_k < V):
        tau = _kth_largest_key(row_ptr, V, top_k, tau, _orderable_key(x_max), BLOCK)
    if top_p < 1.0:
        tau = _top_p_key(row_ptr, V, top_p, tau, _orderable_key(x_max), z_max, temperature, PROBS, BLOCK)
    return tau


@triton.jit
def _logit_kept(x, key, tau, z, z_max, min_p):
    """Final keep rule for logits: above the threshold, not -inf, and min-p.

    min-p is written as the reference's exp(z - z_max) >= min_p, not as a threshold on x, so a
    NaN there (z_max = +inf) drops the entry exactly as in the reference.
    """
    return (key >= tau) & (x > float("-inf")) & (tl.exp(z - z_max) >= min_p)


@triton.jit
def _prob_kept(p, tau):
    """Final keep rule for probabilities: above the threshold and positive."""
    return (_orderable_key(p) >= tau) & (p > 0.0)


# ---------------------------------------------------------------------------------------------
# sample
# ---------------------------------------------------------------------------------------------


@triton.jit
def _gumbel_max_draw(row_ptr, V, tau, z_max, temperature, min_p, seed, offset, BLOCK: tl.constexpr):
    """(token, logprob) of the Gumbel-max draw over the kept tokens; V when nothing is kept.

    Ties (including all-(-inf) scores when every kept uniform is 0.0) go to the lowest kept index.
    The softmax normaliser is summed in the same pass: z_max is already known from the summary.
    """
    lane_score = tl.full([BLOCK], float("-inf"), tl.float32)
    lane_index = tl.zeros([BLOCK], tl.int32) + V  # V: no kept token in this lane yet
    lane_mass = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        index, in_row, x = _load_tile(row_ptr, start, V, BLOCK)
        z = tl.div_rn(x, temperature)
        kept = in_row & _logit_kept(x, _orderable_key(x), tau, z, z_max, min_p)
        lane_mass += tl.where(kept, tl.exp(z - z_max), 0.0)
        u = contract_uniform(seed, offset, SAMPLE_TOKEN, index)
        # u == 0.0 gives -inf noise: such a token wins only if every kept token drew 0.0
        score = z - tl.log(-tl.log(u))
        # strictly greater (or the lane's first kept token): lanes see indices in increasing order
        take = kept & ((score > lane_score) | (lane_index == V))
        lane_score = tl.where(take, score, lane_score)
        lane_index = tl.where(take, index, lane_index)
    best_score = tl.max(tl.where(lane_index < V, lane_score, float("-inf")), axis=0)
    best_index = tl.min(tl.where((lane_index < V) & (lane_score == best_score), lane_index, V), axis=0)
    kept_mass = tl.sum(lane_mass, axis=0)
    found = best_index < V
    x_token = tl.load(row_ptr + best_index, mask=found, other=float("nan")).to(tl.float32)
    logprob = (tl.div_rn(x_token, temperature) - z_max) - tl.log(kept_mass)
    return best_index, logprob


@triton.jit
def _sample_kernel(
    logits_ptr,
    temperature_ptr,
    top_k_ptr,
    top_p_ptr,
    min_p_ptr,
    seed_ptr,
    offset_ptr,
    tokens_ptr,
    logprobs_ptr,
    valid_ptr,
    V,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * V
    temperature = tl.load(temperature_ptr + row)
    x_max, first_max, x_min, has_nan, has_pos_inf = _row_summary(row_ptr, V, BLOCK)
    valid = (not has_nan) & (not has_pos_inf) & (x_max > float("-inf"))
    token = first_max  # greedy: first index of the max, logprob 0 (a point mass)
    logprob = tl.full((), 0.0, tl.float32)
    if valid & (temperature > 0.0):
        z_max = tl.div_rn(x_max, temperature)  # division by t > 0 is monotone: max(x / t) == max(x) / t
        top_k = tl.load(top_k_ptr + row)
        top_p = tl.load(top_p_ptr + row)
        min_p = tl.load(min_p_ptr + row)
        seed = tl.load(seed_ptr + row)
        offset = tl.load(offset_ptr + row)
        tau = _kept_threshold(row_ptr, V, top_k, top_p, x_min, x_max, z_max, temperature, False, BLOCK)
        token, logprob = _gumbel_max_draw(row_ptr, V, tau, z_max, temperature, min_p, seed, offset, BLOCK)
        # Nothing kept happens only when x / t overflows to inf and min-p then drops everything
        # (the reference fails there); report the row as not sampled rather than emit token V.
        valid = token < V
    tl.store(tokens_ptr + row, tl.where(valid, token.to(tl.int64), -1))
    tl.store(logprobs_ptr + row, tl.where(valid, logprob, float("nan")))
    tl.store(valid_ptr + row, valid)


def _row_block(vocab: int) -> int:
    return min(MAX_BLOCK, max(MIN_BLOCK, triton.next_power_of_2(vocab)))


def _row_warps(block: int) -> int:
    return 8 if block >= 2048 else 4


def sample(logits, temperature, top_k, top_p, min_p, seed, offset, tokens_out, logprobs_out, valid_out) -> None:
    """Sample one token per row of ``logits [B, V]`` (float32 / float16 / bfloat16).

    Per-row parameters ``[B]``: temperature f32 (0 = greedy), top_k int32 (0 or >= V = off),
    top_p f32 (1 = off), min_p f32, seed int64, offset int64. Writes tokens_out int64 ``[B]``
    (-1 for invalid rows), logprobs_out f32 ``[B]`` (NaN for invalid rows), valid_out bool ``[B]``.
    """
    batch, vocab = logits.shape
    block = _row_block(vocab)
    _sample_kernel[(batch,)](
        logits,
        temperature,
        top_k,
        top_p,
        min_p,
        seed,
        offset,
        tokens_out,
        logprobs_out,
        valid_out,
        vocab,
        BLOCK=block,
        num_warps=_row_warps(block),
    )


# ---------------------------------------------------------------------------------------------
# mask_logits
# ---------------------------------------------------------------------------------------------


@triton.jit
def _mask_logits_kernel(logits_ptr, top_k_ptr, top_p_ptr, out_ptr, V, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * V
    out_row_ptr = out_ptr + row.to(tl.int64) * V
    x_max, _, x_min, has_nan, _ = _row_summary(row_ptr, V, BLOCK)
    tau = _orderable_key(x_min)
    if not has_nan:
        top_k = tl.load(top_k_ptr + row)
        top_p = tl.load(top_p_ptr + row)
        tau = _kept_threshold(row_ptr, V, top_k, top_p, x_min, x_max, x_max, 1.0, False, BLOCK)
    for start in range(0, V, BLOCK):
        index, in_row, x = _load_tile(row_ptr, start, V, BLOCK)
        # temperature 1 and min-p 0, as the reference: z = x, z_max = x_max
        kept = _logit_kept(x, _orderable_key(x), tau, x, x_max, 0.0)
        out = tl.where(has_nan, float("nan"), tl.where(kept, x, float("-inf")))
        tl.store(out_row_ptr + index, out.to(out_ptr.dtype.element_ty), mask=in_row)


def mask_logits(logits, top_k, top_p, out) -> None:
    """``out [B, V]`` = ``logits [B, V]`` with every token outside top-k -> top-p set to -inf.

    ``top_k`` int32 ``[B]``, ``top_p`` f32 ``[B]``; rows containing NaN are written all-NaN;
    ``out`` has the dtype of ``logits`` (float32 / float16 / bfloat16).
    """
    batch, vocab = logits.shape
    block = _row_block(vocab)
    _mask_logits_kernel[(batch,)](logits, top_k, top_p, out, vocab, BLOCK=block, num_warps=_row_warps(block))


# ---------------------------------------------------------------------------------------------
# top_k_top_p_renorm
# ---------------------------------------------------------------------------------------------


@triton.jit
def _top_k_top_p_renorm_kernel(probs_ptr, top_k_ptr, top_p_ptr, out_ptr, V, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    row_ptr = probs_ptr + row.to(tl.int64) * V
    out_row_ptr = out_ptr + row.to(tl.int64) * V
    p_max, _, p_min, has_nan, _ = _row_summary(row_ptr, V, BLOCK)
    tau = _orderable_key(p_min)
    if not has_nan:
        top_k = tl.load(top_k_ptr + row)
        top_p = tl.load(top_p_ptr + row)
        tau = _kept_threshold(row_ptr, V, top_k, top_p, p_min, p_max, 0.0, 1.0, True, BLOCK)
    lane_sum = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        index, in_row, p = _load_tile(row_ptr, start, V, BLOCK)
        lane_sum += tl.where(_prob_kept(p, tau), p, 0.0)
    kept_sum = tl.sum(lane_sum, axis=0)
    for start in range(0, V, BLOCK):
        index, in_row, p = _load_tile(row_ptr, start, V, BLOCK)
        kept = tl.where(_prob_kept(p, tau), p, 0.0)
        # divide the zeros too: an empty kept set gives 0 / 0 = NaN everywhere, as the reference
        out = tl.where(has_nan, float("nan"), tl.div_rn(kept, kept_sum))
        tl.store(out_row_ptr + index, out.to(out_ptr.dtype.element_ty), mask=in_row)


def top_k_top_p_renorm(probs, top_k, top_p, out) -> None:
    """``out [B, V]`` = ``probs [B, V]`` restricted to top-k -> top-p and renormalised (0 elsewhere).

    ``top_k`` int32 ``[B]``, ``top_p`` f32 ``[B]``; rows containing NaN are written all-NaN;
    ``out`` has the dtype of ``probs`` (float32 / float16 / bfloat16).
    """
    batch, vocab = probs.shape
    block = _row_block(vocab)
    _top_k_top_p_renorm_kernel[(batch,)](probs, top_k, top_p, out, vocab, BLOCK=block, num_warps=_row_warps(block))


# ---------------------------------------------------------------------------------------------
# apply_penalties
# ---------------------------------------------------------------------------------------------


@triton.jit
def _apply_penalties_kernel(
    logits_ptr, counts_ptr, repetition_ptr, frequency_ptr, presence_ptr, out_ptr, V, BLOCK: tl.constexpr
):
    row = tl.program_id(0)
    index = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = index < V
    base = row.to(tl.int64) * V
    x = tl.load(logits_ptr + base + index, mask=in_row, other=0.0).to(tl.float32)
    count = tl.load(counts_ptr + base + index, mask=in_row, other=0)
    repetition = tl.load(repetition_ptr + row)
    frequency = tl.load(frequency_ptr + row)
    presence = tl.load(presence_ptr + row)
    scaled = tl.where(x > 0.0, tl.div_rn(x, repetition), x * repetition)
    penalised = scaled - frequency * count.to(tl.float32) - presence
    out = tl.where(count > 0, penalised, x)
    # each element is read before it is written by the same program, so out may alias logits
    tl.store(out_ptr + base + index, out.to(out_ptr.dtype.element_ty), mask=in_row)


def apply_penalties(logits, token_counts, repetition, frequency, presence, out) -> None:
    """``out [B, V]`` = ``logits [B, V]`` penalised for the tokens with ``token_counts [B, V]`` > 0.

    ``token_counts`` int32; ``repetition`` / ``frequency`` / ``presence`` f32 ``[B]``; ``out`` has
    the dtype of ``logits`` and may be ``logits`` itself.
    """
    batch, vocab = logits.shape
    grid = (batch, triton.cdiv(vocab, PENALTY_BLOCK))
    # no FMA contraction: the reference rounds frequency * count before subtracting it, and one
    # rounding step of difference can flip a float16 / bfloat16 output ulp
    _apply_penalties_kernel[grid](
        logits,
        token_counts,
        repetition,
        frequency,
        presence,
        out,
        vocab,
        BLOCK=PENALTY_BLOCK,
        num_warps=4,
        enable_fp_fusion=False,
    )
