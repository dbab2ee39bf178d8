"""Triton kernels of the ``paged_kv`` op family: kv_append, kv_copy_blocks, paged_attention.

Semantics are those of decodekit/reference/paged_kv.py (the spec); the raw functions below follow
the backend contract: arguments already validated, contiguous and on one device, outputs
preallocated and written in place, no host-device synchronisation. Every kernel nevertheless
stays in bounds for ANY index values (the ops layer's value checks can be switched off), so all
gathers are masked loads.

The cache is NHD, ``[NB, BS, Hkv, D]``; offsets are int64 because ``block * BS * Hkv * D``
overflows int32 for caches above 2**31 elements.

paged_attention, one program per (query tile, kv head, kv split):

* A query tile packs BLOCK_Q query rows of one request times the ``group = Hq / Hkv`` query heads
  that read the same kv head into BLOCK_M = BLOCK_Q * group (padded) rows, so every K/V tile is
  loaded once for the whole group and both products are tensor-core ``tl.dot``s even for decode
  (q_len 1: BLOCK_M = 16 covers a group of up to 16 heads).
* Query tiles of all requests are numbered without a host sync: request b owns tiles
  ``cu_seqlens_q[b] // BLOCK_Q + b`` onwards (at most ``cdiv(q_len, BLOCK_Q)`` of them, which fit
  before request b+1's first tile), so ``T // BLOCK_Q + B`` programs cover any batch and each
  finds its request by a binary search over ``cu_seqlens_q``. Tiles run last-first, so the
  causal prefill tiles that see the most keys start first.
* Keys are streamed in BLOCK_N tiles; each key's block id is looked up in the block table, so any
  block size works and a tile may span several blocks. Online softmax in base 2 (the scale is
  folded into ``scale * log2(e)``), fp32 statistics and accumulator.
* Causal tiles stop at their last query's position; custom masks are gathered only for the keys
  of the request's own queries (the prefix is always visible).
* Split-KV: a request with at most SPLIT_MAX_Q queries (decode, speculative verification) has
  its keys cut at fixed multiples of ``SPLIT_KEYS`` keys; each split's program writes an fp32
  partial output with its log-sum-exp and a second kernel merges the splits in split order.
  Longer requests fill the GPU with their query tiles and are never split.
* Batch invariance (DESIGN.md): the tiling depends on static shapes only (group, head_dim,
  dtype, mask mode) and the split boundaries on the request's own q_len and kv_len, so a row's
  arithmetic never depends on which other requests share the launch. A request whose keys fit
  one split gets the same bits through the split path (one partial, weight 1) as without it.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

CAUSAL = tl.constexpr(0)
FULL = tl.constexpr(1)
CUSTOM = tl.constexpr(2)

LOG2_E = math.log2(math.e)

# elements moved per program by the copy kernels: 4096 x 2 bytes = 8 KiB per tensor per program
# keeps enough loads in flight without a per-element index computation dominating
COPY_BLOCK = 4096
# smallest query tile height that tl.dot accepts (the M dimension of an MMA)
MIN_BLOCK_M = 16
# Split-KV sizing (not yet tuned on a GPU). Keys per split are a constant, never a share of the
# batch: a split count that followed the batch (programs vs SMs) would change the last bits of a
# request's output with its neighbours. 512 keys read 256 KiB of K/V per program at D = 128 fp16,
# so the fp32 partial result (D + 1 floats per query head) and its merge stay below 1% of the
# traffic, and decode still fills an H100: B = 1 at context 32768 with 8 kv heads makes 512
# programs (~4 per SM), B = 32 at context 4096 makes 2048.
SPLIT_KEYS = 512
# Requests with at most this many queries split their keys (decode, speculative verification);
# longer ones have enough query tiles of their own. Split partials live in b * SPLIT_MAX_Q + i
# slots when that is smaller than indexing them by row.
SPLIT_MAX_Q = 16
_SPLIT_MAX_Q = tl.constexpr(SPLIT_MAX_Q)  # the same limit inside kernels (jit globals must be constexpr)
# The interpreter has no SMs: split every key tile, so the tiny CPU test contexts take the split
# path (tens of keys) and short requests the single pass.
INTERPRETER_SPLIT_KEYS = 16


# ---------------------------------------------------------------------------------------------
# kv_append
# ---------------------------------------------------------------------------------------------


@triton.jit
def _kv_append_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, num_slots, row_elems, BLOCK: tl.constexpr):
    token = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    # slot < 0 is padding, slot >= NB * BS is out of range: both skipped
    write = (cols < row_elems) & (slot >= 0) & (slot < num_slots)
    src = token.to(tl.int64) * row_elems + cols
    dst = slot * row_elems + cols
    tl.store(k_cache_ptr + dst, tl.load(k_ptr + src, mask=write), mask=write)
    tl.store(v_cache_ptr + dst, tl.load(v_ptr + src, mask=write), mask=write)


def kv_append(k, v, k_cache, v_cache, slot_mapping) -> None:
    """Scatter ``k, v [T, Hkv, D]`` into ``k_cache, v_cache [NB, BS, Hkv, D]`` at ``slot_mapping [T]``.

    ``slot_mapping`` int64; slots outside ``[0, NB * BS)`` (``-1`` = padding) are skipped; a slot
    repeated within one call gets one of its writes (unspecified which).
    """
    tokens = k.shape[0]
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    row_elems = num_kv_heads * head_dim
    if tokens == 0 or row_elems == 0:
        return
    block = min(COPY_BLOCK, triton.next_power_of_2(row_elems))
    grid = (tokens, triton.cdiv(row_elems, block))
    _kv_append_kernel[grid](
        k, v, k_cache, v_cache, slot_mapping, num_blocks * block_size, row_elems, BLOCK=block, num_warps=4
    )


# ---------------------------------------------------------------------------------------------
# kv_copy_blocks
# ---------------------------------------------------------------------------------------------


@triton.jit
def _kv_copy_blocks_kernel(k_cache_ptr, v_cache_ptr, src_ptr, dst_ptr, num_blocks, block_elems, BLOCK: tl.constexpr):
    pair = tl.program_id(0)
    layer = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    src = tl.load(src_ptr + pair).to(tl.int64)
    dst = tl.load(dst_ptr + pair).to(tl.int64)
    copy = (cols < block_elems) & (src >= 0) & (src < num_blocks) & (dst >= 0) & (dst < num_blocks)
    src_off = (layer * num_blocks + src) * block_elems + cols
    dst_off = (layer * num_blocks + dst) * block_elems + cols
    tl.store(k_cache_ptr + dst_off, tl.load(k_cache_ptr + src_off, mask=copy), mask=copy)
    tl.store(v_cache_ptr + dst_off, tl.load(v_cache_ptr + src_off, mask=copy), mask=copy)


def kv_copy_blocks(k_cache, v_cache, src, dst) -> None:
    """Block ``dst[p]`` of every layer of ``k_cache, v_cache [L, NB, BS, Hkv, D]`` := block ``src[p]``.

    ``src, dst`` int32 ``[P]``; pairs with an id outside ``[0, NB)`` are skipped. No dst repeats or
    equals a src (ops-layer rule), so programs never read what another one writes.
    """
    pairs = src.shape[0]
    layers, num_blocks = k_cache.shape[:2]
    block_elems = math.prod(k_cache.shape[2:])
    if pairs == 0 or layers == 0 or block_elems == 0:
        return
    block = min(COPY_BLOCK, triton.next_power_of_2(block_elems))
    grid = (pairs, layers, triton.cdiv(block_elems, block))
    _kv_copy_blocks_kernel[grid](k_cache, v_cache, src, dst, num_blocks, block_elems, BLOCK=block, num_warps=4)


# ---------------------------------------------------------------------------------------------
# paged_attention
# ---------------------------------------------------------------------------------------------


@triton.jit
def _request_of_tile(cu_seqlens_q_ptr, tile, num_requests, BLOCK_Q: tl.constexpr):
    """The last request b whose first query tile ``cu_seqlens_q[b] // BLOCK_Q + b`` is <= ``tile``."""
    lo = tile * 0
    hi = lo + num_requests - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        first_tile = tl.load(cu_seqlens_q_ptr + mid) // BLOCK_Q + mid
        after = first_tile <= tile
        lo = tl.where(after, mid, lo)
        hi = tl.where(after, hi, mid - 1)
    return lo


