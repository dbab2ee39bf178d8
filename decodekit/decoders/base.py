"""What every decoder shares: the ``generate`` calling convention, request bookkeeping, argument
checks, the paged cache's lifetime and the one helper that runs a model step.

Calling convention (every family)::

    result = decoder.generate(prompts, max_new_tokens=64, sampling=SamplingParams(temperature=0.7),
                              stop_token_ids=[eos], seed=1234)
    result.sequences[i]        # generated token ids of prompt i (stop token included)
    result.stats[i]            # RequestStats: forward calls, tokens per forward, acceptance, time

Seeds: ``seed=None`` draws one fresh seed per request from torch's default generator
(``torch.manual_seed`` makes it reproducible); an int gives request i the seed ``seed + i``; a
list gives each request its own. A request's tokens depend only on its prompt, its sampling
parameters and its seed, never on the other requests of the batch (every random draw is keyed by
the request's seed and a per-request step counter, DESIGN.md's RNG contract).
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Hashable, Sequence

import torch

from decodekit.kv import OutOfBlocksError, PagedKVCache
from decodekit.models.protocol import ForwardBatch, check_model
from decodekit.decoders.params import SamplingParams
from decodekit.decoders.result import GenerationResult, RequestStats

_SEED_MASK = (1 << 63) - 1


@dataclass
class Request:
    """One prompt's state during ``generate``."""

    index: int
    prompt: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    seed: int
    stop_ids: frozenset
    output: list[int] = field(default_factory=list)
    finished: bool = False
    stats: RequestStats = None  # type: ignore[assignment]

    def __post_init__(self):
        self.stats = RequestStats(prompt_tokens=len(self.prompt))

    @property
    def seq_id(self) -> Hashable:
        return ("decodekit", self.index)

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def remaining(self) -> int:
        return self.max_new_tokens - len(self.output)

    @property
    def last_token(self) -> int:
        return self.output[-1] if self.output else self.prompt[-1]

    def emit(self, tokens: Sequence[int]) -> int:
        """Append ``tokens`` until a stop token (kept) or the length limit; returns how many were
        appended and marks the request finished when it is."""
        taken = 0
        for token in tokens:
            if self.finished:
                break
            self.output.append(int(token))
            taken += 1
            if int(token) in self.stop_ids:
                self.finish("stop")
            elif self.remaining <= 0:
                self.finish("length")
        self.stats.generated_tokens = len(self.output)
        return taken

    def finish(self, reason: str) -> None:
        self.finished = True
        self.stats.finish_reason = reason


