"""`denoise_step`: every backend against the reference (integers exact, floats close), the
reference against hand-computed answers, the sampled-proposal distribution with fixed seeds, bad
inputs and torch.compile. Published samplers: test_denoise_published.py; properties:
test_denoise_properties.py."""

import math

import pytest
import torch

from decodekit import ops
from decodekit.ops._backend import kernel
from decodekit.reference import denoise as ref
from decodekit.reference.rng import Stream

CONFIDENCES = ["prob", "margin", "neg_entropy", "random"]
SELECTS = ["topk", "threshold", "factor", "bernoulli"]


def _sizes(backend):
    """(B, W, V, L): tiny for the Triton interpreter, V > one vocabulary tile elsewhere."""
    return (2, 6, 40, 10) if backend == "triton" else (3, 16, 300, 30)


def _problem(batch, width, vocab, length, device, dtype=torch.float32, seed=0, scale=3.0):
    """Random logits [B, W, V] and a canvas [B, L] (mask id V - 1) where about 2/3 of the positions
    are masked and the rest hold committed tokens; windows start at different positions."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, width, vocab, generator=gen) * scale).to(dtype)
    mask_id = vocab - 1
    tokens = torch.randint(0, vocab - 1, (batch, length), generator=gen)
    tokens[torch.rand(batch, length, generator=gen) < 0.67] = mask_id
    window_start = torch.randint(0, length - width + 1, (batch,), generator=gen)
    return logits.to(device), tokens.to(device), mask_id, window_start.to(device)


def _assert_same(got, want, *, rtol=1e-4, atol=1e-6):
    assert torch.equal(got.proposal.cpu(), want.proposal.cpu())
    assert torch.equal(got.tokens.cpu(), want.tokens.cpu())
    assert torch.equal(got.committed.cpu(), want.committed.cpu())
    assert torch.equal(got.num_committed.cpu(), want.num_committed.cpu())
    torch.testing.assert_close(got.confidence.cpu(), want.confidence.cpu(), rtol=rtol, atol=atol, equal_nan=True)


def _run_both(backend, device, logits, tokens, **kwargs):
    got = ops.denoise_step(logits, tokens.clone(), backend=backend, **kwargs)
    want = ops.denoise_step(logits.cpu(), tokens.cpu().clone(), backend="reference",
                            **{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})
    return got, want


# ------------------------------------------------------------------ backends vs reference

PROPOSALS = {
    "greedy": dict(proposal="greedy"),
    "t0.7": dict(proposal="sample", temperature=0.7),
    "filtered": dict(proposal="sample", temperature=1.3, top_k=9, top_p=0.8),
}


@pytest.mark.parametrize("tempered", [False, True], ids=["untempered", "tempered"])
@pytest.mark.parametrize("proposal", list(PROPOSALS))
@pytest.mark.parametrize("confidence", CONFIDENCES)
def test_propose_matches_reference(kernel_case, confidence, proposal, tempered):
    backend, device = kernel_case
    if proposal == "greedy" and tempered and backend == "triton" and device.type == "cpu":
        pytest.skip("interpreter time: greedy rows ignore the flag (checked on the other backends)")
    batch, width, vocab, length = _sizes(backend)
    logits, tokens, mask_id, window_start = _problem(batch, width, vocab, length, device, seed=1)
    got, want = _run_both(
        backend, device, logits, tokens, mask_id=mask_id, window_start=window_start, confidence=confidence,
        tempered_confidence=tempered, select="topk", k=3, seed=torch.arange(batch, device=device) + 11, offset=5,
        **PROPOSALS[proposal],
    )
    _assert_same(got, want)


@pytest.mark.parametrize("spans", [False, True], ids=["rows", "spans"])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("select", SELECTS)
def test_select_matches_reference_exactly(kernel_case, select, ties, spans):
    """The selection kernel alone, fed the same confidences: its outputs must be exact, tie rule
    (confidence descending, position ascending) included."""
    if spans and select != "topk":
        pytest.skip("span_ids go with select='topk'")
    backend, device = kernel_case
    batch, width, _, length = _sizes(backend)
    gen = torch.Generator().manual_seed(3)
    mask_id = 5
    tokens = torch.where(torch.rand(batch, length, generator=gen) < 0.7, mask_id, 7)
    proposal = torch.randint(0, 5, (batch, width), generator=gen)
    proposal[0, 1] = -1  # an invalid logits row is never committed
    confidence = torch.rand(batch, width, generator=gen)
    if ties:
        confidence = torch.round(confidence * 4) / 4  # 0, 0.25, ..., 1.0: many exact ties
    window_start = torch.randint(0, length - width + 1, (batch,), generator=gen)
    block_start = torch.randint(0, length // 2, (batch,), generator=gen)
    block_end = block_start + torch.randint(length // 4, length, (batch,), generator=gen)
    num_spans = 3 if spans else 1
    k = torch.randint(0, 6, (batch, num_spans), generator=gen, dtype=torch.int32)
    k[0, 0] = 10**6  # clamped to the eligible count
    span_ids = torch.randint(-1, num_spans + 1, (batch, length), generator=gen, dtype=torch.int32)
    params = dict(
        window_start=window_start,
        block_start=block_start,
        block_end=block_end.clamp(max=length),
        k=k,
        tau=torch.tensor([0.5, 0.75, 0.9][:batch] + [0.6] * max(0, batch - 3)),
        factor=torch.tensor([1.0, 0.5, 2.0][:batch] + [1.0] * max(0, batch - 3)),
        p_transfer=torch.linspace(0.2, 0.9, batch),
        span_ids=span_ids if spans else torch.empty(0, dtype=torch.int32),
        seed=torch.arange(batch) * 7 + 1,
        offset=torch.full((batch,), 3),
    )
    mode = int(ops.denoise.SELECTS[select])
    outputs = {}
    for name, dev in ((backend, device), ("reference", torch.device("cpu"))):
        t = tokens.clone().to(dev)
        committed = torch.empty(batch, length, dtype=torch.bool, device=dev)
        num = torch.empty(batch, dtype=torch.int32, device=dev)
        p = {key: v.contiguous().to(dev) for key, v in params.items()}
        kernel(name, "denoise", "denoise_select")(
            t, proposal.to(dev), confidence.to(dev), p["window_start"], p["block_start"], p["block_end"], mask_id,
            mode, p["k"], p["tau"], p["factor"], p["p_transfer"], p["span_ids"], p["seed"], p["offset"], committed, num,
        )
        outputs[name] = (t.cpu(), committed.cpu(), num.cpu())
    for got, want in zip(outputs[backend], outputs["reference"]):
        assert torch.equal(got, want)
    assert int(outputs["reference"][2].sum()) > 0, "the case commits nothing: it would test nothing"


@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, id="bf16")])
def test_half_precision_logits(kernel_case, dtype):
    backend, device = kernel_case
    if dtype == torch.bfloat16 and backend == "triton" and device.type == "cpu":
        pytest.skip("bf16 arithmetic is wrong in the Triton interpreter")
    batch, width, vocab, length = _sizes(backend)
    logits, tokens, mask_id, window_start = _problem(batch, width, vocab, length, device, dtype=dtype, seed=4)
    for proposal in ("greedy", "t0.7"):
        got, want = _run_both(backend, device, logits, tokens, mask_id=mask_id, window_start=window_start,
                              select="threshold", tau=0.3, seed=9, **PROPOSALS[proposal])
        _assert_same(got, want)


def test_invalid_rows_and_suppressed_ids(kernel_case):
    backend, device = kernel_case
    batch, width, vocab, length = _sizes(backend)
    logits, tokens, mask_id, _ = _problem(batch, width, vocab, length, "cpu", seed=5)
    tokens[:, :width] = mask_id
    logits[0, 0, 3] = float("nan")
    logits[0, 1, 4] = float("inf")
    logits[1, 2, :] = float("-inf")
    logits[1, 3, :] = float("-inf")
    logits[1, 3, 7] = 2.0  # only a suppressed id is finite: invalid after suppression
    suppress = [7, 2]
    for proposal in ("greedy", "t0.7"):
        got, want = _run_both(backend, device, logits.to(device), tokens.to(device), mask_id=mask_id,
                              suppress_ids=suppress, select="topk", k=width, seed=2, **PROPOSALS[proposal])
        _assert_same(got, want)
        bad = [(0, 0), (0, 1), (1, 2), (1, 3)]
        for b, j in bad:
            assert int(got.proposal[b, j]) == -1 and math.isnan(float(got.confidence[b, j]))
            assert not bool(got.committed[b, j])
        assert not torch.isin(got.proposal.cpu(), torch.tensor(suppress)).any()
        assert int(got.num_committed[0]) == width - 2 and int(got.num_committed[1]) == width - 2


def test_long_vocabulary_and_window(kernel_case):
    """Several vocabulary tiles per row and a window covering the whole canvas."""
    backend, device = kernel_case
    if backend == "triton" and device.type == "cpu":
        batch, width, vocab = 1, 3, 1500
    else:
        batch, width, vocab = 2, 16, 5000
    logits, tokens, mask_id, _ = _problem(batch, width, vocab, width, device, seed=6)
    for confidence in ("prob", "neg_entropy"):
        got, want = _run_both(backend, device, logits, tokens, mask_id=mask_id, confidence=confidence,
                              proposal="sample", temperature=0.5, select="topk", k=5, seed=3)
        _assert_same(got, want)


def test_batch_invariance_and_absolute_positions(kernel_case):
    """A row's result depends only on its own inputs, and randomness on the absolute canvas
    position: the same logits at the same positions give the same draws whatever the window."""
    backend, device = kernel_case
    batch, width, vocab, length = _sizes(backend)
    logits, tokens, mask_id, _ = _problem(batch, width, vocab, length, device, seed=7)
    tokens[:] = mask_id
    kwargs = dict(mask_id=mask_id, proposal="sample", temperature=1.0, confidence="random", select="topk", k=2,
                  seed=123, offset=4, backend=backend)
    full = ops.denoise_step(logits, tokens.clone(), window_start=2, **kwargs)
    one = ops.denoise_step(logits[1:2], tokens[1:2].clone(), window_start=2, **kwargs)
    assert torch.equal(full.proposal[1:2], one.proposal)
    assert torch.equal(full.confidence[1:2], one.confidence)
    # shifting the window by one row moves the logits with the positions: the overlap agrees
    shifted = ops.denoise_step(logits[:, 1:], tokens.clone(), window_start=3, **kwargs)
    assert torch.equal(full.proposal[:, 1:], shifted.proposal)
    assert torch.equal(full.confidence[:, 1:], shifted.confidence)


# ------------------------------------------------------------------ the reference itself


def _step(logits, tokens, **kwargs):
    return ops.denoise_step(logits, tokens, backend="reference", **kwargs)


def test_reference_topk_ties_go_to_the_lowest_position_and_k_clamps():
    logits = torch.log(torch.tensor([[[0.7, 0.3]], [[0.7, 0.3]], [[0.3, 0.7]], [[0.9, 0.1]]])).reshape(1, 4, 2)
    tokens = torch.ones(1, 4, dtype=torch.int64)  # every position holds the mask id 1
    out = _step(logits, tokens.clone(), mask_id=1, k=2)
    # confidences 0.7, 0.7, 0.7, 0.9: the 0.9 first, then the lowest position of the 0.7 tie
    assert out.committed.tolist() == [[True, False, False, True]]
    assert out.tokens.tolist() == [[0, 1, 1, 0]]
    out = _step(logits, tokens.clone(), mask_id=1, k=99)
    assert out.num_committed.tolist() == [4]


def test_reference_threshold_commits_at_least_the_most_confident():
    probs = torch.tensor([[[0.5, 0.5, 0.0], [0.6, 0.4, 0.0], [0.95, 0.05, 0.0]]]).clamp(min=1e-30)
    tokens = torch.full((1, 3), 2)
    out = _step(probs.log(), tokens.clone(), mask_id=2, select="threshold", tau=0.99)
    assert out.committed.tolist() == [[False, False, True]]
    out = _step(probs.log(), tokens.clone(), mask_id=2, select="threshold", tau=0.6)
    assert out.committed.tolist() == [[False, True, True]]  # 0.6 >= 0.6 (float32 compare)


def test_reference_factor_rule():
    # sorted confidences 0.9, 0.8, 0.7, 0.6 with f = 1: thresholds -inf, 1 - 1/3, 1 - 1/4, 1 - 1/5
    conf = torch.tensor([[0.7, 0.9, 0.6, 0.8]])
    logits = torch.stack([conf.log(), (1 - conf).log()], -1)
    tokens = torch.full((1, 4), 1)
    out = _step(logits, tokens.clone(), mask_id=1, select="factor", factor=1.0)
    # 0.8 >= 0.667, 0.7 < 0.75: accept the first two
    assert out.committed.tolist() == [[False, True, False, True]]
    out = _step(logits, tokens.clone(), mask_id=1, select="factor", factor=3.0)  # thresholds 0, 0.25, 0.4
    assert out.num_committed.tolist() == [4]


def test_reference_margin_and_entropy():
    logits = torch.log(torch.tensor([[[0.4, 0.4, 0.2], [0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3]]]))
    tokens = torch.full((1, 3), 2)
    margin = _step(logits, tokens.clone(), mask_id=2, confidence="margin").confidence
    torch.testing.assert_close(margin, torch.tensor([[0.0, 0.2, 0.0]]), atol=1e-6, rtol=0)
    ent = _step(logits, tokens.clone(), mask_id=2, confidence="neg_entropy").confidence
    p = logits.exp()
    torch.testing.assert_close(ent, (p * p.log()).sum(-1), atol=1e-6, rtol=0)
    assert abs(float(ent[0, 2]) + math.log(3)) < 1e-6


def test_reference_tempered_confidence_uses_the_filtered_distribution():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.2]]]))
    tokens = torch.full((1, 1), 2)
    kwargs = dict(mask_id=2, proposal="sample", temperature=1.0, top_k=2, confidence="prob", seed=0)
    plain = _step(logits, tokens.clone(), **kwargs)
    tempered = _step(logits, tokens.clone(), tempered_confidence=True, **kwargs)
    tok = int(plain.proposal[0, 0])
    assert tok in (0, 1)
    assert abs(float(plain.confidence[0, 0]) - [0.5, 0.3][tok]) < 1e-6
    assert abs(float(tempered.confidence[0, 0]) - [0.625, 0.375][tok]) < 1e-6


def test_reference_random_confidence_and_coins_are_philox():
    logits = torch.zeros(2, 5, 4)
    tokens = torch.full((2, 8), 3)
    seed, offset = torch.tensor([4, 9]), torch.tensor([0, 2])
    out = _step(logits, tokens.clone(), mask_id=3, window_start=torch.tensor([1, 3]), confidence="random",
                seed=seed, offset=offset)
    u = ops.philox_uniform(seed, offset, Stream.CONFIDENCE_NOISE, 8, backend="reference")
    assert torch.equal(out.confidence[0], u[0, 1:6]) and torch.equal(out.confidence[1], u[1, 3:8])
    out = _step(logits, tokens.clone(), mask_id=3, select="bernoulli", p_transfer=0.4, seed=seed, offset=offset)
    coin = ops.philox_uniform(seed, offset, Stream.TRANSFER_COIN, 8, backend="reference")
    assert torch.equal(out.committed[:, :5], coin[:, :5] < 0.4)


def test_reference_commit_window_and_committed_tokens_are_kept():
    logits = torch.randn(1, 6, 10, generator=torch.Generator().manual_seed(0))
    tokens = torch.tensor([[9, 4, 9, 9, 9, 9]])
    out = _step(logits, tokens.clone(), mask_id=9, k=10, block_start=1, block_end=4)
    assert out.committed.tolist() == [[False, False, True, True, False, False]]
    assert int(out.tokens[0, 1]) == 4


def test_transfer_schedules():
    m = torch.tensor([10, 37, 0, 5])
    linear = ops.transfer_schedule(m, 4, "linear")
    assert linear.tolist()[:2] == [[3, 3, 2, 2], [10, 9, 9, 9]]
    for kind in ("linear", "log_linear", "cosine"):
        counts = ops.transfer_schedule(m, 7, kind)
        assert counts.dtype == torch.int32 and counts.shape == (4, 7)
        assert torch.equal(counts.sum(1), m.to(torch.int32)) and bool((counts >= 0).all())
    # Dream / MDLM: with t = linspace(1, eps, steps + 1) the first step commits trunc(M (1 - t1 / t0))
    t = torch.linspace(1, 1e-3, 8 + 1)
    assert int(ops.transfer_schedule(100, 8, "log_linear")[0, 0]) == int(100 * (1 - t[1] / t[0]))
    cos = ops.transfer_schedule(100, 4, "cosine")[0]
    assert cos.tolist() == [100 - 92, 92 - 70, 70 - 38, 38]


def test_remask_lowest():
    tokens = torch.tensor([[5, 6, 7, 8, 9], [1, 2, 3, 4, 0]])
    scores = torch.tensor([[0.5, 0.1, 0.1, float("nan"), 0.9], [0.3, 0.2, 0.1, 0.0, 1.0]])
    eligible = torch.tensor([[True] * 5, [True, True, True, False, True]])
    out = ops.remask_lowest(tokens, scores, torch.tensor([3, 10]), 0, eligible)
    assert out.tokens is tokens
    assert out.remasked.tolist() == [[True, True, True, False, False], [True, True, True, False, True]]
    assert tokens.tolist() == [[0, 0, 0, 8, 9], [0, 0, 0, 4, 0]]


# ------------------------------------------------------------------ sampled proposals


def _chi_square(counts, probs):
    support = probs > 0
    expected = probs[support] * counts.sum()
    return float(((counts[support] - expected) ** 2 / expected).sum()), int(support.sum()) - 1


# chi-square critical values at p = 1e-6: seeds are fixed, so a pass is a pass forever; a real bug
# (a wrong temperature, a draw that ignores the filter or the position) moves the statistic to the
# hundreds.
CHI2_CRIT_1E6 = {3: 30.7, 5: 35.9, 7: 40.5, 11: 48.9}


@pytest.mark.parametrize("params", [dict(temperature=1.0), dict(temperature=0.5), dict(temperature=1.0, top_k=4)],
                         ids=["t1", "t0.5", "top_k"])
def test_sampled_proposals_follow_the_tempered_distribution(backend_case, params):
    """Every canvas position draws with its own counters: one row of identical logits at N positions
    gives N independent draws from softmax(x / T) (restricted to top-k)."""
    backend, device = backend_case
    if backend == "triton" and device.type == "cpu" and params != dict(temperature=0.5):
        pytest.skip("interpreter time: one case here; exact equality with the reference covers the rest")
    positions = {"triton": 400, "reference": 6000}.get(backend, 20000)
    probs = torch.tensor([0.22, 0.18, 0.14, 0.11, 0.09, 0.07, 0.06, 0.05, 0.03, 0.025, 0.015, 0.01])
    q = torch.softmax(probs.log() / params["temperature"], -1)
    if params.get("top_k"):
        q[params["top_k"]:] = 0
        q /= q.sum()
    logits = probs.log().expand(1, positions, 12).contiguous().to(device)
    tokens = torch.full((1, positions), 11, device=device)
    out = ops.denoise_step(logits, tokens, mask_id=11, proposal="sample", seed=2024, select="bernoulli", p_transfer=0.0,
                           backend=backend, **params)
    counts = torch.bincount(out.proposal.cpu().reshape(-1), minlength=12).double()
    assert counts[q == 0].sum() == 0
    stat, dof = _chi_square(counts, q.double())
    if backend == "triton":
        assert stat < 3 * CHI2_CRIT_1E6[dof]  # 400 draws: a coarse check, the kernel equality tests do the rest
    else:
        assert stat < CHI2_CRIT_1E6[dof], f"chi2={stat:.1f} with {dof} dof"


def test_offset_and_seed_change_draws():
    logits = torch.zeros(1, 64, 50)
    tokens = torch.full((1, 64), 49)
    a = _step(logits, tokens.clone(), mask_id=49, proposal="sample", temperature=1.0, seed=1, offset=0).proposal
    b = _step(logits, tokens.clone(), mask_id=49, proposal="sample", temperature=1.0, seed=1, offset=1).proposal
    c = _step(logits, tokens.clone(), mask_id=49, proposal="sample", temperature=1.0, seed=1, offset=0).proposal
    assert not torch.equal(a, b) and torch.equal(a, c)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(logits=torch.zeros(2, 8)), ValueError, "logits"),
        (dict(logits=torch.zeros(2, 4, 8, dtype=torch.int32)), TypeError, "logits"),
        (dict(logits=[1.0]), TypeError, "logits"),
        (dict(tokens=torch.zeros(2, 10, dtype=torch.int32)), TypeError, "tokens"),
        (dict(tokens=torch.zeros(3, 10, dtype=torch.int64)), ValueError, "tokens"),
        (dict(tokens=torch.zeros(2, 3, dtype=torch.int64)), ValueError, "tokens"),
        (dict(tokens=torch.zeros(10, 2, dtype=torch.int64).t()), ValueError, "tokens"),
        (dict(mask_id=8), ValueError, "mask_id"),
        (dict(mask_id=-1), ValueError, "mask_id"),
        (dict(mask_id=1.0), TypeError, "mask_id"),
        (dict(window_start=7), ValueError, "window_start"),
        (dict(window_start=torch.tensor([0, -1])), ValueError, "window_start"),
        (dict(window_start=torch.tensor([0.0, 1.0])), TypeError, "window_start"),
        (dict(block_start=11), ValueError, "block_start"),
        (dict(block_end=-1), ValueError, "block_end"),
        (dict(proposal="beam"), ValueError, "proposal"),
        (dict(proposal="sample", temperature=0.0), ValueError, "temperature"),
        (dict(proposal="sample", temperature=-1.0), ValueError, "temperature"),
        (dict(top_k=3), ValueError, "top_k"),
        (dict(proposal="sample", top_k=-3), ValueError, "top_k"),
        (dict(proposal="sample", top_p=0.0), ValueError, "top_p"),
        (dict(confidence="max"), ValueError, "confidence"),
        (dict(select="all"), ValueError, "select"),
        (dict(tempered_confidence=1), TypeError, "tempered_confidence"),
        (dict(select="threshold", tau=0.0), ValueError, "tau"),
        (dict(select="threshold", tau=1.5), ValueError, "tau"),
        (dict(select="factor", factor=-1.0), ValueError, "factor"),
        (dict(select="bernoulli", p_transfer=1.1), ValueError, "p_transfer"),
        (dict(k=-1), ValueError, "k"),
        (dict(k=1.5), TypeError, "k"),
        (dict(k=torch.ones(2, 3, dtype=torch.int32)), ValueError, "span_ids"),
        (dict(span_ids=torch.zeros(2, 10, dtype=torch.int32), select="threshold"), ValueError, "span_ids"),
        (dict(span_ids=torch.zeros(2, 9, dtype=torch.int32)), ValueError, "span_ids"),
        (dict(span_ids=torch.zeros(2, 10)), TypeError, "span_ids"),
        (dict(suppress_ids=[8]), ValueError, "suppress_ids"),
        (dict(suppress_ids=torch.tensor([0.5])), TypeError, "suppress_ids"),
        (dict(seed=torch.tensor([1, 2], dtype=torch.int32)), TypeError, "seed"),
        (dict(offset=-1), ValueError, "offset"),
        (dict(backend="nope"), ValueError, "backend"),
        (dict(backend="cuda"), ValueError, "backend"),
    ],
)
def test_bad_input_raises_naming_the_argument(kwargs, error, name):
    args = dict(logits=torch.zeros(2, 4, 8), tokens=torch.full((2, 10), 7), mask_id=7, seed=0)
    args.update(kwargs)
    logits, tokens = args.pop("logits"), args.pop("tokens")
    with pytest.raises(error, match=name):
        ops.denoise_step(logits, tokens, **args)


def test_sampled_canvas_must_fit_32_bit_counters():
    logits = torch.zeros(1, 1, 2**16 + 1)
    tokens = torch.zeros(1, 2**16, dtype=torch.int64)
    with pytest.raises(ValueError, match="L \\* V"):
        ops.denoise_step(logits, tokens, mask_id=0, proposal="sample", backend="reference")


@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda: ops.remask_lowest(torch.zeros(2, 4, dtype=torch.int64), torch.zeros(2, 3), 1, 0), ValueError, "scores"),
        (lambda: ops.remask_lowest(torch.zeros(2, 4, dtype=torch.int64), torch.zeros(2, 4, dtype=torch.int64), 1, 0),
         TypeError, "scores"),
        (lambda: ops.remask_lowest(torch.zeros(2, 4, dtype=torch.int64), torch.zeros(2, 4), -1, 0), ValueError, "n"),
        (lambda: ops.remask_lowest(torch.zeros(2, 4, dtype=torch.int64), torch.zeros(2, 4), 1, 0,
                                   torch.zeros(2, 4)), TypeError, "eligible"),
        (lambda: ops.transfer_schedule(10, 0), ValueError, "steps"),
        (lambda: ops.transfer_schedule(10, 4, "exponential"), ValueError, "kind"),
        (lambda: ops.transfer_schedule(-1, 4), ValueError, "num_masked"),
        (lambda: ops.transfer_schedule(10, 4, "log_linear", eps=0.0), ValueError, "eps"),
    ],
)
def test_bad_input_of_the_host_ops(call, error, name):
    with pytest.raises(error, match=name):
        call()


# ------------------------------------------------------------------ torch.compile


def test_compiled_denoising_loop_fullgraph():
    batch, width, vocab = 2, 8, 30
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(batch, width, vocab, generator=gen)

    def loop(logits, tokens, steps: int):
        for step in range(steps):
            ops.denoise_step(logits + step, tokens, mask_id=vocab - 1, proposal="sample", temperature=0.5,
                             confidence="margin", select="threshold", tau=0.5, seed=3, offset=step, suppress_ids=[vocab - 1])
        return tokens

    compiled = torch.compile(loop, fullgraph=True, backend="aot_eager")  # default backend: cpu when built
    want = loop(logits, torch.full((batch, width), vocab - 1), 3)
    got = compiled(logits, torch.full((batch, width), vocab - 1), 3)
    assert torch.equal(got, want)
    assert int((want != vocab - 1).sum()) >= 6


def _selection_case(batch: int):
    # Greedy proposals with prob confidences 0.9, 0.7, 0.5, 0.3 at four masked positions.
    vocab, width, mask_id = 5, 4, 4
    conf = torch.tensor([0.9, 0.7, 0.5, 0.3])
    logits = torch.full((width, vocab), -30.0)
    rest = (1 - conf) / (vocab - 2)  # the mask id keeps ~0 mass
    logits[:, 0] = conf.log()
    logits[:, 1:mask_id] = rest.log().unsqueeze(1)
    return logits.expand(batch, width, vocab).contiguous(), mask_id, conf


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_sampled_selection_draws_positions_from_softmax_of_confidence(backend):
    """``selection_temperature`` t: k=1 picks position i with probability softmax(c / t)_i; k=2
    picks the ordered pair (i, j) as sampling without replacement does (Plackett-Luce). The
    perturbation is shared torch code on every backend; the select kernels' equality with the
    reference is tested above."""
    device = torch.device("cpu")
    draws = 20000 if backend == "cpu" else 6000
    logits, mask_id, _ = _selection_case(draws)
    logits = logits.to(device)
    seeds = torch.arange(draws, dtype=torch.int64, device=device) * 7919 + 3
    t = 0.25
    probs_out = ops.denoise_step(logits, torch.full((draws, 4), mask_id, device=device), mask_id=mask_id,
                                 confidence="prob", k=1, seed=seeds, backend=backend).confidence[0].cpu()
    expected = torch.softmax(probs_out.double() / t, 0)
    out = ops.denoise_step(logits, torch.full((draws, 4), mask_id, device=device), mask_id=mask_id,
                           confidence="prob", k=1, selection_temperature=t, seed=seeds, backend=backend)
    counts = out.committed.sum(0).cpu().double()
    assert int(out.num_committed.sum()) == draws
    chi2 = float(((counts - draws * expected) ** 2 / (draws * expected)).sum())
    assert chi2 < 30.0, (counts, expected * draws)  # 3 dof: p ~ 1e-6

    # k=2: unordered pair {i, j} has probability P(i)P(j|i) + P(j)P(i|j).
    out2 = ops.denoise_step(logits, torch.full((draws, 4), mask_id, device=device), mask_id=mask_id,
                            confidence="prob", k=2, selection_temperature=t, seed=seeds, backend=backend)
    pairs = out2.committed.cpu()
    observed, exact = [], []
    for i in range(4):
        for j in range(i + 1, 4):
            observed.append(float((pairs[:, i] & pairs[:, j]).sum()))
            pij = expected[i] * expected[j] / (1 - expected[i]) + expected[j] * expected[i] / (1 - expected[j])
            exact.append(float(pij) * draws)
    observed, exact = torch.tensor(observed), torch.tensor(exact)
    chi2 = float(((observed - exact) ** 2 / exact).sum())
    assert chi2 < 37.0, (observed, exact)  # 5 dof: p ~ 1e-6


def test_sampled_selection_is_reproducible_and_off_at_zero():
    logits, mask_id, _ = _selection_case(3)
    canvas = lambda: torch.full((3, 4), mask_id)  # noqa: E731
    plain = ops.denoise_step(logits, canvas(), mask_id=mask_id, k=2, seed=5).committed
    zero = ops.denoise_step(logits, canvas(), mask_id=mask_id, k=2, seed=5, selection_temperature=0.0).committed
    assert torch.equal(plain, zero) and plain[:, :2].all()
    temps = torch.tensor([0.0, 5.0, 5.0])
    a = ops.denoise_step(logits, canvas(), mask_id=mask_id, k=2, seed=5, selection_temperature=temps)
    b = ops.denoise_step(logits, canvas(), mask_id=mask_id, k=2, seed=5, selection_temperature=temps, backend="reference")
    assert torch.equal(a.committed, b.committed) and torch.equal(a.committed[0], plain[0])
    with pytest.raises(ValueError, match="selection_temperature"):
        ops.denoise_step(logits, canvas(), mask_id=mask_id, select="threshold", selection_temperature=1.0)
    with pytest.raises(ValueError, match="selection_temperature"):
        ops.denoise_step(logits, canvas(), mask_id=mask_id, selection_temperature=-1.0)