@triton.jit
def _query_tile(cu_seqlens_q_ptr, num_requests, num_rows, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_Q: tl.constexpr):
    """Request, its q_len and first row, and per tile row: query index i, query head offset, row, valid."""
    # last tile first: causal prefill tiles late in a request see the most keys, and starting
    # the longest programs first keeps them out of the final wave
    tile = tl.num_programs(0) - 1 - tl.program_id(0)
    request = _request_of_tile(cu_seqlens_q_ptr, tile, num_requests, BLOCK_Q)
    q_start = tl.load(cu_seqlens_q_ptr + request)
    q_len = tl.load(cu_seqlens_q_ptr + request + 1) - q_start
    q_tile = tile - (q_start // BLOCK_Q + request)
    m = tl.arange(0, BLOCK_M)
    i = q_tile * BLOCK_Q + m // GROUP
    row = q_start + i
    row_ok = (m < BLOCK_Q * GROUP) & (q_tile >= 0) & (i < q_len) & (row >= 0) & (row < num_rows)
    return request, q_len, q_tile, i, m % GROUP, row, row_ok


@triton.jit
def _key_range(seq_lens_ptr, request, q_len, q_tile, max_blocks, BLOCK_SIZE: tl.constexpr, MASK_MODE: tl.constexpr,
               BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr):
    """prefix, the end of the keys any query of the tile may see, and their number of key tiles."""
    kv_len = tl.load(seq_lens_ptr + request)
    prefix = kv_len - q_len
    kv_end = tl.minimum(kv_len, max_blocks * BLOCK_SIZE)
    if MASK_MODE == CAUSAL:
        # no query of this tile sees past the position of its last query
        last_i = tl.minimum(q_tile * BLOCK_Q + BLOCK_Q, q_len) - 1
        kv_end = tl.minimum(kv_end, prefix + last_i + 1)
    return prefix, kv_end, tl.cdiv(tl.maximum(kv_end, 0), BLOCK_N)


@triton.jit
def _split_slot(request, i, row, COMPACT: tl.constexpr):
    """Slot of a split request's query in the partial results (see SPLIT_MAX_Q)."""
    if COMPACT:
        return request.to(tl.int64) * _SPLIT_MAX_Q + i
    return row.to(tl.int64)


# per-batch integers change from step to step; Triton's default specialisation (== 1, divisible by
# 16) would compile new variants in the middle of a generation for no gain
@triton.jit(do_not_specialize=["num_requests", "num_rows", "mask_numel", "num_slots"])
def _paged_attention_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_table_ptr,
    seq_lens_ptr,
    cu_seqlens_q_ptr,
    custom_mask_ptr,
    mask_indptr_ptr,
    out_ptr,
    partial_ptr,
    lse_ptr,
    num_requests,
    num_rows,
    num_blocks,
    max_blocks,
    mask_numel,
    num_slots,
    scale_log2,
    NUM_Q_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    MASK_MODE: tl.constexpr,
    SPLIT: tl.constexpr,
    TILES_PER_SPLIT: tl.constexpr,
    COMPACT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    request, q_len, q_tile, i, head_in_group, row, row_ok = _query_tile(
        cu_seqlens_q_ptr, num_requests, num_rows, GROUP, BLOCK_M, BLOCK_Q
    )
    if (q_tile < 0) | (q_tile * BLOCK_Q >= q_len):
        return  # a tile number past the request's queries (the grid is an upper bound)

    prefix, kv_end, num_tiles = _key_range(seq_lens_ptr, request, q_len, q_tile, max_blocks, BLOCK_SIZE, MASK_MODE,
                                           BLOCK_Q, BLOCK_N)
    # split s of a split request owns key tiles [s * TILES_PER_SPLIT, (s + 1) * TILES_PER_SPLIT):
    # boundaries fixed by the request's own lengths; split 0 of any other request owns them all
    tile_begin = split * 0
    tile_end = num_tiles
    if SPLIT:
        if q_len <= _SPLIT_MAX_Q:
            tile_begin = split * TILES_PER_SPLIT
            tile_end = tl.minimum(tile_begin + TILES_PER_SPLIT, num_tiles)
        if (split > 0) & ((q_len > _SPLIT_MAX_Q) | (tile_begin >= num_tiles)):
            return  # no keys for this split; the merge reads only the splits that hold keys

    d = tl.arange(0, HEAD_DIM)
    head = kv_head * GROUP + head_in_group
    q_off = (row.to(tl.int64) * NUM_Q_HEADS + head) * HEAD_DIM
    q = tl.load(q_ptr + q_off[:, None] + d[None, :], mask=row_ok[:, None], other=0.0)

    block_row_ptr = block_table_ptr + request.to(tl.int64) * max_blocks
    if MASK_MODE == CUSTOM:
        mask_row = tl.load(mask_indptr_ptr + request) + i.to(tl.int64) * q_len
    causal_limit = prefix + i  # query i sees keys j <= prefix + i (causal)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    n = tl.arange(0, BLOCK_N)
    for key_tile in range(tile_begin, tile_end):
        j = key_tile * BLOCK_N + n
        in_range = j < kv_end
        block = tl.load(block_row_ptr + j // BLOCK_SIZE, mask=in_range, other=-1)
        key_ok = in_range & (block >= 0) & (block < num_blocks)
        kv_off = ((block.to(tl.int64) * BLOCK_SIZE + j % BLOCK_SIZE) * NUM_KV_HEADS + kv_head) * HEAD_DIM
        k = tl.load(k_cache_ptr + kv_off[None, :] + d[:, None], mask=key_ok[None, :], other=0.0)
        s = tl.dot(q, k, input_precision=DOT_PRECISION) * scale_log2

        visible = key_ok[None, :]
        if MASK_MODE == CAUSAL:
            visible = visible & (j[None, :] <= causal_limit[:, None])
        if MASK_MODE == CUSTOM:
            col = j - prefix  # column in the request's [q_len, q_len] mask; < 0 is the prefix
            at = mask_row[:, None] + col[None, :]
            lookup = (row_ok[:, None] & key_ok[None, :] & (col[None, :] >= 0) & (col[None, :] < q_len)
                      & (at >= 0) & (at < mask_numel))
            allowed = tl.load(custom_mask_ptr + at, mask=lookup, other=0) != 0
            visible = visible & ((col[None, :] < 0) | allowed)
        s = tl.where(visible, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # a row that has seen no visible key keeps m = -inf; subtracting 0 instead avoids NaN
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_ref[:, None])
        alpha = tl.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_cache_ptr + kv_off[:, None] + d[None, :], mask=key_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    seen = l_i > 0.0
    o = acc / tl.where(seen, l_i, 1.0)[:, None]  # rows with no visible key: 0 / 1 = zeros
    out_ptrs = out_ptr + q_off[:, None] + d[None, :]
    if SPLIT:
        if q_len <= _SPLIT_MAX_Q:
            stat = (split.to(tl.int64) * num_slots + _split_slot(request, i, row, COMPACT)) * NUM_Q_HEADS + head
            lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
            tl.store(lse_ptr + stat, lse, mask=row_ok)
            tl.store(partial_ptr + stat[:, None] * HEAD_DIM + d[None, :], o, mask=row_ok[:, None])
        else:
            tl.store(out_ptrs, o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        tl.store(out_ptrs, o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit(do_not_specialize=["num_requests", "num_rows", "num_slots"])
def _merge_splits_kernel(
    partial_ptr,
    lse_ptr,
    seq_lens_ptr,
    cu_seqlens_q_ptr,
    out_ptr,
    num_requests,
    num_rows,
    max_blocks,
    num_slots,
    NUM_Q_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    MASK_MODE: tl.constexpr,
    TILES_PER_SPLIT: tl.constexpr,
    COMPACT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # same tiling as the attention kernel, so exactly the rows it wrote partials for are merged
    kv_head = tl.program_id(1)
    request, q_len, q_tile, i, head_in_group, row, row_ok = _query_tile(
        cu_seqlens_q_ptr, num_requests, num_rows, GROUP, BLOCK_M, BLOCK_Q
    )
    if (q_tile < 0) | (q_tile * BLOCK_Q >= q_len) | (q_len > _SPLIT_MAX_Q):
        return  # not a split request: the attention kernel wrote its rows
    _, _, num_tiles = _key_range(seq_lens_ptr, request, q_len, q_tile, max_blocks, BLOCK_SIZE, MASK_MODE, BLOCK_Q,
                                 BLOCK_N)
    num_splits = tl.cdiv(num_tiles, TILES_PER_SPLIT)  # the splits that ran (a tile without keys: none)
    head = kv_head * GROUP + head_in_group
    d = tl.arange(0, HEAD_DIM)
    stat = _split_slot(request, i, row, COMPACT) * NUM_Q_HEADS + head
    # split s of a statistic lives s * slots * Hq elements further: step pointers (64-bit) instead
    # of multiplying indices, which could overflow int32
    split_stride = num_slots * NUM_Q_HEADS

    lse_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    lse_ptrs = lse_ptr + stat
    for _ in range(num_splits):
        lse_max = tl.maximum(lse_max, tl.load(lse_ptrs, mask=row_ok, other=float("-inf")))
        lse_ptrs += split_stride
    lse_ref = tl.where(lse_max == float("-inf"), 0.0, lse_max)

    weight_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    lse_ptrs = lse_ptr + stat
    partial_ptrs = partial_ptr + stat[:, None] * HEAD_DIM + d[None, :]
    for _ in range(num_splits):
        weight = tl.exp2(tl.load(lse_ptrs, mask=row_ok, other=float("-inf")) - lse_ref)
        acc += weight[:, None] * tl.load(partial_ptrs, mask=row_ok[:, None], other=0.0)
        weight_sum += weight
        lse_ptrs += split_stride
        partial_ptrs += split_stride * HEAD_DIM
    # a tile without keys merges no split: zeros, as the single pass writes
    o = acc / tl.where(weight_sum > 0.0, weight_sum, 1.0)[:, None]
    out_off = (row.to(tl.int64) * NUM_Q_HEADS + head) * HEAD_DIM
    tl.store(out_ptr + out_off[:, None] + d[None, :], o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def _split_keys(device: torch.device) -> int:
    """Keys per split of a split request: a constant of the device type, never of the batch."""
    return SPLIT_KEYS if device.type == "cuda" else INTERPRETER_SPLIT_KEYS


def _tiling(group: int, head_dim: int, dtype: torch.dtype):
    """(BLOCK_M, BLOCK_Q, BLOCK_N, num_warps, num_stages) from static shapes only.

    Not from the batch (T, B, q_lens): another tile height or key tile would change a row's
    arithmetic (key-tile online softmax steps, MMA instruction) with its neighbours. The one
    tiling is the decode one, which the kernel's speed matters most for; prefill and
    verification rows share it (short query tiles: the K/V tiles are re-read per BLOCK_Q queries,
    from L2 mostly).

    Register and shared-memory figures are ptxas -v for sm_90a (Triton 3.8); every choice below
    compiles at D = 64 / 128 / 256, float32 / float16 / bfloat16, every mask mode, split or not,
    without register spills (float32 split variants: <= 16 bytes). Speed is untuned: no GPU was
    available when these were chosen.
    """
    # decode: no query rows to fill a tall tile, and the kernel is bandwidth-bound. fp16 D = 128:
    # 148 registers, 40 KiB shared -> 3 programs per SM; float32 (FMA dots, operands in registers)
    # spills with 16 KiB key tiles, so it gets 8 KiB ones
    tile_bytes = 8192 if dtype == torch.float32 else 16384
    block_m, num_warps, num_stages = MIN_BLOCK_M, 4, 3
    # K and V tiles are BLOCK_N x D: 64 keys of D = 128 fp16 is 16 KiB per tile
    block_n = 64
    while block_n > 16 and block_n * head_dim * dtype.itemsize > tile_bytes:
        block_n //= 2
    # a group of more than BLOCK_M query heads (MQA-like models) makes the tile taller; at 64 rows
    # 4 warps need 200+ registers, so spread them over 8
    block_m = max(block_m, triton.next_power_of_2(group))
    num_warps = max(num_warps, 8 if block_m >= 64 else 4)
    return block_m, block_m // group, block_n, num_warps, num_stages


def paged_attention(
    q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, mask_mode, scale, custom_mask, mask_indptr, out
) -> None:
    """``out [T, Hq, D]`` = attention of ``q [T, Hq, D]`` over the paged ``k_cache, v_cache [NB, BS, Hkv, D]``.

    ``block_table [B, MB]`` int32, ``seq_lens [B]`` int32 (keys per request including its own
    queries' keys), ``cu_seqlens_q [B+1]`` int32; ``mask_mode`` int (0 causal, 1 full, 2 custom);
    ``scale`` float; ``custom_mask`` uint8 0/1 flat and ``mask_indptr [B+1]`` int64 (mode 2, empty
    otherwise); ``out`` has the dtype of ``q``; rows of no request are left untouched. D must be a
    power of two in [16, 256] (ValueError otherwise). With split requests (q_len <= SPLIT_MAX_Q)
    and MB * BS > SPLIT_KEYS it allocates an fp32 workspace of
    ``cdiv(MB * BS, SPLIT_KEYS) * min(T, 16 * B) * Hq * (D + 1)`` elements.
    """
    num_rows, num_q_heads, head_dim = q.shape
    num_blocks, block_size, num_kv_heads, _ = k_cache.shape
    num_requests, max_blocks = block_table.shape
    if head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim (D) must be a power of two in [16, 256] for the triton backend, got {head_dim}")
    if mask_mode not in (0, 1, 2):
        raise ValueError(f"mask_mode must be 0 (causal), 1 (full) or 2 (custom), got {mask_mode!r}")
    if num_rows == 0 or num_requests == 0:
        return
    group = num_q_heads // num_kv_heads
    block_m, block_q, block_n, num_warps, num_stages = _tiling(group, head_dim, q.dtype)
    query_tiles = num_rows // block_q + num_requests
    # grid.z covers the splits of the longest context the block table can hold; programs past a
    # request's keys return at once
    tiles_per_split = max(1, _split_keys(q.device) // block_n)
    num_splits = triton.cdiv(triton.cdiv(max_blocks * block_size, block_n), tiles_per_split)
    # partial-result slots: b * SPLIT_MAX_Q + i when that is fewer than the rows (prefill batches)
    compact = num_requests * SPLIT_MAX_Q < num_rows
    num_slots = num_requests * SPLIT_MAX_Q if compact else num_rows
    # stand-ins for tensors that are never read (an empty CUDA tensor may have a null data
    # pointer, which the Triton launcher rejects): no tile when MB == 0, no lookup when numel == 0
    if max_blocks == 0:
        block_table = seq_lens
    mask_numel = custom_mask.numel() if mask_mode == 2 else 0
    if mask_numel == 0:
        custom_mask = seq_lens
    if mask_mode != 2:
        mask_indptr = seq_lens
    if num_splits > 1:
        # one allocation for both (fp32 [S, slots, Hq, D] partial outputs, then [S, slots, Hq]
        # log2-sum-exp); every element a merge reads is written first by its split's program
        stats = num_splits * num_slots * num_q_heads
        workspace = torch.empty(stats * (head_dim + 1), dtype=torch.float32, device=q.device)
        partial, lse = workspace[: stats * head_dim], workspace[stats * head_dim :]
    else:
        partial, lse = out, out  # never written: no request splits
    # fp32 inputs use exact fp32 products (tf32 would break the fp32 tolerance); 16-bit inputs
    # use tensor cores with fp32 accumulation either way
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _paged_attention_kernel[(query_tiles, num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        block_table,
        seq_lens,
        cu_seqlens_q,
        custom_mask,
        mask_indptr,
        out,
        partial,
        lse,
        num_requests,
        num_rows,
        num_blocks,
        max_blocks,
        mask_numel,
        num_slots,
        float(scale) * LOG2_E,
        NUM_Q_HEADS=num_q_heads,
        NUM_KV_HEADS=num_kv_heads,
        GROUP=group,
        BLOCK_SIZE=block_size,
        HEAD_DIM=head_dim,
        MASK_MODE=mask_mode,
        SPLIT=num_splits > 1,
        TILES_PER_SPLIT=tiles_per_split,
        COMPACT=compact,
        DOT_PRECISION=precision,
        BLOCK_M=block_m,
        BLOCK_Q=block_q,
        BLOCK_N=block_n,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if num_splits > 1:
        _merge_splits_kernel[(query_tiles, num_kv_heads)](
            partial,
            lse,
            seq_lens,
            cu_seqlens_q,
            out,
            num_requests,
            num_rows,
            max_blocks,
            num_slots,
            NUM_Q_HEADS=num_q_heads,
            GROUP=group,
            BLOCK_SIZE=block_size,
            HEAD_DIM=head_dim,
            MASK_MODE=mask_mode,
            TILES_PER_SPLIT=tiles_per_split,
            COMPACT=compact,
            BLOCK_M=block_m,
            BLOCK_Q=block_q,
            BLOCK_N=block_n,
            num_warps=4,
        )
