"""BlockAllocator: a model-based property test plus the scenarios decoders produce.

The property test keeps a simulated physical cache (one integer "K/V" per slot) next to the
allocator and follows the allocator's protocol (run pending copies, then write the new slots).
Each position's value is a tag of the token prefix it was computed from, so reading a sequence
back through its block table checks copy-on-write, truncation and prefix-cache hits together.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from decodekit.kv import BlockAllocator, OutOfBlocksError

NUM_BLOCKS, BLOCK_SIZE = 12, 4


def _snapshot(allocator: BlockAllocator):
    return copy.deepcopy(
        (allocator.ref_counts, allocator._seqs, list(allocator._free), list(allocator._evictable),
         allocator._pending, allocator._pins, allocator._block_hash)
    )


class AllocatorMachine(RuleBasedStateMachine):
    """Writes are queued like a decoder's step: slots are handed out, then ``flush`` runs the
    pending copies and writes the queued K/V. A sequence is written or forked only after its
    previous step was flushed (the allocator's protocol); free/truncate may abandon a queued step."""

    prefix_caching = False

    def __init__(self):
        super().__init__()
        self.allocator = BlockAllocator(NUM_BLOCKS, BLOCK_SIZE, prefix_caching=self.prefix_caching)
        self.physical = np.zeros(NUM_BLOCKS * BLOCK_SIZE, dtype=np.int64)
        self.tags: dict[int, list[int]] = {}  # what each position of each sequence must read back
        self.tokens: dict[int, list[int | None]] = {}
        self.queued: dict[int, list[tuple[int, int, int]]] = {}  # seq -> [(position, slot, tag)]
        self.ids = itertools.count()
        self.unique = itertools.count(-1, -1)

    # -------------------------------------------------------------- the protocol a cache follows

    def _tag(self, tokens, position):
        prefix = tokens[: position + 1]
        return hash(tuple(prefix)) if None not in prefix else next(self.unique)

    def _queue(self, seq, start, slots, ids):
        end = start + len(slots)
        tokens = self.tokens[seq]
        tokens[start:end] = list(ids) if ids is not None else [None] * (end - start)
        tags = [self._tag(tokens, p) for p in range(start, end)]
        self.tags[seq][start:end] = tags
        self.queued.setdefault(seq, []).extend(zip(range(start, end), slots.tolist(), tags))

    def _idle(self):
        return sorted(s for s in self.tags if s not in self.queued)

    def _expect_unchanged_on_failure(self, action):
        before = _snapshot(self.allocator)
        try:
            return action()
        except OutOfBlocksError:
            assert _snapshot(self.allocator) == before
            return None

    # -------------------------------------------------------------- rules

    @initialize(prompts=st.lists(st.lists(st.integers(0, 1), max_size=10), min_size=1, max_size=3))
    def start_with_requests(self, prompts):
        for prompt in prompts:
            self.allocate(prompt)
        self.flush()

    @rule()
    def flush(self):
        copies = self.allocator.take_copies()
        event(f"copies per flush: {min(len(copies), 2)}")
        dsts = [dst for _, dst in copies]
        assert len(set(dsts)) == len(dsts) and not set(dsts) & {src for src, _ in copies}
        before = self.physical.copy()
        for src, dst in copies:  # kv_copy_blocks: every pair reads the state before the call
            self.physical[dst * BLOCK_SIZE:(dst + 1) * BLOCK_SIZE] = before[src * BLOCK_SIZE:(src + 1) * BLOCK_SIZE]
        for writes in self.queued.values():
            for _, slot, tag in writes:
                self.physical[slot] = tag
        for seq in self.queued:  # the step ran: its full blocks may enter the prefix cache now
            self.allocator.mark_written(seq)
        self.queued.clear()

    @precondition(lambda self: self.tags)
    @rule(data=st.data(), extra=st.lists(st.integers(0, 1), max_size=4))
    def allocate_shared_prompt(self, data, extra):
        """A new request whose prompt starts like an existing sequence (a shared system prompt)."""
        seq = data.draw(st.sampled_from(sorted(self.tags)))
        tokens = self.tokens[seq]
        known = tokens[: tokens.index(None)] if None in tokens else tokens
        self.allocate(known[: data.draw(st.integers(0, len(known)))] + extra)

    @rule(prompt=st.lists(st.integers(0, 1), max_size=10))
    def allocate(self, prompt):
        seq = next(self.ids)
        cached = self.allocator.allocate(seq, prompt)
        assert cached % BLOCK_SIZE == 0 and (cached == 0 or cached < len(prompt))
        event(f"prefix cache hit: {cached > 0}")
        self.tokens[seq] = list(prompt[:cached])
        self.tags[seq] = [hash(tuple(prompt[: p + 1])) for p in range(cached)]
        if prompt[cached:]:
            slots = self._expect_unchanged_on_failure(
                lambda: self.allocator.append_slots(seq, len(prompt) - cached, prompt[cached:]))
            if slots is not None:
                self._queue(seq, cached, slots, prompt[cached:])

    @precondition(lambda self: self._idle())
    @rule(data=st.data(), n=st.integers(0, 6), known=st.booleans())
    def append(self, data, n, known):
        seq = data.draw(st.sampled_from(self._idle()))
        start = len(self.tags[seq])
        ids = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)) if known else None
        slots = self._expect_unchanged_on_failure(lambda: self.allocator.append_slots(seq, n, ids))
        if slots is not None:
            assert len(slots) == n
            self._queue(seq, start, slots, ids)

    @precondition(lambda self: any(self.tags[s] for s in self._idle()))
    @rule(data=st.data(), known=st.booleans())
    def rewrite(self, data, known):
        seq = data.draw(st.sampled_from([s for s in self._idle() if self.tags[s]]))
        length = len(self.tags[seq])
        start = data.draw(st.integers(0, length - 1))
        end = data.draw(st.integers(start, length))
        ids = data.draw(st.lists(st.integers(0, 1), min_size=end - start, max_size=end - start)) if known else None
        slots = self._expect_unchanged_on_failure(lambda: self.allocator.rewrite_slots(seq, start, end, ids))
        if slots is not None:
            self._queue(seq, start, slots, ids)
            # later positions keep their K/V, computed from the old prefix: no longer "known ids"
            self.tokens[seq][end:] = [None] * (length - end)

    def _fork(self, parent):
        child = next(self.ids)
        free_before = self.allocator.num_free_blocks
        self.allocator.fork(parent, child)
        assert self.allocator.num_free_blocks == free_before  # sharing takes no block
        self.tags[child] = list(self.tags[parent])
        self.tokens[child] = list(self.tokens[parent])
        return child

    @precondition(lambda self: self._idle())
    @rule(data=st.data())
    def fork(self, data):
        self._fork(data.draw(st.sampled_from(self._idle())))

    @precondition(lambda self: self._idle())
    @rule(data=st.data(), n=st.integers(1, 3))
    def fork_and_sample(self, data, n):
        """Parallel sampling / beam step: fork, then both sides append tokens."""
        parent = data.draw(st.sampled_from(self._idle()))
        for seq in (self._fork(parent), parent):
            start = len(self.tags[seq])
            slots = self._expect_unchanged_on_failure(lambda: self.allocator.append_slots(seq, n))
            if slots is not None:
                self._queue(seq, start, slots, None)

    @precondition(lambda self: self.tags)
    @rule(data=st.data())
    def truncate(self, data):
        seq = data.draw(st.sampled_from(sorted(self.tags)))
        new_length = data.draw(st.integers(0, len(self.tags[seq])))
        self.allocator.truncate(seq, new_length)
        del self.tags[seq][new_length:]
        del self.tokens[seq][new_length:]
        if seq in self.queued:  # the abandoned part of a queued step is never written
            self.queued[seq] = [w for w in self.queued[seq] if w[0] < new_length]

    @precondition(lambda self: self.tags)
    @rule(data=st.data())
    def free(self, data):
        seq = data.draw(st.sampled_from(sorted(self.tags)))
        self.allocator.free(seq)
        del self.tags[seq], self.tokens[seq]
        self.queued.pop(seq, None)

    # -------------------------------------------------------------- invariants

    @invariant()
    def bookkeeping_is_consistent(self):
        self.allocator.check_invariants()

    @invariant()
    def every_sequence_reads_back_its_own_values(self):
        if self.queued or self.allocator._pending:
            return  # a step is in flight: its K/V are not written yet
        for seq, tags in self.tags.items():
            assert self.allocator.length(seq) == len(tags)
            assert self.physical[self.allocator.slots(seq, 0, len(tags))].tolist() == tags, seq

    def teardown(self):
        self.flush()
        self.every_sequence_reads_back_its_own_values()
        for seq in list(self.tags):
            self.allocator.free(seq)
        self.allocator.check_invariants()
        assert self.allocator.num_free_blocks == NUM_BLOCKS
        assert all(count == 0 for count in self.allocator.ref_counts)


