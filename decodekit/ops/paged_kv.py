"""Paged KV cache ops: ``kv_append``, ``kv_copy_blocks``, ``paged_attention``.

Semantics (the spec is ``decodekit/reference/paged_kv.py``; the raw backend contract is written out
there and in ``decodekit/ops/_reference_kernels.py``):

* The cache of one layer is ``[NB, BS, Hkv, D]`` (NHD: num_blocks, block_size, kv heads, head
  dim). Slot ``s`` is row ``s % BS`` of block ``s // BS``; ``slot_mapping`` is int64, ``-1`` pads.
* ``paged_attention`` serves prefill, decode, speculative verification and diffusion in one call:
  request b has ``q_len`` query rows (``cu_seqlens_q``) and ``seq_lens[b]`` keys, which include the
  keys of its own queries (``kv_append`` them first), so its queries sit at the last ``q_len``
  positions. ``mask="causal"``: query i sees keys up to its own position; ``"full"``: every key of
  the request; ``"custom"``: the cached prefix plus a ``[q_len, q_len]`` boolean mask among the
  request's own queries (tree ancestors, a bidirectional block, isolated spans). GQA: query head h
  reads kv head ``h // (Hq // Hkv)``. Accumulation is fp32; a query that sees no key gets zeros.

Checks: metadata (types, shapes, dtypes, devices, contiguity, ``Hq % Hkv``) on every call; values
of index tensors (block ids, lengths, slots, mask sizes) when ``validate=True``, with one host read
per call, which synchronises a CUDA device: decoders that build their metadata themselves pass
``validate=False`` on the hot path. Kernels never access memory out of bounds whatever the values
(out-of-range block ids and slots are skipped).

Each op is a ``torch.library`` custom op (``decodekit::kv_append`` ...; the cache writers declare
``mutates_args``) with a fake implementation, so they trace under ``torch.compile(fullgraph=True)``;
eager calls go straight to the kernel to keep dispatch overhead off the decode hot path.
"""

from __future__ import annotations

import functools

import torch

from decodekit.ops import _paged_kv_checks as checks
from decodekit.ops._backend import kernel, resolve
from decodekit.ops._paged_kv_checks import pack_mask_bits

__all__ = ["kv_append", "kv_copy_blocks", "paged_attention", "pack_custom_mask"]

FAMILY = "paged_kv"


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("decodekit::kv_append", mutates_args=("k_cache", "v_cache"))
def _kv_append_op(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    backend: str,
) -> None:
    kernel(backend, FAMILY, "kv_append")(k, v, k_cache, v_cache, slot_mapping)


@_kv_append_op.register_fake
def _(k, v, k_cache, v_cache, slot_mapping, backend):
    return None


def _copy_blocks_impl(k_cache, v_cache, src, dst, backend):
    if k_cache.dim() == 4:  # one layer: the raw contract always takes [L, NB, BS, Hkv, D]
        k_cache, v_cache = k_cache.unsqueeze(0), v_cache.unsqueeze(0)
    kernel(backend, FAMILY, "kv_copy_blocks")(k_cache, v_cache, src, dst)


@torch.library.custom_op("decodekit::kv_copy_blocks", mutates_args=("k_cache", "v_cache"))
def _kv_copy_blocks_op(
    k_cache: torch.Tensor, v_cache: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, backend: str
) -> None:
    _copy_blocks_impl(k_cache, v_cache, src, dst, backend)


@_kv_copy_blocks_op.register_fake
def _(k_cache, v_cache, src, dst, backend):
    return None


def _attention_impl(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, mask_mode, scale, mask, indptr, backend):
    out = torch.empty_like(q)
    kernel(backend, FAMILY, "paged_attention")(
        q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, mask_mode, scale, mask, indptr, out
    )
    return out


@torch.library.custom_op("decodekit::paged_attention", mutates_args=())
def _paged_attention_op(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    mask_mode: int,
    scale: float,
    custom_mask: torch.Tensor,
    mask_indptr: torch.Tensor,
    backend: str,
) -> torch.Tensor:
    return _attention_impl(
        q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, mask_mode, scale, custom_mask, mask_indptr, backend
    )


@_paged_attention_op.register_fake
def _(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, mask_mode, scale, custom_mask, mask_indptr, backend):
    return torch.empty_like(q)


