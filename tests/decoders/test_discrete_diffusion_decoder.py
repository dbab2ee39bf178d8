"""DiscreteDiffusionDecoder (SEDD samplers): the same tokens as an independent SEDD loop
(sedd_reference.py), sampling the right distribution on an exactly solvable example, infilling,
reproducibility, batch invariance, bad arguments, and the zoo models."""

import math

import pytest
import torch

from decodekit import ops
from decodekit.decoders import DiscreteDiffusionDecoder, SamplingParams
from decodekit.decoders.noise_schedules import Geometric, LogLinear
from decodekit.models.tiny import tiny_transformer

import sedd_reference as sedd

V, MASK, STATES = 12, 11, 10  # the uniform graph moves between ids [0, 10): 10 and 11 are "special"
PROMPTS = [[3, 9, 1], [5, 1, 2, 7, 0]]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return tiny_transformer(V, attention="bidirectional", init_std=0.7, seed=1, mask_token_id=MASK)


def _decoder(model, graph, **knobs):
    if graph == "uniform":
        knobs.setdefault("num_states", STATES)
    return DiscreteDiffusionDecoder(model, graph=graph, **knobs)


def _graph(graph):
    return sedd.Absorbing(V, MASK) if graph == "absorbing" else sedd.Uniform(STATES)


# ---------------------------------------------------------------- (a) the same tokens as SEDD's loop


@pytest.mark.parametrize("graph", ["absorbing", "uniform"])
@pytest.mark.parametrize("sampler", ["euler", "analytic"])
def test_matches_an_independent_sedd_loop(model, graph, sampler):
    # the uniform graph's analytic sampler needs >= 16 steps in float32 (the decoder's docstring)
    gen, steps = 8, 16 if (graph, sampler) == ("uniform", "analytic") else 6
    result = _decoder(model, graph, sampler=sampler, steps=steps).generate(
        PROMPTS, max_new_tokens=gen, seed=11, stop_token_ids=[])
    for i, prompt in enumerate(PROMPTS):
        want = sedd.sedd_generate(model, prompt, gen, _graph(graph), sampler=sampler, steps=steps, seed=11 + i)
        assert result.sequences[i] == want
        assert result.stats[i].extra["steps"] <= steps + 1
    if graph == "uniform":
        assert all(t < STATES for s in result.sequences for t in s)
    else:
        assert all(t != MASK for s in result.sequences for t in s)  # the final step unmasks everything


@pytest.mark.parametrize("graph,sampler", [("absorbing", "euler"), ("uniform", "analytic")])
def test_log_score_and_no_denoise_match_the_sedd_loop(model, graph, sampler):
    gen, steps = 6, 4 if graph == "absorbing" else 16
    for knobs in (dict(parameterization="log_score"), dict(denoise=False)):
        result = _decoder(model, graph, sampler=sampler, steps=steps, **knobs).generate(
            PROMPTS, max_new_tokens=gen, seed=3, stop_token_ids=[])
        for i, prompt in enumerate(PROMPTS):
            want = sedd.sedd_generate(model, prompt, gen, _graph(graph), sampler=sampler, steps=steps, seed=3 + i,
                                      **knobs)
            if graph == "absorbing" and MASK in want:  # a mask left without the final step ends the output
                want = want[: want.index(MASK)]
            assert result.sequences[i] == want, knobs


def test_plan_is_seddss_timesteps():
    for graph, sampler, noise in (("absorbing", "euler", sedd.loglinear), ("uniform", "analytic", sedd.geometric)):
        decoder = DiscreteDiffusionDecoder(tiny_transformer(V, attention="bidirectional"), graph=graph,
                                           sampler=sampler, steps=5, mask_token_id=MASK)
        want = sedd.schedule(_graph(graph), sampler, 5, 1e-5, True, noise)
        got = decoder.plan()
        assert [k for k, _, _ in got] == [sampler] * 5 + ["final"]
        torch.testing.assert_close(torch.tensor([g[1:] for g in got]), torch.tensor([w[1:] for w in want]),
                                   rtol=1e-12, atol=0)


