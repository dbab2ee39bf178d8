"""Drafters for :class:`~decodekit.decoders.SpeculativeDecoder`: the ``Drafter`` contract and the
model-free n-gram (prompt lookup) drafter.

The contract (every drafter, including future ones such as a masked-diffusion drafter that fills
``k`` masks in one bidirectional forward):

* ``tree``: class attribute. False: :meth:`Drafter.propose` returns a chain, ``tokens [B, n]``.
  True: it returns a token tree (:class:`decodekit.ops.Tree`, node 0 = the last committed token).
* ``check(target)``: raise ValueError if the drafter cannot serve this target model (different
  vocabulary, device, missing custom-mask support, ...). Called by the decoder's constructor.
* ``target_rows()``: draft rows the target verifies per request per step (chain: ``n``; tree:
  ``num_nodes - 1``, the root is not a draft).
* ``reserve_positions(target)``: positions past a request's committed length that one step may
  touch in the target or the draft model; the decoder keeps every request this far below
  ``target.max_positions`` so drafts never run past the context.
* ``begin(decoder, requests, caches)``: start of ``generate``. ``requests`` are all
  :class:`~decodekit.decoders.base.Request` objects; a drafter with a model makes its paged cache
  with ``decoder._cache(model, requests, caches, reserve=...)`` (freed by ``generate`` whatever
  happens) and runs its model with ``decoder._model_step(..., draft=True)`` (counted as draft
  calls in the requests' statistics).
* ``propose(requests) -> DraftProposal``: drafts for the active requests, in their order. The
  committed context of request r is ``r.prompt + r.output``; its last token is the root the
  drafts continue. ``draft_probs`` is the distribution each draft was drawn from (chain
  ``[B, n, V]``: row j for token j; tree ``[B, N, V]``: row u for the children of node u), or
  None for a deterministic drafter (the proposal is a function of the context only: n-gram
  lookup, greedy or top-k children). Random drafters must draw exactly from ``draft_probs`` with
  draws keyed by the request's seed (a derived key, never the target's verification keys) and an
  offset that never repeats for the request; that, and independence from the verification coins,
  is what makes ``method="lossless"`` exact.
* ``accept(requests, num_accepted)``: after verification; every request's ``output`` already
  holds the emitted tokens and ``num_accepted[i]`` drafts of request i were accepted (a chain's
  first ``num_accepted[i]``; a tree's accepted path). The drafter rolls its own cache back
  (``cache.allocator.truncate``) so that the next :meth:`propose` can catch up on the tokens it
  has not seen (the correction / bonus token at least).
* ``release(requests)``: the requests finished; forget their state (free their sequences).
* ``end()``: end of ``generate`` (also after an error): drop per-call state.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from decodekit import ops
from decodekit.decoders.base import Request
from decodekit.ops import Tree


@dataclass
class DraftProposal:
    """What :meth:`Drafter.propose` returns for ``B`` active requests.

    Attributes:
        tokens: chain drafters: ``[B, n]`` int64 draft tokens; tree drafters: None.
        tree: tree drafters: a :class:`decodekit.ops.Tree` with ``[B, N]`` arrays (node 0 = the
            last committed token); chain drafters: None.
        draft_probs: float32 ``[B, n, V]`` (chain) or ``[B, N, V]`` (tree): the distributions the
            drafts were drawn from; None for deterministic drafters.
    """

    tokens: torch.Tensor | None = None
    tree: Tree | None = None
    draft_probs: torch.Tensor | None = None


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an int {allowed}, got {value!r}")
    return value


class Drafter(abc.ABC):
    """Base class of every drafter (see the module docstring for the contract). The default
    lifecycle hooks do nothing, which suits stateless drafters."""

    #: False: chain proposals (``tokens [B, n]``); True: tree proposals
    tree: bool = False

    def check(self, target) -> None:
        """Raise ValueError if this drafter cannot serve ``target``."""

    @abc.abstractmethod
    def target_rows(self) -> int:
        """Draft rows the target verifies per request per step."""

    @abc.abstractmethod
    def reserve_positions(self, target) -> int:
        """Positions past a request's committed length that one step may touch."""

    def begin(self, decoder, requests: list[Request], caches: dict) -> None:
        """Start of ``generate`` (``requests``: all of the call's requests)."""

    @abc.abstractmethod
    def propose(self, requests: list[Request]) -> DraftProposal:
        """Drafts for the active ``requests``, in their order."""

    def accept(self, requests: list[Request], num_accepted: list[int]) -> None:
        """After verification: ``requests[i].output`` holds the emitted tokens."""

    def release(self, requests: list[Request]) -> None:
        """``requests`` finished."""

    def end(self) -> None:
        """End of ``generate``."""


