"""Plain-PyTorch paged KV cache ops: the executable spec of the `paged_kv` op family.

Every backend (cpu, triton, cuda) must give the same result as these functions: bit-exact for the
cache writes and copies, within per-dtype tolerance for attention. Per-request Python loops and
gathered temporaries are fine here and nowhere else.

Notation: NB = num_blocks, BS = block_size, Hkv = num_kv_heads, Hq = num_q_heads (a multiple of
Hkv; ``group = Hq // Hkv``; query head h reads kv head ``h // group``), D = head_dim. The cache is
NHD: ``[NB, BS, Hkv, D]``. A *slot* is ``block_id * BS + offset``.

* ``kv_append``: ``cache[slot // BS, slot % BS] = new`` for every token whose slot is in
  ``[0, NB*BS)``; other slots (``-1`` = padding) are skipped. Writing an existing slot overwrites
  it (diffusion blocks rewrite their K/V in place). Which write wins for a slot repeated within
  one call is unspecified.
* ``kv_copy_blocks``: for every layer and pair p, block ``dst[p]`` becomes a copy of block
  ``src[p]``; pairs with an id outside ``[0, NB)`` are skipped. No dst may repeat or equal a src.
* ``paged_attention``: request b owns query rows ``[cu_seqlens_q[b], cu_seqlens_q[b+1])``
  (``q_len`` of them) and ``kv_len = seq_lens[b]`` cached keys, which INCLUDE the keys of its own
  queries (appended before the call), so its queries sit at positions ``prefix + i`` with
  ``prefix = kv_len - q_len``. Key j lives at ``cache[block_table[b, j // BS], j % BS]``.
  Key j is visible to query i when:

  - ``causal`` (0): ``j <= prefix + i``;
  - ``full`` (1): always (every key of the request);
  - ``custom`` (2): ``j < prefix`` (the cached prefix), or
    ``custom_mask[mask_indptr[b] + i * q_len + (j - prefix)] != 0`` (a row-major ``[q_len, q_len]``
    mask among the request's own queries: tree ancestors, a bidirectional block, isolated spans).

  ``out[row, h] = sum_j softmax_j(scale * q[row, h] . k_j) v_j`` over the visible keys, in fp32,
  rounded to the dtype of ``q``. A query with no visible key gets zeros.

Guards (part of the contract; kernels never read or write out of bounds for any index values): a
block-table entry outside ``[0, NB)`` makes its keys invisible; only ``j < min(kv_len, MB * BS)``
is considered; a custom-mask column ``j - prefix`` outside ``[0, q_len)`` or an element index
outside ``[0, custom_mask.numel())`` is invisible; query rows outside ``[0, T)`` are skipped; rows
of a request with ``q_len > 0`` and ``kv_len <= 0`` are zeros; rows that belong to no request are
not written.
"""

from __future__ import annotations

import enum

import torch


class MaskMode(enum.IntEnum):
    """The ``mask_mode`` integer of the raw contract."""

    CAUSAL = 0
    FULL = 1
    CUSTOM = 2


