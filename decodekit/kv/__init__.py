"""Paged KV cache bookkeeping: the block allocator and the per-layer K/V storage.

``BlockAllocator`` decides which physical blocks each sequence uses (reference counts,
copy-on-write forks, truncation, optional prefix caching); ``PagedKVCache`` owns the K/V tensors
and turns a batch of sequences into the ``block_table``/``seq_lens``/``cu_seqlens_q``/
``slot_mapping`` tensors that ``decodekit.ops.kv_append`` and ``paged_attention`` take.

One step of a model layer over a batch (prefill chunks, decode tokens, draft tokens alike)::

    cache = PagedKVCache(num_layers, num_kv_heads, head_dim, torch.float16, "cuda",
                         num_blocks=4096, block_size=16)
    cache.allocator.allocate("req-0")                    # once per request
    meta = cache.append(["req-0", "req-1"], [prompt_len, 1])
    for layer in range(num_layers):
        k_cache, v_cache = cache.layer(layer)
        ops.kv_append(k, v, k_cache, v_cache, meta.slot_mapping, validate=False)
        out = ops.paged_attention(q, k_cache, v_cache, meta.block_table, meta.seq_lens,
                                  meta.cu_seqlens_q, validate=False)

Parallel sampling forks a request (``cache.allocator.fork(parent, child)``: shared blocks, the
partially filled last block is copied by ``kv_copy_blocks`` inside the next ``append``);
speculative decoding appends the draft tokens, then ``cache.allocator.truncate(seq, accepted_len)``;
masked diffusion appends a block once and re-runs it with ``cache.rewrite(seqs, block_lens)``
and ``mask="full"`` (or ``"custom"``) at every denoising step.
"""

from decodekit.kv.allocator import BlockAllocator, OutOfBlocksError
from decodekit.kv.cache import BatchMetadata, PagedKVCache

__all__ = ["BatchMetadata", "BlockAllocator", "OutOfBlocksError", "PagedKVCache"]
