"""Reference-counted block allocator with copy-on-write and optional prefix caching.

Pure bookkeeping on the host: which physical blocks of the paged cache each sequence uses. The
K/V data lives in :class:`decodekit.kv.PagedKVCache`; the only data movement the allocator asks
for is a list of block copies (copy-on-write), executed by ``decodekit.ops.kv_copy_blocks``.

Model:

* A sequence (any hashable id chosen by the caller) has ``length`` token positions stored in
  ``ceil(length / block_size)`` blocks; position p is row ``p % block_size`` of its block
  ``p // block_size``. Slot = ``block * block_size + row``.
* ``ref_count[block]`` = number of sequences whose table holds the block. ``fork`` shares every
  block (no data is copied). Writing a position whose block is shared first gives the writer a
  private copy: a fresh block plus a pending ``(src, dst)`` copy, returned by ``take_copies``.
  The caller must run the pending copies before writing the K/V of the new slots (the cache does),
  and fork a sequence only after the K/V of its slots is written.
* A block whose copy is pending stays reserved (not reusable) until ``take_copies``, so a copy's
  source is never overwritten by a new owner; a pending copy whose destination is freed is
  dropped. Hence pending copies never repeat a destination nor use a destination as a source
  (the ``kv_copy_blocks`` rule).
* Prefix caching (``prefix_caching=True``): a FULL block whose token ids are all known gets a hash
  chained with its parent block's hash (``hash((parent_hash, tokens))``) and enters the cache at
  the sequence's next write or fork (by then the step that filled it has written its K/V; the K/V
  of an abandoned step never enters). ``allocate`` with the
  prompt's token ids reuses the longest chain of cached blocks, comparing the stored tokens and
  parent hash of every hit (a hash collision is never a hit). Blocks nobody holds but that are
  cached stay readable until evicted, least recently freed first, when free blocks run out.
  A sequence's last block of a prompt is never a hit, so the caller always computes at least one
  token (it needs that token's logits). Blocks still being rewritten (diffusion) must be appended
  without token ids; they then never enter the cache.
* Every method that needs new blocks checks first and raises :class:`OutOfBlocksError` before
  changing anything.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Sequence

import numpy as np


class OutOfBlocksError(RuntimeError):
    """Not enough free (or evictable cached) blocks; nothing was changed."""

    def __init__(self, needed: int, available: int):
        super().__init__(f"out of KV cache blocks: need {needed}, {available} free")
        self.needed, self.available = needed, available


@dataclass
class _SeqState:
    blocks: list[int] = field(default_factory=list)
    length: int = 0
    tokens: list[int] = field(default_factory=list)  # known token ids of positions [0, len(tokens))
    hashes: list[int] = field(default_factory=list)  # chain hashes of the first len(hashes) blocks

    def clone(self) -> "_SeqState":
        return _SeqState(list(self.blocks), self.length, list(self.tokens), list(self.hashes))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _chain_hash(parent: int | None, tokens: tuple[int, ...]) -> int:
    return hash((parent, tokens))


class BlockAllocator:
    """Blocks ``0 .. num_blocks-1`` of ``block_size`` tokens, shared by reference count.

    Args:
        num_blocks: number of physical blocks (>= 1).
        block_size: tokens per block (>= 1).
        prefix_caching: reuse full blocks across sequences by token-id hash chains.
    """

    def __init__(self, num_blocks: int, block_size: int, *, prefix_caching: bool = False):
        for name, value in (("num_blocks", num_blocks), ("block_size", block_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.num_blocks, self.block_size, self.prefix_caching = num_blocks, block_size, prefix_caching
        self.ref_counts = [0] * num_blocks
        self._free: collections.deque[int] = collections.deque(range(num_blocks))
        self._evictable: collections.OrderedDict[int, None] = collections.OrderedDict()  # cached, unheld; LRU first
        self._block_hash: dict[int, int] = {}
        self._hash_block: dict[int, int] = {}
        self._block_key: dict[int, tuple[int | None, tuple[int, ...]]] = {}  # (parent hash, tokens) per block
        self._seqs: dict[Hashable, _SeqState] = {}
        self._pending: dict[int, int] = {}  # dst -> src, in order of creation
        self._pins: collections.Counter[int] = collections.Counter()  # pending copies reading a block

    # ------------------------------------------------------------------ queries

    @property
    def num_free_blocks(self) -> int:
        """Blocks available to new writes: free plus cached-but-unheld (evictable)."""
        return len(self._free) + len(self._evictable)

    def __contains__(self, seq: Hashable) -> bool:
        return seq in self._seqs

    def sequences(self) -> list[Hashable]:
        return list(self._seqs)

    def length(self, seq: Hashable) -> int:
        return self._state(seq).length

    def block_table(self, seq: Hashable) -> list[int]:
        return list(self._state(seq).blocks)

    def slots(self, seq: Hashable, start: int, end: int) -> np.ndarray:
        """int64 ``[end - start]`` slots of existing positions ``start .. end-1`` of ``seq``."""
        state = self._state(seq)
        if not 0 <= start <= end <= state.length:
            raise ValueError(f"positions [{start}, {end}) are not inside sequence {seq!r} of length {state.length}")
        first = start // self.block_size  # convert only the blocks in range: a decode step touches one
        table = np.asarray(state.blocks[first : _ceil_div(end, self.block_size)], dtype=np.int64)
        positions = np.arange(start, end, dtype=np.int64)
        return table[positions // self.block_size - first] * self.block_size + positions % self.block_size

    def blocks_needed(self, writes: Iterable[tuple[Hashable, int, int]]) -> int:
        """New blocks that writing positions ``[start, end)`` of each ``(seq, start, end)`` takes,
        in order (``end`` past the length grows the sequence): growth plus copies of shared blocks."""
        simulated: dict[int, int] = {}
        needed = 0
        for seq, start, end in writes:
            state = self._state(seq)
            if start >= end:
                continue
            last = _ceil_div(end, self.block_size)
            for index in range(start // self.block_size, min(last, len(state.blocks))):
                block = state.blocks[index]
                holders = simulated.get(block, self.ref_counts[block])
                if holders > 1:
                    needed += 1
                    simulated[block] = holders - 1
            needed += max(0, last - len(state.blocks))
        return needed

    def can_append(self, seq: Hashable, n: int) -> bool:
        length = self.length(seq)
        return self.blocks_needed([(seq, length, length + n)]) <= self.num_free_blocks

    # ------------------------------------------------------------------ sequence life cycle

    def allocate(self, seq: Hashable, token_ids: Sequence[int] | None = None) -> int:
        """Register a new, empty sequence; with prefix caching and ``token_ids`` (the prompt),
        start it with the longest cached prefix of full blocks.

        Returns:
            The number of positions already cached (a multiple of ``block_size``, less than
            ``len(token_ids)``): append the remaining tokens with :meth:`append_slots`.
        """
        if seq in self._seqs:
            raise ValueError(f"sequence {seq!r} is already allocated")
        state = _SeqState()
        if self.prefix_caching and token_ids is not None:
            tokens = [int(t) for t in token_ids]
            parent = None
            for index in range((len(tokens) - 1) // self.block_size):
                chunk = tuple(tokens[index * self.block_size : (index + 1) * self.block_size])
                digest = _chain_hash(parent, chunk)
                block = self._hash_block.get(digest)
                if block is None or self._block_key[block] != (parent, chunk):
                    break
                state.blocks.append(block)
                state.hashes.append(digest)
                parent = digest
            for block in state.blocks:
                self._hold(block)
            state.length = len(state.blocks) * self.block_size
            state.tokens = tokens[: state.length]
        self._seqs[seq] = state
        return state.length

    def append_slots(self, seq: Hashable, n: int, token_ids: Sequence[int] | None = None) -> np.ndarray:
        """Grow ``seq`` by ``n`` positions; returns their int64 ``[n]`` slot mapping.

        ``token_ids`` (``n`` ids) let full blocks enter the prefix cache; without them the
        positions' tokens are unknown and no later block of ``seq`` is cached.
        """
        state = self._state(seq)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        return self._write(seq, state.length, state.length + int(n), token_ids)

    def rewrite_slots(self, seq: Hashable, start: int, end: int, token_ids: Sequence[int] | None = None) -> np.ndarray:
        """Slots to overwrite positions ``start .. end-1`` of ``seq`` in place (a diffusion block),
        after private copies of any shared block among them."""
        state = self._state(seq)
        if not 0 <= start <= end <= state.length:
            raise ValueError(f"positions [{start}, {end}) are not inside sequence {seq!r} of length {state.length}")
        return self._write(seq, start, end, token_ids)

    def fork(self, parent: Hashable, child: Hashable) -> None:
        """``child`` shares every block of ``parent`` (copy-on-write); no block is taken."""
        if child in self._seqs:
            raise ValueError(f"sequence {child!r} is already allocated")
        self._register_written_blocks(self._state(parent))
        state = self._state(parent).clone()
        for block in state.blocks:
            self._hold(block)
        self._seqs[child] = state

    def mark_written(self, seq: Hashable) -> None:
        """The K/V of every slot handed out to ``seq`` so far are written: with prefix caching its
        full known-id blocks enter the cache now instead of at its next write or fork."""
        self._register_written_blocks(self._state(seq))

    def truncate(self, seq: Hashable, new_length: int) -> None:
        """Drop positions ``new_length ..`` of ``seq`` (rejected draft tokens), freeing whole blocks."""
        state = self._state(seq)
        if isinstance(new_length, bool) or not 0 <= new_length <= state.length:
            raise ValueError(f"new_length must be in [0, {state.length}] for sequence {seq!r}, got {new_length!r}")
        keep = _ceil_div(new_length, self.block_size)
        for block in reversed(state.blocks[keep:]):
            self._release(block)
        del state.blocks[keep:]
        state.length = new_length
        del state.tokens[new_length:]
        del state.hashes[new_length // self.block_size :]

    def free(self, seq: Hashable) -> None:
        """Release every block of ``seq`` (last block first, so it is evicted first) and forget it."""
        state = self._state(seq)
        for block in reversed(state.blocks):
            self._release(block)
        del self._seqs[seq]

    def take_copies(self) -> list[tuple[int, int]]:
        """The pending ``(src, dst)`` block copies, in order; the caller must run them (``kv_copy_blocks``)
        before writing K/V into the slots handed out since the last call."""
        pairs = [(src, dst) for dst, src in self._pending.items()]
        self._pending.clear()
        for src, _ in pairs:
            self._pins[src] -= 1
            if self._pins[src] == 0:
                del self._pins[src]
                if self.ref_counts[src] == 0:
                    self._park(src)
        return pairs

    # ------------------------------------------------------------------ internals

    def _state(self, seq: Hashable) -> _SeqState:
        try:
            return self._seqs[seq]
        except KeyError:
            raise ValueError(f"unknown sequence {seq!r}") from None
        except TypeError:
            raise TypeError(f"sequence ids must be hashable, got {type(seq).__name__}") from None

    def _write(self, seq, start: int, end: int, token_ids) -> np.ndarray:
        state = self._seqs[seq]
        if token_ids is not None:
            token_ids = [int(t) for t in token_ids]
            if len(token_ids) != end - start:
                raise ValueError(f"token_ids must have {end - start} ids, got {len(token_ids)}")
        needed = self.blocks_needed([(seq, start, end)])
        if needed > self.num_free_blocks:
            raise OutOfBlocksError(needed, self.num_free_blocks)
        self._register_written_blocks(state)
        if start == end:
            return np.empty(0, dtype=np.int64)
        first = start // self.block_size
        for index in range(first, len(state.blocks)):
            if index * self.block_size >= end:
                break
            state.blocks[index] = self._make_private(state.blocks[index])
        while len(state.blocks) * self.block_size < end:
            state.blocks.append(self._take())
        state.length = max(state.length, end)
        self._record_tokens(state, start, end, token_ids)
        return self.slots(seq, start, end)

    def _record_tokens(self, state: _SeqState, start: int, end: int, token_ids) -> None:
        del state.hashes[start // self.block_size :]  # written blocks change content
        # K/V after a rewritten position were computed from the old prefix: their ids no longer
        # describe them, so the known ids end at `end` (or at `start` without new ids).
        if token_ids is not None and start <= len(state.tokens):
            state.tokens[start:] = token_ids
        else:
            del state.tokens[start:]

    def _register_written_blocks(self, state: _SeqState) -> None:
        """Enter the sequence's full, known-id blocks into the prefix cache. Called when the
        sequence is written again or forked, i.e. after the step that filled them has written
        their K/V: the K/V of a step that was abandoned (freed or truncated) never enters."""
        if not self.prefix_caching:
            return
        for index in range(len(state.hashes), len(state.tokens) // self.block_size):
            chunk = tuple(state.tokens[index * self.block_size : (index + 1) * self.block_size])
            parent = state.hashes[-1] if state.hashes else None
            digest = _chain_hash(parent, chunk)
            block = state.blocks[index]
            if digest not in self._hash_block and block not in self._block_hash:
                self._block_hash[block], self._hash_block[digest] = digest, block
                self._block_key[block] = (parent, chunk)
            state.hashes.append(digest)

    def _make_private(self, block: int) -> int:
        """The block a sequence may write: ``block`` itself if only it holds it, else a copy."""
        if self.ref_counts[block] == 1:
            self._forget_hash(block)  # its content is about to change
            return block
        fresh = self._take()
        source = self._pending.get(block, block)  # `block` itself awaits a copy: copy from its source
        self._pending[fresh] = source
        self._pins[source] += 1
        self.ref_counts[block] -= 1  # still held by others (was > 1)
        return fresh

    def _take(self) -> int:
        if self._free:
            block = self._free.popleft()
        else:
            block, _ = self._evictable.popitem(last=False)
            self._forget_hash(block)
        self.ref_counts[block] = 1
        return block

    def _hold(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            self._evictable.pop(block, None)
        self.ref_counts[block] += 1

    def _release(self, block: int) -> None:
        self.ref_counts[block] -= 1
        if self.ref_counts[block] > 0:
            return
        source = self._pending.pop(block, None)
        if source is not None:  # nobody will read this copy: drop it
            self._pins[source] -= 1
            if self._pins[source] == 0:
                del self._pins[source]
                if self.ref_counts[source] == 0:
                    self._park(source)
        if self._pins[block] == 0:
            self._pins.pop(block, None)
            self._park(block)

    def _park(self, block: int) -> None:
        """An unheld, unpinned block: cached blocks stay readable until evicted."""
        if block in self._block_hash:
            self._evictable[block] = None
        else:
            self._free.append(block)

    def _forget_hash(self, block: int) -> None:
        digest = self._block_hash.pop(block, None)
        if digest is not None:
            del self._hash_block[digest]
            del self._block_key[block]

    # ------------------------------------------------------------------ consistency

    def check_invariants(self) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent (tests and debugging)."""
        holders = collections.Counter()
        for seq, state in self._seqs.items():
            assert len(state.blocks) == _ceil_div(state.length, self.block_size), (seq, state)
            assert len(set(state.blocks)) == len(state.blocks), (seq, state.blocks)
            assert len(state.tokens) <= state.length and len(state.hashes) <= len(state.tokens) // self.block_size
            holders.update(state.blocks)
        for block in range(self.num_blocks):
            assert self.ref_counts[block] == holders[block], (block, self.ref_counts[block], holders[block])
        free, evictable = list(self._free), list(self._evictable)
        assert len(set(free)) == len(free) and not set(free) & set(evictable)
        idle = {b for b in range(self.num_blocks) if self.ref_counts[b] == 0 and self._pins[b] == 0}
        assert idle == set(free) | set(evictable), (idle, free, evictable)
        assert all(b not in self._block_hash for b in free) and all(b in self._block_hash for b in evictable)
        assert {self._hash_block[h]: h for h in self._hash_block} == self._block_hash
        assert set(self._block_key) == set(self._block_hash)
        assert not set(self._pending) & set(self._pending.values()), self._pending
        assert all(self.ref_counts[dst] > 0 for dst in self._pending)
        assert collections.Counter(self._pending.values()) == +self._pins
