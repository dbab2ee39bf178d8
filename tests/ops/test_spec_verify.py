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
    out = ops.verify_chain(
        logits, tokens[:, 1:], None, method=methods, temperature=temperature, seed=1, backend=backend
    )
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


# ------------------------------------------------------------------ backends vs reference (exact)


def _exact_sizes(backend):
    """(rows, drafts, vocab): tiny for the Triton interpreter, small for the (slow) reference
    backend, larger for compiled backends."""
    return {"triton": (5, 3, 48), "reference": (16, 4, 300)}.get(backend, (64, 6, 1000))


def _close_drafter(logits: torch.Tensor, gen: torch.Generator, noise: float = 0.5):
    """Draft probabilities near the target's and tokens drawn from them: long accepted runs."""
    q = torch.softmax(logits + noise * torch.randn(logits.shape, generator=gen), -1)
    tokens = torch.multinomial(q.reshape(-1, q.shape[-1]), 1, generator=gen).reshape(q.shape[:-1])
    return q, tokens


def _mixed_params(rows: int, gen: torch.Generator) -> dict:
    """Per-row methods and target parameters, every combination present."""
    pick = torch.arange(rows)
    return dict(
        method=[("lossless", "greedy", "typical", "lossless")[r % 4] for r in range(rows)],
        temperature=torch.tensor([(1.0, 0.7, 1.3, 0.0, 1.0)[r % 5] for r in range(rows)]),
        top_k=torch.tensor([(0, 20, 0, 5, 50, 0)[r % 6] for r in range(rows)], dtype=torch.int32),
        top_p=torch.tensor([(1.0, 0.9, 0.6, 1.0, 0.95, 0.8, 1.0)[r % 7] for r in range(rows)]),
        typical_eps=torch.tensor([(0.3, 0.1)[r % 2] for r in range(rows)]),
        typical_delta=torch.tensor([(0.09, 0.5, 0.2)[r % 3] for r in range(rows)]),
        seed=(pick * 7919 + 13).to(torch.int64),
        offset=(pick % 3).to(torch.int64),
    )


def _to(params: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in params.items()}


def _assert_same(got, want):
    for name, a, b in zip(want._fields, got, want):
        assert torch.equal(a.cpu(), b), f"{name} differs from the reference"


