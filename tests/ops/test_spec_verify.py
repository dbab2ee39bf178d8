"""`verify_chain` / `verify_tree`: losslessness in distribution (chains and trees, random and
deterministic drafters, filtered targets), greedy == repeated greedy decoding, hand-checked
acceptance rules, every backend against the reference for the same seed, and bad inputs."""

from __future__ import annotations

import functools

import pytest
import torch

from decodekit import ops
from decodekit.reference import spec_verify as ref
from decodekit.reference.rng import Stream, philox_uniform

import spec_model as sm  # tests/ops is on sys.path (pytest's rootdir-relative import)

# backends with enough speed for distribution tests (the Triton interpreter has its own small cases)
STAT_BACKENDS = ["reference", "cpu"]


def _first_two(model, out_tokens, num_emitted, seed, **params):
    first = out_tokens[:, 0]
    nxt = sm.second_token_after(model, first, seed, **params)
    second = torch.where(num_emitted >= 2, out_tokens[:, 1], nxt)
    return first, second


def _assert_matches_target(model, first, second, vocab, **params):
    expected = sm.first_two_expected(model, **params)
    joint = torch.bincount(first * vocab + second, minlength=vocab * vocab).reshape(vocab, vocab)
    assert joint[expected == 0].sum() == 0, "a token outside the target's filtered support was emitted"
    stat, dof = sm.chi_square(joint.sum(1), expected.sum(1))
    assert stat < sm.chi2_critical_1e6(dof), f"first token: chi2={stat:.1f} with {dof} dof"
    stat, dof = sm.chi_square(joint, expected)
    assert stat < sm.chi2_critical_1e6(dof), f"first two tokens: chi2={stat:.1f} with {dof} dof"


# ------------------------------------------------------------------ losslessness (distribution)

VOCAB = 8
DRAWS = 20000
TARGET_PARAMS = {
    "plain": {},
    "filtered": dict(temperature=1.2, top_k=6, top_p=0.92),
}
# (branching per level, deterministic top-k drafter): chains are branching 1; trees have depth 3
# and siblings drawn i.i.d. from the drafter (duplicates possible, draft_probs passed) or its
# distinct top-k (draft_probs=None)
DRAFTERS = {
    "chain_probs": ((1, 1, 1), False, True),
    "chain_deterministic": ((1, 1, 1), False, False),
    "tree_iid_2x2x1": ((2, 2, 1), False, True),
    "tree_iid_3x2x1": ((3, 2, 1), False, True),
    "tree_topk_3x2x1": ((3, 2, 1), True, False),
}
# The reference backend pays ~1 s per 100k Philox draws (int64 torch arithmetic), so it runs a
# representative subset; the cpu backend runs the whole matrix and equals the reference exactly
# (test_*_matches_reference below), which carries the reference's coverage over.
LOSSLESS_CASES = [
    pytest.param(backend, drafter, target, id=f"{backend}-{drafter}-{target}")
    for backend in STAT_BACKENDS
    for drafter in DRAFTERS
    for target in TARGET_PARAMS
    if backend == "cpu" or (drafter, target) in {("chain_probs", "filtered"), ("tree_iid_3x2x1", "plain")}
]


@functools.lru_cache(maxsize=None)
def _lossless_inputs(drafter: str):
    branching, deterministic, use_probs = DRAFTERS[drafter]
    model = sm.make_model(VOCAB, 3, seed=4)
    shape = sm.tree_shape(branching)
    drafts = sm.draft_tree(model, shape, DRAWS, deterministic=deterministic, seed=5)
    tree = ops.build_tree(torch.tensor(shape.parents).expand(DRAWS, -1), drafts.tokens)
    return model, drafts, tree, use_probs


@pytest.mark.parametrize("backend, drafter, target", LOSSLESS_CASES)
def test_speculative_decoding_is_lossless(backend, drafter, target):
    """The first token, and the first two tokens (the second from the next decoding step when
    only one is emitted), follow the target's filtered distribution exactly."""
    params = TARGET_PARAMS[target]
    model, drafts, tree, use_probs = _lossless_inputs(drafter)
    seed = torch.arange(DRAWS) + 1000
    probs = drafts.draft_probs if use_probs else None
    if drafter.startswith("chain"):
        out = ops.verify_chain(
            drafts.target_logits, drafts.tokens[:, 1:], None if probs is None else probs[:, :-1],
            seed=seed, offset=5, backend=backend, **params,
        )  # fmt: skip
    else:
        out = ops.verify_tree(drafts.target_logits, tree, probs, seed=seed, offset=5, backend=backend, **params)
    assert out.valid.all()
    assert 0.5 < float(out.num_accepted.float().mean()) < 2.5  # acceptance and rejection both happen
    first, second = _first_two(model, out.tokens, out.num_emitted, seed=3, **params)
    _assert_matches_target(model, first, second, VOCAB, **params)