class PrefixCachingMachine(AllocatorMachine):
    prefix_caching = True


_SETTINGS = settings(max_examples=200, stateful_step_count=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
TestAllocatorProperties = AllocatorMachine.TestCase
TestAllocatorProperties.settings = _SETTINGS
TestPrefixCachingProperties = PrefixCachingMachine.TestCase
TestPrefixCachingProperties.settings = _SETTINGS


# ------------------------------------------------------------------ scenarios


def test_out_of_blocks_raises_before_anything_changes():
    allocator = BlockAllocator(3, 4)
    allocator.allocate("a")
    allocator.append_slots("a", 9)  # 3 blocks
    allocator.allocate("b")
    before = _snapshot(allocator)
    with pytest.raises(OutOfBlocksError) as error:
        allocator.append_slots("b", 1)
    assert error.value.needed == 1 and error.value.available == 0
    assert _snapshot(allocator) == before
    allocator.truncate("a", 4)
    assert allocator.append_slots("b", 1).tolist() == [allocator.block_table("b")[0] * 4]


def test_speculative_verify_then_roll_back_rejected_tokens():
    """Append 5 draft tokens across a block boundary, accept 2: whole blocks beyond are freed."""
    allocator = BlockAllocator(8, 4)
    allocator.allocate(0)
    allocator.append_slots(0, 7)  # prompt: blocks 0, 1 (1 free row)
    draft_slots = allocator.append_slots(0, 5)
    assert len(allocator.block_table(0)) == 3 and allocator.num_free_blocks == 5
    assert draft_slots.tolist() == [7, 8, 9, 10, 11]
    allocator.truncate(0, 7 + 2)
    assert allocator.length(0) == 9 and len(allocator.block_table(0)) == 3
    allocator.truncate(0, 8)  # rejecting the first draft token too frees the third block
    assert len(allocator.block_table(0)) == 2 and allocator.num_free_blocks == 6
    assert allocator.append_slots(0, 1).tolist() == [allocator.block_table(0)[2] * 4]
    allocator.check_invariants()


def test_parallel_sampling_forks_share_the_prompt_and_copy_only_the_partial_block():
    allocator = BlockAllocator(16, 4)
    allocator.allocate("prompt")
    allocator.append_slots("prompt", 10)  # 2 full blocks + 2 rows of a third
    for i in range(3):
        allocator.fork("prompt", i)
    allocator.free("prompt")
    shared = allocator.block_table(0)
    assert all(allocator.ref_counts[b] == 3 for b in shared)
    for i in range(3):
        allocator.append_slots(i, 1)
    copies = allocator.take_copies()
    # The first two samples copy the shared partial block; the last one writes it in place.
    assert [src for src, _ in copies] == [shared[2], shared[2]]
    assert len({dst for _, dst in copies}) == 2
    assert allocator.block_table(2) == shared
    for i in range(3):
        assert allocator.block_table(i)[:2] == shared[:2]
        assert allocator.ref_counts[allocator.block_table(i)[2]] == 1
    assert allocator.ref_counts[shared[0]] == 3
    allocator.check_invariants()


def test_copy_source_is_reserved_until_the_copies_are_taken():
    allocator = BlockAllocator(3, 4)
    allocator.allocate("a")
    allocator.append_slots("a", 2)
    allocator.fork("a", "b")
    allocator.append_slots("b", 1)  # b copies a's block
    allocator.free("a")  # the copy's source has no holder, but its copy has not run yet
    assert allocator.num_free_blocks == 1
    src, dst = allocator.take_copies()[0]
    assert allocator.num_free_blocks == 2 and src not in allocator.block_table("b")


def test_copy_to_a_freed_block_is_dropped():
    allocator = BlockAllocator(4, 4)
    allocator.allocate("a")
    allocator.append_slots("a", 2)
    allocator.fork("a", "b")
    allocator.append_slots("b", 1)
    allocator.free("b")
    assert allocator.take_copies() == []
    allocator.check_invariants()


def test_fork_then_write_into_full_shared_block_by_rewrite():
    """A diffusion block rewritten in place after a fork: every touched shared block is copied."""
    allocator = BlockAllocator(8, 4)
    allocator.allocate("a")
    allocator.append_slots("a", 8)
    allocator.fork("a", "b")
    slots = allocator.rewrite_slots("b", 3, 6)
    copies = dict((dst, src) for src, dst in allocator.take_copies())
    table_a, table_b = allocator.block_table("a"), allocator.block_table("b")
    assert copies == {table_b[0]: table_a[0], table_b[1]: table_a[1]}
    assert slots.tolist() == [table_b[0] * 4 + 3, table_b[1] * 4, table_b[1] * 4 + 1]


def test_bad_arguments_raise():
    allocator = BlockAllocator(4, 4)
    allocator.allocate("a")
    with pytest.raises(ValueError, match="already allocated"):
        allocator.allocate("a")
    with pytest.raises(ValueError, match="unknown sequence"):
        allocator.append_slots("zzz", 1)
    with pytest.raises(ValueError, match="n must be"):
        allocator.append_slots("a", -1)
    with pytest.raises(ValueError, match="new_length"):
        allocator.truncate("a", 3)
    with pytest.raises(ValueError, match="token_ids"):
        allocator.append_slots("a", 2, [1])
    with pytest.raises(ValueError, match="num_blocks"):
        BlockAllocator(0, 4)


# ------------------------------------------------------------------ prefix caching


def test_prefix_cache_hits_full_blocks_and_leaves_one_token_to_compute():
    allocator = BlockAllocator(8, 4, prefix_caching=True)
    prompt = list(range(10))
    allocator.allocate("a", prompt)
    allocator.append_slots("a", 10, prompt)
    assert allocator.allocate("early", prompt) == 0  # a's step has not written its K/V yet
    allocator.mark_written("a")
    assert allocator.allocate("b", prompt) == 8  # two full blocks; the partial one is not cached
    assert allocator.block_table("b") == allocator.block_table("a")[:2]
    assert allocator.allocate("c", prompt[:8]) == 4  # all 8 cached, but the last token is recomputed
    assert allocator.allocate("d", [0, 1, 2, 3, 9, 9, 9, 9, 9]) == 4  # shares only the first block


def test_abandoned_step_never_enters_the_prefix_cache():
    allocator = BlockAllocator(8, 4, prefix_caching=True)
    allocator.allocate("a", [1] * 9)
    allocator.append_slots("a", 9, [1] * 9)
    allocator.free("a")  # preempted before its forward ran: the blocks hold no K/V
    assert allocator.allocate("b", [1] * 9) == 0
    allocator.append_slots("b", 9, [1] * 9)
    allocator.append_slots("b", 1, [2])  # b's next step: its prompt step has run
    assert allocator.allocate("c", [1] * 9) == 8
    allocator.check_invariants()


def test_prefix_cache_chains_parent_hashes():
    allocator = BlockAllocator(8, 4, prefix_caching=True)
    allocator.allocate("a", [1, 1, 1, 1, 2, 2, 2, 2, 0])
    allocator.append_slots("a", 9, [1, 1, 1, 1, 2, 2, 2, 2, 0])
    allocator.mark_written("a")
    # Same second block after a different first block: no hit for either.
    assert allocator.allocate("b", [3, 3, 3, 3, 2, 2, 2, 2, 0]) == 0


def test_prefix_cache_collision_is_not_a_hit(monkeypatch):
    import decodekit.kv.allocator as module

    monkeypatch.setattr(module, "_chain_hash", lambda parent, tokens: 42)  # every block collides
    allocator = BlockAllocator(8, 4, prefix_caching=True)
    allocator.allocate("a", [1, 2, 3, 4, 5])
    allocator.append_slots("a", 5, [1, 2, 3, 4, 5])
    allocator.mark_written("a")
    assert allocator.allocate("b", [9, 9, 9, 9, 5]) == 0
    assert allocator.allocate("c", [1, 2, 3, 4, 5]) == 4


def test_prefix_cache_evicts_least_recently_freed_unreferenced_blocks():
    allocator = BlockAllocator(4, 2, prefix_caching=True)
    for name, prompt in (("a", [1, 1, 1]), ("b", [2, 2, 2])):
        allocator.allocate(name, prompt)
        allocator.append_slots(name, 3, prompt)
        allocator.mark_written(name)
    allocator.free("a")  # a's full block stays cached; its partial block is plainly free
    allocator.free("b")
    assert allocator.num_free_blocks == 4
    allocator.allocate("c")
    allocator.append_slots("c", 4)  # takes the 2 plain free blocks, nothing evicted
    assert allocator.allocate("a2", [1, 1, 1]) == 2 and allocator.allocate("b2", [2, 2, 2]) == 2
    allocator.free("a2")
    allocator.free("b2")
    allocator.append_slots("c", 2)  # must evict: a's block was freed first, so it goes first
    assert allocator.allocate("a3", [1, 1, 1]) == 0
    assert allocator.allocate("b3", [2, 2, 2]) == 2
    allocator.check_invariants()


def test_writing_into_a_cached_block_copies_it_or_removes_it_from_the_cache():
    """A sequence that truncates into a cached block and appends must not corrupt the cache."""
    allocator = BlockAllocator(6, 4, prefix_caching=True)
    allocator.allocate("a", [5] * 9)
    allocator.append_slots("a", 9, [5] * 9)
    allocator.mark_written("a")
    cached_block = allocator.block_table("a")[1]
    allocator.truncate("a", 6)
    assert allocator.allocate("b", [5] * 9) == 8  # the block's content is intact: still a hit
    allocator.append_slots("a", 1, [7])  # shared with b: a writes into a private copy
    assert allocator.block_table("b")[1] == cached_block != allocator.block_table("a")[1]
    allocator.take_copies()
    allocator.free("a")
    allocator.truncate("b", 6)
    allocator.append_slots("b", 1, [7])  # b holds it alone: written in place, it leaves the cache
    assert allocator.block_table("b")[1] == cached_block
    assert allocator.allocate("c", [5] * 9) == 4
    allocator.check_invariants()


def test_rewrite_makes_later_positions_uncacheable():
    """K/V after a rewritten position were computed from the old prefix: they must never be hit
    under the new token ids."""
    allocator = BlockAllocator(8, 4, prefix_caching=True)
    allocator.allocate("a", [0] * 6)
    allocator.append_slots("a", 6, [0] * 6)
    allocator.mark_written("a")
    allocator.rewrite_slots("a", 0, 2, [1, 1])  # rows 2, 3 of block 0 keep K/V of the old prefix
    allocator.append_slots("a", 2, [0, 0])
    allocator.mark_written("a")
    assert allocator.allocate("b", [1, 1, 0, 0, 0]) == 0
    assert allocator.allocate("c", [0] * 6) == 0  # a held block 0 alone: rewritten in place, uncached


def test_fork_before_the_copies_ran_copies_from_the_original_source():
    """Outside the documented protocol (fork before the step's K/V are written) the pending copies
    still satisfy the kv_copy_blocks rule: no destination is also a source."""
    allocator = BlockAllocator(8, 4)
    allocator.allocate("a")
    allocator.append_slots("a", 2)
    allocator.fork("a", "b")
    allocator.append_slots("a", 1)  # a copies the shared block X into Y
    allocator.fork("a", "c")
    allocator.append_slots("c", 1)  # c must copy Y, whose own copy has not run: copy X instead
    copies = allocator.take_copies()
    sources, destinations = {s for s, _ in copies}, [d for _, d in copies]
    assert len(copies) == 2 and len(sources) == 1 and not sources & set(destinations)
    assert sources == {allocator.block_table("b")[0]}
