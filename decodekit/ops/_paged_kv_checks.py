"""Argument checks and custom-mask conversion for the ``paged_kv`` ops.

Metadata (type, dimension, dtype, device, contiguity) is checked on the host for every call.
Values of index tensors are checked only when the caller asks (``validate=True``, the default):
the checks of one call are computed on the tensors' device and read back with ONE host transfer,
which on CUDA is a synchronisation, so decoders that build their own metadata pass
``validate=False`` on the hot path. Under ``torch.compile`` value checks are skipped (they would
need data-dependent control flow); kernels stay in bounds for any values (the raw contract).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

from decodekit.ops._args import FLOAT_DTYPES

INDEX_DTYPES = (torch.int32, torch.int64)
MASK_MODES = {"causal": 0, "full": 1, "custom": 2}


def tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def float_tensor(name: str, value, layout: str) -> torch.Tensor:
    """A float32/float16/bfloat16 tensor with ``len(layout.split(', '))`` dimensions (``layout``
    names them for the message, e.g. ``"T, Hkv, D"``)."""
    value = tensor(name, value)
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {value.dtype}")
    if value.dim() != len(layout.split(", ")):
        raise ValueError(f"{name} must have shape [{layout}], got {tuple(value.shape)}")
    return value


def like(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``value`` must have the dtype and device of ``ref``."""
    if value.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {value.dtype}")
    if value.device != ref.device:
        raise ValueError(f"{name} is on {value.device} but {ref_name} is on {ref.device}")


def cache_pair(k_cache, v_cache, *, allow_layers: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Two caches of one shape, written in place (so they must already be contiguous)."""
    layout = "NB, BS, Hkv, D"
    k_cache = tensor("k_cache", k_cache)
    if allow_layers and k_cache.dim() == 5:
        layout = "L, " + layout
    k_cache = float_tensor("k_cache", k_cache, layout)
    v_cache = float_tensor("v_cache", v_cache, layout)
    like("v_cache", v_cache, "k_cache", k_cache)
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache must have the shape of k_cache {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}")
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not cache.is_contiguous():
            raise ValueError(f"{name} must be contiguous (it is written in place), got strides {cache.stride()}")
    if min(k_cache.shape) == 0:
        raise ValueError(f"k_cache must have no empty dimension, got shape {tuple(k_cache.shape)}")
    return k_cache, v_cache


def index_tensor(name: str, value, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """An int32/int64 tensor of ``shape`` on ``device``, converted to ``dtype`` and made contiguous."""
    value = tensor(name, value)
    if value.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must be an int32 or int64 tensor, got {value.dtype}")
    if tuple(value.shape) != shape:
        want = ", ".join(str(s) for s in shape)
        raise ValueError(f"{name} must have shape [{want}], got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but the data tensors are on {device}")
    if value.dtype != dtype:
        value = value.to(dtype)
    return value.contiguous()


def scale_value(scale, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a number or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale!r}")
    return float(scale)


def mask_mode(mask, custom_mask) -> int:
    if mask not in MASK_MODES:
        raise ValueError(f"mask must be one of {', '.join(map(repr, MASK_MODES))}, got {mask!r}")
    if mask == "custom" and custom_mask is None:
        raise ValueError("custom_mask is required when mask='custom'")
    if mask != "custom" and custom_mask is not None:
        raise ValueError(f"custom_mask is only used with mask='custom', got mask={mask!r}")
    return MASK_MODES[mask]


# ----------------------------------------------------------------------------- custom masks


def _bool_mask(name: str, value, device: torch.device) -> torch.Tensor:
    value = tensor(name, value)
    if value.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got {value.dtype}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but q is on {device}")
    return value


def _implied_indptr(q_lens: torch.Tensor) -> torch.Tensor:
    """``[B+1]`` int64 offsets of the per-request ``[q_len, q_len]`` masks, laid end to end."""
    sizes = q_lens.long() * q_lens.long()
    return torch.nn.functional.pad(torch.cumsum(sizes, 0), (1, 0))


def unpack_mask_bits(packed: torch.Tensor) -> torch.Tensor:
    """uint8 bytes -> uint8 0/1 values, little bit order: bit m is bit ``m % 8`` of byte ``m // 8``."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed[:, None] >> shifts) & 1).reshape(-1)


def pack_mask_bits(flat: torch.Tensor) -> torch.Tensor:
    """bool ``[N]`` -> uint8 ``[ceil(N / 8)]``, little bit order (numpy ``packbits(bitorder="little")``)."""
    bits = torch.nn.functional.pad(flat.reshape(-1).to(torch.uint8), (0, (-flat.numel()) % 8))
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8, device=flat.device)
    return (bits.view(-1, 8) * weights).sum(1, dtype=torch.uint8)