def kv_append(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Scatter new keys/values into the paged cache, in place.

    Args:
        k, v: ``[T, Hkv, D]`` new keys and values (dtype of the cache).
        k_cache, v_cache: ``[NB, BS, Hkv, D]``, written in place.
        slot_mapping: ``[T]`` int64; token t goes to slot ``slot_mapping[t]``; slots outside
            ``[0, NB*BS)`` (``-1`` = padding) are skipped.
    """
    num_blocks, block_size = k_cache.shape[:2]
    slots = slot_mapping.long()
    keep = (slots >= 0) & (slots < num_blocks * block_size)
    rows = slots[keep]
    k_cache.view(num_blocks * block_size, *k_cache.shape[2:])[rows] = k[keep]
    v_cache.view(num_blocks * block_size, *v_cache.shape[2:])[rows] = v[keep]


def kv_copy_blocks(k_cache: torch.Tensor, v_cache: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
    """Copy whole blocks (copy-on-write), in place, in every layer.

    Args:
        k_cache, v_cache: ``[L, NB, BS, Hkv, D]`` (all layers at once).
        src, dst: ``[P]`` int32: block ``dst[p]`` becomes a copy of block ``src[p]``; pairs with an
            id outside ``[0, NB)`` are skipped. dst values are distinct and never equal a src.
    """
    num_blocks = k_cache.shape[1]
    src, dst = src.long(), dst.long()
    keep = (src >= 0) & (src < num_blocks) & (dst >= 0) & (dst < num_blocks)
    src, dst = src[keep], dst[keep]
    k_cache[:, dst] = k_cache[:, src].clone()
    v_cache[:, dst] = v_cache[:, src].clone()


def visible_keys(
    mask_mode: int,
    q_len: int,
    kv_len: int,
    num_keys: int,
    custom_mask: torch.Tensor | None,
    mask_start: int,
    device: torch.device,
) -> torch.Tensor:
    """``[q_len, num_keys]`` bool: which of keys ``0 .. num_keys-1`` each query of one request sees.

    ``mask_start`` is ``mask_indptr[b]``; block-table validity is applied by the caller.
    """
    prefix = kv_len - q_len
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(num_keys, device=device)[None, :]
    if mask_mode == MaskMode.CAUSAL:
        return j <= prefix + i
    if mask_mode == MaskMode.FULL:
        return torch.ones(q_len, num_keys, dtype=torch.bool, device=device)
    col = j - prefix
    index = mask_start + i * q_len + col
    numel = 0 if custom_mask is None else custom_mask.numel()
    in_range = (col >= 0) & (col < q_len) & (index >= 0) & (index < numel)
    if numel == 0:
        return j < prefix
    looked_up = custom_mask.reshape(-1)[index.clamp(0, numel - 1)] != 0
    return (j < prefix) | (in_range & looked_up)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    mask_mode: int,
    scale: float,
    custom_mask: torch.Tensor | None = None,
    mask_indptr: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of variable-length query batches over a paged KV cache (gather, then fp32 softmax).

    Args:
        q: ``[T, Hq, D]`` float32/float16/bfloat16.
        k_cache, v_cache: ``[NB, BS, Hkv, D]``, dtype of ``q``.
        block_table: ``[B, MB]`` int32, ``-1`` padded.
        seq_lens: ``[B]`` int32, keys per request including its current queries' keys.
        cu_seqlens_q: ``[B+1]`` int32, query row offsets per request.
        mask_mode: ``MaskMode`` (0 causal, 1 full, 2 custom).
        scale: softmax scale.
        custom_mask: uint8/bool flat 0/1 (mode 2 only): request b's ``[q_len, q_len]`` row-major
            mask starts at ``mask_indptr[b]``.
        mask_indptr: ``[B+1]`` int64 (mode 2 only).
        out: ``[T, Hq, D]`` written in place if given (rows of no request are left untouched);
            else a zero-initialised tensor is returned.

    Returns:
        ``out`` ``[T, Hq, D]``, dtype of ``q``.
    """
    num_rows, num_q_heads, _ = q.shape
    num_blocks, block_size, num_kv_heads, _ = k_cache.shape
    max_blocks = block_table.shape[1]
    group = num_q_heads // num_kv_heads
    if out is None:
        out = torch.zeros_like(q)
    cu = cu_seqlens_q.tolist()
    lens = seq_lens.tolist()
    starts = mask_indptr.tolist() if mask_mode == MaskMode.CUSTOM and mask_indptr is not None else None
    for b, kv_len in enumerate(lens):
        q_len = cu[b + 1] - cu[b]
        if q_len <= 0:
            continue
        i = torch.arange(q_len, device=q.device)
        rows = cu[b] + i
        kept = (rows >= 0) & (rows < num_rows)
        if not bool(kept.any()):
            continue
        num_keys = max(0, min(kv_len, max_blocks * block_size))
        j = torch.arange(num_keys, device=q.device)
        blocks = block_table[b, j // block_size].long()
        present = (blocks >= 0) & (blocks < num_blocks)
        safe_blocks = blocks.clamp(0, num_blocks - 1)
        keys = k_cache[safe_blocks, j % block_size].float().repeat_interleave(group, dim=1)  # [n, Hq, D]
        values = v_cache[safe_blocks, j % block_size].float().repeat_interleave(group, dim=1)
        start = starts[b] if starts is not None else 0
        visible = visible_keys(mask_mode, q_len, kv_len, num_keys, custom_mask, start, q.device)
        visible = (visible & present[None, :])[kept]  # [q_kept, n]
        queries = q[rows[kept]].float()  # [q_kept, Hq, D]
        scores = torch.einsum("qhd,khd->hqk", queries, keys) * scale
        scores = scores.masked_fill(~visible[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        probs = torch.where(visible.any(-1)[None, :, None], probs, 0.0)  # no visible key: zeros, not NaN
        result = torch.einsum("hqk,khd->qhd", probs, values)
        out[rows[kept]] = result.to(out.dtype)
    return out