@pytest.mark.parametrize("use_probs", [True, False], ids=["draft_probs", "deterministic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_chain_matches_reference(kernel_case, use_probs, dtype):
    backend, device = kernel_case
    if backend == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
        pytest.skip("bf16 arithmetic is wrong in the Triton interpreter (GPU-only)")
    rows, n, vocab = _exact_sizes(backend)
    gen = torch.Generator().manual_seed(20)
    logits = (torch.randn(rows, n + 1, vocab, generator=gen) * 2).to(dtype)
    q, draft = _close_drafter(logits[:, :n].float(), gen)
    params = _mixed_params(rows, gen)
    probs = q if use_probs else None
    want = ref.verify_chain(logits, draft, probs, **params)
    got = ops.verify_chain(
        logits.to(device), draft.to(device), None if probs is None else probs.to(device), backend=backend,
        **_to(params, device),
    )  # fmt: skip
    _assert_same(got, want)
    assert 0 < float(want.num_accepted.float().mean()) < n  # the walk ends at every kind of place


@pytest.mark.parametrize("use_probs", [True, False], ids=["draft_probs", "deterministic"])
def test_tree_matches_reference(kernel_case, use_probs):
    backend, device = kernel_case
    rows, _, vocab = _exact_sizes(backend)
    nodes = 9 if backend == "triton" else 24
    gen = torch.Generator().manual_seed(21)
    parents = torch.stack([torch.tensor(_random_parents(nodes, gen)) for _ in range(rows)])
    logits = torch.randn(rows, nodes, vocab, generator=gen) * 2
    q, child_tokens = _close_drafter(logits, gen)
    # a node's token is drawn from its parent's draft row, as an i.i.d. drafter would
    tokens = child_tokens.gather(1, parents.clamp(min=0))
    tree = ops.build_tree(parents, tokens)
    params = _mixed_params(rows, gen)
    probs = q if use_probs else None
    want = ref.verify_tree(logits, tree, probs, **params)
    tree_dev = ops.build_tree(parents.to(device), tokens.to(device), max_depth=tree.max_depth)
    got = ops.verify_tree(
        logits.to(device), tree_dev, None if probs is None else probs.to(device), backend=backend,
        **_to(params, device),
    )  # fmt: skip
    _assert_same(got, want)
    assert int(want.num_accepted.max()) >= 2


def test_topk_tree_matches_reference(kernel_case):
    backend, device = kernel_case
    rows, _, vocab = _exact_sizes(backend)
    levels, k, nodes = (2, 2, 5) if backend == "triton" else (4, 3, 20)
    gen = torch.Generator().manual_seed(22)
    tokens = torch.randint(0, vocab, (rows, levels, k, k), generator=gen)
    logprobs = torch.log_softmax(torch.randn(rows, levels, k, k, generator=gen), -1)
    tree = ops.build_tree_from_topk(torch.zeros(rows, dtype=torch.int64), tokens, logprobs, nodes)
    logits = torch.randn(rows, nodes, vocab, generator=gen)
    # make each node's token the target argmax at its parent half of the time
    best = torch.argmax(logits, -1).gather(1, tree.parents.clamp(min=0).long())
    use_best = torch.rand(rows, nodes, generator=gen) < 0.5
    tree = ops.build_tree(tree.parents, torch.where(use_best, best, tree.tokens), max_depth=tree.max_depth)
    params = dict(method="greedy", seed=torch.arange(rows))
    want = ref.verify_tree(logits, tree, None, **params)
    tree_dev = ops.build_tree(tree.parents.to(device), tree.tokens.to(device), max_depth=tree.max_depth)
    got = ops.verify_tree(logits.to(device), tree_dev, None, backend=backend, **_to(params, device))
    _assert_same(got, want)


def test_greedy_ties_and_edge_shapes_match_reference(kernel_case):
    backend, device = kernel_case
    gen = torch.Generator().manual_seed(23)
    # rounded logits: many exact ties, greedy must pick the first index everywhere
    logits = torch.round(torch.randn(6, 4, 17, generator=gen))
    draft = torch.randint(0, 17, (6, 3), generator=gen)
    draft[:, 0] = torch.argmax(logits[:, 0], -1)
    for kwargs in (dict(method="greedy"), dict(temperature=0.0, method="typical")):
        want = ref.verify_chain(logits, draft, None, seed=1, **kwargs)
        got = ops.verify_chain(logits.to(device), draft.to(device), None, seed=1, backend=backend, **kwargs)
        _assert_same(got, want)
    # n = 0 (only the bonus token), V = 1, and a single-node tree
    for shape in ((3, 1, 9), (3, 2, 1)):
        logits = torch.randn(shape, generator=gen)
        draft = torch.zeros(shape[0], shape[1] - 1, dtype=torch.int64)
        want = ref.verify_chain(logits, draft, None, seed=torch.arange(3))
        got = ops.verify_chain(logits.to(device), draft.to(device), None, seed=torch.arange(3, device=device), backend=backend)
        _assert_same(got, want)
    tree = ops.build_tree(torch.full((3, 1), -1, device=device), torch.zeros(3, 1, dtype=torch.int64, device=device))
    logits = torch.randn(3, 1, 9, generator=gen)
    got = ops.verify_tree(logits.to(device), tree, None, seed=4, backend=backend)
    want = ref.verify_tree(logits, ops.build_tree(torch.full((3, 1), -1), torch.zeros(3, 1, dtype=torch.int64)), None, seed=4)
    _assert_same(got, want)


def test_invalid_rows_match_reference(kernel_case):
    backend, device = kernel_case
    rows, n, vocab = 6, 3, 40
    gen = torch.Generator().manual_seed(24)
    logits = torch.randn(rows, n + 1, vocab, generator=gen)
    q, draft = _close_drafter(logits[:, :n], gen, noise=0.0)
    logits[0, 0, 3] = float("nan")
    logits[1, 1, :] = float("-inf")
    logits[2, 3, 0] = float("inf")
    logits[3, 2, 5] = float("nan")
    want = ref.verify_chain(logits, draft, q, seed=torch.arange(rows))
    seed = torch.arange(rows, device=device)
    got = ops.verify_chain(logits.to(device), draft.to(device), q.to(device), seed=seed, backend=backend)
    _assert_same(got, want)
    assert not bool(want.valid.all())


def test_batch_invariance_and_seeds(backend_case):
    backend, device = backend_case
    rows, n, vocab = _exact_sizes(backend)
    gen = torch.Generator().manual_seed(25)
    logits = torch.randn(rows, n + 1, vocab, generator=gen).to(device)
    q, draft = _close_drafter(logits[:, :n].cpu(), gen)
    q, draft = q.to(device), draft.to(device)
    seeds = torch.arange(rows, device=device) * 1009
    together = ops.verify_chain(logits, draft, q, seed=seeds, offset=3, backend=backend)
    for row in (0, rows - 1):
        one = slice(row, row + 1)
        alone = ops.verify_chain(logits[one], draft[one], q[one], seed=seeds[one], offset=3, backend=backend)
        assert torch.equal(alone.tokens[0], together.tokens[row])
    again = ops.verify_chain(logits, draft, q, seed=seeds, offset=3, backend=backend)
    assert torch.equal(again.tokens, together.tokens)
    moved = ops.verify_chain(logits, draft, q, seed=seeds, offset=4, backend=backend)
    assert not torch.equal(moved.tokens, together.tokens)


# ------------------------------------------------------------------ bad input


def _chain_args(**overrides):
    args = dict(
        target_logits=torch.randn(2, 3, 8),
        draft_tokens=torch.zeros(2, 2, dtype=torch.int64),
        draft_probs=torch.full((2, 2, 8), 1 / 8),
    )
    args.update(overrides)
    return args


CHAIN_BAD_INPUTS = [
    (dict(target_logits=[[1.0]]), TypeError, "target_logits"),
    (dict(target_logits=torch.zeros(2, 3, 8, dtype=torch.int32)), TypeError, "target_logits"),
    (dict(target_logits=torch.zeros(2, 8)), ValueError, "target_logits"),
    (dict(target_logits=torch.zeros(0, 3, 8)), ValueError, "target_logits"),
    (dict(draft_tokens=torch.zeros(2, 3, dtype=torch.int64)), ValueError, "draft_tokens"),
    (dict(draft_tokens=torch.zeros(3, 2, dtype=torch.int64)), ValueError, "draft_tokens"),
    (dict(draft_tokens=torch.zeros(2, 2)), TypeError, "draft_tokens"),
    (dict(draft_tokens=torch.tensor([[0, 8], [0, 0]])), ValueError, "draft_tokens"),
    (dict(draft_tokens=torch.tensor([[0, -1], [0, 0]])), ValueError, "draft_tokens"),
    (dict(draft_probs=torch.full((2, 2, 7), 1 / 7)), ValueError, "draft_probs"),
    (dict(draft_probs=torch.full((2, 2, 8), 1 / 4)), ValueError, "draft_probs"),
    (dict(draft_probs=torch.full((2, 2, 8), 1 / 8).index_fill(2, torch.tensor([0]), -0.1)), ValueError, "draft_probs"),
    (dict(draft_probs=torch.full((2, 2, 8), float("nan"))), ValueError, "draft_probs"),
    (dict(draft_probs=torch.ones(2, 2, 8, dtype=torch.int64)), TypeError, "draft_probs"),
    (dict(draft_probs="uniform"), TypeError, "draft_probs"),
    (dict(method="nucleus"), ValueError, "method"),
    (dict(method=["greedy"]), ValueError, "method"),
    (dict(method=["greedy", "beam"]), ValueError, "method"),
    (dict(method=torch.tensor([0, 5])), ValueError, "method"),
    (dict(method=1.5), TypeError, "method"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=torch.tensor([1.0, float("nan")])), ValueError, "temperature"),
    (dict(top_k=-1), ValueError, "top_k"),
    (dict(top_k=2.5), TypeError, "top_k"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(typical_eps=-0.1), ValueError, "typical_eps"),
    (dict(typical_delta=torch.tensor([0.1, -1.0])), ValueError, "typical_delta"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(offset=-1), ValueError, "offset"),
    (dict(temperature=torch.ones(3)), ValueError, "temperature"),
]


@pytest.mark.parametrize("overrides, error, name", CHAIN_BAD_INPUTS)
def test_verify_chain_bad_input_raises_naming_the_argument(overrides, error, name):
    args = _chain_args(**{k: v for k, v in overrides.items() if k in ("target_logits", "draft_tokens", "draft_probs")})
    kwargs = {k: v for k, v in overrides.items() if k not in args}
    with pytest.raises(error, match=name):
        ops.verify_chain(args["target_logits"], args["draft_tokens"], args["draft_probs"], backend="reference", **kwargs)


def _small_tree(rows=2, parents=(-1, 0, 0, 1), vocab=8):
    parents_t = torch.tensor([list(parents)] * rows)
    return ops.build_tree(parents_t, torch.ones(rows, len(parents), dtype=torch.int64))


def test_verify_tree_bad_input_raises_naming_the_argument():
    tree = _small_tree()
    logits = torch.randn(2, 4, 8)
    cases = [
        (dict(tree=(tree.parents, tree.tokens)), TypeError, "tree"),
        (dict(logits=torch.randn(3, 4, 8)), ValueError, "tree"),
        (dict(logits=torch.randn(2, 5, 8)), ValueError, "tree"),
        (dict(tree=tree._replace(max_depth=1)), ValueError, "max_depth"),
        (dict(tree=tree._replace(tokens=torch.full((2, 4), 8))), ValueError, "tree.tokens"),
        (dict(tree=tree._replace(first_child=torch.full((2, 4), -1, dtype=torch.int32))), ValueError, "first_child"),
        (dict(probs=torch.full((2, 4, 8), 0.2)), ValueError, "draft_probs"),
        (dict(probs=torch.full((2, 3, 8), 1 / 8)), ValueError, "draft_probs"),
        (dict(method="random"), ValueError, "method"),
    ]
    for case, error, name in cases:
        kwargs = {k: v for k, v in case.items() if k not in ("tree", "logits", "probs")}
        with pytest.raises(error, match=name):
            ops.verify_tree(case.get("logits", logits), case.get("tree", tree), case.get("probs"), backend="reference", **kwargs)
    # leaf rows of draft_probs are never read, so they need not be distributions
    probs = torch.full((2, 4, 8), 1 / 8)
    probs[:, 2:] = 0.0
    assert ops.verify_tree(logits, tree, probs, backend="reference").valid.all()


# ------------------------------------------------------------------ torch.compile


def test_compiled_verify_fullgraph():
    gen = torch.Generator().manual_seed(26)
    logits = torch.randn(4, 3, 16, generator=gen)
    q, draft = _close_drafter(logits[:, :2], gen)
    tree = _small_tree(rows=4, parents=(-1, 0, 1))
    seed = torch.arange(4)

    def step(logits, draft, q, seed):
        chain = ops.verify_chain(logits, draft, q, seed=seed, offset=2, top_k=8, backend="reference")
        tree_out = ops.verify_tree(logits, tree, None, seed=seed, method="typical", backend="reference")
        return chain.tokens, chain.num_accepted, tree_out.accepted_nodes, tree_out.tokens

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(logits, draft, q, seed), step(logits, draft, q, seed)):
        assert torch.equal(a, b)


