"""PagedKVCache: batch metadata, and a multi-step decode through the cache checked against
attention over per-sequence contiguous K/V histories (forks, rollbacks and in-place rewrites)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from decodekit import ops
from decodekit.kv import BlockAllocator, OutOfBlocksError, PagedKVCache

LAYERS, HEADS_KV, HEADS_Q, HEAD_DIM, BLOCK = 2, 2, 4, 16, 4


def _cache(num_blocks=32, device="cpu", **kwargs):
    return PagedKVCache(LAYERS, HEADS_KV, HEAD_DIM, torch.float32, device, num_blocks, BLOCK, **kwargs)


def test_storage_is_one_tensor_per_k_and_v_with_contiguous_layer_views():
    cache = _cache(num_blocks=8)
    assert cache.k.shape == (LAYERS, 8, BLOCK, HEADS_KV, HEAD_DIM) and cache.v.shape == cache.k.shape
    k1, v1 = cache.layer(1)
    assert k1.is_contiguous() and k1.data_ptr() == cache.k[1].data_ptr() and v1.shape == (8, BLOCK, HEADS_KV, HEAD_DIM)
    assert isinstance(cache.allocator, BlockAllocator) and cache.block_size == BLOCK


def test_append_metadata_matches_the_allocator():
    cache = _cache()
    for seq in ("a", "b", "c"):
        cache.allocator.allocate(seq)
    meta = cache.append(["a", "b", "c"], [6, 3, 9])
    alloc = cache.allocator
    assert meta.block_table.dtype == torch.int32 and meta.seq_lens.dtype == torch.int32
    assert meta.cu_seqlens_q.dtype == torch.int32 and meta.slot_mapping.dtype == torch.int64
    assert meta.block_table.shape == (3, 3)
    for row, seq in enumerate(("a", "b", "c")):
        table = alloc.block_table(seq)
        assert meta.block_table[row, : len(table)].tolist() == table
        assert (meta.block_table[row, len(table):] == -1).all()
    assert meta.seq_lens.tolist() == [6, 3, 9] and meta.cu_seqlens_q.tolist() == [0, 6, 9, 18]
    want = np.concatenate([alloc.slots(s, 0, alloc.length(s)) for s in ("a", "b", "c")])
    assert meta.slot_mapping.tolist() == want.tolist()
    decode = cache.append(["c", "a"], [1, 1], max_blocks=5)
    assert decode.block_table.shape == (2, 5) and decode.seq_lens.tolist() == [10, 7]
    assert decode.cu_seqlens_q.tolist() == [0, 1, 2]
    assert decode.slot_mapping.tolist() == [alloc.slots("c", 9, 10)[0], alloc.slots("a", 6, 7)[0]]


def test_rewrite_metadata_covers_the_last_positions_without_growing():
    cache = _cache()
    cache.allocator.allocate("d")
    cache.append(["d"], [10])
    meta = cache.rewrite(["d"], [4])
    assert meta.seq_lens.tolist() == [10] and meta.cu_seqlens_q.tolist() == [0, 4]
    assert meta.slot_mapping.tolist() == cache.allocator.slots("d", 6, 10).tolist()
    with pytest.raises(ValueError, match="q_lens"):
        cache.rewrite(["d"], [11])


def test_batch_out_of_blocks_changes_nothing():
    cache = _cache(num_blocks=4)
    for seq in ("a", "b"):
        cache.allocator.allocate(seq)
    cache.append(["a"], [8])
    before = copy.deepcopy((cache.allocator.ref_counts, cache.allocator._seqs, list(cache.allocator._free)))
    with pytest.raises(OutOfBlocksError):
        cache.append(["a", "b"], [4, 5])  # a alone would fit; the batch does not
    assert copy.deepcopy((cache.allocator.ref_counts, cache.allocator._seqs, list(cache.allocator._free))) == before


@pytest.mark.parametrize(
    "seqs, counts, match",
    [(["a", "a"], [1, 1], "distinct"), (["a"], [1, 2], "one count"), (["a"], [-1], ">= 0")],
)
def test_bad_batches_raise(seqs, counts, match):
    cache = _cache()
    cache.allocator.allocate("a")
    with pytest.raises(ValueError, match=match):
        cache.append(seqs, counts)


def test_max_blocks_smaller_than_a_table_raises():
    cache = _cache()
    cache.allocator.allocate("a")
    with pytest.raises(ValueError, match="max_blocks"):
        cache.append(["a"], [9], max_blocks=2)


def test_bad_construction_raises():
    with pytest.raises(TypeError, match="dtype"):
        PagedKVCache(1, 1, 8, torch.int32, "cpu", 4, 4)
    with pytest.raises(ValueError, match="head_dim"):
        PagedKVCache(1, 1, 0, torch.float32, "cpu", 4, 4)


# ------------------------------------------------------------------ end to end


class ContiguousTruth:
    """Per-sequence K/V histories in ordinary tensors: what the paged cache must reproduce."""

    def __init__(self):
        self.k: dict = {}
        self.v: dict = {}

    def write(self, seq, start, k, v):  # k, v: [L, n, Hkv, D]
        old_k = self.k.get(seq, k[:, :0])
        old_v = self.v.get(seq, v[:, :0])
        end = start + k.shape[1]
        self.k[seq] = torch.cat([old_k[:, :start], k, old_k[:, end:]], 1)
        self.v[seq] = torch.cat([old_v[:, :start], v, old_v[:, end:]], 1)

    def attend(self, layer, seq, q, causal):  # q: [n, Hq, D] for the last n positions
        keys = self.k[seq][layer].repeat_interleave(HEADS_Q // HEADS_KV, 1).transpose(0, 1)
        values = self.v[seq][layer].repeat_interleave(HEADS_Q // HEADS_KV, 1).transpose(0, 1)
        n, total = q.shape[0], keys.shape[1]
        allowed = torch.ones(n, total, dtype=torch.bool)
        if causal:
            allowed = torch.arange(total)[None, :] <= total - n + torch.arange(n)[:, None]
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), keys, values, attn_mask=allowed)
        return out.transpose(0, 1)


def _step(cache, truth, meta, seqs, counts, starts, generator, causal=True):
    """One forward step: write this step's K/V in every layer, then attend."""
    total = sum(counts)
    new_k = torch.randn(LAYERS, total, HEADS_KV, HEAD_DIM, generator=generator)
    new_v = torch.randn(LAYERS, total, HEADS_KV, HEAD_DIM, generator=generator)
    q = torch.randn(LAYERS, total, HEADS_Q, HEAD_DIM, generator=generator)
    offsets = np.cumsum([0] + list(counts))
    for i, seq in enumerate(seqs):
        rows = slice(offsets[i], offsets[i + 1])
        truth.write(seq, starts[i], new_k[:, rows], new_v[:, rows])
    device = cache.device
    for layer in range(LAYERS):
        k_cache, v_cache = cache.layer(layer)
        ops.kv_append(new_k[layer].to(device), new_v[layer].to(device), k_cache, v_cache, meta.slot_mapping)
        got = ops.paged_attention(q[layer].to(device), k_cache, v_cache, meta.block_table, meta.seq_lens,
                                  meta.cu_seqlens_q, mask="causal" if causal else "full").cpu()
        want = torch.cat([truth.attend(layer, seq, q[layer, offsets[i]:offsets[i + 1]], causal)
                          for i, seq in enumerate(seqs)])
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def _append(cache, truth, seqs, counts, generator):
    starts = [cache.allocator.length(s) for s in seqs]
    meta = cache.append(seqs, counts)
    _step(cache, truth, meta, seqs, counts, starts, generator)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_decode_with_forks_rollbacks_and_rewrites_matches_contiguous_attention(device):
    generator = torch.Generator().manual_seed(0)
    cache, truth = _cache(num_blocks=40, device=device), ContiguousTruth()
    for seq in ("a", "b"):
        cache.allocator.allocate(seq)
    _append(cache, truth, ["a", "b"], [7, 10], generator)  # prefill of two prompts
    # parallel sampling: b forks twice; all three write into b's shared, partially filled block
    for child in ("b1", "b2"):
        cache.allocator.fork("b", child)
        truth.k[child], truth.v[child] = truth.k["b"].clone(), truth.v["b"].clone()
    for _ in range(3):
        _append(cache, truth, ["a", "b", "b1", "b2"], [1, 1, 1, 1], generator)
    assert cache.allocator.block_table("b")[:2] == cache.allocator.block_table("b1")[:2]  # full blocks stay shared
    # speculative decoding: a verifies 5 draft tokens, accepts 2, then continues
    _append(cache, truth, ["a"], [5], generator)
    cache.allocator.truncate("a", cache.allocator.length("a") - 3)
    truth.k["a"], truth.v["a"] = truth.k["a"][:, :-3], truth.v["a"][:, :-3]
    _append(cache, truth, ["a", "b1"], [1, 2], generator)
    # masked diffusion on a fork of b2: append a 4-token block, then rewrite it in place twice
    cache.allocator.fork("b2", "d")
    truth.k["d"], truth.v["d"] = truth.k["b2"].clone(), truth.v["b2"].clone()
    _append(cache, truth, ["d"], [4], generator)
    for _ in range(2):
        length = cache.allocator.length("d")
        meta = cache.rewrite(["d"], [4])
        _step(cache, truth, meta, ["d"], [4], [length - 4], generator, causal=False)
    _append(cache, truth, ["b2", "d", "a"], [1, 1, 1], generator)  # b2 is unharmed by d's rewrites
    for seq in list(cache.allocator.sequences()):
        cache.allocator.free(seq)
    cache.allocator.check_invariants()
    assert cache.allocator.num_free_blocks == 40
