"""Paged K/V storage for every layer plus the batch metadata the paged_kv ops take."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np
import torch

from decodekit import ops
from decodekit.kv.allocator import BlockAllocator, OutOfBlocksError


@dataclass
class BatchMetadata:
    """What one forward step over a batch of sequences passes to ``kv_append``/``paged_attention``.

    Attributes:
        block_table: ``[B, max_blocks]`` int32, ``-1`` padded.
        seq_lens: ``[B]`` int32, keys per sequence including this step's tokens.
        cu_seqlens_q: ``[B+1]`` int32, query rows per sequence (this step's tokens).
        slot_mapping: ``[T]`` int64, where this step's K/V go (``T = cu_seqlens_q[-1]``).
    """

    block_table: torch.Tensor
    seq_lens: torch.Tensor
    cu_seqlens_q: torch.Tensor
    slot_mapping: torch.Tensor


class PagedKVCache:
    """K and V of every layer in ``[L, NB, BS, Hkv, D]`` tensors (NHD per layer) plus a
    :class:`BlockAllocator`. One tensor for all layers lets copy-on-write copy a block in every
    layer with one ``kv_copy_blocks`` launch.

    Args:
        num_layers, num_kv_heads, head_dim: model shape.
        dtype: float32, float16 or bfloat16.
        device: where the K/V live.
        num_blocks, block_size: the paged pool (``num_blocks * block_size`` token slots).
        prefix_caching: share full blocks of identical prompt prefixes (see ``BlockAllocator``).
        backend: backend of the block copies (default per DESIGN.md).
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
        num_blocks: int,
        block_size: int,
        *,
        prefix_caching: bool = False,
        backend: str | None = None,
    ):
        for name, value in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.allocator = BlockAllocator(num_blocks, block_size, prefix_caching=prefix_caching)
        self.device = torch.device(device)
        self.backend = backend
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)

    @property
    def block_size(self) -> int:
        return self.allocator.block_size

    @property
    def num_layers(self) -> int:
        return self.k.shape[0]

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(k_cache, v_cache)`` of one layer: contiguous ``[NB, BS, Hkv, D]`` views."""
        return self.k[index], self.v[index]

    # ------------------------------------------------------------------ batch steps

    def append(
        self,
        seqs: Sequence[Hashable],
        num_new_tokens: Sequence[int],
        token_ids: Sequence[Sequence[int] | None] | None = None,
        *,
        max_blocks: int | None = None,
    ) -> BatchMetadata:
        """Grow each sequence by its new tokens (prefill chunk, decode token, draft tokens) and
        return the step's metadata; the new tokens are the step's queries.

        All-or-nothing: if the pool cannot hold every sequence's growth (plus copy-on-write
        copies), :class:`OutOfBlocksError` is raised before anything changes. Pending block copies
        run here (``kv_copy_blocks`` over all layers), before the caller writes the new K/V.

        Args:
            seqs: ``B`` sequence ids (allocated, distinct).
            num_new_tokens: ``B`` counts >= 0.
            token_ids: optional per-sequence new token ids (for prefix caching).
            max_blocks: pad ``block_table`` to this width (fixed shapes, e.g. CUDA graphs).
        """
        self._check_batch(seqs, num_new_tokens)
        lengths = [self.allocator.length(s) for s in seqs]
        writes = [(s, n0, n0 + n) for s, n0, n in zip(seqs, lengths, num_new_tokens)]
        self._reserve(writes)
        ids = token_ids if token_ids is not None else [None] * len(seqs)
        slots = [self.allocator.append_slots(s, n, t) for s, n, t in zip(seqs, num_new_tokens, ids)]
        self.flush_copies()
        return self._metadata(seqs, num_new_tokens, slots, max_blocks)

    def rewrite(
        self,
        seqs: Sequence[Hashable],
        q_lens: Sequence[int],
        *,
        starts: Sequence[int] | None = None,
        max_blocks: int | None = None,
    ) -> BatchMetadata:
        """Metadata for overwriting ``q_lens[b]`` positions of each sequence in place (a masked-
        diffusion block re-run at every denoising step); shared blocks among them are copied
        first. The sequences do not grow.

        Args:
            starts: optional first rewritten position of each sequence: positions
                ``starts[b] .. starts[b] + q_lens[b] - 1`` (a block in the MIDDLE of a canvas,
                Fast-dLLM's dual cache). Default: the LAST ``q_lens[b]`` positions. Note that
                ``paged_attention`` places a request's queries at its last ``q_len`` positions for
                the ``"causal"`` and ``"custom"`` masks; rows rewritten in the middle are only
                meaningful under ``mask="full"`` (every query sees all ``seq_lens[b]`` keys).
        """
        self._check_batch(seqs, q_lens)
        if starts is not None and len(starts) != len(seqs):
            raise ValueError(f"starts must have one entry per sequence: {len(seqs)} sequences, {len(starts)} starts")
        writes = []
        for index, (seq, n) in enumerate(zip(seqs, q_lens)):
            length = self.allocator.length(seq)
            if starts is None:
                if n > length:
                    raise ValueError(f"q_lens: sequence {seq!r} has {length} positions, cannot rewrite the last {n}")
                writes.append((seq, length - n, length))
                continue
            start = starts[index]
            if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start <= length - n:
                raise ValueError(f"starts[{index}]: sequence {seq!r} has {length} positions, cannot rewrite "
                                 f"{n} positions from {start!r}")
            writes.append((seq, int(start), int(start) + n))
        self._reserve(writes)
        slots = [self.allocator.rewrite_slots(s, start, end) for s, start, end in writes]
        self.flush_copies()
        return self._metadata(seqs, q_lens, slots, max_blocks)

    def flush_copies(self) -> None:
        """Run the allocator's pending copy-on-write block copies in every layer."""
        pairs = self.allocator.take_copies()
        if pairs:
            src, dst = self._upload(np.asarray(pairs, dtype=np.int32).T.copy())
            ops.kv_copy_blocks(self.k, self.v, src, dst, backend=self.backend, validate=False)

    # ------------------------------------------------------------------ internals

    def _check_batch(self, seqs, counts) -> None:
        if len(seqs) != len(counts):
            raise ValueError(f"need one count per sequence: {len(seqs)} sequences, {len(counts)} counts")
        if len(set(seqs)) != len(seqs):
            raise ValueError("seqs must be distinct within one batch")
        if any(int(n) < 0 for n in counts):
            raise ValueError(f"token counts must be >= 0, got {list(counts)}")

    def _reserve(self, writes) -> None:
        needed = self.allocator.blocks_needed(writes)
        if needed > self.allocator.num_free_blocks:
            raise OutOfBlocksError(needed, self.allocator.num_free_blocks)

    def _metadata(self, seqs, q_lens, slots, max_blocks) -> BatchMetadata:
        tables = [self.allocator.block_table(s) for s in seqs]
        widest = max((len(t) for t in tables), default=0)
        width = max(widest, 1) if max_blocks is None else max_blocks
        if width < widest:
            raise ValueError(f"max_blocks={max_blocks} is smaller than the widest block table ({widest})")
        table = np.full((len(seqs), width), -1, dtype=np.int32)
        lengths = np.fromiter((len(t) for t in tables), dtype=np.int64, count=len(tables))
        if widest:  # scatter all tables at once: row b, columns 0 .. len(table_b)-1
            rows = np.repeat(np.arange(len(seqs)), lengths)
            cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            table[rows, cols] = np.fromiter(itertools.chain.from_iterable(tables), dtype=np.int32, count=len(rows))
        seq_lens = np.array([self.allocator.length(s) for s in seqs], dtype=np.int32)
        cu = np.zeros(len(seqs) + 1, dtype=np.int32)
        cu[1:] = np.cumsum(np.asarray(q_lens, dtype=np.int64))
        slot_mapping = np.concatenate(slots) if slots else np.empty(0, dtype=np.int64)
        return BatchMetadata(self._upload(table), self._upload(seq_lens), self._upload(cu),
                             self._upload(slot_mapping.astype(np.int64)))

    def _upload(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type != "cuda":
            return tensor.to(self.device)
        # A pageable host->device copy waits for the GPU's queued work; a pinned buffer from torch's
        # caching host allocator (kept alive until the copy ran) lets the step's metadata upload
        # overlap the previous step's kernels.
        return tensor.pin_memory().to(self.device, non_blocking=True)
