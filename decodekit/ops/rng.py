"""Philox4x32-10 uniforms of the RNG contract, on any backend (used by tests and by callers that
need the exact random numbers an op consumed)."""

from __future__ import annotations

import torch

from decodekit.ops import _args
from decodekit.ops._backend import kernel, resolve
from decodekit.reference.rng import Stream

__all__ = ["Stream", "philox_uniform"]


def philox_uniform(seed, offset, stream: int, n: int, *, device=None, backend: str | None = None) -> torch.Tensor:
    """``u[b, i] = uniform(seed[b], offset[b], stream, counter i)`` as float32 ``[B, n]``.

    ``seed``/``offset`` are ints (B = 1) or ``[B]`` int64 tensors; ``stream`` is a ``Stream``.
    """
    if isinstance(seed, torch.Tensor):
        if seed.dim() != 1 or seed.numel() == 0:
            raise ValueError(f"seed must be an int or a non-empty [B] tensor, got shape {tuple(seed.shape)}")
        batch, device = seed.shape[0], seed.device
    else:
        batch, device = 1, torch.device(device or "cpu")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if int(stream) not in {s.value for s in Stream}:
        raise ValueError(f"stream must be one of {[s.name for s in Stream]}, got {stream!r}")
    seed = _args.seed_param(seed, batch, device)
    offset = _args.offset_param(offset, batch, device)
    out = torch.empty(batch, n, dtype=torch.float32, device=device)
    kernel(resolve(backend, device), "rng", "philox_uniform")(seed, offset, int(stream), out)
    return out
