"""Triton kernels of the ``denoise`` op family: ``denoise_propose`` and ``denoise_select``.

Semantics are those of decodekit/reference/denoise.py (the spec); the raw functions follow the
backend contract (see the reference's module docstring): validated contiguous
arguments on one device, outputs preallocated, no host-device synchronisation.

``denoise_propose`` runs one program per window position and reads its logits row exactly once,
in BLOCK-wide tiles. Each lane keeps running statistics and the lanes are merged once at the end:

* the first index of the maximum (greedy proposal) and the NaN / +inf flags;
* the Gumbel-max draw over the kept set (sampled rows only: a separate loop, so greedy rows never
  run Philox); a tile whose largest ``z`` plus the largest possible Gumbel noise cannot beat the
  best score so far skips its Philox rounds, which never changes the winner;
* the confidence distribution's online softmax: max ``m``, ``Z = sum e^(y-m)``,
  ``S = sum e^(y-m) (y-m)`` rescaled when ``m`` grows, and the top-2 entries (for ``margin``).

``denoise_select`` runs one program per batch row. Ranks inside a group (row or span) are counted
pairwise over tiles of the window, ``r_j = #{i : c_i > c_j or (c_i == c_j and i < j)}``: O(W^2)
compares, which for windows of a few thousand positions costs less than reading one logits row.
Commits are decided for the whole row before any token is written, because eligibility reads the
canvas that the writes change.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from decodekit.reference.denoise import ConfMode, SelectMode
from decodekit.reference.rng import Stream

from .rng import MAX_GUMBEL_NOISE

PROPOSAL_TOKEN = tl.constexpr(int(Stream.PROPOSAL_TOKEN))
CONFIDENCE_NOISE = tl.constexpr(int(Stream.CONFIDENCE_NOISE))
TRANSFER_COIN = tl.constexpr(int(Stream.TRANSFER_COIN))
PROB = tl.constexpr(int(ConfMode.PROB))
MARGIN = tl.constexpr(int(ConfMode.MARGIN))
NEG_ENTROPY = tl.constexpr(int(ConfMode.NEG_ENTROPY))
RANDOM = tl.constexpr(int(ConfMode.RANDOM))
TOPK = tl.constexpr(int(SelectMode.TOPK))
THRESHOLD = tl.constexpr(int(SelectMode.THRESHOLD))
FACTOR = tl.constexpr(int(SelectMode.FACTOR))
BERNOULLI = tl.constexpr(int(SelectMode.BERNOULLI))

# Vocabulary tile: 2048 lanes over 8 warps keep enough loads in flight on a GPU; on CPU tensors (the
# interpreter, tests) small tiles make every test row span several tiles.
GPU_BLOCK = 2048
INTERPRETER_BLOCK = 128
MIN_BLOCK = 16
SELECT_TILE = 64


@triton.jit
def _philox_uniform(seed, offset, stream, counter):
    """Uniforms of the contract for uint32 counters ``counter`` (c0)."""
    zero = counter * 0
    c1 = zero + offset.to(tl.uint32)
    c2 = zero + tl.cast(stream, tl.uint32)
    c3 = zero + (offset >> 32).to(tl.uint32)
    word0, _, _, _ = tl.philox(seed, counter, c1, c2, c3)
    return tl.uint_to_uniform_float(word0)


@triton.jit
def _load_row_tile(row_ptr, start, V, suppress_ptr, num_suppress, BLOCK: tl.constexpr):
    """Indices, in-row mask and float32 values (suppressed ids and lanes past V read -inf)."""
    index = start + tl.arange(0, BLOCK)
    in_row = index < V
    x = tl.load(row_ptr + index, mask=in_row, other=float("-inf")).to(tl.float32)
    for s in range(num_suppress):
        x = tl.where(index == tl.load(suppress_ptr + s), float("-inf"), x)
    return index, in_row, x


@triton.jit
def _online_update(m, Z, S, t1, t2, y, CONF: tl.constexpr):
    """Fold tile values ``y`` (-inf = absent) into per-lane softmax / entropy / top-2 state.

    Every difference is taken against a finite stand-in for the max, so absent entries never form
    -inf - -inf or 0 * -inf (NaN) even in lanes that masks later discard. Only the statistics the
    confidence ``CONF`` reads are kept up to date (the rest cost ALU time on a memory-bound loop).
    """
    m_new = tl.maximum(m, y)
    finite = m_new > float("-inf")
    ms = tl.where(finite, m_new, 0.0)
    scale = tl.where(finite, tl.exp(m - ms), 1.0)
    e = tl.exp(y - ms)  # 0 where absent
    if CONF == NEG_ENTROPY:
        shift = Z * (tl.where(Z > 0.0, m, ms) - ms)
        S = scale * (S + shift) + e * tl.where(y > float("-inf"), y - ms, 0.0)
    Z = Z * scale + e
    if CONF == MARGIN:
        t2 = tl.maximum(tl.minimum(t1, y), t2)
        t1 = tl.maximum(t1, y)
    return m_new, Z, S, t1, t2


@triton.jit
def _merge_lanes(m, Z, S, t1, t2, BLOCK: tl.constexpr):
    """Row (max, Z, S, top-1, top-2) from per-lane state; top-2 counts duplicates across lanes."""
    M = tl.max(m, axis=0)
    Ms = tl.where(M > float("-inf"), M, 0.0)  # an all -inf row is invalid anyway
    w = tl.exp(m - Ms)
    Z_row = tl.sum(Z * w, axis=0)
    S_row = tl.sum(w * (S + Z * (tl.where(Z > 0.0, m, Ms) - Ms)), axis=0)
    T1 = tl.max(t1, axis=0)
    lane = tl.arange(0, BLOCK)
    top_lane = tl.min(tl.where(t1 == T1, lane, BLOCK), axis=0)
    T2 = tl.maximum(tl.max(t2, axis=0), tl.max(tl.where(lane != top_lane, t1, float("-inf")), axis=0))
    return M, Z_row, S_row, T1, T2


@triton.jit
def _greedy_scan(row_ptr, V, suppress_ptr, num_suppress, CONF: tl.constexpr, BLOCK: tl.constexpr):
    """Greedy row: first argmax, flags and the untempered distribution's statistics."""
    lane_max = tl.full([BLOCK], float("-inf"), tl.float32)
    lane_first = tl.zeros([BLOCK], tl.int32)
    bad = tl.zeros([BLOCK], tl.int32)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    Z = tl.zeros([BLOCK], tl.float32)
    S = tl.zeros([BLOCK], tl.float32)
    t1 = tl.full([BLOCK], float("-inf"), tl.float32)
    t2 = tl.full([BLOCK], float("-inf"), tl.float32)
    for start in range(0, V, BLOCK):
        index, in_row, x = _load_row_tile(row_ptr, start, V, suppress_ptr, num_suppress, BLOCK)
        newer = x > lane_max
        lane_first = tl.where(newer, index, lane_first)
        lane_max = tl.where(newer, x, lane_max)
        bad += ((x != x) | (x == float("inf"))).to(tl.int32)
        m, Z, S, t1, t2 = _online_update(m, Z, S, t1, t2, x, CONF)
    x_max = tl.max(lane_max, axis=0)
    token = tl.min(tl.where(lane_max == x_max, lane_first, V), axis=0)
    invalid = (tl.sum(bad, axis=0) > 0) | (x_max == float("-inf"))
    M, Z_row, S_row, T1, T2 = _merge_lanes(m, Z, S, t1, t2, BLOCK)
    return token, invalid, x_max, M, Z_row, S_row, T1, T2


