"""`discrete_diffusion_step` (one SEDD reverse step): every kernel backend against the reference
(tokens equal except on float near-ties of the Gumbel scores), positions that must be kept,
fp16 / bf16 inputs, invalid rows, batch invariance, seeds and offsets, bad inputs, torch.compile,
and math tests of the spec itself (Bayes rule, MDLM's update, the drawn distribution, Euler vs
analytic to first order)."""

import itertools
import math

import pytest
import torch

from decodekit import ops
from decodekit.ops._backend import unavailable_reason
from decodekit.reference import discrete_diffusion as ref
from decodekit.reference import rng
from decodekit.reference.rng import Stream

GRAPHS = ["absorbing", "uniform"]
SAMPLERS = ["euler", "analytic", "final"]
PARAMS = ["log_score", "clean_logits"]
ALL_KINDS = list(itertools.product(GRAPHS, SAMPLERS, PARAMS))
BACKENDS = ["reference", "cpu", "triton", pytest.param("cuda", marks=pytest.mark.gpu)]
KERNEL_BACKENDS = BACKENDS[1:]  # comparing the reference with itself could not fail


def _usable(backend: str) -> tuple[str, torch.device]:
    """(backend, device): cuda and triton on the GPU when there is one, else CPU tensors (triton
    under the interpreter, set up by conftest.py)."""
    on_gpu = backend == "cuda" or (backend == "triton" and torch.cuda.is_available())
    device = torch.device("cuda" if on_gpu else "cpu")
    reason = unavailable_reason(backend, device)
    if reason is not None:
        pytest.skip(reason)
    return backend, device


@pytest.fixture(params=BACKENDS)
def any_backend(request):
    return _usable(request.param)


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request):
    return _usable(request.param)


def _interpreted(backend, device) -> bool:
    return backend == "triton" and device.type == "cpu"


def _sizes(backend, device):
    """(B, L, V): tiny for the Triton interpreter, elsewhere V spans several 256-wide tiles plus a tail."""
    return (2, 6, 40) if _interpreted(backend, device) else (2, 24, 520)