@pytest.mark.parametrize("backend", STAT_BACKENDS)
def test_real_draft_probs_raise_tree_acceptance(backend):
    """SpecInfer's point: with the drafter's probabilities, i.i.d. siblings are accepted more
    often than when the same tokens are verified as deterministic proposals (both lossless)."""
    _, drafts, tree, _ = _lossless_inputs("tree_iid_3x2x1")
    rows = 3000
    tree = ops.build_tree(tree.parents[:rows], tree.tokens[:rows])
    logits, seed = drafts.target_logits[:rows], torch.arange(rows)
    with_probs = ops.verify_tree(logits, tree, drafts.draft_probs[:rows], seed=seed, backend=backend)
    without = ops.verify_tree(logits, tree, None, seed=seed, backend=backend)
    assert float(with_probs.num_accepted.float().mean()) > float(without.num_accepted.float().mean()) + 0.05


# ------------------------------------------------------------------ hand-checked rules (reference)


def test_chain_acceptance_coin_and_residual_by_hand():
    """n = 1: accept iff coin * q(x) < p(x) with coin = uniform(seed, offset, ACCEPT_COIN, 1);
    on rejection the token is the Gumbel-max of log(max(0, p - q)) with RESIDUAL_TOKEN noise."""
    batch, vocab = 400, 5
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, 2, vocab, generator=gen)
    q = torch.softmax(torch.randn(batch, 1, vocab, generator=gen), -1)
    draft = torch.randint(0, vocab, (batch, 1), generator=gen)
    seed, offset = torch.arange(batch) * 7 + 3, torch.full((batch,), 11)
    out = ref.verify_chain(logits, draft, q, seed=seed, offset=offset)
    coin = philox_uniform(seed, offset, Stream.ACCEPT_COIN, 2)[:, 1]
    noise = philox_uniform(seed, offset, Stream.RESIDUAL_TOKEN, vocab)
    p0, p1 = torch.softmax(logits[:, 0], -1), torch.softmax(logits[:, 1], -1)
    q0 = q[:, 0]
    rows = torch.arange(batch)
    accept = coin * q0[rows, draft[:, 0]] < p0[rows, draft[:, 0]]
    assert torch.equal(out.num_accepted.bool(), accept)
    residual = (p0 - q0).clamp(min=0)
    score = torch.log(residual) - torch.log(-torch.log(noise))
    correction = torch.argmax(torch.where(residual > 0, score, float("-inf")), -1)
    bonus = torch.argmax(torch.log(p1) - torch.log(-torch.log(noise)), -1)
    assert torch.equal(out.tokens[:, 0], torch.where(accept, draft[:, 0], correction))
    assert torch.equal(out.tokens[accept, 1], bonus[accept])
    assert (out.tokens[~accept, 1] == -1).all()
    assert torch.equal(out.num_emitted, out.num_accepted + 1)


def test_tree_residual_is_renormalised_between_siblings():
    """Root with two children: the second child is tested against norm(max(0, p - q))."""
    batch, vocab = 600, 4
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(batch, 3, vocab, generator=gen)
    q = torch.softmax(torch.randn(batch, 3, vocab, generator=gen), -1)
    tokens = torch.randint(0, vocab, (batch, 3), generator=gen)
    tree = ops.build_tree(torch.tensor([[-1, 0, 0]]).expand(batch, 3), tokens)
    seed = torch.arange(batch) + 5
    out = ref.verify_tree(logits, tree, q, seed=seed, offset=0)
    coin = philox_uniform(seed, torch.zeros(batch, dtype=torch.int64), Stream.ACCEPT_COIN, 3)
    rows = torch.arange(batch)
    p, q0 = torch.softmax(logits[:, 0], -1), q[:, 0]
    first = coin[:, 1] * q0[rows, tokens[:, 1]] < p[rows, tokens[:, 1]]
    r = (p - q0).clamp(min=0)
    r = r / r.sum(-1, keepdim=True)
    second = ~first & (coin[:, 2] * q0[rows, tokens[:, 2]] < r[rows, tokens[:, 2]])
    want = torch.where(first, 1, torch.where(second, 2, -1))
    assert torch.equal(out.accepted_nodes[:, 1].long(), want)