class CachedModelDrafter(Drafter):
    """A drafter that runs a model (``self._runner``) on its own paged cache (``self._cache``,
    one sequence per request): freeing the requests' sequences and dropping per-call state are
    the same for every such drafter."""

    _runner = None
    _cache = None
    _decoder = None

    def release(self, requests) -> None:
        for r in requests:
            self._cache.allocator.free(r.seq_id)
        self._runner.release([r.seq_id for r in requests])

    def end(self) -> None:
        self._decoder = self._cache = None


def draw_drafts(logits: torch.Tensor, params, greedy: torch.Tensor, seeds: torch.Tensor,
                offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Draft tokens drawn from exactly ``q = softmax(mask_logits(logits / T, top_k, top_p))`` per
    row (``ops.sample`` over ``log q``), or the argmax on ``greedy`` rows.

    Args:
        logits: ``[R, V]`` float32 draft logits.
        params: :class:`~decodekit.decoders.params.BatchSampling` rows of the ``R`` drafts.
        greedy: ``[R]`` bool; seeds, offsets: ``[R]`` int64 draw keys.

    Returns:
        ``(tokens [R] int64, q [R, V] float32)``; q on greedy rows uses temperature 1: any
        distribution will do there, verification is greedy for them and never reads it.
    """
    temperature = torch.where(greedy, torch.ones_like(params.temperature), params.temperature)
    q = torch.softmax(ops.mask_logits(logits / temperature[:, None], params.top_k, params.top_p), -1)
    out = ops.sample(torch.where(greedy[:, None], logits, q.log()), temperature=(~greedy).float(), seed=seeds,
                     offset=offsets)
    return out.tokens, q


class NgramDrafter(Drafter):
    """Prompt lookup decoding: propose the tokens that followed the most recent earlier
    occurrence of the context's last ``n`` tokens (falling back to shorter suffixes down to one
    token). Deterministic (``draft_probs=None``), no model, no cache.

    Args:
        n: int >= 1, the longest suffix matched.
        num_draft: int >= 1, draft tokens per step. When the match has fewer followers (or
            nothing matches) the proposal is padded with repeats of its last token (of the context's
            last token without a match): any deterministic proposal keeps verification lossless,
            padding only costs acceptance rate.
    """

    def __init__(self, n: int = 3, num_draft: int = 4):
        self.n = _check_int("n", n, 1)
        self.num_draft = _check_int("num_draft", num_draft, 1)

    def target_rows(self) -> int:
        return self.num_draft

    def reserve_positions(self, target) -> int:
        return self.num_draft

    def propose(self, requests: list[Request]) -> DraftProposal:
        rows = [self._lookup(r.prompt + r.output) for r in requests]
        return DraftProposal(tokens=torch.tensor(rows, dtype=torch.int64))

    def _lookup(self, context: list[int]) -> list[int]:
        length = len(context)
        for size in range(min(self.n, length - 1), 0, -1):
            suffix = context[length - size :]
            # latest earlier occurrence first: recent text predicts the continuation best
            for start in range(length - size - 1, -1, -1):
                if context[start : start + size] == suffix:
                    follow = context[start + size : start + size + self.num_draft]
                    return follow + [follow[-1]] * (self.num_draft - len(follow))
        return [context[-1]] * self.num_draft