class CustomMask:
    """The raw layout of a custom mask plus what its form requires of the query lengths.

    ``values`` uint8 0/1 flat, ``indptr`` ``[B+1]`` int64; ``expect(q_lens)`` returns a ``[]`` bool
    tensor that is True when the mask does NOT fit the request sizes, and ``describe`` the rule.
    """

    def __init__(self, values, indptr, expect: Callable[[torch.Tensor], torch.Tensor], describe: str):
        self.values, self.indptr, self.expect, self.describe = values, indptr, expect, describe


def custom_mask_layout(custom_mask, batch: int, cu_seqlens_q: torch.Tensor, device: torch.device) -> CustomMask:
    """Convert any accepted form of ``custom_mask`` on ``device`` without a host synchronisation.

    Forms: a list of ``batch`` bool ``[q_len_b, q_len_b]`` tensors; one bool ``[n, n]`` tensor
    shared by every request (each must have ``q_len == n``); one flat bool tensor, the requests'
    row-major masks laid end to end (``sum(q_len_b ** 2)`` values); or the same flat mask
    bit-packed into a uint8 tensor with little bit order (``ceil(sum(q_len_b ** 2) / 8)`` bytes).
    """
    q_lens = cu_seqlens_q[1:].long() - cu_seqlens_q[:-1].long()
    if isinstance(custom_mask, (list, tuple)):
        if len(custom_mask) != batch:
            raise ValueError(f"custom_mask as a list needs one mask per request ({batch}), got {len(custom_mask)}")
        sizes = []
        for b, entry in enumerate(custom_mask):
            entry = _bool_mask(f"custom_mask[{b}]", entry, device)
            if entry.dim() != 2 or entry.shape[0] != entry.shape[1]:
                raise ValueError(f"custom_mask[{b}] must have shape [q_len, q_len], got {tuple(entry.shape)}")
            sizes.append(entry.shape[0])
        values = torch.cat([m.reshape(-1) for m in custom_mask]).to(torch.uint8)
        offsets = [0]
        for n in sizes:
            offsets.append(offsets[-1] + n * n)
        indptr = torch.tensor(offsets, dtype=torch.int64).to(device)
        want = torch.tensor(sizes, dtype=torch.int64).to(device)
        return CustomMask(values, indptr, lambda q: (q != want).any(), f"custom_mask[b] shapes {sizes}")
    custom_mask = tensor("custom_mask", custom_mask)
    if custom_mask.device != device:
        raise ValueError(f"custom_mask is on {custom_mask.device} but q is on {device}")
    if custom_mask.dtype == torch.bool and custom_mask.dim() == 2:
        n = custom_mask.shape[0]
        if custom_mask.shape[1] != n:
            raise ValueError(f"custom_mask as one shared mask must be [q_len, q_len], got {tuple(custom_mask.shape)}")
        values = custom_mask.reshape(-1).to(torch.uint8)
        indptr = torch.zeros(batch + 1, dtype=torch.int64, device=device)
        return CustomMask(values, indptr, lambda q: (q != n).any(), f"one shared [{n}, {n}] mask")
    if custom_mask.dim() != 1:
        raise ValueError(
            "custom_mask must be a list of [q_len, q_len] bool tensors, one shared [q_len, q_len] bool tensor, "
            f"a flat bool tensor or a flat bit-packed uint8 tensor; got shape {tuple(custom_mask.shape)}"
        )
    indptr = _implied_indptr(q_lens)
    if custom_mask.dtype == torch.bool:
        numel = custom_mask.numel()
        return CustomMask(
            custom_mask.to(torch.uint8),
            indptr,
            lambda q: (q * q).sum() != numel,
            f"a flat bool mask of {numel} values (must be sum(q_len ** 2))",
        )
    if custom_mask.dtype == torch.uint8:
        numel = custom_mask.numel()
        return CustomMask(
            unpack_mask_bits(custom_mask.contiguous()),
            indptr,
            lambda q: (q * q).sum().add(7).div(8, rounding_mode="floor") != numel,
            f"a bit-packed mask of {numel} bytes (must be ceil(sum(q_len ** 2) / 8))",
        )
    raise TypeError(f"custom_mask must be bool (or bit-packed uint8), got {custom_mask.dtype}")