def _problem(graph, sampler, param, batch, length, vocab, *, seed=0, dtype=torch.float32):
    """Scores, canvas and the op's keyword arguments (CPU tensors). Scales are chosen so every
    kind of step moves a fair share of positions: log scores sum to ~3 per row (absorbing) or
    ~3 V (uniform), Euler takes dsigma = 0.1 (0.3 expm1(sigma) for absorbing clean logits), analytic a quarter of sigma, final all of it."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, length, vocab, generator=gen)
    if param == "log_score":
        scores = noise * 1.5 - (math.log(vocab) if graph == "absorbing" else 0.0)
    else:
        scores = noise * 3.0
    absorbing = graph == "absorbing"
    tokens = torch.randint(0, vocab - 1 if absorbing else vocab, (batch, length), generator=gen)
    if absorbing:
        tokens[torch.rand(batch, length, generator=gen) < 0.75] = vocab - 1
    sigma = 0.3 + 1.7 * torch.rand(batch, generator=gen)
    # clean logits on the absorbing graph give sum S ~ 1 / expm1(sigma): scale Euler's step to match
    euler = 0.3 * torch.expm1(sigma) if absorbing and param == "clean_logits" else torch.full((batch,), 0.1)
    dsigma = {"euler": euler, "analytic": 0.25 * sigma, "final": sigma.clone()}[sampler]
    kwargs = dict(
        sigma=sigma,
        dsigma=dsigma,
        graph=graph,
        sampler=sampler,
        parameterization=param,
        mask_id=vocab - 1 if absorbing else None,
        fixed=torch.rand(batch, length, generator=gen) < 0.1,
        seed=torch.arange(batch) * 1000 + 17,
        offset=torch.full((batch,), 3),
    )
    return scores.to(dtype), tokens, kwargs


def _on(device, kwargs):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def _gumbel_keys(scores, tokens, kwargs):
    """[B, L, V] Gumbel scores log P_y - log(-log u_y) of the reference (-inf where P_y = 0)."""
    graph = ops.discrete_diffusion.GRAPHS[kwargs["graph"]]
    sampler = ops.discrete_diffusion.SAMPLERS[kwargs["sampler"]]
    param = ops.discrete_diffusion.PARAMETERIZATIONS[kwargs["parameterization"]]
    mask_id = -1 if kwargs["mask_id"] is None else kwargs["mask_id"]
    batch, length, vocab = scores.shape
    score, _ = ref.concrete_score(scores, tokens, kwargs["sigma"], graph, param, mask_id)
    weights = ref.transition_weights(score, tokens, kwargs["dsigma"], graph, sampler, mask_id)
    c0 = (torch.arange(length).unsqueeze(-1) * vocab + torch.arange(vocab)) & rng.MASK32
    u = rng.uniform(kwargs["seed"].reshape(-1, 1, 1), kwargs["offset"].reshape(-1, 1, 1), Stream.DIFFUSION_TOKEN, c0)
    positive = weights > 0
    return torch.where(positive, torch.log(torch.where(positive, weights, 1.0)), -math.inf) - torch.log(-torch.log(u))


def _assert_matches_reference(backend, device, scores, tokens, kwargs):
    """Invalid (-1) positions agree exactly; other tokens agree on >= 99.9% of positions (at most
    one mismatch in small cases), and a mismatch must be a float near-tie of the reference's
    Gumbel scores (relative gap < 1e-4)."""
    got = ops.discrete_diffusion_step(scores.to(device), tokens.to(device), backend=backend, **_on(device, kwargs)).cpu()
    want = ops.discrete_diffusion_step(scores, tokens, backend="reference", **kwargs)
    assert torch.equal(got < 0, want < 0)
    differ = (got != want).nonzero().tolist()
    assert len(differ) <= max(1, got.numel() // 1000), f"{len(differ)} of {got.numel()} tokens differ"
    if differ:
        keys = _gumbel_keys(scores.float(), tokens, kwargs)
        for b, l in differ:
            mine, theirs = float(keys[b, l, got[b, l]]), float(keys[b, l, want[b, l]])
            assert abs(mine - theirs) <= 1e-4 * max(1.0, abs(theirs)), (b, l, mine, theirs)
    return got


# ------------------------------------------------------------------ kernels vs reference


@pytest.mark.parametrize("graph, sampler, param", ALL_KINDS)
def test_matches_reference(kernel_backend, graph, sampler, param):
    backend, device = kernel_backend
    batch, length, vocab = _sizes(backend, device)
    offsets = [0] if _interpreted(backend, device) else [0, 1]
    moved = 0
    for offset in offsets:
        scores, tokens, kwargs = _problem(graph, sampler, param, batch, length, vocab, seed=offset)
        kwargs["offset"] = torch.full((batch,), offset)
        got = _assert_matches_reference(backend, device, scores, tokens, kwargs)
        moved += int((got != tokens).sum())
    assert moved > 0  # the case exercises draws, not only kept tokens


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("graph, sampler, param", [("absorbing", "analytic", "log_score"),
                                                   ("uniform", "euler", "clean_logits")])
def test_half_precision_scores(kernel_backend, dtype, graph, sampler, param):
    backend, device = kernel_backend
    if dtype == torch.bfloat16 and _interpreted(backend, device):
        pytest.skip("bf16 arithmetic is wrong in the Triton interpreter (DESIGN.md)")
    batch, length, vocab = _sizes(backend, device)
    scores, tokens, kwargs = _problem(graph, sampler, param, batch, length, vocab, seed=5, dtype=dtype)
    _assert_matches_reference(backend, device, scores, tokens, kwargs)


def test_long_rows_and_untouched_rows_are_never_read(kernel_backend):
    """A vocabulary that is not a multiple of any tile, and NaN rows at kept positions."""
    backend, device = kernel_backend
    vocab = 97 if _interpreted(backend, device) else 3001
    scores, tokens, kwargs = _problem("absorbing", "analytic", "clean_logits", 2, 5, vocab, seed=9)
    scores[tokens != vocab - 1] = math.nan
    _assert_matches_reference(backend, device, scores, tokens, kwargs)


# ------------------------------------------------------------------ properties on every backend


def _step(backend, device, scores, tokens, **kwargs):
    out = ops.discrete_diffusion_step(scores.to(device), tokens.to(device), backend=backend, **_on(device, kwargs))
    return out.cpu()


@pytest.mark.parametrize("graph", GRAPHS)
def test_fixed_positions_are_kept_without_reading_their_row(any_backend, graph):
    backend, device = any_backend
    batch, length, vocab = _sizes(backend, device)
    scores, tokens, kwargs = _problem(graph, "final", "log_score", batch, length, vocab, seed=2)
    fixed = torch.zeros(batch, length, dtype=torch.bool)
    fixed[:, ::2] = True
    if graph == "absorbing":
        tokens[:, ::2] = vocab - 1  # a fixed mask stays a mask, even under the final step
    scores[fixed] = math.nan  # would make the position -1 if it were read
    kwargs["fixed"] = fixed
    out = _step(backend, device, scores, tokens, **kwargs)
    assert torch.equal(out[fixed], tokens[fixed])
    free = ~fixed & (tokens == vocab - 1) if graph == "absorbing" else ~fixed
    assert bool((out[free] >= 0).all()) and int((out[free] != tokens[free]).sum()) > 0


def test_absorbing_unmasked_positions_are_kept(any_backend):
    backend, device = any_backend
    batch, length, vocab = _sizes(backend, device)
    scores, tokens, kwargs = _problem("absorbing", "final", "clean_logits", batch, length, vocab, seed=4)
    kwargs["fixed"] = None
    unmasked = tokens != vocab - 1
    scores[unmasked] = math.inf
    out = _step(backend, device, scores, tokens, **kwargs)
    assert torch.equal(out[unmasked], tokens[unmasked])
    # the final step never keeps the mask, and a clean_logits draw never picks the mask column
    assert bool(((out[~unmasked] >= 0) & (out[~unmasked] < vocab - 1)).all())


@pytest.mark.parametrize("param", PARAMS)
def test_invalid_rows_give_minus_one_and_leave_the_batch_alone(any_backend, param):
    backend, device = any_backend
    batch, length, vocab = _sizes(backend, device)
    scores, tokens, kwargs = _problem("absorbing", "final", param, batch, length, vocab, seed=6)
    kwargs["fixed"] = None
    tokens[:, :4] = vocab - 1
    clean = _step(backend, device, scores, tokens, **kwargs)
    broken = scores.clone()
    broken[0, 0, 3] = math.nan
    broken[0, 1, vocab - 1] = math.inf  # +inf anywhere, the ignored mask column included
    broken[1, 2, : vocab - 1] = -math.inf  # log_score: every weight 0; clean_logits: softmax of nothing
    broken[1, 3, 7] = -math.inf  # -inf entries alone are fine
    out = _step(backend, device, broken, tokens, **kwargs)
    assert out[0, 0] == -1 and out[0, 1] == -1 and out[1, 2] == -1
    untouched = torch.ones_like(out, dtype=torch.bool)
    untouched[0, :2] = untouched[1, 2:4] = False
    assert torch.equal(out[untouched], clean[untouched])
    assert 0 <= out[1, 3] < vocab - 1


def test_batch_invariance_and_per_row_seeds(any_backend):
    backend, device = any_backend
    batch, length, vocab = _sizes(backend, device)
    scores, tokens, kwargs = _problem("uniform", "analytic", "log_score", batch, length, vocab, seed=7)
    kwargs["seed"] = torch.tensor([11, 22])
    together = _step(backend, device, scores, tokens, **kwargs)
    for b in range(batch):
        alone = {k: v[b:b + 1] if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        alone["seed"] = int(kwargs["seed"][b])  # an int seed is the same stream as a [B] tensor entry
        assert torch.equal(_step(backend, device, scores[b:b + 1], tokens[b:b + 1], **alone)[0], together[b])
    # the same scores in every row: only the per-row seeds make the rows differ
    same = scores[:1].expand(batch, -1, -1).contiguous()
    rows = _step(backend, device, same, tokens[:1].expand(batch, -1).contiguous(), **kwargs)
    assert not torch.equal(rows[0], rows[1])


def test_offset_changes_the_draw_and_a_repeat_reproduces_it(any_backend):
    backend, device = any_backend
    batch, length, vocab = _sizes(backend, device)
    scores, tokens, kwargs = _problem("uniform", "final", "clean_logits", batch, length, vocab, seed=8)
    first = _step(backend, device, scores, tokens, **kwargs)
    assert torch.equal(_step(backend, device, scores, tokens, **kwargs), first)
    kwargs["offset"] = kwargs["offset"] + 1
    second = _step(backend, device, scores, tokens, **kwargs)
    assert float((first != second).float().mean()) > 0.3  # near-uniform rows: most draws change


# ------------------------------------------------------------------ bad inputs


def _good_args():
    return dict(scores=torch.zeros(2, 3, 8), tokens=torch.full((2, 3), 7), sigma=1.0, dsigma=0.1,
                graph="absorbing", mask_id=7, seed=0)


META_TOKENS = torch.zeros(2, 3, dtype=torch.int64, device="meta")


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(scores=[[[0.0]]]), TypeError, "scores"),
        (dict(scores=torch.zeros(2, 3, 8, dtype=torch.float64)), TypeError, "scores"),
        (dict(scores=torch.zeros(2, 8)), ValueError, "scores"),
        (dict(scores=torch.zeros(2, 3, 0)), ValueError, "scores"),
        (dict(scores=torch.empty(1, 2**16 + 1, 2**16, device="meta"), tokens=torch.zeros(1, 2**16 + 1, dtype=torch.int64)),
         ValueError, "scores"),
        (dict(tokens=[[7]]), TypeError, "tokens"),
        (dict(tokens=torch.full((2, 3), 7, dtype=torch.int32)), TypeError, "tokens"),
        (dict(tokens=torch.full((2, 4), 7)), ValueError, "tokens"),
        (dict(tokens=META_TOKENS), ValueError, "tokens"),
        (dict(tokens=torch.full((2, 3), 8)), ValueError, "tokens"),
        (dict(tokens=torch.full((2, 3), -1)), ValueError, "tokens"),
        (dict(sigma=0.0), ValueError, "sigma"),
        (dict(sigma=-1.0), ValueError, "sigma"),
        (dict(sigma=math.nan), ValueError, "sigma"),
        (dict(sigma=torch.tensor([1.0, 0.0])), ValueError, "sigma"),
        (dict(sigma=torch.ones(3)), ValueError, "sigma"),
        (dict(sigma=torch.ones(2, dtype=torch.int64)), TypeError, "sigma"),
        (dict(sigma=torch.ones(2, device="meta")), ValueError, "sigma"),
        (dict(sigma="1"), TypeError, "sigma"),
        (dict(dsigma=-0.1), ValueError, "dsigma"),
        (dict(dsigma=torch.tensor([0.1, -0.1])), ValueError, "dsigma"),
        (dict(dsigma=None), TypeError, "dsigma"),
        (dict(graph="masked"), ValueError, "graph"),
        (dict(sampler="ddpm"), ValueError, "sampler"),
        (dict(parameterization="logits"), ValueError, "parameterization"),
        (dict(mask_id=None), ValueError, "mask_id"),
        (dict(mask_id=8), ValueError, "mask_id"),
        (dict(mask_id=-1), ValueError, "mask_id"),
        (dict(mask_id=7.0), ValueError, "mask_id"),
        (dict(fixed=torch.zeros(2, 3, dtype=torch.int64)), TypeError, "fixed"),
        (dict(fixed=torch.zeros(2, 4, dtype=torch.bool)), ValueError, "fixed"),
        (dict(fixed=[[True]]), TypeError, "fixed"),
        (dict(fixed=torch.zeros(2, 3, dtype=torch.bool, device="meta")), ValueError, "fixed"),
        (dict(seed=torch.tensor([1, 2], dtype=torch.int32)), TypeError, "seed"),
        (dict(seed=torch.tensor([1, 2, 3])), ValueError, "seed"),
        (dict(seed=2**64), ValueError, "seed"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(offset=-1), ValueError, "offset"),
        (dict(offset=torch.tensor([0, 1], dtype=torch.int32)), TypeError, "offset"),
        (dict(backend="nope"), ValueError, "backend"),
    ],
)
def test_bad_input_raises_naming_the_argument(kwargs, error, name):
    args = _good_args()
    args.update(kwargs)
    scores, tokens = args.pop("scores"), args.pop("tokens")
    with pytest.raises(error, match=name):
        ops.discrete_diffusion_step(scores, tokens, **args)


def test_good_arguments_of_the_bad_input_table_run():
    """The table above changes one argument at a time of arguments that are valid."""
    args = _good_args()
    scores, tokens = args.pop("scores"), args.pop("tokens")
    assert ops.discrete_diffusion_step(scores, tokens, backend="reference", **args).shape == (2, 3)


# ------------------------------------------------------------------ torch.compile


def test_compiled_sampling_loop_fullgraph():
    batch, length, vocab = 2, 8, 30
    gen = torch.Generator().manual_seed(8)
    scores = torch.randn(batch, length, vocab, generator=gen) - math.log(vocab)

    def loop(scores, tokens, steps: int):
        for step in range(steps):
            sigma = 2.0 - 0.5 * step
            tokens = ops.discrete_diffusion_step(scores + step, tokens, sigma=sigma, dsigma=0.5, mask_id=vocab - 1,
                                                 sampler="analytic", seed=3, offset=step)
        return tokens

    compiled = torch.compile(loop, fullgraph=True, backend="aot_eager")  # default backend: cpu when built
    want = loop(scores, torch.full((batch, length), vocab - 1), 3)
    got = compiled(scores, torch.full((batch, length), vocab - 1), 3)
    assert torch.equal(got, want)
    assert int((want != vocab - 1).sum()) >= 4


# ------------------------------------------------------------------ the spec itself (reference)


def _forward_kernel(graph: str, sigma: float, vocab: int, mask_id: int) -> torch.Tensor:
    """p_t(y | x0) [x0, y] = exp(sigma Q) by matrix exponential of the generator Q (float64),
    independent of the closed forms in the reference."""
    if graph == "absorbing":
        q = torch.zeros(vocab, vocab, dtype=torch.float64)
        q[:, mask_id] = 1.0
        q[mask_id, mask_id] = 0.0
        q -= torch.diag(q.sum(-1))
    else:
        q = torch.full((vocab, vocab), 1.0 / vocab, dtype=torch.float64) - torch.eye(vocab, dtype=torch.float64)
    return torch.linalg.matrix_exp(sigma * q)


@pytest.mark.parametrize("graph", GRAPHS)
def test_clean_logits_conversion_is_bayes_rule(graph):
    """S_y = sum_x0 p(x0) p_t(y | x0) / p_t(x | x0), brute force over x0, for every current x."""
    vocab, mask_id, sigma = 7, 6, 0.8
    gen = torch.Generator().manual_seed(10)
    logits = torch.randn(1, vocab, vocab, generator=gen) * 2  # one row per current token x
    xs = torch.arange(vocab) if graph == "uniform" else torch.full((vocab,), mask_id)
    got, invalid = ref.concrete_score(logits, xs.unsqueeze(0), torch.tensor([sigma]), ref.Graph[graph.upper()],
                                      ref.Parameterization.CLEAN_LOGITS, mask_id)
    assert not bool(invalid.any())
    kernel = _forward_kernel(graph, sigma, vocab, mask_id)
    for row, x in enumerate(xs.tolist()):
        logit = logits[0, row].double()
        if graph == "absorbing":
            logit[mask_id] = -math.inf  # the clean token is never the mask
        p0 = torch.softmax(logit, -1)
        want = (p0.unsqueeze(-1) * kernel / kernel[:, x : x + 1]).sum(0)
        if graph == "absorbing":
            want[mask_id] = 1.0  # S_x = 1 (the brute force gives the same: p_t(x | x0) / p_t(x | x0))
        torch.testing.assert_close(got[0, row].double(), want, rtol=2e-5, atol=1e-6)


def test_absorbing_analytic_clean_logits_is_mdlm_ddpm_update():
    """P / sum P = MDLM's q(y) = p(y) (m_t - m_s) / m_t and q(mask) = m_s / m_t, m = 1 - e^-sigma."""
    vocab, mask_id = 9, 8
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(1, 4, vocab, generator=gen) * 2
    tokens = torch.full((1, 4), mask_id)
    for sigma_t, sigma_s in [(3.0, 2.0), (1.0, 0.9), (0.2, 0.01), (5.0, 0.0)]:
        sigma, dsigma = torch.tensor([sigma_t]), torch.tensor([sigma_t - sigma_s])
        score, _ = ref.concrete_score(logits, tokens, sigma, ref.Graph.ABSORBING, ref.Parameterization.CLEAN_LOGITS,
                                      mask_id)
        weights = ref.transition_weights(score, tokens, dsigma, ref.Graph.ABSORBING, ref.Sampler.ANALYTIC, mask_id)
        m_t, m_s = 1 - math.exp(-sigma_t), 1 - math.exp(-sigma_s)
        p = torch.softmax(logits.double()[..., :mask_id], -1)
        want = torch.cat([p * (m_t - m_s) / m_t, torch.full((1, 4, 1), m_s / m_t, dtype=torch.float64)], -1)
        got = weights.double() / weights.double().sum(-1, keepdim=True)
        # P_mask = (E + 1) - E sum S cancels in float32: its error is a few ulp of E + 1 = e^dsigma
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * math.exp(sigma_t - sigma_s))