@functools.lru_cache(maxsize=16)
def _no_mask(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty ``custom_mask``/``mask_indptr`` for the causal and full modes, cached per device: a
    decode step calls paged_attention once per layer and kernels never read them in those modes."""
    return torch.empty(0, dtype=torch.uint8, device=device), torch.empty(0, dtype=torch.int64, device=device)


# ----------------------------------------------------------------------------- public API


def kv_append(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    backend: str | None = None,
    validate: bool = True,
) -> None:
    """Write new keys and values into the paged cache, in place.

    Args:
        k, v: ``[T, Hkv, D]`` float32/float16/bfloat16, the dtype of the cache (made contiguous).
        k_cache, v_cache: ``[NB, BS, Hkv, D]`` contiguous, written in place.
        slot_mapping: ``[T]`` int64 (int32 is converted): token t goes to slot ``slot_mapping[t]``
            = ``block_id * BS + offset``. Negative slots (``-1``) are padding and skipped. Writing
            a slot that holds data overwrites it (diffusion blocks rewrite their K/V in place).
            A slot repeated within one call is an error when ``validate`` (otherwise which write
            wins is unspecified).
        backend: ``"reference" | "cpu" | "triton" | "cuda"``; default per DESIGN.md.
        validate: check slot values (``< NB*BS``, no repeats): one host read, a sync on CUDA.
    """
    k_cache, v_cache = checks.cache_pair(k_cache, v_cache)
    k = checks.float_tensor("k", k, "T, Hkv, D")
    v = checks.float_tensor("v", v, "T, Hkv, D")
    for name, value in (("k", k), ("v", v)):
        checks.like(name, value, "k_cache", k_cache)
        if value.shape[1:] != k_cache.shape[2:]:
            raise ValueError(
                f"{name} must have shape [T, Hkv={k_cache.shape[2]}, D={k_cache.shape[3]}] to match k_cache, "
                f"got {tuple(value.shape)}"
            )
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    slot_mapping = checks.index_tensor("slot_mapping", slot_mapping, (k.shape[0],), k.device, torch.int64)
    if checks.checking(validate):
        found = checks.ValueChecks()
        checks.check_slots(found, slot_mapping, k_cache.shape[0] * k_cache.shape[1])
        found.raise_first()
    backend = resolve(backend, k.device)
    k, v = k.contiguous(), v.contiguous()
    if torch.compiler.is_compiling():
        _kv_append_op(k, v, k_cache, v_cache, slot_mapping, backend)
    else:
        kernel(backend, FAMILY, "kv_append")(k, v, k_cache, v_cache, slot_mapping)


def kv_copy_blocks(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    *,
    backend: str | None = None,
    validate: bool = True,
) -> None:
    """Copy whole blocks (copy-on-write after a fork), in place, in every layer at once.

    Args:
        k_cache, v_cache: ``[NB, BS, Hkv, D]`` (one layer) or ``[L, NB, BS, Hkv, D]`` (all layers,
            one launch), contiguous.
        src, dst: ``[P]`` int32 (int64 is converted) on the cache's device: block ``dst[p]``
            becomes a copy of block ``src[p]``. dst blocks must be distinct and none may be a src.
        validate: check ids in ``[0, NB)`` and the distinctness rules (a sync on CUDA).
    """
    k_cache, v_cache = checks.cache_pair(k_cache, v_cache, allow_layers=True)
    src = checks.tensor("src", src)
    if src.dim() != 1:
        raise ValueError(f"src must have shape [P], got {tuple(src.shape)}")
    src = checks.index_tensor("src", src, tuple(src.shape), k_cache.device, torch.int32)
    dst = checks.index_tensor("dst", dst, tuple(src.shape), k_cache.device, torch.int32)
    if checks.checking(validate):
        found = checks.ValueChecks()
        checks.check_copy_pairs(found, src, dst, k_cache.shape[-4])
        found.raise_first()
    backend = resolve(backend, k_cache.device)
    if torch.compiler.is_compiling():
        _kv_copy_blocks_op(k_cache, v_cache, src, dst, backend)
    else:
        _copy_blocks_impl(k_cache, v_cache, src, dst, backend)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    *,
    mask: str = "causal",
    scale: float | None = None,
    custom_mask=None,
    backend: str | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """Attention of a variable-length batch of queries over a paged KV cache.

    Args:
        q: ``[T, Hq, D]`` float32/float16/bfloat16 (made contiguous); the rows of all requests.
        k_cache, v_cache: ``[NB, BS, Hkv, D]``, dtype and device of ``q``; ``Hq % Hkv == 0``.
        block_table: ``[B, MB]`` int32 (int64 is converted): request b's key j is in block
            ``block_table[b, j // BS]``; unused entries are ``-1``.
        seq_lens: ``[B]`` int32: keys of request b, INCLUDING the keys of its current queries.
        cu_seqlens_q: ``[B+1]`` int32, ``cu_seqlens_q[0] = 0``, ``cu_seqlens_q[B] = T``: request b
            owns rows ``cu_seqlens_q[b] : cu_seqlens_q[b+1]`` (``q_len`` rows, at positions
            ``seq_lens[b] - q_len ...``). Decode: ``arange(B + 1)``.
        mask: ``"causal"``, ``"full"`` or ``"custom"`` (see the module docstring).
        scale: softmax scale; default ``1 / sqrt(D)``.
        custom_mask: with ``mask="custom"``, which of its own queries (columns) each query (rows)
            of a request sees, besides the whole cached prefix; one of
            - a list of ``B`` bool ``[q_len_b, q_len_b]`` tensors;
            - one bool ``[n, n]`` tensor shared by every request (each request has ``q_len = n``,
              e.g. the same draft tree for the whole batch);
            - one flat bool tensor: the requests' row-major masks laid end to end
              (``sum(q_len_b ** 2)`` values);
            - that flat mask bit-packed into uint8 with **little** bit order: value m is bit
              ``m % 8`` (``(byte >> (m % 8)) & 1``) of byte ``m // 8``, the requests packed
              together, not per request (``pack_custom_mask`` builds it; equal to numpy
              ``packbits(..., bitorder="little")`` of the flat mask).
            Converted on the device without a host sync.
        validate: check index values (block ids, ``seq_lens <= MB*BS``, ``q_len <= seq_len``,
            ``cu_seqlens_q``, mask sizes) with one host read, which synchronises a CUDA device.
            Without it, rows of no request are left uninitialised and bad ids read as no key.

    Returns:
        ``out [T, Hq, D]``, dtype of ``q``.
    """
    k_cache, v_cache = checks.cache_pair(k_cache, v_cache)
    q = checks.float_tensor("q", q, "T, Hq, D")
    checks.like("k_cache", k_cache, "q", q)
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    if q.shape[2] != head_dim:
        raise ValueError(f"q head_dim {q.shape[2]} must equal k_cache head_dim D={head_dim}")
    if q.shape[1] == 0 or q.shape[1] % num_kv_heads != 0:
        raise ValueError(f"q has Hq={q.shape[1]} heads; Hq must be a positive multiple of Hkv={num_kv_heads}")
    block_table = checks.tensor("block_table", block_table)
    if block_table.dim() != 2 or block_table.shape[0] == 0 or block_table.shape[1] == 0:
        raise ValueError(f"block_table must have shape [B, MB] with B, MB >= 1, got {tuple(block_table.shape)}")
    batch = block_table.shape[0]
    block_table = checks.index_tensor("block_table", block_table, tuple(block_table.shape), q.device, torch.int32)
    seq_lens = checks.index_tensor("seq_lens", seq_lens, (batch,), q.device, torch.int32)
    cu_seqlens_q = checks.index_tensor("cu_seqlens_q", cu_seqlens_q, (batch + 1,), q.device, torch.int32)
    mask_mode = checks.mask_mode(mask, custom_mask)
    scale = checks.scale_value(scale, head_dim)
    layout = None
    if mask_mode == checks.MASK_MODES["custom"]:
        layout = checks.custom_mask_layout(custom_mask, batch, cu_seqlens_q, q.device)
        mask_values, mask_indptr = layout.values, layout.indptr
    elif torch.compiler.is_compiling():
        mask_values = torch.empty(0, dtype=torch.uint8, device=q.device)
        mask_indptr = torch.empty(0, dtype=torch.int64, device=q.device)
    else:
        mask_values, mask_indptr = _no_mask(q.device)
    if checks.checking(validate):
        found = checks.ValueChecks()
        checks.check_attention_metadata(
            found, block_table, seq_lens, cu_seqlens_q, q.shape[0], num_blocks, block_size, layout
        )
        found.raise_first()
    backend = resolve(backend, q.device)
    q = q.contiguous()
    call = _paged_attention_op if torch.compiler.is_compiling() else _attention_impl
    return call(
        q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, mask_mode, scale, mask_values, mask_indptr, backend
    )


def pack_custom_mask(masks) -> torch.Tensor:
    """Bit-pack custom masks for :func:`paged_attention`'s ``custom_mask``.

    Args:
        masks: a list of bool ``[q_len_b, q_len_b]`` tensors (one per request), or one flat bool
            tensor (the requests' row-major masks laid end to end).

    Returns:
        uint8 ``[ceil(N / 8)]`` with N = total values; value m is bit ``m % 8`` of byte ``m // 8``.
    """
    if isinstance(masks, (list, tuple)):
        masks = torch.cat([m.reshape(-1) for m in masks])
    masks = checks.tensor("masks", masks)
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be bool, got {masks.dtype}")
    return pack_mask_bits(masks)
