"""`build_tree` / `build_tree_from_topk`: hand-built trees, random trees against a naive per-node
construction, EAGLE-2 selection against a naive scan, and invalid trees."""

from __future__ import annotations

import heapq

import pytest
import torch

from decodekit import ops


def _naive(parents: list[int]):
    """Per-node loops: first child, next sibling, depth, ancestor mask rows."""
    n = len(parents)
    children = [[c for c in range(n) if parents[c] == u] for u in range(n)]
    first_child = [ch[0] if ch else -1 for ch in children]
    next_sibling = [-1] * n
    for ch in children:
        for a, b in zip(ch, ch[1:]):
            next_sibling[a] = b
    depth, mask = [], []
    for i in range(n):
        row, node, d = [False] * n, i, 0
        row[i] = True
        while parents[node] >= 0:
            node = parents[node]
            row[node] = True
            d += 1
        depth.append(d)
        mask.append(row)
    return first_child, next_sibling, depth, mask


def _unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    bits = [(packed[..., j // 8].to(torch.int32) >> (j % 8)) & 1 for j in range(n)]
    return torch.stack(bits, -1).bool()


def test_hand_built_tree():
    #        0
    #      / | \
    #     1  2  3
    #    / \     \
    #   4   5     6
    #   |
    #   7
    parents = [-1, 0, 0, 0, 1, 1, 3, 4]
    tree = ops.build_tree(torch.tensor([parents]), torch.arange(8).unsqueeze(0) + 100)
    assert tree.first_child[0].tolist() == [1, 4, -1, 6, 7, -1, -1, -1]
    assert tree.next_sibling[0].tolist() == [-1, 2, 3, -1, 5, -1, -1, -1]
    assert tree.depth[0].tolist() == [0, 1, 1, 1, 2, 2, 2, 3]
    assert tree.max_depth == 3
    assert tree.tokens.dtype == torch.int64 and tree.parents.dtype == torch.int32
    assert [j for j in range(8) if tree.ancestor_mask[0, 7, j]] == [0, 1, 4, 7]
    assert [j for j in range(8) if tree.ancestor_mask[0, 6, j]] == [0, 3, 6]
    assert tree.packed_mask.shape == (1, 8, 1) and tree.packed_mask.dtype == torch.uint8
    assert int(tree.packed_mask[0, 7, 0]) == 1 + 2 + 16 + 128


@pytest.mark.parametrize("nodes", [1, 2, 9, 17, 64])
def test_random_trees_match_naive_construction(nodes):
    gen = torch.Generator().manual_seed(nodes)
    rows = 6
    parents = [[-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, nodes)] for _ in range(rows)]
    if nodes > 2:
        parents[0] = [-1] + list(range(nodes - 1))  # a chain: the deepest possible tree
    tree = ops.build_tree(torch.tensor(parents), torch.zeros(rows, nodes, dtype=torch.int64))
    for b in range(rows):
        first_child, next_sibling, depth, mask = _naive(parents[b])
        assert tree.first_child[b].tolist() == first_child
        assert tree.next_sibling[b].tolist() == next_sibling
        assert tree.depth[b].tolist() == depth
        assert tree.ancestor_mask[b].tolist() == mask
    assert torch.equal(_unpack(tree.packed_mask, nodes), tree.ancestor_mask)
    assert tree.packed_mask.shape[-1] == (nodes + 7) // 8
    assert tree.max_depth == int(tree.depth.max())


def _naive_topk_tree(root: int, tokens: torch.Tensor, logprobs: torch.Tensor, num_nodes: int):
    """One row, with explicit candidate records and heaps (the EAGLE-2 procedure step by step)."""
    levels, k, _ = tokens.shape[0], tokens.shape[1], tokens.shape[2]
    candidates = []  # (level, flat index, score, token, parent candidate id)
    frontier = None
    for level in range(levels):
        start = len(candidates)
        if level == 0:
            for j in range(k):
                candidates.append((0, j, float(logprobs[0, 0, j]), int(tokens[0, 0, j]), -1))
        else:
            for f, (cid, score) in enumerate(frontier):
                for j in range(k):
                    candidates.append((level, f * k + j, score + float(logprobs[level, f, j]), int(tokens[level, f, j]), cid))
        level_ids = list(range(start, len(candidates)))
        best = heapq.nsmallest(k, level_ids, key=lambda c: (-candidates[c][2], candidates[c][1]))
        frontier = [(c, candidates[c][2]) for c in best]
    order = sorted(range(len(candidates)), key=lambda c: (-candidates[c][2], candidates[c][0], candidates[c][1]))
    kept = sorted(order[: num_nodes - 1])
    node_of = {c: i + 1 for i, c in enumerate(kept)}
    parents = [-1] + [node_of.get(candidates[c][4], 0) if candidates[c][4] >= 0 else 0 for c in kept]
    node_tokens = [root] + [candidates[c][3] for c in kept]
    return parents, node_tokens


@pytest.mark.parametrize("levels, k, nodes", [(1, 3, 4), (3, 2, 7), (5, 4, 40), (6, 8, 64)])
def test_build_tree_from_topk_matches_naive(levels, k, nodes):
    gen = torch.Generator().manual_seed(levels * 10 + k)
    rows = 4
    tokens = torch.randint(0, 1000, (rows, levels, k, k), generator=gen)
    logprobs = torch.log_softmax(torch.randn(rows, levels, k, k, generator=gen) * 2, -1)
    logprobs[0] = torch.round(logprobs[0] * 2) / 2  # exact score ties: the tie rules decide
    logprobs = logprobs.clamp(max=0.0)
    roots = torch.arange(rows) + 7
    tree = ops.build_tree_from_topk(roots, tokens, logprobs, nodes)
    assert tree.max_depth == min(levels, nodes - 1)
    for b in range(rows):
        parents, node_tokens = _naive_topk_tree(int(roots[b]), tokens[b], logprobs[b], nodes)
        assert tree.parents[b].tolist() == parents
        assert tree.tokens[b].tolist() == node_tokens
        assert all(parents[i] < i for i in range(1, nodes))
    assert int(tree.depth.max()) <= tree.max_depth


INVALID_PARENTS = [
    ([[0, 0, 1]], "node 0 is the root"),
    ([[-1, 1, 0]], "parents before children"),  # parent == own index (a self-loop)
    ([[-1, 2, 1]], "cycles"),  # 1 -> 2 -> 1
    ([[-1, 0, -1]], "more than one root"),
    ([[-1, 0, 7]], "out of range"),
    ([[-1, -5, 0]], "out of range"),
]


@pytest.mark.parametrize("parents, message", INVALID_PARENTS)
def test_invalid_trees_raise(parents, message):
    with pytest.raises(ValueError, match="parents") as error:
        ops.build_tree(torch.tensor(parents), torch.zeros(1, 3, dtype=torch.int64))
    assert message in str(error.value)


def test_build_tree_bad_arguments():
    good = torch.tensor([[-1, 0, 1]])
    tokens = torch.zeros(1, 3, dtype=torch.int64)
    with pytest.raises(TypeError, match="parents"):
        ops.build_tree([[-1, 0, 1]], tokens)
    with pytest.raises(TypeError, match="parents"):
        ops.build_tree(good.float(), tokens)
    with pytest.raises(ValueError, match="parents"):
        ops.build_tree(torch.tensor([-1, 0, 1]), tokens)
    with pytest.raises(ValueError, match="tokens"):
        ops.build_tree(good, torch.zeros(1, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="tokens"):
        ops.build_tree(good, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="max_depth"):
        ops.build_tree(good, tokens, max_depth=1)
    with pytest.raises(ValueError, match="max_depth"):
        ops.build_tree(good, tokens, max_depth=3)


def test_build_tree_from_topk_bad_arguments():
    tokens = torch.zeros(2, 3, 2, 2, dtype=torch.int64)
    logprobs = torch.full((2, 3, 2, 2), -0.7)
    roots = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="num_nodes"):
        ops.build_tree_from_topk(roots, tokens, logprobs, 1 + 2 + 2 * 4 + 1)
    with pytest.raises(ValueError, match="num_nodes"):
        ops.build_tree_from_topk(roots, tokens, logprobs, 0)
    with pytest.raises(ValueError, match="logprobs"):
        ops.build_tree_from_topk(roots, tokens, -logprobs, 5)
    with pytest.raises(ValueError, match="logprobs"):
        ops.build_tree_from_topk(roots, tokens, logprobs[:, :2], 5)
    with pytest.raises(TypeError, match="logprobs"):
        ops.build_tree_from_topk(roots, tokens, logprobs.long(), 5)
    with pytest.raises(ValueError, match="tokens"):
        ops.build_tree_from_topk(roots, tokens[:, :, :, :1], logprobs, 5)
    with pytest.raises(ValueError, match="root_tokens"):
        ops.build_tree_from_topk(roots[:1], tokens, logprobs, 5)
    with pytest.raises(TypeError, match="root_tokens"):
        ops.build_tree_from_topk(roots.float(), tokens, logprobs, 5)