# ---------------------------------------------------------------- (b) the right distribution

# a strongly correlated 2-position joint over 3 tokens: sampling both positions from their
# marginals in one step (too few steps) is far from it
JOINT = torch.tensor([[0.30, 0.02, 0.03], [0.02, 0.25, 0.03], [0.05, 0.05, 0.25]], dtype=torch.float64)
DRAWS = 2000


def _posterior(graph: str, x: torch.Tensor, sigma: float, num_states: int) -> torch.Tensor:
    """The exact clean-token marginals ``p(x0_l | x_t)`` of JOINT, ``[N, 2, num_states]`` (the
    vocabulary beyond JOINT's 3 tokens has probability 0; on the absorbing graph the mask is id 3)."""
    k = JOINT.shape[0]
    a = math.exp(-sigma)
    if graph == "absorbing":
        like = torch.where(x.unsqueeze(-1) == 3, 1 - a, a * (x.unsqueeze(-1) == torch.arange(k)).double())
    else:
        like = a * (x.unsqueeze(-1) == torch.arange(k)).double() + (1 - a) / num_states
    post = JOINT * like[:, 0, :, None] * like[:, 1, None, :]  # [N, k, k]
    post = post / post.sum((1, 2), keepdim=True)
    marg = torch.stack([post.sum(2), post.sum(1)], 1)
    out = torch.zeros(x.shape[0], 2, num_states, dtype=torch.float64)
    out[..., :k] = marg
    return out


def _sample_joint(graph: str, sampler: str, steps: int, *, num_states: int, states_in_op: int | None = None,
                  parameterization="clean_logits", seed=0) -> torch.Tensor:
    """DRAWS samples of the decoder's plan with the op and the exact model; ``states_in_op`` >
    num_states hands the op extra -inf columns (the wrong V of a suppress-list sampler)."""
    vocab = 4 if graph == "absorbing" else num_states
    decoder = DiscreteDiffusionDecoder(tiny_transformer(vocab + 1, attention="bidirectional"), graph=graph,
                                       sampler=sampler, steps=steps, mask_token_id=3 if graph == "absorbing" else None)
    seeds = torch.arange(DRAWS, dtype=torch.int64) + 1000 * seed
    if graph == "absorbing":
        x = torch.full((DRAWS, 2), 3, dtype=torch.int64)
    else:
        wide = states_in_op or num_states
        x = (ops.philox_uniform(seeds, 2**63 - 1, ops.Stream.DIFFUSION_TOKEN, 2).double() * wide).long()
    for offset, (kind, sigma, dsigma) in enumerate(decoder.plan()):
        p = _posterior(graph, x.clamp(max=num_states - 1) if graph == "uniform" else x, sigma, num_states)
        logits = p.log().float()
        if graph == "absorbing":
            logits = torch.cat([logits, torch.zeros(DRAWS, 2, 1)], -1) if vocab > num_states else logits
        if states_in_op:
            logits = torch.cat([logits, torch.full((DRAWS, 2, states_in_op - num_states), -math.inf)], -1)
        x = ops.discrete_diffusion_step(logits, x, sigma=sigma, dsigma=dsigma, graph=graph, sampler=kind,
                                        parameterization=parameterization, mask_id=3 if graph == "absorbing" else None,
                                        seed=seeds, offset=offset)
    return x


def _tv(samples: torch.Tensor, k: int = 3) -> float:
    """Total variation between the samples' joint histogram and JOINT (mass off JOINT's support counts)."""
    inside = (samples < k).all(1)
    idx = samples[inside, 0] * k + samples[inside, 1]
    hist = torch.bincount(idx, minlength=k * k).double() / samples.shape[0]
    return 0.5 * float((hist - JOINT.flatten()).abs().sum() + (~inside).double().mean())