@triton.jit
def _sampled_scan(row_ptr, V, suppress_ptr, num_suppress, temperature, floor, seed, offset, pos,
                  CONF: tl.constexpr, TEMPERED: tl.constexpr, BLOCK: tl.constexpr):
    """Sampled row: Gumbel-max draw over the kept set, flags and D's statistics."""
    lane_score = tl.full([BLOCK], float("-inf"), tl.float32)
    lane_index = tl.zeros([BLOCK], tl.int32) + V  # V: no kept token in this lane yet
    lane_zmax = tl.full([BLOCK], float("-inf"), tl.float32)
    bad = tl.zeros([BLOCK], tl.int32)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    Z = tl.zeros([BLOCK], tl.float32)
    S = tl.zeros([BLOCK], tl.float32)
    t1 = tl.full([BLOCK], float("-inf"), tl.float32)
    t2 = tl.full([BLOCK], float("-inf"), tl.float32)
    base = pos * V  # c0 = pos * V + v in 32 bits: the ops layer guarantees L * V <= 2**32
    best = float("-inf")
    for start in range(0, V, BLOCK):
        index, in_row, x = _load_row_tile(row_ptr, start, V, suppress_ptr, num_suppress, BLOCK)
        bad += ((x != x) | (x == float("inf"))).to(tl.int32)
        z = tl.div_rn(x, temperature)
        kept = (x > float("-inf")) & (x >= floor)
        zk = tl.where(kept, z, float("-inf"))
        lane_zmax = tl.maximum(lane_zmax, zk)
        if TEMPERED:
            m, Z, S, t1, t2 = _online_update(m, Z, S, t1, t2, zk, CONF)
        else:
            m, Z, S, t1, t2 = _online_update(m, Z, S, t1, t2, x, CONF)
        tile_zmax = tl.max(zk, axis=0)
        if tile_zmax + MAX_GUMBEL_NOISE >= best:
            u = _philox_uniform(seed, offset, PROPOSAL_TOKEN, (base + index).to(tl.uint32))
            score = z - tl.log(-tl.log(u))  # u == 0 gives -inf: wins only if every kept u is 0
            take = kept & ((score > lane_score) | (lane_index == V))
            lane_score = tl.where(take, score, lane_score)
            lane_index = tl.where(take, index, lane_index)
            best = tl.max(tl.where(lane_index < V, lane_score, float("-inf")), axis=0)
    best_score = tl.max(tl.where(lane_index < V, lane_score, float("-inf")), axis=0)
    token = tl.min(tl.where((lane_index < V) & (lane_score == best_score), lane_index, V), axis=0)
    z_max = tl.max(lane_zmax, axis=0)
    invalid = (tl.sum(bad, axis=0) > 0) | (z_max == float("-inf")) | (z_max == float("inf")) | (token >= V)
    M, Z_row, S_row, T1, T2 = _merge_lanes(m, Z, S, t1, t2, BLOCK)
    return token, invalid, M, Z_row, S_row, T1, T2


