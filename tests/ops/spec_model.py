"""A tiny autoregressive "target" and "drafter" over a small vocabulary, for speculative-decoding tests.

Both are tables: the logits (or draft distribution) after a prefix of d tokens are row
``path_index(prefix)`` of table d, where ``path_index`` reads the prefix as a base-V number. That
makes the target's conditional distributions explicit, so the exact distribution of the first
two tokens speculative decoding emits is known: ``p0(t1) * p1(t2 | t1)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from decodekit.reference import sampling


class Model(NamedTuple):
    target: list[torch.Tensor]  # target[d]: [V**d, V] logits after a prefix of d tokens
    draft: list[torch.Tensor]  # draft[d]: [V**d, V] draft distribution after a prefix of d tokens


def make_model(vocab: int, depth: int, seed: int, scale: float = 1.5) -> Model:
    """Tables up to prefix length ``depth``; the drafter is a noisy copy of the target."""
    gen = torch.Generator().manual_seed(seed)
    target, draft = [], []
    for d in range(depth + 1):
        logits = torch.randn(vocab**d, vocab, generator=gen) * scale
        target.append(logits)
        draft.append(torch.softmax(logits + torch.randn(vocab**d, vocab, generator=gen), -1))
    return Model(target, draft)


def filtered_probs(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0) -> torch.Tensor:
    """[R, V] the distribution `sample` draws from (temperature -> top-k -> top-p), in float64."""
    rows = logits.shape[0]
    z = logits / temperature
    keep = sampling.kept_mask(
        logits, z, torch.full((rows,), top_k), torch.full((rows,), top_p), torch.zeros(rows)
    )
    p = torch.where(keep, torch.exp((z - z.max(-1, keepdim=True).values).double()), 0.0)
    return p / p.sum(-1, keepdim=True)


def draw(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token per row of ``probs [R, V]`` (Gumbel-max with torch's generator)."""
    u = torch.rand(probs.shape, generator=gen, dtype=torch.float64).clamp_min(1e-300)
    return torch.argmax(torch.log(probs.double()) - torch.log(-torch.log(u)), -1)


def top_children(probs: torch.Tensor, count: int) -> torch.Tensor:
    """[R, count] the ``count`` most likely distinct tokens (a deterministic top-k drafter)."""
    return torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, :count]


class TreeShape(NamedTuple):
    parents: list[int]  # parent of each node, -1 for the root; parents before children
    depth: list[int]


def tree_shape(branching: tuple[int, ...]) -> TreeShape:
    """Full tree: the root has branching[0] children, each of those branching[1], ..."""
    parents, depth = [-1], [0]
    frontier = [0]
    for level, count in enumerate(branching):
        nxt = []
        for node in frontier:
            for _ in range(count):
                parents.append(node)
                depth.append(level + 1)
                nxt.append(len(parents) - 1)
        frontier = nxt
    return TreeShape(parents, depth)


class Drafts(NamedTuple):
    tokens: torch.Tensor  # [R, N] int64 (root token 0)
    target_logits: torch.Tensor  # [R, N, V]
    draft_probs: torch.Tensor  # [R, N, V]


def draft_tree(model: Model, shape: TreeShape, draws: int, deterministic: bool, seed: int) -> Drafts:
    """Per draw, children of every node drawn i.i.d. from the drafter (or its top-k when
    ``deterministic``), with the target's and drafter's rows at every node."""
    vocab = model.target[0].shape[1]
    nodes = len(shape.parents)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(draws, nodes, dtype=torch.int64)
    path = torch.zeros(draws, nodes, dtype=torch.int64)
    child_rank = [0] * nodes
    seen: dict[int, int] = {}
    for node in range(1, nodes):
        parent = shape.parents[node]
        child_rank[node] = seen.get(parent, 0)
        seen[parent] = child_rank[node] + 1
    top = {}
    for node in range(1, nodes):
        parent = shape.parents[node]
        q = model.draft[shape.depth[parent]][path[:, parent]]
        if deterministic:
            if parent not in top:
                top[parent] = top_children(q, seen[parent])
            tok = top[parent][:, child_rank[node]]
        else:
            tok = draw(q, gen)
        tokens[:, node] = tok
        path[:, node] = path[:, parent] * vocab + tok
    logits = torch.stack([model.target[shape.depth[u]][path[:, u]] for u in range(nodes)], 1)
    probs = torch.stack([model.draft[shape.depth[u]][path[:, u]] for u in range(nodes)], 1)
    return Drafts(tokens, logits, probs)


def chain_shape(n: int) -> TreeShape:
    return tree_shape((1,) * n)


def first_two_expected(model: Model, **params) -> torch.Tensor:
    """[V, V] float64 exact distribution of the first two tokens of target sampling."""
    p0 = filtered_probs(model.target[0], **params)[0]
    p1 = filtered_probs(model.target[1], **params)
    return p0.unsqueeze(1) * p1


def second_token_after(model: Model, first: torch.Tensor, seed: int, **params) -> torch.Tensor:
    """The next plain target sample after ``first`` [R] (what the next decoding step emits)."""
    probs = filtered_probs(model.target[1][first], **params)
    return draw(probs, torch.Generator().manual_seed(seed))


# chi-square critical value at p = 1e-6 by the Wilson-Hilferty approximation (within ~2% for
# dof >= 3; deterministic seeds make a pass a pass forever, and the bugs the tests target give
# statistics in the thousands)
def chi2_critical_1e6(dof: int) -> float:
    z = 4.753
    c = 2.0 / (9.0 * dof)
    return dof * (1 - c + z * c**0.5) ** 3


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson statistic of ``counts`` against ``probs`` (same shape), over the support."""
    counts, probs = counts.reshape(-1).double(), probs.reshape(-1).double()
    support = probs > 0
    expected = probs[support] * counts.sum()
    stat = ((counts[support] - expected) ** 2 / expected).sum()
    return float(stat), int(support.sum()) - 1
