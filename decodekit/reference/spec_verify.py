"""Plain-PyTorch speculative verification: the executable spec of the `spec_verify` op family.

Every backend (cpu, triton, cuda) must give the same integer outputs as ``verify_tree`` /
``verify_chain`` below for the same seed; the raw-function argument lists are in the module
docstring of ``decodekit/ops/spec_verify.py``.

A token tree of N nodes per batch row: node 0 is the root (the last committed token), every other
node is a draft token whose parent has a smaller index. ``target_logits[b, u]`` are the target's
logits for the children of node u; ``draft_probs[b, u]`` is the distribution every child of u was
drawn from (i.i.d.), or ``None`` for a deterministic drafter (top-k children, n-gram, ...), which
behaves exactly like ``draft_probs[b, u] = one_hot(token of the child being tested)``.

One row is verified by a walk from the root. At node u the target distribution ``p_u`` is
``sample``'s (temperature -> top-k -> top-p, min-p off); the children of u are tried in increasing
index order:

* **lossless** (SpecInfer multi-step speculative sampling; Leviathan/Chen on chains): child c with
  token x is accepted iff ``coin_c * q(x) < r(x)`` where ``r`` starts as ``p_u`` and after every
  rejection becomes ``norm(max(0, r - q))``. The first accepted child becomes the new u (fresh
  residual); if none is accepted the final token is drawn from the last residual.
* **greedy** (also every row with temperature 0): accept the first child whose token is the first
  index of the maximum of the raw logits; the final token is that argmax.
* **typical** (Medusa): accept the first child with ``p_u(x) > min(eps, delta * exp(-H(p_u)))``;
  the final token is drawn from ``p_u``. Lossy by design.

The walk ends at a node with no accepted child (correction token) or at a leaf (bonus token).
Random numbers (DESIGN.md's Philox contract): the acceptance coin of child c is
``uniform(seed, offset, ACCEPT_COIN, c)`` (c = node index), the final draw is Gumbel-max with
``uniform(seed, offset, RESIDUAL_TOKEN, i)`` (i = vocab id): at most one final draw per row.
A row whose target logits at a visited node are invalid (NaN, +inf, all -inf, or nothing left by
the filters) is reported with ``valid=False`` and all outputs -1 / 0.

Tree construction (``build_tree``, ``build_tree_from_topk``) is host-side torch for every backend:
it is vectorised over the batch and needs no per-node Python loop.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from decodekit.reference.rng import Stream, philox_uniform
from decodekit.reference.sampling import first_argmax, invalid_rows, kept_mask

METHOD_CODES = {"lossless": 0, "greedy": 1, "typical": 2}
LOSSLESS, GREEDY, TYPICAL = 0, 1, 2


class VerifyOutput(NamedTuple):
    tokens: torch.Tensor  # [B, n+1] int64: accepted draft tokens then the final token, -1 padded
    num_accepted: torch.Tensor  # [B] int32
    num_emitted: torch.Tensor  # [B] int32: num_accepted + 1, 0 for invalid rows
    valid: torch.Tensor  # [B] bool


class TreeVerifyOutput(NamedTuple):
    accepted_nodes: torch.Tensor  # [B, max_depth+1] int32: accepted path from the root (0), -1 padded
    tokens: torch.Tensor  # [B, max_depth+1] int64: accepted nodes' tokens then the final token
    num_accepted: torch.Tensor  # [B] int32: accepted draft nodes
    num_emitted: torch.Tensor  # [B] int32: num_accepted + 1, 0 for invalid rows
    valid: torch.Tensor  # [B] bool


class Tree(NamedTuple):
    """A batch of token trees with the arrays verification and tree attention need.

    ``depth`` is each node's position relative to the root (add the root's sequence position);
    ``ancestor_mask[b, i, j]`` is True iff node j is node i or one of its ancestors;
    ``packed_mask[b, i, j // 8]`` holds that bit at bit ``j % 8`` (little-endian bit order).
    """

    tokens: torch.Tensor  # [B, N] int64
    parents: torch.Tensor  # [B, N] int32, -1 for the root
    first_child: torch.Tensor  # [B, N] int32, -1 for leaves
    next_sibling: torch.Tensor  # [B, N] int32, -1 for the last child
    depth: torch.Tensor  # [B, N] int32
    ancestor_mask: torch.Tensor  # [B, N, N] bool
    packed_mask: torch.Tensor  # [B, N, ceil(N / 8)] uint8
    max_depth: int  # >= every depth: verify_tree's outputs have max_depth + 1 columns


# ----------------------------------------------------------------------------- tree construction


def _child_links(parents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first_child, next_sibling) [B, N] int32 of valid ``parents`` [B, N] (root parent -1).

    One stable sort by parent groups every node's children in index order; O(B N log N), no
    [B, N, N] temporaries, so ``verify_tree`` can re-check a tree on every CPU call.
    """
    batch, nodes = parents.shape
    parent = parents.to(torch.int64)
    order = torch.sort(parent, dim=1, stable=True).indices  # children of one parent: increasing index
    sorted_parent = parent.gather(1, order)
    same_as_next = torch.zeros_like(sorted_parent, dtype=torch.bool)
    same_as_next[:, :-1] = sorted_parent[:, :-1] == sorted_parent[:, 1:]
    after = torch.full_like(order, -1)
    after[:, :-1] = order[:, 1:]
    next_sibling = torch.full_like(parent, -1)
    next_sibling.scatter_(1, order, torch.where(same_as_next & (sorted_parent >= 0), after, -1))
    starts_run = torch.ones_like(same_as_next)
    starts_run[:, 1:] = ~same_as_next[:, :-1]
    heads = starts_run & (sorted_parent >= 0)
    # column N collects the writes of non-heads and is dropped
    first = torch.full((batch, nodes + 1), -1, dtype=torch.int64, device=parents.device)
    first.scatter_(1, torch.where(heads, sorted_parent, nodes), torch.where(heads, order, -1))
    return first[:, :nodes].to(torch.int32), next_sibling.to(torch.int32)


def _depths(parents: torch.Tensor) -> torch.Tensor:
    """[B, N] int32 depth of every node by pointer jumping (ceil(log2 N) gathers)."""
    jump = parents.to(torch.int64)
    dist = (jump >= 0).to(torch.int64)
    for _ in range(max(1, (parents.shape[1] - 1).bit_length())):
        valid = jump >= 0
        safe = jump.clamp(min=0)
        dist = dist + torch.where(valid, dist.gather(1, safe), 0)
        jump = torch.where(valid, jump.gather(1, safe), -1)
    return dist.to(torch.int32)


def _ancestor_mask(parents: torch.Tensor) -> torch.Tensor:
    """[B, N, N] bool reflexive-transitive closure of the parent relation, by repeated squaring."""
    batch, nodes = parents.shape
    index = torch.arange(nodes, device=parents.device)
    edge = parents.to(torch.int64).unsqueeze(-1) == index.view(1, 1, -1)
    mask = edge | torch.eye(nodes, dtype=torch.bool, device=parents.device)
    reach = 1  # mask covers ancestor chains of length <= reach
    while reach < nodes - 1:
        # float32 products of 0/1 entries are exact integer counts up to 2**24 >= N
        mask = torch.bmm(mask.to(torch.float32), mask.to(torch.float32)) > 0
        reach *= 2
    return mask


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """[..., N] bool -> [..., ceil(N / 8)] uint8, bit j % 8 of byte j // 8 (little-endian)."""
    nodes = mask.shape[-1]
    padded = torch.nn.functional.pad(mask.to(torch.uint8), (0, (-nodes) % 8))
    bits = padded.reshape(*mask.shape[:-1], -1, 8)
    weights = torch.tensor([1 << k for k in range(8)], dtype=torch.uint8, device=mask.device)
    return (bits * weights).sum(-1, dtype=torch.int32).to(torch.uint8)


def build_tree(parents: torch.Tensor, tokens: torch.Tensor, max_depth: int | None = None) -> Tree:
    """Tree of ``parents [B, N]`` (int, parent index < own index, -1 only for node 0) and
    ``tokens [B, N]``; ``max_depth`` is computed (a host sync on GPU) when not given."""
    parents = parents.to(torch.int32)
    first_child, next_sibling = _child_links(parents)
    mask = _ancestor_mask(parents)
    depth = _depths(parents)
    if max_depth is None:
        max_depth = int(depth.max())
    return Tree(tokens.to(torch.int64), parents, first_child, next_sibling, depth, mask, pack_mask(mask), max_depth)


def _stable_descending(scores: torch.Tensor) -> torch.Tensor:
    """Indices sorting ``scores`` (last dim) by value descending, lower index first on ties."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def build_tree_from_topk(
    root_tokens: torch.Tensor, tokens: torch.Tensor, logprobs: torch.Tensor, num_nodes: int
) -> Tree:
    """EAGLE-2 dynamic tree from the drafter's per-level top-k expansions.

    ``root_tokens [B]``; ``tokens`` / ``logprobs`` ``[B, D, K, K]``: level 0 holds the root's K
    children in ``[:, 0, 0, :]`` (other slots of level 0 are ignored); level d >= 1 holds in
    ``[:, d, f, :]`` the K children of frontier slot f of level d - 1. A candidate's score is its
    cumulative path log-probability; the frontier of a level is its K best candidates (score
    descending, lower flat index ``f * K + j`` first on ties), frontier slot f being the f-th best.
    The tree keeps the root and the ``num_nodes - 1`` best candidates of all levels (score
    descending, then earlier level, then lower flat index), numbered by (level, flat index) so
    parents come before children. Log-probabilities must be <= 0, which makes the kept set closed
    under ancestors.
    """
    batch, levels, k, _ = tokens.shape
    dev = tokens.device
    logprobs = logprobs.to(torch.float32)
    cand_scores, cand_tokens, cand_parent = [], [], []  # per level; parent = global candidate id
    level_start = 0
    frontier_ids = frontier_scores = None
    for level in range(levels):
        if level == 0:
            scores = logprobs[:, 0, 0, :]
            toks = tokens[:, 0, 0, :]
            parent = torch.full((batch, k), -1, dtype=torch.int64, device=dev)
        else:
            scores = (frontier_scores.unsqueeze(-1) + logprobs[:, level]).reshape(batch, k * k)
            toks = tokens[:, level].reshape(batch, k * k)
            parent = frontier_ids.unsqueeze(-1).expand(batch, k, k).reshape(batch, k * k)
        order = _stable_descending(scores)[:, :k]
        frontier_scores = scores.gather(1, order)
        frontier_ids = order + level_start
        cand_scores.append(scores)
        cand_tokens.append(toks)
        cand_parent.append(parent)
        level_start += scores.shape[1]
    scores = torch.cat(cand_scores, 1)
    toks = torch.cat(cand_tokens, 1)
    parent = torch.cat(cand_parent, 1)
    kept = _stable_descending(scores)[:, : num_nodes - 1]
    kept = torch.sort(kept, dim=1).values  # candidate ids are already in (level, flat index) order
    node_of = torch.full((batch, level_start), -1, dtype=torch.int64, device=dev)
    node_of.scatter_(1, kept, torch.arange(1, num_nodes, device=dev).expand(batch, -1))
    kept_parent = parent.gather(1, kept)
    parent_node = torch.where(kept_parent >= 0, node_of.gather(1, kept_parent.clamp(min=0)), 0)
    parents = torch.cat([torch.full((batch, 1), -1, device=dev, dtype=torch.int64), parent_node], 1)
    node_tokens = torch.cat([root_tokens.reshape(batch, 1).to(torch.int64), toks.gather(1, kept).to(torch.int64)], 1)
    # a candidate of level d has depth d + 1, so D bounds the depth without reading any value
    # (no host sync on GPU): verify_tree's outputs then have D + 1 columns, as EAGLE's do
    return build_tree(parents, node_tokens, max_depth=min(levels, num_nodes - 1))


# ----------------------------------------------------------------------------- verification


def _as_row_tensor(value, batch: int, dtype, device) -> torch.Tensor:
    return torch.as_tensor(value, dtype=dtype, device=device).reshape(-1).expand(batch).contiguous()


def _method_codes(method, batch: int, device) -> torch.Tensor:
    if isinstance(method, str):
        method = METHOD_CODES[method]
    elif isinstance(method, (list, tuple)):
        method = [METHOD_CODES[m] if isinstance(m, str) else int(m) for m in method]
    return _as_row_tensor(method, batch, torch.int32, device)


class _NodeStats(NamedTuple):
    p: torch.Tensor  # [B, N, V] float32 target distribution per node
    argmax: torch.Tensor  # [B, N] int64 first index of the max of the raw logits
    threshold: torch.Tensor  # [B, N] float32 typical acceptance threshold
    invalid: torch.Tensor  # [B, N] bool


def _node_stats(x, greedy, temperature, top_k, top_p, eps, delta) -> _NodeStats:
    """The target distribution of contract section 3.1 and typical threshold of 3.2 at every node."""
    batch, nodes, vocab = x.shape
    rows = x.reshape(batch * nodes, vocab)

    def per_node(row_param):
        return row_param.repeat_interleave(nodes)

    bad = invalid_rows(rows)
    safe_x = torch.where(bad.unsqueeze(-1), torch.zeros_like(rows), rows)
    greedy_rows = per_node(greedy)
    t = torch.where(greedy_rows, torch.ones_like(per_node(temperature)), per_node(temperature))
    z = safe_x / t.unsqueeze(-1)
    keep = kept_mask(safe_x, z, per_node(top_k), per_node(top_p), torch.zeros(batch * nodes, device=x.device))
    m = torch.where(keep, z, float("-inf")).max(-1, keepdim=True).values
    e = torch.where(keep, torch.exp(z - m), 0.0)
    s = e.sum(-1, keepdim=True)
    p = e / s
    t_sum = torch.where(keep & (e > 0), e * (z - m), 0.0).sum(-1, keepdim=True)
    entropy = torch.log(s) - t_sum / s
    threshold = torch.minimum(per_node(eps).unsqueeze(-1), per_node(delta).unsqueeze(-1) * torch.exp(-entropy))
    unsampleable = ~keep.any(-1) | ~torch.isfinite(s.squeeze(-1))
    invalid = bad | (~greedy_rows & unsampleable)
    return _NodeStats(
        p.reshape(batch, nodes, vocab),
        first_argmax(safe_x).reshape(batch, nodes),
        threshold.reshape(batch, nodes),
        invalid.reshape(batch, nodes),
    )


def _gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values [B, N, ...] at node index [B] -> [B, ...]."""
    return values[torch.arange(values.shape[0], device=values.device), index]


def _checked_link(link: torch.Tensor, node: torch.Tensor, nodes: int) -> torch.Tensor:
    """link[b, node[b]] when it lies in (node, N), else -1 (contract: walks always terminate)."""
    target = _gather_rows(link, node.clamp(0, nodes - 1)).to(torch.int64)
    return torch.where((node >= 0) & (target > node) & (target < nodes), target, -1)


def verify_tree_arrays(
    target_logits: torch.Tensor,
    tokens: torch.Tensor,
    first_child: torch.Tensor,
    next_sibling: torch.Tensor,
    draft_probs: torch.Tensor | None,
    width: int,
    *,
    method="lossless",
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    typical_eps=0.3,
    typical_delta=0.09,
    seed=0,
    offset=0,
) -> TreeVerifyOutput:
    """The walk of the module docstring, vectorised over the batch.

    ``target_logits [B, N, V]``, ``tokens [B, N]``, ``first_child`` / ``next_sibling [B, N]``,
    ``draft_probs [B, N, V]`` or None, ``width`` = output columns (max_depth + 1). Per-row
    parameters are scalars or ``[B]`` tensors.
    """
    x = target_logits.to(torch.float32)
    batch, nodes, vocab = x.shape
    dev = x.device
    method = _method_codes(method, batch, dev)
    temperature = _as_row_tensor(temperature, batch, torch.float32, dev)
    top_k = _as_row_tensor(top_k, batch, torch.int64, dev)
    top_p = _as_row_tensor(top_p, batch, torch.float32, dev)
    eps = _as_row_tensor(typical_eps, batch, torch.float32, dev)
    delta = _as_row_tensor(typical_delta, batch, torch.float32, dev)
    seed = _as_row_tensor(seed, batch, torch.int64, dev)
    offset = _as_row_tensor(offset, batch, torch.int64, dev)
    tokens = tokens.to(torch.int64)
    q_all = None if draft_probs is None else draft_probs.to(torch.float32)

    greedy = (method == GREEDY) | (temperature == 0)
    typical = ~greedy & (method == TYPICAL)
    lossless = ~greedy & ~typical
    stats = _node_stats(x, greedy, temperature, top_k, top_p, eps, delta)
    coins = philox_uniform(seed, offset, Stream.ACCEPT_COIN, nodes).to(dev)
    noise = philox_uniform(seed, offset, Stream.RESIDUAL_TOKEN, vocab).to(dev)
    rows = torch.arange(batch, device=dev)
    vocab_ids = torch.arange(vocab, device=dev)

    node = torch.zeros(batch, dtype=torch.int64, device=dev)
    accepted = torch.zeros(batch, dtype=torch.int64, device=dev)
    invalid = stats.invalid[:, 0].clone()
    done = invalid.clone()
    residual = stats.p[:, 0].clone()
    child = _checked_link(first_child, node, nodes) if width > 1 else torch.full_like(node, -1)
    path = torch.full((batch, width), -1, dtype=torch.int64, device=dev)
    path[:, 0] = 0
    emitted = torch.full((batch, width), -1, dtype=torch.int64, device=dev)

    while not bool(done.all()):
        finishing = ~done & (child < 0)
        if bool(finishing.any()):
            eligible = residual > 0
            score = torch.log(residual) - torch.log(-torch.log(noise))
            drawn = first_argmax(score, eligible)
            final = torch.where(greedy, stats.argmax[rows, node], drawn)
            emitted[rows, accepted.clamp(max=width - 1)] = torch.where(
                finishing, final, emitted[rows, accepted.clamp(max=width - 1)]
            )
            done |= finishing
        testing = ~done & (child >= 0)
        if not bool(testing.any()):
            continue
        safe_child = child.clamp(min=0)
        tok = tokens[rows, safe_child]
        in_range = (tok >= 0) & (tok < vocab)
        safe_tok = tok.clamp(0, vocab - 1)
        coin = coins[rows, safe_child]
        if q_all is None:
            q_row = (vocab_ids.unsqueeze(0) == tok.unsqueeze(1)).to(torch.float32)
        else:
            q_row = q_all[rows, node]
        q_tok = q_row[rows, safe_tok]
        accept_lossless = in_range & (coin * q_tok < residual[rows, safe_tok])
        accept_typical = in_range & (stats.p[rows, node, safe_tok] > stats.threshold[rows, node])
        accept_greedy = tok == stats.argmax[rows, node]
        accept = testing & torch.where(greedy, accept_greedy, torch.where(typical, accept_typical, accept_lossless))
        reject = testing & ~accept

        # rejection: residual update (lossless rows only), move to the next sibling
        diff = residual - q_row
        d = torch.where(diff > 0, diff, torch.zeros_like(diff))
        d_sum = d.sum(-1, keepdim=True)
        update = (reject & lossless).unsqueeze(-1) & (d_sum > 0) & torch.isfinite(d_sum)
        residual = torch.where(update, d / d_sum, residual)
        sibling = _checked_link(next_sibling, child, nodes)

        # acceptance: record the node, move into it with a fresh residual
        accepted = accepted + accept.to(torch.int64)
        path[rows, accepted.clamp(max=width - 1)] = torch.where(accept, child, path[rows, accepted.clamp(max=width - 1)])
        emitted[rows, (accepted - 1).clamp(min=0)] = torch.where(
            accept, tok, emitted[rows, (accepted - 1).clamp(min=0)]
        )
        node = torch.where(accept, child, node)
        residual = torch.where(accept.unsqueeze(-1), stats.p[rows, node], residual)
        entered_invalid = accept & stats.invalid[rows, node]
        invalid |= entered_invalid
        done |= entered_invalid
        grand_child = _checked_link(first_child, node, nodes)
        grand_child = torch.where(accepted >= width - 1, -1, grand_child)
        child = torch.where(accept, grand_child, torch.where(reject, sibling, child))

    num_accepted = torch.where(invalid, 0, accepted).to(torch.int32)
    path = torch.where(invalid.unsqueeze(-1), -1, path).to(torch.int32)
    emitted = torch.where(invalid.unsqueeze(-1), -1, emitted)
    num_emitted = torch.where(invalid, 0, accepted + 1).to(torch.int32)
    return TreeVerifyOutput(path, emitted, num_accepted, num_emitted, ~invalid)


def verify_tree(target_logits, tree: Tree, draft_probs=None, **params) -> TreeVerifyOutput:
    """Verify ``tree`` (from ``build_tree``) against ``target_logits [B, N, V]``; see the module
    docstring. ``draft_probs [B, N, V]`` or None; ``params`` as in ``verify_tree_arrays``."""
    return verify_tree_arrays(
        target_logits, tree.tokens, tree.first_child, tree.next_sibling, draft_probs, tree.max_depth + 1, **params
    )


def chain_arrays(draft_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens, first_child, next_sibling) [B, n+1] of the path tree of a chain of drafts."""
    batch, n = draft_tokens.shape
    dev = draft_tokens.device
    tokens = torch.cat([torch.zeros(batch, 1, dtype=torch.int64, device=dev), draft_tokens.to(torch.int64)], 1)
    index = torch.arange(n + 1, device=dev, dtype=torch.int32)
    first_child = torch.where(index < n, index + 1, -1).expand(batch, n + 1).contiguous()
    next_sibling = torch.full((batch, n + 1), -1, dtype=torch.int32, device=dev)
    return tokens, first_child, next_sibling


def verify_chain(target_logits, draft_tokens, draft_probs=None, **params) -> VerifyOutput:
    """Verify chains ``draft_tokens [B, n]`` against ``target_logits [B, n+1, V]``.

    ``draft_probs [B, n, V]`` (row j = the distribution draft token j was drawn from) or None.
    Exactly ``verify_tree`` on the path tree: draft token j is node j + 1.
    """
    tokens, first_child, next_sibling = chain_arrays(draft_tokens)
    if draft_probs is not None:
        draft_probs = torch.nn.functional.pad(draft_probs.to(torch.float32), (0, 0, 0, 1))  # leaf row: unused
    out = verify_tree_arrays(
        target_logits, tokens, first_child, next_sibling, draft_probs, draft_tokens.shape[1] + 1, **params
    )
    return VerifyOutput(out.tokens, out.num_accepted, out.num_emitted, out.valid)