def test_chain_equals_verify_tree_on_the_path_tree(backend_case):
    """Contract: a chain of n drafts is the path tree 0 -> 1 -> ... -> n, node j + 1 = draft j."""
    backend, device = backend_case
    rows, n, vocab = _exact_sizes(backend)
    gen = torch.Generator().manual_seed(27)
    logits = torch.randn(rows, n + 1, vocab, generator=gen) * 2
    q, draft = _close_drafter(logits[:, :n], gen)
    params = _to(_mixed_params(rows, gen), device)
    chain = ops.verify_chain(logits.to(device), draft.to(device), q.to(device), backend=backend, **params)
    parents = torch.arange(-1, n).expand(rows, -1).to(device)
    tokens = torch.cat([torch.zeros(rows, 1, dtype=torch.int64), draft], 1).to(device)
    tree = ops.build_tree(parents, tokens, max_depth=n)
    q_tree = torch.cat([q, torch.full((rows, 1, vocab), 1.0 / vocab)], 1).to(device)  # leaf row: never read
    out = ops.verify_tree(logits.to(device), tree, q_tree, backend=backend, **params)
    assert torch.equal(chain.tokens, out.tokens)
    assert torch.equal(chain.num_accepted, out.num_accepted)
    nodes = torch.arange(n + 1, device=device)
    expected_path = torch.where(nodes <= out.num_accepted.unsqueeze(-1).long(), nodes, -1)
    assert torch.equal(out.accepted_nodes.long(), torch.where(out.valid.unsqueeze(-1), expected_path, -1))


def test_check_draft_probs_false_skips_the_value_check():
    args = _chain_args(draft_probs=torch.full((2, 2, 8), 1 / 4))
    with pytest.raises(ValueError, match="draft_probs"):
        ops.verify_chain(args["target_logits"], args["draft_tokens"], args["draft_probs"], backend="reference")
    out = ops.verify_chain(
        args["target_logits"], args["draft_tokens"], args["draft_probs"], check_draft_probs=False, backend="reference"
    )
    assert out.valid.all()
