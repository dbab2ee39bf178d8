"""Speculative decoding: a drafter proposes tokens (a chain or a tree), the target model scores
them all in one forward, and one fused verify op (``verify_chain`` / ``verify_tree``) keeps the
accepted prefix plus a correction or bonus token. Requests of a batch accept different numbers of
tokens; rejected rows are rolled back with ``cache.allocator.truncate``."""

from __future__ import annotations

import torch

from decodekit import ops
from decodekit.decoders.base import Decoder, Request
from decodekit.decoders.drafters import DraftProposal, Drafter
from decodekit.decoders.params import BatchSampling

METHODS = ("lossless", "greedy", "typical")


class SpeculativeDecoder(Decoder):
    """Speculative decoding with any :class:`~decodekit.decoders.drafters.Drafter`.

    Example::

        decoder = SpeculativeDecoder(target, ModelDrafter(draft_model, num_draft=4))
        result = decoder.generate(prompts, max_new_tokens=64, sampling=SamplingParams(temperature=0.8), seed=0)
        result.stats[0].acceptance_rate, result.stats[0].tokens_per_forward

    One step, for all active requests at once:

    1. ``drafter.propose`` drafts ``n`` tokens (chain) or an ``N``-node tree per request.
    2. One target forward over each request's pending tokens (committed tokens whose K/V the
       target cache lacks: the whole prompt at the first step, so prefill and the first
       verification share one call) followed by the drafts. Chains use the causal mask; trees use
       ``mask="custom"``: pending rows causal, every node sees all pending rows and its ancestors,
       at position ``root position + depth``.
    3. ``verify_chain`` / ``verify_tree`` with each request's temperature / top-k / top-p, seed
       and offset ``len(output)`` (strictly increasing per request, so no draw is ever reused).
    4. Accepted tokens and the correction / bonus token are emitted (``Request.emit``: a stop
       token ends the request and drops what follows). The target cache is truncated: a chain
       keeps its accepted drafts (they are contiguous), so the next step re-feeds only the
       correction token; a tree keeps only up to its root, since accepted nodes are scattered
       over the tree rows, and the next step re-feeds the accepted path too (``num_accepted``
       extra rows per step instead of a KV compaction).

    The verification outputs are read to the host once per step (tokens, counts and validity in
    one tensor). Statistics: ``forward_calls`` = target calls, ``draft_forward_calls``,
    ``proposed_tokens`` (draft tokens or tree nodes offered) and ``accepted_tokens`` (accepted
    drafts that were emitted); ``acceptance_rate = accepted / proposed``.

    Args:
        model: the target, a causal :class:`decodekit.models.Model`.
        drafter: a :class:`Drafter` (``ModelDrafter``, ``NgramDrafter``, ``TreeDrafter``).
        method: ``"lossless"`` (default; the output distribution is exactly the target's with
            the request's temperature / top-k / top-p), ``"greedy"`` (accept while drafts equal
            the target's argmax; emits the target's greedy text) or ``"typical"`` (Medusa's typical
            acceptance, lossy). Requests with temperature 0 are always verified greedily.
        typical_eps, typical_delta: floats >= 0, Medusa's posterior threshold and alpha (typical).
        tokenizer, num_blocks, block_size: as in :class:`~decodekit.decoders.base.Decoder`.

    Sampling parameters: the verify ops apply temperature, top-k and top-p only; requests with
    ``min_p`` or penalties raise ValueError before any work.
    """

    def __init__(self, model, drafter: Drafter, *, method: str = "lossless", typical_eps: float = 0.3,
                 typical_delta: float = 0.09, tokenizer=None, num_blocks: int | None = None, block_size: int = 16):
        super().__init__(model, tokenizer=tokenizer, num_blocks=num_blocks, block_size=block_size)
        if not isinstance(drafter, Drafter):
            raise TypeError(f"drafter must be a decodekit Drafter (ModelDrafter, NgramDrafter, TreeDrafter), "
                            f"got {type(drafter).__name__}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        for name, value in (("typical_eps", typical_eps), ("typical_delta", typical_delta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a float >= 0, got {value!r}")
        drafter.check(model)
        self.drafter = drafter
        self.method = method
        self.typical_eps = float(typical_eps)
        self.typical_delta = float(typical_delta)

    def _reserve_positions(self) -> int:
        return self.drafter.reserve_positions(self.model)

    def _requests(self, prompts, max_new_tokens, sampling, stop_token_ids, seed) -> list[Request]:
        requests = super()._requests(prompts, max_new_tokens, sampling, stop_token_ids, seed)
        for r in requests:
            s = r.sampling
            if s.min_p != 0.0 or s.has_penalties:
                raise ValueError(
                    f"sampling[{r.index}] sets min_p={s.min_p}, repetition_penalty={s.repetition_penalty}, "
                    f"frequency_penalty={s.frequency_penalty}, presence_penalty={s.presence_penalty}; "
                    "speculative verification applies temperature, top_k and top_p only (min_p 0, no penalties)"
                )
        return requests

    # ------------------------------------------------------------------ the decode loop

    def _run(self, requests: list[Request], caches: dict) -> None:
        model, drafter = self.model, self.drafter
        cache = self._cache(model, requests, caches, reserve=drafter.target_rows() + 1)
        device = model.device
        self._params = BatchSampling.of([r.sampling for r in requests], device)
        self._seed_rows = torch.tensor([r.seed for r in requests], dtype=torch.int64, device=device)
        for r in requests:
            cache.allocator.allocate(r.seq_id)
        drafter.begin(self, requests, caches)
        try:
            active = list(requests)
            while active:
                proposal = drafter.propose(active)
                pending = [(r.prompt + r.output)[cache.allocator.length(r.seq_id) :] for r in active]
                bases = [r.length for r in active]
                out = self._verify(cache, active, pending, proposal)
                width = out.tokens.shape[1]
                # the step's one host read: tokens, then num_accepted, num_emitted and valid
                table = torch.cat(
                    [out.tokens, torch.stack([out.num_accepted.long(), out.num_emitted.long(), out.valid.long()], 1)], 1
                ).tolist()
                accepted = []
                for r, row, base in zip(active, table, bases):
                    num_accepted, num_emitted, valid = row[width:]
                    r.stats.proposed_tokens += drafter.target_rows()
                    if not valid:
                        self._finish(r, "invalid_logits")
                        accepted.append(0)
                        continue
                    taken = r.emit(row[:num_emitted])
                    r.stats.accepted_tokens += min(num_accepted, taken)
                    accepted.append(num_accepted)
                    # chains keep their accepted drafts' K/V; trees keep up to the root
                    cache.allocator.truncate(r.seq_id, base + (0 if drafter.tree else num_accepted))
                drafter.accept(active, accepted)
                done = [r for r in active if r.finished]
                for r in done:
                    self._finish(r)
                    cache.allocator.free(r.seq_id)
                if done:
                    model.release([r.seq_id for r in done])
                    drafter.release(done)
                active = [r for r in active if not r.finished]
        finally:
            drafter.end()

    def _verify(self, cache, active: list[Request], pending: list[list[int]], proposal: DraftProposal):
        """One target forward over pending + draft rows, then the fused verify op."""
        device = self.model.device
        rows = torch.tensor([r.index for r in active], dtype=torch.int64, device=device)
        p = self._params.rows(rows)
        keys = dict(
            method=self.method, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
            typical_eps=self.typical_eps, typical_delta=self.typical_delta,
            seed=self._seed_rows.index_select(0, rows),
            offset=torch.tensor([len(r.output) for r in active], dtype=torch.int64, device=device),
            check_draft_probs=False,
        )  # fmt: skip
        probs = None if proposal.draft_probs is None else proposal.draft_probs.to(device)
        if not self.drafter.tree:
            drafts = proposal.tokens.to(device)
            n = drafts.shape[1]
            logits = self._model_step(self.model, cache, active, [q + d for q, d in zip(pending, drafts.tolist())],
                                      logits=self._score_rows(pending, n, n + 1, device))
            return ops.verify_chain(logits.reshape(len(active), n + 1, -1), drafts, probs, **keys)
        tree = proposal.tree
        nodes = tree.tokens.shape[1]
        masks, positions, feed = [], [], []
        ancestors = tree.ancestor_mask.cpu()
        depth, node_tokens = tree.depth.tolist(), tree.tokens.tolist()
        causal = torch.ones(max(map(len, pending)), max(map(len, pending)), dtype=torch.bool).tril()
        for b, (q, r) in enumerate(zip(pending, active)):
            count = len(q)
            mask = torch.zeros(count + nodes - 1, count + nodes - 1, dtype=torch.bool)
            mask[:count, :count] = causal[:count, :count]
            mask[count:, :count] = True
            mask[count:, count:] = ancestors[b, 1:, 1:]
            masks.append(mask)
            root = r.length - 1
            positions.append(list(range(root - count + 1, root + 1)) + [root + d for d in depth[b][1:]])
            feed.append(q + node_tokens[b][1:])
        logits = self._model_step(self.model, cache, active, feed, positions=positions, mask="custom",
                                  custom_mask=torch.cat([m.reshape(-1) for m in masks]).to(device),
                                  logits=self._score_rows(pending, nodes - 1, nodes, device))
        return ops.verify_tree(logits.reshape(len(active), nodes, -1), tree, probs, **keys)

    @staticmethod
    def _score_rows(pending: list[list[int]], drafts: int, width: int, device) -> torch.Tensor:
        """Flat row indices of the last ``width`` rows of every request (``len(pending) + drafts``
        rows each): the root (last pending token) and the draft rows."""
        index, start = [], 0
        for q in pending:
            end = start + len(q) + drafts
            index.extend(range(end - width, end))
            start = end
        return torch.tensor(index, dtype=torch.int64, device=device)
