"""Argument checks and normalisation shared by every op family.

Metadata (type, shape, dtype, device) is checked on the host for every call. Values of Python
scalars are checked on the host too; values of tensor arguments are checked only for CPU tensors
(reading a CUDA tensor's values would synchronise the device; kernels are written to stay
in bounds whatever those values are).
"""

from __future__ import annotations

import functools
import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def check_float_matrix(name: str, tensor, *, allow_empty_cols: bool = False) -> torch.Tensor:
    """A ``[B, V]`` float32/float16/bfloat16 tensor with B >= 1, V >= 1, made contiguous."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")
    if tensor.dim() != 2:
        raise ValueError(f"{name} must have shape [B, V], got {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch (shape {tuple(tensor.shape)}); need B >= 1")
    if tensor.shape[1] == 0 and not allow_empty_cols:
        raise ValueError(f"{name} has an empty vocabulary (shape {tuple(tensor.shape)}); need V >= 1")
    return tensor.contiguous()


def check_int_matrix(name: str, tensor, shape0: int, device: torch.device, dtypes) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in dtypes:
        allowed = " or ".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must be {allowed}, got {tensor.dtype}")
    if tensor.dim() != 2 or tensor.shape[0] != shape0:
        raise ValueError(f"{name} must have shape [{shape0}, *], got {tuple(tensor.shape)}")
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device} but logits are on {device}")
    return tensor.contiguous()


def row_param(
    name: str,
    value,
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> torch.Tensor:
    """A per-row parameter given as a Python scalar or a ``[B]`` tensor, as a ``[B]`` tensor.

    ``low``/``high`` bound the allowed values (``low_open`` makes the low bound exclusive).
    """
    is_float = dtype.is_floating_point
    bounds = _describe_bounds(low, high, low_open)
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            value = value.reshape(1).expand(batch)
        if value.dim() != 1 or value.shape[0] != batch:
            raise ValueError(f"{name} must be a scalar or a [{batch}] tensor, got shape {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{name} is on {value.device} but logits are on {device}")
        if is_float and not value.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        if not is_float and (value.dtype.is_floating_point or value.dtype == torch.bool):
            raise TypeError(f"{name} must be an integer tensor, got {value.dtype}")
        if device.type == "cpu" and not _tracing() and not _values_in(value, low, high, low_open):
            raise ValueError(f"{name} must be {bounds}; got a tensor with values outside that range")
        return value.to(dtype).contiguous()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number or a [{batch}] tensor, got {type(value).__name__}")
    if not is_float and not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not _scalar_in(value, low, high, low_open):
        raise ValueError(f"{name} must be {bounds}, got {value!r}")
    if _tracing():
        return torch.full((batch,), value, dtype=dtype, device=device)
    return _constant_row(value, batch, dtype, device)


@functools.lru_cache(maxsize=512)
def _constant_row(value, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A cached ``[B]`` tensor of a scalar parameter: decode loops pass the same scalars every step,
    and building six small tensors per call was most of ``sample``'s Python overhead (measured
    in bench_sampling's dispatch rows). Kernels only read parameters, so sharing is safe."""
    return torch.full((batch,), value, dtype=dtype, device=device)


def _scalar_in(value, low, high, low_open) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or value <= high


def _values_in(value: torch.Tensor, low, high, low_open) -> bool:
    ok = ~torch.isnan(value) if value.dtype.is_floating_point else torch.ones_like(value, dtype=torch.bool)
    if low is not None:
        ok &= value > low if low_open else value >= low
    if high is not None:
        ok &= value <= high
    return bool(ok.all())


def _describe_bounds(low, high, low_open) -> str:
    if low is None and high is None:
        return "any number"
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    if low is None:
        return f"<= {high}"
    return f"in {'(' if low_open else '['}{low}, {high}]"


def seed_param(seed, batch: int, device: torch.device) -> torch.Tensor:
    """``seed``: int, ``[B]`` int64 tensor, or None (fresh per-row seeds from torch's default
    generator of ``device``: reproducible with ``torch.manual_seed``, no host-device sync)."""
    if seed is None:
        return torch.randint(0, 2**62, (batch,), dtype=torch.int64, device=device)
    if isinstance(seed, torch.Tensor) and seed.dtype != torch.int64:
        raise TypeError(f"seed must be an int or an int64 tensor, got {seed.dtype}")
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        if not -(2**63) <= seed < 2**64:
            raise ValueError(f"seed must fit in 64 bits, got {seed}")
        if seed >= 2**63:  # accept unsigned 64-bit seeds: same bit pattern as int64
            seed -= 2**64
    return row_param("seed", seed, batch, device, torch.int64)


def offset_param(offset, batch: int, device: torch.device) -> torch.Tensor:
    if isinstance(offset, torch.Tensor) and offset.dtype != torch.int64:
        raise TypeError(f"offset must be an int or an int64 tensor, got {offset.dtype}")
    return row_param("offset", offset, batch, device, torch.int64, low=0, high=2**63 - 1)