def _chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Upper tail of Pearson's statistic over the categories with probability > 0."""
    support = probs > 0
    expected = probs[support].double() * counts.sum()
    stat = float(((counts[support] - expected) ** 2 / expected).sum())
    dof = int(support.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2)))


@pytest.mark.parametrize("graph, sampler, param", [("absorbing", "euler", "log_score"),
                                                   ("absorbing", "analytic", "clean_logits"),
                                                   ("uniform", "analytic", "log_score"),
                                                   ("uniform", "final", "clean_logits")])
def test_drawn_tokens_follow_the_normalised_weights(any_backend, graph, sampler, param):
    """Chi-square over many independent draws (one per row seed) of one position: p > 1e-6, and
    no draw outside the support. At 4000 draws, the other sampler's weights (4 to 13 points of
    probability away) give p < 1e-7 and a dropped stay weight p ~ 0 in these four cases."""
    backend, device = any_backend
    draws = 300 if _interpreted(backend, device) else 4000
    vocab, mask_id = 8, 7
    gen = torch.Generator().manual_seed(12)
    row = torch.randn(1, 1, vocab, generator=gen) - (math.log(vocab) if param == "log_score" and graph == "absorbing" else 0)
    token = torch.tensor([[mask_id if graph == "absorbing" else 2]])
    sigma, dsigma = torch.tensor([1.2]), torch.tensor([{"euler": 0.3, "analytic": 0.5, "final": 1.2}[sampler]])
    codes = (ref.Graph[graph.upper()], ref.Sampler[sampler.upper()], ref.Parameterization[param.upper()])
    score, _ = ref.concrete_score(row, token, sigma, codes[0], codes[2], mask_id)
    probs = ref.transition_weights(score, token, dsigma, codes[0], codes[1], mask_id)[0, 0]
    probs = probs / probs.sum()
    assert int((probs > 0.01).sum()) >= 4  # a real categorical, not a near-certain outcome
    out = _step(backend, device, row.expand(draws, 1, vocab).contiguous(), token.expand(draws, 1).contiguous(),
                sigma=sigma.expand(draws).contiguous(), dsigma=dsigma.expand(draws).contiguous(), graph=graph,
                sampler=sampler, parameterization=param, mask_id=mask_id if graph == "absorbing" else None,
                seed=torch.arange(draws) * 7919 + 1, offset=0)[:, 0]
    assert bool((out >= 0).all()) and bool((probs[out] > 0).all())
    counts = torch.bincount(out, minlength=vocab).double()
    assert _chi_square_p_value(counts, probs) > 1e-6


