"""A masked-diffusion drafter for :class:`~decodekit.decoders.SpeculativeDecoder`: a bidirectional
model fills ``num_draft`` masks after the committed context in ONE forward, and the causal target
verifies the chain losslessly — the hybrid none of the reference projects (LLaDA, Dream,
Fast-dLLM, vLLM, SGLang) ship.

Why it is lossless: draft token j is drawn from ``q_j``, the diffusion model's (filtered)
distribution at mask j given the context. ``q_j`` does not depend on the earlier drafts, which is
a special case of what speculative sampling allows (any ``q_j`` that is a function of the context
and the previous drafts), so ``verify_chain`` with ``draft_probs = q`` keeps the target's
distribution exactly. Drafting all positions at once costs draft quality (the drafts ignore each
other), not correctness.

Cache: the context's K/V stay in the drafter's paged cache. Each proposal appends the committed
tokens the drafter has not seen plus the masks, runs them with full attention over the cached
context (the Fast-dLLM prefix-cache approximation: older context K/V were computed without the
current masks), and truncates the masks away again. Exact bidirectional recomputation would cost
the whole context per step; since verification is lossless for any ``q``, the approximation can
only lower acceptance.
"""

from __future__ import annotations

import torch

from decodekit.decoders.base import Request
from decodekit.decoders.drafters import CachedModelDrafter, DraftProposal, _check_int, draw_drafts
from decodekit.decoders.model_drafters import DRAFT_SEED_SALT
from decodekit.decoders.params import BatchSampling
from decodekit.models.protocol import check_model

_NEG_INF = float("-inf")


class DiffusionDrafter(CachedModelDrafter):
    """Chain drafter backed by a masked-diffusion (bidirectional) model.

    Each step: one draft-model call over ``[unseen committed tokens..., mask x num_draft]``;
    ``q_j`` = the request's temperature / top-k / top-p applied to the logits of mask j (the mask
    token itself never proposed); draft j is drawn from exactly ``q_j`` with
    :func:`decodekit.ops.sample` (key ``seed ^ DRAFT_SEED_SALT``, offset
    ``len(output) * num_draft + j``: never reused because every step emits a token). Greedy
    requests (and every request under ``method="greedy"``) draft the argmax.

    Args:
        model: a bidirectional :class:`decodekit.models.Model` with the target's vocabulary.
        mask_token_id: the model's mask token, in ``[0, vocab_size)``.
        num_draft: int in [1, 64], tokens drafted per step (one model call for all of them).
        shift_logits: True for AR-initialised diffusion models (Dream): mask j reads the logits of
            the row before it.
    """

    def __init__(self, model, mask_token_id: int, num_draft: int = 4, *, shift_logits: bool = False):
        check_model(model, "model", attention="bidirectional")
        if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) \
                or not 0 <= mask_token_id < model.vocab_size:
            raise ValueError(f"mask_token_id must be a token id in [0, {model.vocab_size}), got {mask_token_id!r}")
        if not isinstance(shift_logits, bool):
            raise TypeError(f"shift_logits must be a bool, got {type(shift_logits).__name__}")
        self.model = model
        self.mask_id = mask_token_id
        self.num_draft = _check_int("num_draft", num_draft, 1, 64)
        self.shift_logits = shift_logits
        self._runner = model

    def check(self, target) -> None:
        if self.model.vocab_size != target.vocab_size:
            raise ValueError(f"the diffusion drafter's model has vocab_size {self.model.vocab_size} but the target "
                             f"has {target.vocab_size}; drafts must share the target's vocabulary")
        if torch.device(self.model.device) != torch.device(target.device):
            raise ValueError(f"the diffusion drafter's model is on {self.model.device}, the target on {target.device}")

    def target_rows(self) -> int:
        return self.num_draft

    def reserve_positions(self, target) -> int:
        return self.num_draft + max(0, target.max_positions - self.model.max_positions)

    def begin(self, decoder, requests, caches) -> None:
        self._decoder = decoder
        self._cache = decoder._cache(self.model, requests, caches, reserve=self.num_draft)
        for r in requests:
            self._cache.allocator.allocate(r.seq_id)
        device = self.model.device
        self._params = BatchSampling.of([r.sampling for r in requests], device)
        self._seeds = torch.tensor([r.seed ^ DRAFT_SEED_SALT for r in requests], dtype=torch.int64, device=device)
        self._greedy_drafts = decoder.method == "greedy"

    def propose(self, requests: list[Request]) -> DraftProposal:
        alloc, n, device = self._cache.allocator, self.num_draft, self.model.device
        feeds = [(r.prompt + r.output)[alloc.length(r.seq_id):] for r in requests]
        rows, end = [], 0
        for feed in feeds:
            end += len(feed) + n
            first = end - n - (1 if self.shift_logits else 0)
            rows.extend(range(first, first + n))
        logits = self._decoder._model_step(
            self.model, self._cache, requests, [f + [self.mask_id] * n for f in feeds],
            logits=torch.tensor(rows, dtype=torch.int64), draft=True,
        ).float()
        for r in requests:  # keep the committed tokens' K/V, drop the masks'
            alloc.truncate(r.seq_id, r.length)
        logits = logits.index_fill(1, torch.tensor([self.mask_id], device=logits.device), _NEG_INF)
        index = torch.tensor([r.index for r in requests], dtype=torch.int64, device=device)
        params = self._params.rows(index)
        greedy = ((params.temperature == 0) | self._greedy_drafts).repeat_interleave(n)
        # one draft row per (request, position j): repeat the request's parameters and seed n times
        per_draft = params.rows(torch.arange(len(requests), device=device).repeat_interleave(n))
        offsets = torch.tensor([len(r.output) * n + j for r in requests for j in range(n)], dtype=torch.int64)
        tokens, q = draw_drafts(logits, per_draft, greedy, self._seeds.index_select(0, index).repeat_interleave(n),
                                offsets.to(device))
        batch = len(requests)
        return DraftProposal(tokens=tokens.view(batch, n), draft_probs=q.view(batch, n, -1))