def test_typical_acceptance_threshold_by_hand():
    vocab = 6
    probs = torch.tensor([0.5, 0.2, 0.12, 0.1, 0.05, 0.03])
    logits = probs.log().reshape(1, 1, vocab).expand(vocab, 2, vocab).contiguous()
    draft = torch.arange(vocab).reshape(vocab, 1)
    entropy = float(-(probs * probs.log()).sum())
    eps, delta = 0.3, 0.5
    threshold = min(eps, delta * torch.exp(torch.tensor(-entropy)).item())
    out = ref.verify_chain(logits, draft, None, method="typical", typical_eps=eps, typical_delta=delta, seed=0)
    assert out.num_accepted.tolist() == [int(p > threshold) for p in probs.tolist()]
    # eps caps the threshold: with eps = 0.15 only tokens with p > 0.15 pass
    out = ref.verify_chain(logits, draft, None, method="typical", typical_eps=0.15, typical_delta=1.0, seed=0)
    assert out.num_accepted.tolist() == [1, 1, 0, 0, 0, 0]


# ------------------------------------------------------------------ greedy == greedy decoding


def _greedy_sequence(model: sm.Model, depth: int) -> list[int]:
    seq, index = [], 0
    vocab = model.target[0].shape[1]
    for d in range(depth + 1):
        tok = int(torch.argmax(model.target[d][index]))
        seq.append(tok)
        index = index * vocab + tok
    return seq


def _naive_greedy_walk(parents, tokens, greedy_seq):
    """Per-node loop: follow the first child (lowest index) whose token is the greedy token."""
    node, path = 0, [0]
    while True:
        nxt = [c for c in range(len(parents)) if parents[c] == node and tokens[c] == greedy_seq[len(path) - 1]]
        if not nxt:
            return path, greedy_seq[: len(path)]
        node = nxt[0]
        path.append(node)


@pytest.mark.parametrize("backend", STAT_BACKENDS)
def test_greedy_chain_equals_greedy_decoding(backend):
    model = sm.make_model(VOCAB, 4, seed=8)
    greedy = _greedy_sequence(model, 4)
    shape = sm.chain_shape(4)
    batch = 64
    drafts = sm.draft_tree(model, shape, batch, deterministic=False, seed=9)
    tokens = drafts.tokens.clone()
    # force long greedy prefixes on some rows so every acceptance length occurs
    for row in range(batch):
        keep = row % 5
        tokens[row, 1 : keep + 1] = torch.tensor(greedy[:keep])
    logits = _chain_logits(model, tokens[:, 1:])
    methods = ["greedy" if r % 2 else "lossless" for r in range(batch)]
    temperature = torch.tensor([1.0 if r % 2 else 0.0 for r in range(batch)])  # lossless at T=0 is greedy
    out = ops.verify_chain(logits, tokens[:, 1:], None, method=methods, temperature=temperature, seed=1, backend=backend)
    for row in range(batch):
        match = 0
        while match < 4 and int(tokens[row, match + 1]) == greedy[match]:
            match += 1
        assert int(out.num_accepted[row]) == match
        assert out.tokens[row, : match + 1].tolist() == greedy[: match + 1]
    assert sorted(set(out.num_accepted.tolist())) == [0, 1, 2, 3, 4]


def _chain_logits(model: sm.Model, drafts: torch.Tensor) -> torch.Tensor:
    vocab = model.target[0].shape[1]
    index = torch.zeros(drafts.shape[0], dtype=torch.int64)
    rows = [model.target[0][index]]
    for j in range(drafts.shape[1]):
        index = index * vocab + drafts[:, j]
        rows.append(model.target[j + 1][index])
    return torch.stack(rows, 1)