@pytest.mark.parametrize("graph, param", [("absorbing", "log_score"), ("absorbing", "clean_logits"),
                                          ("uniform", "log_score"), ("uniform", "clean_logits")])
def test_euler_and_analytic_weights_agree_to_first_order(graph, param):
    """|P_analytic - P_euler| = O(dsigma^2): the gap shrinks ~100x when dsigma shrinks 10x."""
    vocab, mask_id = 12, 11
    gen = torch.Generator().manual_seed(13)
    scores = torch.randn(2, 3, vocab, generator=gen) - (math.log(vocab) if graph == "absorbing" else 0.0)
    tokens = torch.full((2, 3), mask_id) if graph == "absorbing" else torch.randint(0, vocab, (2, 3), generator=gen)
    g, p = ref.Graph[graph.upper()], ref.Parameterization[param.upper()]
    score, invalid = ref.concrete_score(scores, tokens, torch.tensor([0.7, 1.5]), g, p, mask_id)
    assert not bool(invalid.any())
    gaps = []
    for ds in (1e-2, 1e-3):
        dsigma = torch.full((2,), ds)
        euler = ref.transition_weights(score, tokens, dsigma, g, ref.Sampler.EULER, mask_id)
        analytic = ref.transition_weights(score, tokens, dsigma, g, ref.Sampler.ANALYTIC, mask_id)
        gaps.append(float((analytic - euler).abs().max()))
        assert gaps[-1] <= 10.0 * ds**2 * float(score.sum(-1).max())
    assert gaps[1] < gaps[0] / 30
