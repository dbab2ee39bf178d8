"""Philox4x32-10 uniforms of decodekit's RNG contract, as Triton functions.

The contract (decodekit/reference/rng.py) is defined by ``tl.philox`` and
``tl.uint_to_uniform_float`` themselves, so these helpers only lay out the counter:

* key  = the row's int64 seed, read as unsigned 64 bits (``tl.philox`` splits it into two words);
* c0   = element index inside the row, c1 / c3 = low / high 32 bits of ``offset``, c2 = stream id;
* the uniform comes from the first output word and can be exactly 0.0 (callers guard logs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

PHILOX_BLOCK = 1024
# Largest Gumbel noise -log(-log(u)) for u <= 0.99999994 (the contract's largest uniform) is 16.64;
# the margin absorbs log rounding. Gumbel-max kernels skip the Philox draws of a tile whose best
# log-weight plus this bound cannot beat the best key so far.
MAX_GUMBEL_NOISE = tl.constexpr(17.0)


@triton.jit
def contract_uniform(seed, offset, stream, index):
    """Uniforms of the contract for a tile of element indices ``index`` (int32, >= 0).

    ``seed`` and ``offset`` are int64 scalars, ``stream`` an int (``Stream`` in reference/rng.py).
    """
    c0 = index.to(tl.uint32)
    # Triton's philox bitcasts counters, so every counter word must already be 32 bits wide;
    # the value casts below truncate the int64 offset to its low / high word.
    zero = c0 * 0
    c1 = zero + offset.to(tl.uint32)
    c2 = zero + tl.cast(stream, tl.uint32)
    c3 = zero + (offset >> 32).to(tl.uint32)
    word0, _, _, _ = tl.philox(seed, c0, c1, c2, c3)
    return tl.uint_to_uniform_float(word0)


@triton.jit
def _philox_uniform_kernel(seed_ptr, offset_ptr, out_ptr, n, stream, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    index = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    seed = tl.load(seed_ptr + row)
    offset = tl.load(offset_ptr + row)
    u = contract_uniform(seed, offset, stream, index)
    tl.store(out_ptr + row.to(tl.int64) * n + index, u, mask=index < n)


def philox_uniform(seed: torch.Tensor, offset: torch.Tensor, stream: int, out: torch.Tensor) -> None:
    """``out[b, i] = uniform(seed[b], offset[b], stream, counter i)`` for ``out`` float32 ``[B, n]``.

    ``seed`` / ``offset``: int64 ``[B]``; all tensors contiguous on one device.
    """
    batch, n = out.shape
    if n == 0:
        return
    grid = (batch, triton.cdiv(n, PHILOX_BLOCK))
    _philox_uniform_kernel[grid](seed, offset, out, n, int(stream), BLOCK=PHILOX_BLOCK, num_warps=4)