@pytest.mark.parametrize("backend", STAT_BACKENDS)
def test_greedy_tree_equals_greedy_decoding_hand_built(backend):
    # root -> {1, 2}; 1 -> {3, 4}; 2 -> {5}; 3 -> {6}; 4 -> {7}: greedy tokens placed on 2, 5 and
    # on 1's children so that the first matching sibling decides
    model = sm.make_model(VOCAB, 3, seed=10)
    g = _greedy_sequence(model, 3)
    other = [(t + 1) % VOCAB for t in g]
    parents = [-1, 0, 0, 1, 1, 2, 3, 4]
    tokens = [0, other[0], g[0], g[1], other[1], g[1], g[2], g[2]]
    logits = _tree_logits(model, parents, tokens)
    tree = ops.build_tree(torch.tensor([parents]), torch.tensor([tokens]))
    out = ops.verify_tree(logits.unsqueeze(0), tree, None, method="greedy", backend=backend)
    assert out.accepted_nodes[0].tolist() == [0, 2, 5, -1]
    assert out.tokens[0].tolist() == [g[0], g[1], g[2], -1]
    assert int(out.num_accepted[0]) == 2 and int(out.num_emitted[0]) == 3


def _tree_logits(model: sm.Model, parents: list[int], tokens: list[int]) -> torch.Tensor:
    vocab = model.target[0].shape[1]
    path, depth, rows = [0], [0], [model.target[0][0]]
    for node in range(1, len(parents)):
        p = parents[node]
        path.append(path[p] * vocab + tokens[node])
        depth.append(depth[p] + 1)
        rows.append(model.target[depth[node]][path[node]])
    return torch.stack(rows)


def _random_parents(nodes: int, gen: torch.Generator) -> list[int]:
    return [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, nodes)]


@pytest.mark.parametrize("backend", STAT_BACKENDS)
def test_greedy_random_trees_equal_greedy_decoding(backend):
    model = sm.make_model(4, 6, seed=11, scale=3.0)
    g = _greedy_sequence(model, 6)
    gen = torch.Generator().manual_seed(12)
    for trial in range(20):
        nodes = 3 + trial % 10
        parents = _random_parents(nodes, gen)
        tree_depth = [0] * nodes
        for i in range(1, nodes):
            tree_depth[i] = tree_depth[parents[i]] + 1
        # half of the nodes carry the greedy token of their depth, the others a random one
        tokens = [0] + [
            g[tree_depth[i] - 1] if torch.rand(1, generator=gen) < 0.5 else int(torch.randint(0, 4, (1,), generator=gen))
            for i in range(1, nodes)
        ]
        logits = _tree_logits(model, parents, tokens)
        tree = ops.build_tree(torch.tensor([parents]), torch.tensor([tokens]))
        out = ops.verify_tree(logits.unsqueeze(0), tree, None, temperature=0.0, backend=backend)
        path, emitted = _naive_greedy_walk(parents, tokens, g)
        width = tree.max_depth + 1
        assert out.accepted_nodes[0].tolist() == path + [-1] * (width - len(path))
        assert out.tokens[0].tolist() == emitted + [-1] * (width - len(emitted))


# ------------------------------------------------------------------ invalid rows


def test_invalid_target_rows_give_invalid_flag(backend_case):
    backend, device = backend_case
    batch, n, vocab = 4, 3, 40
    gen = torch.Generator().manual_seed(13)
    logits = torch.randn(batch, n + 1, vocab, generator=gen)
    draft = torch.argmax(logits[:, :n], -1)  # greedy drafts: every draft accepted
    logits[0, 0, 5] = float("nan")  # at the root: nothing can be emitted
    logits[1, 2, :] = float("-inf")  # at an accepted node
    logits[2, 3, 7] = float("inf")  # at the bonus position
    out = ops.verify_chain(logits.to(device), draft.to(device), None, temperature=0.0, backend=backend)
    assert out.valid.tolist() == [False, False, False, True]
    assert (out.tokens[:3] == -1).all()
    assert out.num_accepted.tolist()[:3] == [0, 0, 0] and out.num_emitted.tolist()[:3] == [0, 0, 0]
    assert int(out.num_accepted[3]) == n


def test_nan_rows_off_the_walk_do_not_matter():
    logits = torch.randn(2, 3, 10)
    draft = torch.full((2, 2), -1)
    draft[:, 0] = (torch.argmax(logits[:, 0], -1) + 1) % 10  # rejected at once (greedy)
    draft[:, 1] = 0
    logits[:, 2, 0] = float("nan")
    out = ops.verify_chain(logits, draft, None, method="greedy", backend="reference")
    assert out.valid.all() and (out.num_accepted == 0).all()