@triton.jit
def _propose_kernel(
    logits_ptr, temperature_ptr, floor_ptr, suppress_ptr, seed_ptr, offset_ptr, window_start_ptr,
    proposal_ptr, confidence_ptr, W, V, num_suppress,
    CONF: tl.constexpr, TEMPERED: tl.constexpr, HAS_FLOOR: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)  # b * W + j
    b = row // W
    j = row % W
    row_ptr = logits_ptr + row.to(tl.int64) * V
    temperature = tl.load(temperature_ptr + b)
    seed = tl.load(seed_ptr + b)
    offset = tl.load(offset_ptr + b)
    pos = tl.load(window_start_ptr + b) + j
    if temperature > 0.0:
        floor = float("-inf")
        if HAS_FLOOR:
            floor = tl.load(floor_ptr + row)
        token, invalid, M, Z, S, T1, T2 = _sampled_scan(
            row_ptr, V, suppress_ptr, num_suppress, temperature, floor, seed, offset, pos, CONF, TEMPERED, BLOCK
        )
        x_token = tl.load(row_ptr + token, mask=token < V, other=0.0).to(tl.float32)
        y_token = x_token
        if TEMPERED:
            y_token = tl.div_rn(x_token, temperature)
    else:
        token, invalid, y_token, M, Z, S, T1, T2 = _greedy_scan(row_ptr, V, suppress_ptr, num_suppress, CONF, BLOCK)
    if CONF == PROB:
        conf = tl.exp(y_token - M) / Z
    elif CONF == MARGIN:
        conf = (tl.exp(T1 - M) - tl.exp(T2 - M)) / Z
    elif CONF == NEG_ENTROPY:
        conf = S / Z - tl.log(Z)
    else:
        conf = _philox_uniform(seed, offset, CONFIDENCE_NOISE, pos.to(tl.uint32))
    tl.store(proposal_ptr + row, tl.where(invalid, -1, token.to(tl.int64)))
    tl.store(confidence_ptr + row, tl.where(invalid, float("nan"), conf))


def _vocab_block(vocab: int, device: torch.device) -> int:
    cap = GPU_BLOCK if device.type == "cuda" else INTERPRETER_BLOCK
    return min(cap, max(MIN_BLOCK, triton.next_power_of_2(vocab)))


