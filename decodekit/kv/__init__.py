"""Paged KV cache bookkeeping: the block allocator and the per-layer K/V storage.

``BlockAllocator`` decides which physical blocks each sequence uses (reference counts,
copy-on-write forks, truncation, optional prefix caching); ``PagedKVCache`` owns the K/V tensors
and turns a batch of sequences into the ``block_table``/``seq_lens``/``cu_seqlens_q``/
``slot_mapping`` tensors that ``decodekit.ops.kv_append`` and ``paged_attention`` take.
"""

from decodekit.kv.allocator import BlockAllocator, OutOfBlocksError
from decodekit.kv.cache import BatchMetadata, PagedKVCache

__all__ = ["BatchMetadata", "BlockAllocator", "OutOfBlocksError", "PagedKVCache"]