@pytest.mark.parametrize("graph,num_states", [("absorbing", 3), ("uniform", 5)])
def test_samplers_reach_the_data_distribution_as_steps_grow(graph, num_states):
    # measured TV with DRAWS=2000: one or two steps 0.2-0.47, 24 steps 0.02-0.05 (sampling noise of
    # 2000 draws over 9 cells is ~0.025); uniform + 5 states: the graph is larger than the data's support
    many = {s: _sample_joint(graph, s, 24, num_states=num_states) for s in ("euler", "analytic")}
    for s in ("euler", "analytic"):
        assert _tv(many[s]) < 0.07, (s, _tv(many[s]))
    # few steps: both positions are drawn in one jump from their marginals (the uniform graph's
    # analytic sampler cannot take fewer than ~8 float32 steps, see the decoder's docstring)
    few = ("euler", "analytic") if graph == "absorbing" else ("euler",)
    for s in few:
        assert _tv(_sample_joint(graph, s, 2, num_states=num_states)) > 0.15
    hist = [torch.bincount(m[:, 0] * num_states + m[:, 1], minlength=num_states**2).double() / DRAWS
            for m in many.values()]
    assert 0.5 * float((hist[0] - hist[1]).abs().sum()) < 0.07  # euler and analytic agree


def test_a_wrong_sampler_fails_the_distribution_test():
    # the uniform graph with two extra -inf states (V = 5 in the formulas, 3 in the data): uniform
    # noise jumps to them, so a suppress-list sampler is not SEDD's; and clean logits read as log scores
    assert _tv(_sample_joint("uniform", "analytic", 24, num_states=3, states_in_op=5)) > 0.12
    assert _tv(_sample_joint("absorbing", "euler", 24, num_states=3, parameterization="log_score")) > 0.12


# ---------------------------------------------------------------- (c) infilling


@pytest.mark.parametrize("graph", ["absorbing", "uniform"])
def test_infilling_keeps_the_given_tokens_anywhere(model, graph):
    template = [4, None, None, 7, None, 2, None, 9]
    steps = 6 if graph == "absorbing" else 16
    decoder = _decoder(model, graph, sampler="analytic", steps=steps)
    result = decoder.generate([PROMPTS[0], PROMPTS[1]], max_new_tokens=8, seed=5, stop_token_ids=[],
                              canvas=[template, [None] * 8])
    out = result.sequences[0]
    assert all(o == t for o, t in zip(out, template) if t is not None) and len(out) == 8
    want = sedd.sedd_generate(model, PROMPTS[0], 8, _graph(graph), sampler="analytic", steps=steps, seed=5,
                              template=template)
    assert out == want
    # the second request (no template) is what it would be alone
    alone = decoder.generate([PROMPTS[1]], max_new_tokens=8, seed=6, stop_token_ids=[])
    assert result.sequences[1] == alone.sequences[0]


def test_mask_id_in_an_absorbing_template_means_generate(model):
    decoder = _decoder(model, "absorbing", steps=4)
    a = decoder.generate([PROMPTS[0]], max_new_tokens=4, seed=1, stop_token_ids=[], canvas=[[MASK, 3, None, MASK]])
    b = decoder.generate([PROMPTS[0]], max_new_tokens=4, seed=1, stop_token_ids=[], canvas=[[None, 3, None, None]])
    assert a.sequences == b.sequences and a.sequences[0][1] == 3


# ---------------------------------------------------------------- (d) reproducibility, batches, stops, errors