def denoise_propose(logits, temperature, keep_floor, suppress_ids, seed, offset, window_start, conf_mode, tempered,
                    proposal_out, confidence_out) -> None:
    """Proposal and confidence of every window position of ``logits [B, W, V]`` (f32/f16/bf16).

    ``temperature`` f32 ``[B]`` (0 = greedy); ``keep_floor`` f32 ``[B, W]`` or empty;
    ``suppress_ids`` int64 ``[S]``; ``seed``/``offset``/``window_start`` int64 ``[B]``;
    ``conf_mode`` a ConfMode code; ``tempered`` 0/1. Writes ``proposal_out`` int64 ``[B, W]`` and
    ``confidence_out`` f32 ``[B, W]``.
    """
    batch, width, vocab = logits.shape
    block = _vocab_block(vocab, logits.device)
    has_floor = keep_floor.numel() > 0
    _propose_kernel[(batch * width,)](
        logits, temperature, keep_floor if has_floor else temperature, suppress_ids, seed, offset, window_start,
        proposal_out, confidence_out, width, vocab, suppress_ids.numel(),
        CONF=int(conf_mode), TEMPERED=bool(tempered), HAS_FLOOR=has_floor, BLOCK=block,
        num_warps=8 if block >= 1024 else 4,
    )


# ---------------------------------------------------------------------------------------------
# denoise_select
# ---------------------------------------------------------------------------------------------


@triton.jit
def _eligibility(tokens_row, proposal_row, span_row, j, W, L, ws, bs, be, mask_id, S, HAS_SPANS: tl.constexpr):
    """(eligible, canvas position, group id) of window rows ``j``."""
    pos = ws + j
    in_window = j < W
    inside = in_window & (pos >= 0) & (pos < L)
    tok = tl.load(tokens_row + pos, mask=inside, other=-1)
    prop = tl.load(proposal_row + j, mask=in_window, other=-1)
    eligible = inside & (tok == mask_id) & (pos >= bs) & (pos < be) & (prop >= 0)
    group = tl.zeros_like(j)
    if HAS_SPANS:
        group = tl.load(span_row + pos, mask=inside, other=-1)
        eligible = eligible & (group >= 0) & (group < S)
    return eligible, pos, group


@triton.jit
def _ranks(conf_row, tokens_row, proposal_row, span_row, j, c_j, group_j, W, L, ws, bs, be, mask_id, S,
           HAS_SPANS: tl.constexpr, TILE: tl.constexpr):
    """0-based rank of window rows ``j`` in their group: (confidence desc, position asc)."""
    rank = tl.zeros([TILE], tl.int32)
    for i_start in range(0, W, TILE):
        i = i_start + tl.arange(0, TILE)
        eligible_i, _, group_i = _eligibility(tokens_row, proposal_row, span_row, i, W, L, ws, bs, be, mask_id, S,
                                              HAS_SPANS)
        c_i = tl.load(conf_row + i, mask=i < W, other=float("nan"))
        before = (c_i[:, None] > c_j[None, :]) | ((c_i[:, None] == c_j[None, :]) & (i[:, None] < j[None, :]))
        same = eligible_i[:, None] & (group_i[:, None] == group_j[None, :])
        rank += tl.sum((before & same).to(tl.int32), axis=0)
    return rank


@triton.jit
def _decide(conf_row, tokens_row, proposal_row, span_row, j, W, L, ws, bs, be, mask_id, S, k_row, tau, factor,
            p_transfer, seed, offset, cut, MODE: tl.constexpr, HAS_SPANS: tl.constexpr, TILE: tl.constexpr):
    """(commit, rank, eligible, confidence) of window rows ``j``; ``cut`` is FACTOR's N."""
    eligible, pos, group = _eligibility(tokens_row, proposal_row, span_row, j, W, L, ws, bs, be, mask_id, S,
                                        HAS_SPANS)
    c_j = tl.load(conf_row + j, mask=j < W, other=float("nan"))
    rank = tl.zeros_like(j)
    if MODE != BERNOULLI:
        rank = _ranks(conf_row, tokens_row, proposal_row, span_row, j, c_j, group, W, L, ws, bs, be, mask_id, S,
                      HAS_SPANS, TILE)
    if MODE == TOPK:
        k = tl.load(k_row + tl.minimum(tl.maximum(group, 0), S - 1), mask=eligible, other=0)
        commit = rank < k
    elif MODE == THRESHOLD:
        commit = (rank == 0) | (c_j >= tau)
    elif MODE == FACTOR:
        commit = rank < cut
    else:
        u = _philox_uniform(seed, offset, TRANSFER_COIN, pos.to(tl.uint32))
        commit = u < p_transfer
    return commit & eligible, rank, eligible, c_j


