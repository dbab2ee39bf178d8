"""Philox4x32-10 in plain torch int64 arithmetic: the executable spec of decodekit's RNG contract.

A random number is a pure function of (seed, offset, counter):

* key       ``k0 = seed & 0xffffffff``, ``k1 = seed >> 32`` (the row's 64-bit seed, as two's complement);
* counter   ``c0`` = element index inside the row (vocab id, canvas position, tree node),
            ``c1`` = low 32 bits of ``offset``, ``c2`` = stream id (``Stream`` below),
            ``c3`` = high 32 bits of ``offset``;
* uniform   Triton's ``uint_to_uniform_float`` of the first output word, in [0, 1) and possibly 0.0.

Constants and round function are those of ``triton.language.random.philox``; every backend
(cpu ``csrc/include/decodekit/rng.cuh``, cuda the same header, triton ``triton_kernels/rng.py``)
reproduces this bit for bit (tests/ops/test_rng.py, against tests/data/philox4x32_10.json).

All arithmetic below stays below 2**63 so torch's int64 never overflows: 32x32-bit products are
split into 16-bit halves.
"""

from __future__ import annotations

import enum

import torch

MASK32 = 0xFFFFFFFF
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_ROUNDS = 10
# float32(4.6566127342e-10) == 2**-31 rounded; the mapping's largest value is 0.99999994 < 1.
UNIFORM_SCALE = 4.6566127342e-10


class Stream(enum.IntEnum):
    """Counter word ``c2``: which random quantity of an op a draw is. Never renumber."""

    SAMPLE_TOKEN = 0  # Gumbel noise of the token draw in `sample`
    ACCEPT_COIN = 1  # speculative verification: acceptance coin per draft position / node
    RESIDUAL_TOKEN = 2  # speculative verification: draw from the residual / bonus distribution
    PROPOSAL_TOKEN = 3  # denoising: Gumbel noise of the proposed token per canvas position
    CONFIDENCE_NOISE = 4  # denoising: `random` confidence
    TRANSFER_COIN = 5  # denoising: Bernoulli transfer per canvas position
    SELECTION_NOISE = 6  # denoising: Gumbel noise of a sampled top-k selection (Dream's alg_temp)
    DIFFUSION_TOKEN = 7  # discrete diffusion: Gumbel noise of the next token per canvas position


def _mul_hi_lo(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of the 64-bit product of uint32 values held in int64."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    p0 = a_lo * b_lo
    p1 = a_lo * b_hi
    p2 = a_hi * b_lo
    p3 = a_hi * b_hi
    mid = (p0 >> 16) + (p1 & 0xFFFF) + (p2 & 0xFFFF)
    low = ((mid & 0xFFFF) << 16) | (p0 & 0xFFFF)
    high = p3 + (p1 >> 16) + (p2 >> 16) + (mid >> 16)
    return high & MASK32, low & MASK32


def split_seed(seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Key words (k0, k1) of int64 seeds, reading the seed as an unsigned 64-bit number."""
    seed = seed.to(torch.int64)
    k0 = seed & MASK32
    k1 = (seed >> 32) & MASK32  # arithmetic shift, then mask == logical shift of the bit pattern
    return k0, k1


def philox4x32(seed, c0, c1, c2, c3) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of broadcastable int64 tensors holding uint32 values; returns 4 int64 words."""
    k0, k1 = split_seed(torch.as_tensor(seed, dtype=torch.int64))
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & MASK32 for c in (c0, c1, c2, c3))
    c0, c1, c2, c3, k0, k1 = torch.broadcast_tensors(c0, c1, c2, c3, k0, k1)
    for _ in range(PHILOX_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(c2, PHILOX_ROUND_B)
        hi_a, lo_a = _mul_hi_lo(c0, PHILOX_ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & MASK32
        k1 = (k1 + PHILOX_KEY_B) & MASK32
    return c0, c1, c2, c3


def uint_to_uniform_float(word: torch.Tensor) -> torch.Tensor:
    """Triton's mapping of a uint32 (in int64) to float32 in [0, 1): ~x for negative int32, then scale."""
    as_int32 = torch.where(word >= 2**31, word - 2**32, word)
    folded = torch.where(as_int32 < 0, -as_int32 - 1, as_int32)
    return folded.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def counter_words(offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c1, c3) = (low, high) 32 bits of an int64 offset."""
    offset = offset.to(torch.int64)
    return offset & MASK32, (offset >> 32) & MASK32


def uniform(seed, offset, stream: int, index) -> torch.Tensor:
    """Uniforms of the contract; all arguments broadcast (seed/offset usually [B, 1], index [n])."""
    seed = torch.as_tensor(seed, dtype=torch.int64)
    offset_lo, offset_hi = counter_words(torch.as_tensor(offset, dtype=torch.int64))
    index = torch.as_tensor(index, dtype=torch.int64)
    word0, _, _, _ = philox4x32(seed, index, offset_lo, int(stream), offset_hi)
    return uint_to_uniform_float(word0)


def philox_uniform(seed: torch.Tensor, offset: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """``u[b, i] = uniform(seed[b], offset[b], stream, counter i)`` as float32 ``[B, n]``."""
    index = torch.arange(n, dtype=torch.int64, device=seed.device)
    return uniform(seed.reshape(-1, 1), offset.reshape(-1, 1), stream, index)