@pytest.mark.parametrize("graph", ["absorbing", "uniform"])
def test_reproducible_and_batch_invariant(model, graph):
    decoder = _decoder(model, graph, steps=8)
    batch = decoder.generate(PROMPTS, max_new_tokens=10, seed=[21, 22], stop_token_ids=[])
    again = decoder.generate(PROMPTS, max_new_tokens=10, seed=[21, 22], stop_token_ids=[])
    assert batch.sequences == again.sequences
    for i, prompt in enumerate(PROMPTS):
        alone = decoder.generate([prompt], max_new_tokens=10, seed=[21 + i], stop_token_ids=[])
        assert alone.sequences[0] == batch.sequences[i]
    other = decoder.generate(PROMPTS, max_new_tokens=10, seed=[23, 24], stop_token_ids=[])
    assert other.sequences != batch.sequences
    stats = batch.stats[0]
    assert stats.forward_calls >= 1 and stats.extra["forward_tokens"] == stats.forward_calls * (3 + 10)


def test_unchanged_canvases_reuse_the_forward(model):
    # absorbing with many more steps than positions: most steps unmask nothing and skip the model
    result = _decoder(model, "absorbing", steps=64).generate([PROMPTS[0]], max_new_tokens=4, seed=0,
                                                             stop_token_ids=[])
    assert result.stats[0].forward_calls <= 5 < result.stats[0].extra["steps"]


def test_stop_token_cuts_the_output(model):
    decoder = _decoder(model, "uniform", steps=4)
    full = decoder.generate(PROMPTS, max_new_tokens=12, seed=2, stop_token_ids=[]).sequences
    stop = full[0][3]
    cut = decoder.generate(PROMPTS, max_new_tokens=12, seed=2, stop_token_ids=[stop]).sequences
    assert cut[0] == full[0][: full[0].index(stop) + 1]
    assert cut[0][-1] == stop and len(cut[0]) <= 4


def test_invalid_model_output_raises(model):
    broken = tiny_transformer(V, attention="bidirectional", seed=1)
    with torch.no_grad():
        broken.lm_head.weight.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="returned -1 for prompts\\[0\\]"):
        _decoder(broken, "uniform", steps=2).generate([PROMPTS[0]], max_new_tokens=3, seed=0)


@pytest.mark.parametrize("knobs,error,match", [
    (dict(graph="masked"), ValueError, "graph must be one of"),
    (dict(sampler="ddpm"), ValueError, "sampler must be one of"),
    (dict(noise="cosine"), ValueError, "noise must be one of"),
    (dict(steps=0), ValueError, "steps must be an int >= 1"),
    (dict(eps=1.0), ValueError, "eps must be a float in"),
    (dict(parameterization="x0"), ValueError, "parameterization must be one of"),
    (dict(num_states=5), ValueError, "num_states is the uniform graph's"),
    (dict(graph="uniform", num_states=V + 1), ValueError, "num_states must be an int in"),
    (dict(sigma_min=1e-3), ValueError, "belong to noise='geometric'"),
    (dict(graph="uniform", sigma_min=30.0), ValueError, "sigma_min must be < sigma_max"),
    (dict(graph="uniform", loglinear_eps=0.1), ValueError, "loglinear_eps belongs to noise='loglinear'"),
    (dict(noise=LogLinear(), sigma_max=3.0), ValueError, "leave them None"),
    (dict(mask_token_id=V), ValueError, "mask_token_id must be a token id"),
    (dict(denoise=1), TypeError, "denoise must be a bool"),
])
def test_bad_constructor_arguments(model, knobs, error, match):
    with pytest.raises(error, match=match):
        DiscreteDiffusionDecoder(model, **knobs)