@triton.jit
def _select_kernel(
    tokens_ptr, proposal_ptr, confidence_ptr, window_start_ptr, block_start_ptr, block_end_ptr, k_ptr, tau_ptr,
    factor_ptr, p_transfer_ptr, span_ptr, seed_ptr, offset_ptr, committed_ptr, num_committed_ptr,
    W, L, S, mask_id, MODE: tl.constexpr, HAS_SPANS: tl.constexpr, TILE: tl.constexpr,
):
    b = tl.program_id(0)
    tokens_row = tokens_ptr + b.to(tl.int64) * L
    committed_row = committed_ptr + b.to(tl.int64) * L
    span_row = span_ptr + b.to(tl.int64) * L
    proposal_row = proposal_ptr + b.to(tl.int64) * W
    conf_row = confidence_ptr + b.to(tl.int64) * W
    k_row = k_ptr + b.to(tl.int64) * S
    ws = tl.load(window_start_ptr + b)
    bs = tl.load(block_start_ptr + b)
    be = tl.load(block_end_ptr + b)
    tau = tl.load(tau_ptr + b)
    factor = tl.load(factor_ptr + b).to(tl.float64)
    p_transfer = tl.load(p_transfer_ptr + b)
    seed = tl.load(seed_ptr + b)
    offset = tl.load(offset_ptr + b)

    cut = W + 1
    if MODE == FACTOR:  # N = the smallest rank >= 1 whose confidence is below its threshold
        for j_start in range(0, W, TILE):
            j = j_start + tl.arange(0, TILE)
            _, rank, eligible, c_j = _decide(conf_row, tokens_row, proposal_row, span_row, j, W, L, ws, bs, be,
                                             mask_id, S, k_row, tau, factor, p_transfer, seed, offset, cut, MODE,
                                             HAS_SPANS, TILE)
            threshold = (1.0 - factor / (rank + 2).to(tl.float64)).to(tl.float32)
            fails = eligible & (rank >= 1) & (c_j < threshold)
            cut = tl.minimum(cut, tl.min(tl.where(fails, rank, W + 1), axis=0))

    # canvas positions outside the window are never committed
    for p_start in range(0, L, TILE):
        p = p_start + tl.arange(0, TILE)
        outside = (p < L) & ((p < ws) | (p >= ws + W))
        tl.store(committed_row + p, tl.zeros([TILE], tl.int1), mask=outside)
    # pass 1: decide every commit while the canvas is unchanged; record it in committed_out
    count = 0
    for j_start in range(0, W, TILE):
        j = j_start + tl.arange(0, TILE)
        commit, _, _, _ = _decide(conf_row, tokens_row, proposal_row, span_row, j, W, L, ws, bs, be, mask_id, S,
                                  k_row, tau, factor, p_transfer, seed, offset, cut, MODE, HAS_SPANS, TILE)
        pos = ws + j
        tl.store(committed_row + pos, commit, mask=(j < W) & (pos >= 0) & (pos < L))
        count += tl.sum(commit.to(tl.int32), axis=0)
    tl.store(num_committed_ptr + b, count)
    tl.debug_barrier()  # pass 2 reads flags other threads wrote
    # pass 2: write the committed proposals
    for j_start in range(0, W, TILE):
        j = j_start + tl.arange(0, TILE)
        pos = ws + j
        inside = (j < W) & (pos >= 0) & (pos < L)
        commit = tl.load(committed_row + pos, mask=inside, other=0) != 0
        prop = tl.load(proposal_row + j, mask=inside & commit, other=0)
        tl.store(tokens_row + pos, prop, mask=inside & commit)


def denoise_select(tokens, proposal, confidence, window_start, block_start, block_end, mask_id, select_mode, k, tau,
                   factor, p_transfer, span_ids, seed, offset, committed_out, num_committed_out) -> None:
    """Commit the selected masked positions of ``tokens [B, L]`` int64 in place.

    ``proposal`` int64 / ``confidence`` f32 ``[B, W]``; ``window_start``/``block_start``/
    ``block_end``/``seed``/``offset`` int64 ``[B]``; ``k`` int32 ``[B, S]``; ``tau``/``factor``/
    ``p_transfer`` f32 ``[B]``; ``span_ids`` int32 ``[B, L]`` or empty. Writes ``committed_out``
    bool ``[B, L]`` and ``num_committed_out`` int32 ``[B]``.
    """
    batch, length = tokens.shape
    width = proposal.shape[1]
    has_spans = span_ids.numel() > 0
    _select_kernel[(batch,)](
        tokens, proposal, confidence, window_start, block_start, block_end, k, tau, factor, p_transfer,
        span_ids if has_spans else k, seed, offset, committed_out, num_committed_out,
        width, length, k.shape[1], int(mask_id),
        MODE=int(select_mode), HAS_SPANS=has_spans, TILE=SELECT_TILE, num_warps=4,
    )
