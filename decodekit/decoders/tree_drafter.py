"""``TreeDrafter``: an EAGLE-2-style dynamic draft tree grown by a small causal draft model."""

from __future__ import annotations

import torch

from decodekit import ops
from decodekit.decoders.base import Request
from decodekit.decoders.drafters import DraftProposal, _check_int
from decodekit.decoders.model_drafters import _DraftModelDrafter


def _stable_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` best of ``scores`` (last dim), lower index first on ties: the order
    :func:`decodekit.ops.build_tree_from_topk` uses for its frontier slots."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


class TreeDrafter(_DraftModelDrafter):
    """Dynamic draft tree (EAGLE-2, Li et al. 2024): expand the ``top_k`` best children of every
    frontier node, keep the ``top_k`` best candidates by cumulative log-probability as the next
    frontier, ``depth`` levels in all, then keep the ``num_nodes - 1`` best candidates overall
    (:func:`decodekit.ops.build_tree_from_topk`). Children are top-k picks, not draws, so the
    proposal is deterministic (``draft_probs=None``) and ``verify_tree``'s deterministic-drafter
    rule keeps ``method="lossless"`` exact. Scores use the draft model's raw distribution
    (temperature 1), whatever the request's sampling parameters.

    Tree attention with the paged cache: ``paged_attention``'s custom mask applies only among a
    call's own rows (every cached key is visible), so level ``d`` re-feeds the frontier nodes of
    all levels ``0 .. d-1`` after truncating the draft cache to the committed context, with an
    ancestor mask among them. Cost per step: ``depth`` draft-model calls (the first catches up on
    the new committed tokens and scores the root's children) over
    ``top_k * depth * (depth - 1) / 2`` tree rows in all per request.

    Args:
        draft_model: a causal model with the target's vocabulary that supports ``mask="custom"``.
        top_k: int in [1, V], children expanded per frontier node and frontier width.
        depth: int in [1, 16], tree levels (the longest accepted run per step).
        num_nodes: int in [2, 1 + top_k + (depth - 1) * top_k ** 2], tree size including the root.
    """

    tree = True

    def __init__(self, draft_model, top_k: int = 4, depth: int = 4, num_nodes: int = 16):
        super().__init__(draft_model)
        if not getattr(draft_model, "supports_custom_mask", False):
            raise ValueError("draft_model has supports_custom_mask=False; TreeDrafter needs tree attention (mask='custom')")
        self.top_k = _check_int("top_k", top_k, 1, draft_model.vocab_size)
        self.depth = _check_int("depth", depth, 1, 16)
        capacity = 1 + top_k + (depth - 1) * top_k * top_k
        self.num_nodes = _check_int("num_nodes", num_nodes, 2, capacity)

    def check(self, target) -> None:
        super().check(target)
        if not getattr(target, "supports_custom_mask", False):
            raise ValueError(
                "the target model has supports_custom_mask=False; TreeDrafter's tree is verified with "
                "tree attention (mask='custom'); use ModelDrafter or NgramDrafter"
            )

    def target_rows(self) -> int:
        return self.num_nodes - 1

    def reserve_positions(self, target) -> int:
        return self.depth + self._context_gap(target)

    def _cache_reserve(self) -> int:
        return self.top_k * max(self.depth - 1, 1)

    def propose(self, requests: list[Request]) -> DraftProposal:
        batch, k, levels = len(requests), self.top_k, self.depth
        alloc = self._cache.allocator
        logp = torch.log_softmax(self._catch_up(requests), -1)
        device = logp.device
        lengths = [r.length for r in requests]
        tokens = torch.zeros(batch, levels, k, k, dtype=torch.int64, device=device)
        logprobs = torch.zeros(batch, levels, k, k, dtype=torch.float32, device=device)
        top = _stable_top(logp, k)
        tokens[:, 0, 0], logprobs[:, 0, 0] = top, logp.gather(1, top)
        frontier_tokens, frontier_scores = tokens[:, 0, 0], logprobs[:, 0, 0]
        fed = torch.empty(batch, 0, dtype=torch.int64, device=device)  # frontier tokens of all levels so far
        ancestors = torch.empty(batch, 0, 0, dtype=torch.bool, device=device)  # among the fed rows
        parent_rows = torch.full((batch, k), -1, dtype=torch.int64, device=device)  # of the frontier
        for level in range(1, levels):
            fed, ancestors = self._grow(fed, ancestors, frontier_tokens, parent_rows)
            rows = fed.shape[1]
            for r, length in zip(requests, lengths):
                alloc.truncate(r.seq_id, length)
            positions = [[length + (i // k) for i in range(rows)] for length in lengths]
            last = torch.arange(batch, device=device)[:, None] * rows + torch.arange(rows - k, rows, device=device)
            logits = self._decoder._model_step(
                self._runner, self._cache, requests, fed.tolist(), draft=True, positions=positions,
                mask="custom", custom_mask=ancestors.reshape(-1), logits=last.reshape(-1),
            )  # fmt: skip
            child_logp = torch.log_softmax(logits.float(), -1).reshape(batch, k, -1)
            top = _stable_top(child_logp, k)
            tokens[:, level], logprobs[:, level] = top, child_logp.gather(2, top)
            scores = (frontier_scores[:, :, None] + logprobs[:, level]).reshape(batch, k * k)
            order = _stable_top(scores, k)
            frontier_tokens = tokens[:, level].reshape(batch, k * k).gather(1, order)
            frontier_scores = scores.gather(1, order)
            parent_rows = rows - k + torch.div(order, k, rounding_mode="floor")
        for r, length in zip(requests, lengths):
            alloc.truncate(r.seq_id, length)
        roots = torch.tensor([r.last_token for r in requests], dtype=torch.int64, device=device)
        return DraftProposal(tree=ops.build_tree_from_topk(roots, tokens, logprobs, self.num_nodes))

    @staticmethod
    def _grow(fed, ancestors, new_tokens, parent_rows):
        """Append the frontier ``new_tokens [B, K]`` (parents: rows of ``fed``, -1 = the root) to
        the fed rows and their ancestor mask ``[B, R, R]``: a new row sees itself and its parent's
        ancestors."""
        batch, rows = fed.shape
        k = new_tokens.shape[1]
        grown = torch.zeros(batch, rows + k, rows + k, dtype=torch.bool, device=fed.device)
        grown[:, :rows, :rows] = ancestors
        if rows:
            inherited = ancestors.gather(1, parent_rows.clamp(min=0)[:, :, None].expand(batch, k, rows))
            grown[:, rows:, :rows] = inherited & (parent_rows >= 0)[:, :, None]
        grown[:, rows:, rows:] = torch.eye(k, dtype=torch.bool, device=fed.device)
        return torch.cat([fed, new_tokens], 1), grown