# ----------------------------------------------------------------------------- value checks


class ValueChecks:
    """Collects device-side ``[]`` bool "this is bad" flags and reads them with one transfer."""

    def __init__(self) -> None:
        self._flags: list[torch.Tensor] = []
        self._messages: list[Callable[[], str]] = []

    def add(self, bad: torch.Tensor, message: Callable[[], str]) -> None:
        self._flags.append(bad.reshape(()))
        self._messages.append(message)

    def raise_first(self) -> None:
        if not self._flags:
            return
        flags = torch.stack(self._flags).tolist()
        for bad, message in zip(flags, self._messages):
            if bad:
                raise ValueError(message())


def checking(validate: bool) -> bool:
    return validate and not torch.compiler.is_compiling()


def _head(values: torch.Tensor, limit: int = 16) -> str:
    shown = values.reshape(-1)[:limit].tolist()
    return f"{shown}{' ...' if values.numel() > limit else ''}"


def check_slots(checks: ValueChecks, slot_mapping: torch.Tensor, num_slots: int) -> None:
    checks.add(
        (slot_mapping >= num_slots).any(),
        lambda: f"slot_mapping values must be < NB*BS={num_slots} (negative = padding, skipped); "
        f"got max {int(slot_mapping.max())}",
    )
    # Negative slots are padding and may repeat: give each a distinct negative key before sorting.
    padding_keys = -1 - torch.arange(slot_mapping.numel(), device=slot_mapping.device)
    keys = torch.where(slot_mapping >= 0, slot_mapping, padding_keys).sort().values
    checks.add(
        (keys[1:] == keys[:-1]).any(),
        lambda: "slot_mapping must not repeat a slot within one call (which write would win is unspecified); "
        f"got {_head(slot_mapping)}",
    )


def check_copy_pairs(checks: ValueChecks, src: torch.Tensor, dst: torch.Tensor, num_blocks: int) -> None:
    for name, ids in (("src", src), ("dst", dst)):
        checks.add(
            ((ids < 0) | (ids >= num_blocks)).any(),
            lambda name=name, ids=ids: f"{name} must hold block ids in [0, NB={num_blocks}), got {_head(ids)}",
        )
    ordered = dst.sort().values
    checks.add((ordered[1:] == ordered[:-1]).any(), lambda: f"dst must not repeat a block, got {_head(dst)}")
    checks.add(
        torch.isin(dst, src).any(),
        lambda: "no dst block may also be a src block (the copy order would matter); "
        f"src={_head(src)}, dst={_head(dst)}",
    )


def check_attention_metadata(
    checks: ValueChecks,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    num_rows: int,
    num_blocks: int,
    block_size: int,
    mask: CustomMask | None,
) -> None:
    max_blocks = block_table.shape[1]
    capacity = max_blocks * block_size
    q_lens = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
    checks.add(
        (cu_seqlens_q[0] != 0) | (q_lens < 0).any() | (cu_seqlens_q[-1] != num_rows),
        lambda: f"cu_seqlens_q must start at 0, never decrease and end at T={num_rows} (q rows); "
        f"got {_head(cu_seqlens_q)}",
    )
    checks.add(
        ((seq_lens < 0) | (seq_lens > capacity)).any(),
        lambda: f"seq_lens must be in [0, MB*BS={capacity}] (what block_table [B, {max_blocks}] holds with "
        f"block_size {block_size}); got {_head(seq_lens)}",
    )
    checks.add(
        (q_lens > seq_lens).any(),
        lambda: "seq_lens[b] must count the request's own queries too (append their K/V first): need "
        f"seq_lens >= q_lens; got seq_lens={_head(seq_lens)}, q_lens={_head(q_lens)}",
    )
    in_range = (block_table >= 0) & (block_table < num_blocks)
    used = torch.arange(max_blocks, device=block_table.device)[None, :] * block_size < seq_lens[:, None]
    checks.add(
        (~in_range & (used | (block_table != -1))).any(),
        lambda: f"block_table entries must be block ids in [0, NB={num_blocks}) (or -1 past the blocks seq_lens "
        f"uses); got {_head(block_table)}",
    )
    if mask is not None:
        checks.add(
            mask.expect(q_lens.long()),
            lambda: f"custom_mask does not fit the query lengths {_head(q_lens)}: {mask.describe}",
        )