def test_absorbing_needs_a_mask_id():
    no_mask = tiny_transformer(V, attention="bidirectional")
    with pytest.raises(ValueError, match="needs mask_token_id"):
        DiscreteDiffusionDecoder(no_mask)
    assert DiscreteDiffusionDecoder(no_mask, graph="uniform").num_states == V
    with pytest.raises(ValueError, match="bidirectional model"):
        DiscreteDiffusionDecoder(tiny_transformer(V), mask_token_id=MASK)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(canvas=[[None] * 4]), ValueError, "canvas must be a list of 2 templates"),
    (dict(canvas=[[None] * 3, [None] * 4]), ValueError, "canvas\\[0\\] must be a list of max_new_tokens=4"),
    (dict(canvas=[[None] * 4, [None, None, STATES, None]]), ValueError, "canvas\\[1\\] has token 10 outside"),
    (dict(canvas=[[None] * 4, [None, 1.5, None, None]]), TypeError, "canvas\\[1\\] entries must be token ids"),
    (dict(sampling=SamplingParams(temperature=0.5)), ValueError, "sampling for prompts\\[0\\] is not the default"),
    (dict(max_new_tokens=300), ValueError, "canvas needs"),
])
def test_bad_generate_arguments(model, kwargs, error, match):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(error, match=match):
        _decoder(model, "uniform", steps=2).generate(PROMPTS, seed=0, **kwargs)


def test_noise_schedules_are_seddss():
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    ll, geo = LogLinear(), Geometric()
    for i, ti in enumerate(t.tolist()):
        assert ll.sigma(t)[i].item() == pytest.approx(sedd.loglinear(ti)[0], rel=1e-12)
        assert ll.rate(t)[i].item() == pytest.approx(sedd.loglinear(ti)[1], rel=1e-12)
        assert geo.sigma(t)[i].item() == pytest.approx(sedd.geometric(ti)[0], rel=1e-12)
        assert geo.rate(t)[i].item() == pytest.approx(sedd.geometric(ti)[1], rel=1e-12)
    # the rate is the derivative of sigma
    h = 1e-6
    for sched in (ll, geo):
        numeric = (sched.sigma(0.4 + h) - sched.sigma(0.4 - h)) / (2 * h)
        assert float(numeric) == pytest.approx(float(sched.rate(0.4)), rel=1e-6)


# ---------------------------------------------------------------- (e) the zoo

ZOO_PROMPT = "Ruth1:1 Now it came to pass in the days when the judges ruled, that there was a famine in the land.\n"
# generative bits per byte under kjv-ar of 32 new bytes (seed 0, 32 steps), measured: kjv-mdm ~5.4,
# kjv-udm 6.2-7.9; random lowercase letters score 13.4 and random bytes 29, so the bounds fail on garbage
ZOO_CASES = [("kjv-mdm", "absorbing", "euler", 7.0), ("kjv-udm", "uniform", "analytic", 9.5)]


def _have(*names):
    from decodekit import zoo

    return all((zoo.WEIGHTS_DIR / n / "model.safetensors").is_file() for n in names)


@pytest.mark.parametrize("name,graph,sampler,max_bits", ZOO_CASES, ids=[c[0] for c in ZOO_CASES])
def test_writes_text_on_the_zoo(name, graph, sampler, max_bits):
    from decodekit import zoo
    from decodekit.demo import generative_bits_per_byte

    if not _have(name, "kjv-ar"):
        pytest.skip("the zoo's weights are not in this checkout (decodekit zoo train)")
    torch.set_num_threads(1)
    model, tok = zoo.load(name, dtype=torch.float32)
    decoder = DiscreteDiffusionDecoder(model, graph=graph, sampler=sampler, steps=32, tokenizer=tok)
    prompt = tok.encode(ZOO_PROMPT)
    out = decoder.generate([prompt], max_new_tokens=32, seed=0).sequences[0]
    assert 1 <= len(out) <= 32 and all(t <= tok.eos_token_id for t in out)  # bytes and eos only
    ar, _ = zoo.load("kjv-ar", dtype=torch.float32)
    assert generative_bits_per_byte(ar, [prompt], [out]) < max_bits, tok.decode(out)
    # infilling between given words
    given = tok.encode(" the LORD ")
    template = [None] * 8 + given + [None] * 8
    filled = decoder.generate([prompt], max_new_tokens=len(template), seed=1, canvas=[template],
                              stop_token_ids=[]).sequences[0]
    assert filled[8 : 8 + len(given)] == given and all(t <= tok.eos_token_id for t in filled)