class Decoder(abc.ABC):
    """Base class of every decoder: subclasses implement :meth:`_run`.

    Args:
        model: anything implementing :class:`decodekit.models.Model`.
        tokenizer: optional; with one, prompts may be strings (``tokenizer.encode``) and the result
            carries ``texts`` (``tokenizer.decode``); its ``eos_token_id`` is the default stop id.
        num_blocks: a fixed KV pool of this many blocks, kept across calls (running out raises
            :class:`~decodekit.kv.OutOfBlocksError` and frees the call's sequences, so the pool
            stays usable). Default: a pool sized for each call.
        block_size: tokens per KV block.
    """

    #: the attention kind this decoder's main model must have
    model_attention = "causal"

    def __init__(self, model, *, tokenizer=None, num_blocks: int | None = None, block_size: int = 16):
        check_model(model, "model", attention=self.model_attention)
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
        if num_blocks is not None and (isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1):
            raise ValueError(f"num_blocks must be None or an int >= 1, got {num_blocks!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._pools: dict[int, PagedKVCache] = {}

    # ------------------------------------------------------------------ the calling convention

    def generate(
        self,
        prompts,
        *,
        max_new_tokens: int,
        sampling: SamplingParams | Sequence[SamplingParams] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        seed: int | Sequence[int] | None = None,
    ) -> GenerationResult:
        """Generate for a batch of prompts.

        Args:
            prompts: a list of prompts, each a list of token ids (lengths may differ) or, with a
                tokenizer, a string; a single prompt is accepted too.
            max_new_tokens: int >= 1, per request (capped so the sequence fits the model's
                ``max_positions``; such requests finish with reason ``"length"``).
            sampling: one :class:`SamplingParams` for all requests or one per request; default
                temperature 1 with no filters.
            stop_token_ids: ids that end a request (the stop token is kept in the output);
                default: the tokenizer's ``eos_token_id`` if there is one, else none.
            seed: None, an int, or one int per request (see the module docstring).
        """
        requests = self._requests(prompts, max_new_tokens, sampling, stop_token_ids, seed)
        start = time.perf_counter()
        self._start_clock = start
        caches = {}
        try:
            self._run(requests, caches)
        except OutOfBlocksError as error:
            pool = f"num_blocks={self.num_blocks}" if self.num_blocks is not None else "the per-call pool"
            error.args = (f"{error.args[0]} ({pool}, block_size={self.block_size}); this call's sequences were "
                          "freed and the pool stays usable: raise num_blocks or send fewer or shorter requests",)
            raise
        finally:
            for model, cache in caches.values():
                seqs = [s for s in cache.allocator.sequences()]
                for seq in seqs:
                    cache.allocator.free(seq)
                model.release(seqs)
        wall = time.perf_counter() - start
        for request in requests:
            if not request.stats.wall_time:
                request.stats.wall_time = wall
        texts = None
        if self.tokenizer is not None:
            texts = [self.tokenizer.decode(r.output) for r in requests]
        forward_calls = getattr(self, "_forward_calls", 0)
        return GenerationResult([r.output for r in requests], [r.stats for r in requests], wall, forward_calls, texts)

    @abc.abstractmethod
    def _run(self, requests: list[Request], caches: dict) -> None:
        """Generate for ``requests`` (their ``output`` and ``stats``), registering every cache
        it makes in ``caches`` (via :meth:`_cache`) so ``generate`` frees it."""

    #: extra cache positions a request may need beyond prompt + max_new_tokens (draft tokens)
    def _reserve_positions(self) -> int:
        return 0

    # ------------------------------------------------------------------ argument checks

    def _requests(self, prompts, max_new_tokens, sampling, stop_token_ids, seed) -> list[Request]:
        ids = self._prompt_ids(prompts)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        params = self._sampling_list(sampling, len(ids))
        stops = self._stop_ids(stop_token_ids)
        seeds = self._seeds(seed, len(ids))
        limit = self.model.max_positions - self._reserve_positions()
        requests = []
        for i, prompt in enumerate(ids):
            if len(prompt) >= limit:
                raise ValueError(
                    f"prompts[{i}] has {len(prompt)} tokens; the model's context is {self.model.max_positions} "
                    f"positions{' (minus ' + str(self._reserve_positions()) + ' for drafts)' if self._reserve_positions() else ''}, "
                    "so no token could be generated"
                )
            budget = min(max_new_tokens, limit - len(prompt))
            requests.append(Request(i, prompt, budget, params[i], seeds[i], stops))
        self._forward_calls = 0
        return requests

    def _prompt_ids(self, prompts) -> list[list[int]]:
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if isinstance(prompts, torch.Tensor):
            raise TypeError("prompts must be a list of token-id lists (or strings with a tokenizer), not a tensor")
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise ValueError(f"prompts must be a non-empty list of prompts, got {prompts!r}")
        vocab = self.model.vocab_size
        out = []
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                if self.tokenizer is None:
                    raise TypeError(f"prompts[{i}] is a string but the decoder has no tokenizer")
                prompt = list(self.tokenizer.encode(prompt))
            if isinstance(prompt, torch.Tensor):
                prompt = prompt.tolist()
            if not isinstance(prompt, (list, tuple)):
                raise TypeError(f"prompts[{i}] must be a list of token ids, got {type(prompt).__name__}")
            if not prompt:
                raise ValueError(f"prompts[{i}] is empty; every prompt needs at least one token")
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
                raise TypeError(f"prompts[{i}] must contain ints only")
            low, high = min(prompt), max(prompt)
            if low < 0 or high >= vocab:
                raise ValueError(f"prompts[{i}] has token ids outside [0, {vocab}): min {low}, max {high}")
            out.append(list(prompt))
        return out

    @staticmethod
    def _sampling_list(sampling, count: int) -> list[SamplingParams]:
        if sampling is None:
            return [SamplingParams()] * count
        if isinstance(sampling, SamplingParams):
            return [sampling] * count
        if isinstance(sampling, (list, tuple)):
            if len(sampling) != count:
                raise ValueError(f"sampling has {len(sampling)} entries for {count} prompts; give one or one per prompt")
            for i, s in enumerate(sampling):
                if not isinstance(s, SamplingParams):
                    raise TypeError(f"sampling[{i}] must be a SamplingParams, got {type(s).__name__}")
            return list(sampling)
        raise TypeError(f"sampling must be a SamplingParams or a list of them, got {type(sampling).__name__}")

    def _stop_ids(self, stop_token_ids) -> frozenset:
        if stop_token_ids is None:
            eos = getattr(self.tokenizer, "eos_token_id", None)
            return frozenset([eos] if isinstance(eos, int) else [])
        if isinstance(stop_token_ids, int):
            stop_token_ids = [stop_token_ids]
        vocab = self.model.vocab_size
        for t in stop_token_ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
                raise ValueError(f"stop_token_ids must be token ids in [0, {vocab}), got {t!r}")
        return frozenset(stop_token_ids)

    @staticmethod
    def _seeds(seed, count: int) -> list[int]:
        if seed is None:
            return torch.randint(0, 2**62, (count,)).tolist()
        if isinstance(seed, bool):
            raise TypeError("seed must be None, an int or a list of ints, got a bool")
        if isinstance(seed, int):
            return [(seed + i) & _SEED_MASK for i in range(count)]
        if isinstance(seed, (list, tuple)):
            if len(seed) != count:
                raise ValueError(f"seed has {len(seed)} entries for {count} prompts")
            if not all(isinstance(s, int) and not isinstance(s, bool) for s in seed):
                raise TypeError("seed must be a list of ints")
            return [s & _SEED_MASK for s in seed]
        raise TypeError(f"seed must be None, an int or a list of ints, got {type(seed).__name__}")

    # ------------------------------------------------------------------ cache and model steps

    def _cache(self, model, requests: list[Request], caches: dict, *, reserve: int = 0) -> PagedKVCache:
        """The paged cache of ``model`` for this call (registered in ``caches`` so ``generate``
        frees every sequence at the end, also after an error)."""
        key = id(model)
        if key in caches:
            return caches[key][1]
        if self.num_blocks is not None:
            cache = self._pools.get(key)
            if cache is None:
                cache = self._pools[key] = model.make_cache(self.num_blocks, self.block_size)
        else:
            bs = self.block_size
            blocks = sum(-(-(len(r.prompt) + r.max_new_tokens + reserve) // bs) + 1 for r in requests)
            cache = model.make_cache(blocks, bs)
        caches[key] = (model, cache)
        return cache

    def _model_step(self, model, cache, requests: Sequence[Request], new_tokens, *, draft: bool = False, **kwargs):
        """:func:`forward_step` for ``requests`` (their ``seq_id``), counting the call in their
        statistics (``draft`` calls separately)."""
        logits = forward_step(model, cache, [r.seq_id for r in requests], new_tokens, **kwargs)
        for request in requests:
            if draft:
                request.stats.draft_forward_calls += 1
            else:
                request.stats.forward_calls += 1
        if not draft:
            self._forward_calls += 1
        return logits

    def _elapsed(self) -> float:
        return time.perf_counter() - self._start_clock

    def _finish(self, request: Request, reason: str | None = None) -> None:
        if reason is not None:
            request.finish(reason)
        request.stats.wall_time = self._elapsed()


def forward_step(
    model,
    cache: PagedKVCache,
    seq_ids: Sequence[Hashable],
    new_tokens: Sequence[Sequence[int]],
    *,
    positions: Sequence[Sequence[int]] | None = None,
    mask: str | None = None,
    custom_mask=None,
    logits: str | torch.Tensor = "last",
    rewrite: bool = False,
    starts: Sequence[int] | None = None,
) -> torch.Tensor:
    """Run ``model`` on the new tokens of several sequences in one call.

    Args:
        model, cache: a model and the paged cache made by its ``make_cache``.
        seq_ids: ``B`` allocated sequence ids.
        new_tokens: ``B`` token-id lists (the step's rows; lengths may differ, >= 1).
        positions: ``B`` position lists (default: each sequence's next positions).
        mask, custom_mask: see :class:`decodekit.models.ForwardBatch`.
        logits: ``"last"`` (the last row of each sequence: ``[B, V]``), ``"all"`` (``[T, V]``),
            or an int64 tensor of row indices.
        rewrite: overwrite the last ``len(new_tokens[b])`` positions in place (diffusion canvases)
            instead of growing the sequences.
        starts: with ``rewrite``, optionally the first overwritten position of each sequence
            (positions ``starts[b] ..``, e.g. a block in the middle of a canvas: Fast-dLLM's dual
            cache); only meaningful with ``mask="full"`` (or None on a bidirectional model), where
            every row sees all keys of its sequence.

    Returns:
        The requested logits rows.
    """
    counts = [len(t) for t in new_tokens]
    if starts is not None and not rewrite:
        raise ValueError("starts is only used with rewrite=True")
    if starts is not None and mask not in (None, "full"):
        raise ValueError(f"starts (rewriting rows in the middle of a sequence) needs mask='full' or None, got {mask!r}")
    if rewrite:
        meta = cache.rewrite(seq_ids, counts, starts=starts)
        if starts is None:
            starts = [cache.allocator.length(s) - n for s, n in zip(seq_ids, counts)]
    else:
        starts = [cache.allocator.length(s) for s in seq_ids]
        meta = cache.append(seq_ids, counts)
    device = model.device
    flat = [t for tokens in new_tokens for t in tokens]
    input_ids = torch.tensor(flat, dtype=torch.int64).to(device)
    if positions is None:
        pos = [p for start, n in zip(starts, counts) for p in range(start, start + n)]
    else:
        pos = [p for row in positions for p in row]
    position_ids = torch.tensor(pos, dtype=torch.int64).to(device)
    if isinstance(logits, torch.Tensor):
        rows = logits.to(device)
    elif logits == "last":
        ends, total = [], 0
        for n in counts:
            total += n
            ends.append(total - 1)
        rows = torch.tensor(ends, dtype=torch.int64).to(device)
    elif logits == "all":
        rows = None
    else:
        raise ValueError(f"logits must be 'last', 'all' or a row-index tensor, got {logits!r}")
    batch = ForwardBatch.from_metadata(
        cache, meta, seq_ids, input_ids, position_ids, mask=mask, custom_mask=custom_mask, logits_rows=rows
    )
    return model.forward(batch)
