"""Drafters backed by a small causal draft model with its own paged KV cache: ``ModelDrafter``
(a sampled chain, Leviathan / Chen speculative sampling) and ``TreeDrafter`` (an EAGLE-2-style
dynamic top-k tree). The contract they implement is in :mod:`decodekit.decoders.drafters`."""

from __future__ import annotations

import abc

import torch

from decodekit.decoders.base import Request
from decodekit.decoders.drafters import CachedModelDrafter, DraftProposal, _check_int, draw_drafts
from decodekit.decoders.params import BatchSampling
from decodekit.models.protocol import check_model

# Draft draws are keyed by the request's seed XOR this salt, so they never share Philox keys with
# the target's verification draws (which use the request's seed itself).
DRAFT_SEED_SALT = 0x5DEECE66D2B7E151


class _SecondCache:
    """The draft model under another identity, so that a drafter whose draft model IS the target
    (self-drafting, tests) still gets its own paged cache from ``Decoder._cache`` (keyed by model
    identity)."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)


def _committed(request: Request) -> list[int]:
    return request.prompt + request.output


class _DraftModelDrafter(CachedModelDrafter):
    """Shared by the model drafters: checks, the draft cache and the catch-up feed."""

    def __init__(self, draft_model):
        check_model(draft_model, "draft_model")
        if draft_model.attention != "causal":
            raise ValueError(
                f"draft_model has {draft_model.attention} attention; ModelDrafter / TreeDrafter need a causal "
                "draft model (a bidirectional model cannot draft left to right)"
            )
        self.draft_model = draft_model
        self._runner = draft_model  # what begin() runs: draft_model or its _SecondCache alias
        self._alias = _SecondCache(draft_model)

    def check(self, target) -> None:
        if self.draft_model.vocab_size != target.vocab_size:
            raise ValueError(
                f"draft_model has vocab_size {self.draft_model.vocab_size} but the target model has "
                f"{target.vocab_size}; drafts must share the target's vocabulary"
            )
        if torch.device(self.draft_model.device) != torch.device(target.device):
            raise ValueError(f"draft_model is on {self.draft_model.device} but the target model is on {target.device}")

    def _context_gap(self, target) -> int:
        """Extra reserve when the draft model's context is shorter than the target's."""
        return max(0, target.max_positions - self.draft_model.max_positions)

    def begin(self, decoder, requests, caches) -> None:
        self._decoder = decoder
        self._runner = self._alias if self.draft_model is decoder.model else self.draft_model
        self._cache = decoder._cache(self._runner, requests, caches, reserve=self._cache_reserve())
        for r in requests:
            self._cache.allocator.allocate(r.seq_id)

    @abc.abstractmethod
    def _cache_reserve(self) -> int:
        """Positions past the committed length the draft cache may hold during a step."""

    def _catch_up(self, requests: list[Request]) -> torch.Tensor:
        """Feed every committed token the draft cache lacks (the whole prompt at the first step,
        then the accepted drafts it did not process and the correction / bonus token); returns the
        draft's float32 logits for the next token, ``[B, V]``."""
        alloc = self._cache.allocator
        feed = [_committed(r)[alloc.length(r.seq_id) :] for r in requests]
        logits = self._decoder._model_step(self._runner, self._cache, requests, feed, draft=True)
        return logits.float()

class ModelDrafter(_DraftModelDrafter):
    """Chain drafter: the draft model proposes ``num_draft`` tokens autoregressively.

    Each token is sampled from the request's own filtered distribution ``q`` (its temperature,
    top-k and top-p applied to the draft logits: ``softmax(mask_logits(logits / T))``) with
    :func:`decodekit.ops.sample` over ``log q``, so the draw comes from exactly the ``q`` returned
    as ``draft_probs``. Greedy requests (temperature 0), and every request when the decoder's
    method is ``"greedy"``, draft the draft model's argmax. Draws are keyed by
    ``seed ^ DRAFT_SEED_SALT`` and offset ``len(output) * num_draft + j`` for draft j, which never
    repeats for a request because each step emits at least one token.

    Cost per step: ``num_draft`` draft-model calls (the first also catches up on the tokens the
    draft model has not seen); the last draft token is never fed to the draft model.

    Args:
        draft_model: a causal model with the target's vocabulary (see :class:`decodekit.models.Model`).
        num_draft: int in [1, 64], draft tokens per step.
    """

    def __init__(self, draft_model, num_draft: int = 4):
        super().__init__(draft_model)
        self.num_draft = _check_int("num_draft", num_draft, 1, 64)
        self.greedy_drafts = False

    def target_rows(self) -> int:
        return self.num_draft

    def reserve_positions(self, target) -> int:
        return self.num_draft + self._context_gap(target)

    def _cache_reserve(self) -> int:
        return self.num_draft

    def begin(self, decoder, requests, caches) -> None:
        super().begin(decoder, requests, caches)
        device = self.draft_model.device
        self._params = BatchSampling.of([r.sampling for r in requests], device)
        self._seeds = torch.tensor([r.seed ^ DRAFT_SEED_SALT for r in requests], dtype=torch.int64, device=device)
        self.greedy_drafts = decoder.method == "greedy"

    def propose(self, requests: list[Request]) -> DraftProposal:
        device = self.draft_model.device
        rows = torch.tensor([r.index for r in requests], dtype=torch.int64, device=device)
        params = self._params.rows(rows)
        greedy = (params.temperature == 0) | self.greedy_drafts
        seeds = self._seeds.index_select(0, rows)
        steps = [len(r.output) * self.num_draft for r in requests]
        logits = self._catch_up(requests)
        self._base = {r.index: r.length for r in requests}
        tokens, probs = [], []
        for j in range(self.num_draft):
            drafted, q = draw_drafts(logits, params, greedy, seeds,
                                     torch.tensor([s + j for s in steps], dtype=torch.int64, device=device))
            tokens.append(drafted)
            probs.append(q)
            if j + 1 < self.num_draft:
                # one host read per draft step: the model step takes the new tokens as lists
                logits = self._decoder._model_step(
                    self._runner, self._cache, requests, [[t] for t in drafted.tolist()], draft=True
                ).float()
        return DraftProposal(tokens=torch.stack(tokens, 1), draft_probs=torch.stack(probs, 1))

    def accept(self, requests, num_accepted) -> None:
        # the cache holds the old context (length r.length before this step's emit) plus drafts
        # 0 .. n-2; keep the accepted ones, the next catch-up feeds the rest
        alloc = self._cache.allocator
        for r, accepted in zip(requests, num_accepted):
            if not r.finished:
                base = self._base[r.index]
                alloc.truncate(r.seq_id, base + min(accepted, self.num_draft - 1))
