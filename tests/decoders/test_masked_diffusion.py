"""MaskedDiffusionDecoder against independent re-implementations of the published loops
(masked_diffusion_reference_loops.py), Fast-dLLM caches, MDLM's ddpm_cache, early stop,
reproducibility, batch invariance, bad inputs, and the ``starts`` option of the paged cache."""

import pytest
import torch

from decodekit.decoders import MaskedDiffusionDecoder, SamplingParams, forward_step
from decodekit.models.tiny import tiny_transformer

import masked_diffusion_reference_loops as ref

V, MASK = 32, 31
PROMPTS = [[3, 9, 14], [5, 1, 2, 7, 30, 11]]


@pytest.fixture(scope="module")
def model():
    return tiny_transformer(V, attention="bidirectional", init_std=0.7, seed=1)


@pytest.fixture(scope="module")
def peaked():
    """Confident enough that Fast-dLLM's threshold commits several tokens per step."""
    return tiny_transformer(V, attention="bidirectional", init_std=1.5, seed=4)


def _run(model, preset, gen, sampling, seed=11, prompts=PROMPTS, stop=None, **knobs):
    decoder = MaskedDiffusionDecoder(model, mask_token_id=MASK, preset=preset, **knobs)
    return decoder.generate(prompts, max_new_tokens=gen, sampling=sampling, seed=seed, stop_token_ids=stop)


GREEDY = SamplingParams.greedy()


@pytest.mark.parametrize("knobs,temperature", [
    (dict(steps=8, block_length=4), 0.0),
    (dict(steps=4, block_length=8, remasking="random"), 0.0),
    (dict(steps=8, block_length=4, suppress_token_ids=[5, 6]), 0.9),
    (dict(steps=4, block_length=4, cfg_scale=0.5), 0.0),
], ids=["low_conf_semi_ar", "random", "sampled_suppress", "cfg"])
def test_llada_matches_published_loop(model, knobs, temperature):
    gen = 8
    result = _run(model, "llada", gen, SamplingParams(temperature=temperature), **knobs)
    for i, prompt in enumerate(PROMPTS):
        want = ref.llada_generate(model, prompt, gen, mask_id=MASK, temperature=temperature, seed=11 + i,
                                  steps=knobs["steps"], block_length=knobs["block_length"],
                                  remasking=knobs.get("remasking", "low_confidence"),
                                  cfg_scale=knobs.get("cfg_scale", 0.0), suppress=knobs.get("suppress_token_ids", ()))
        assert result.sequences[i] == want
        assert result.stats[i].forward_calls == knobs["steps"]
    if "suppress_token_ids" in knobs:
        assert not {5, 6} & {t for s in result.sequences for t in s}


@pytest.mark.parametrize("alg", ["origin", "maskgit_plus", "topk_margin", "entropy"])
def test_dream_matches_published_loop(model, alg):
    gen, steps = 8, 4
    for sampling in (GREEDY, SamplingParams(temperature=0.8, top_p=0.9)):
        result = _run(model, "dream", gen, sampling, steps=steps, alg=alg)
        for i, prompt in enumerate(PROMPTS):
            want = ref.dream_generate(model, prompt, gen, mask_id=MASK, steps=steps, alg=alg, seed=11 + i,
                                      temperature=sampling.temperature, top_p=sampling.top_p)
            assert result.sequences[i] == want, (sampling, i)


def test_dream_alg_temp_matches_published_loop(model):
    gen, steps = 8, 4
    sampling = SamplingParams(temperature=0.8)
    result = _run(model, "dream", gen, sampling, steps=steps, alg="entropy", alg_temp=0.5)
    plain = _run(model, "dream", gen, sampling, steps=steps, alg="entropy")
    for i, prompt in enumerate(PROMPTS):
        want = ref.dream_generate(model, prompt, gen, mask_id=MASK, steps=steps, alg="entropy", seed=11 + i,
                                  temperature=0.8, alg_temp=0.5)
        assert result.sequences[i] == want
    assert result.sequences != plain.sequences  # the sampled selection really changes which slots commit
    with pytest.raises(ValueError, match="alg_temp"):
        MaskedDiffusionDecoder(model, mask_token_id=MASK, preset="dream", alg="origin", alg_temp=0.5)


@pytest.mark.parametrize("rule", [dict(threshold=0.9), dict(threshold=0.6), dict(factor=1.0)],
                         ids=["tau0.9", "tau0.6", "factor1"])
def test_fast_dllm_matches_published_loop(peaked, rule):
    gen, block = 16, 8
    for temperature in (0.0, 0.7):
        result = _run(peaked, "fast_dllm", gen, SamplingParams(temperature=temperature), block_length=block, **rule)
        for i, prompt in enumerate(PROMPTS):
            want = ref.llada_generate(peaked, prompt, gen, mask_id=MASK, steps=None, block_length=block,
                                      temperature=temperature, seed=11 + i, **rule)
            assert result.sequences[i] == want
        steps = [s.extra["steps"] for s in result.stats]
        assert min(steps) < gen, "the rule never committed several tokens per step: the test is too weak"


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_fast_dllm_cache(peaked, cache):
    gen, block = 16, 4
    sampling = SamplingParams(temperature=0.5)
    base = _run(peaked, "fast_dllm", gen, sampling, block_length=block, threshold=0.7)
    every = _run(peaked, "fast_dllm", gen, sampling, block_length=block, threshold=0.7, cache=cache, refresh_every=1)
    assert every.sequences == base.sequences
    assert [s.extra["forward_tokens"] for s in every.stats] == [s.extra["forward_tokens"] for s in base.stats]
    cached = _run(peaked, "fast_dllm", gen, sampling, block_length=block, threshold=0.7, cache=cache)
    for c, b in zip(cached.stats, base.stats):
        assert c.extra["forward_tokens"] < b.extra["forward_tokens"]


@pytest.mark.parametrize("preset,knobs", [("fast_dllm", dict(block_length=4, threshold=0.7)),
                                          ("dream", dict(steps=8, alg="maskgit_plus"))],
                         ids=["fast_dllm", "dream_shift"])
def test_caches_exact_on_one_layer_model(preset, knobs):
    """With one layer a position's K/V depend only on its own token, and inside a block only the
    block's tokens change: the prefix and dual caches then hold exact K/V, so they must give the
    no-cache tokens while computing fewer rows (this checks which rows and slots they rerun)."""
    one = tiny_transformer(V, attention="bidirectional", num_layers=1, init_std=1.5, seed=6)
    sampling = SamplingParams(temperature=0.5)
    base = _run(one, preset, 16, sampling, **knobs)
    for cache in ("prefix", "dual"):
        cached = _run(one, preset, 16, sampling, cache=cache, **knobs)
        assert cached.sequences == base.sequences
        for c, b in zip(cached.stats, base.stats):
            assert c.extra["forward_tokens"] < b.extra["forward_tokens"]


def test_cache_row_counts(model):
    """Rows per request with block refresh, LLaDA schedule (2 steps per block): none recomputes
    the canvas every step, prefix the block + suffix, dual the block only."""
    gen, block, steps = 16, 4, 8
    counts = {}
    for cache in ("none", "prefix", "dual"):
        result = _run(model, "llada", gen, GREEDY, steps=steps, block_length=block, cache=cache)
        counts[cache] = [s.extra["forward_tokens"] for s in result.stats]
    for i, prompt in enumerate(PROMPTS):
        length = len(prompt) + gen
        assert counts["none"][i] == steps * length
        assert counts["prefix"][i] == 4 * length + sum(gen - b * block for b in range(4))
        assert counts["dual"][i] == 4 * length + 4 * block


def test_mdlm_ddpm_matches_published_loop_and_cache_saves_calls(model):
    gen, steps = 8, 24
    sampling = SamplingParams(temperature=1.0)
    ddpm = _run(model, "mdlm", gen, sampling, steps=steps, predictor="ddpm")
    cached = _run(model, "mdlm", gen, sampling, steps=steps, predictor="ddpm_cache")
    for i, prompt in enumerate(PROMPTS):
        assert ddpm.sequences[i] == ref.mdlm_generate(model, prompt, gen, mask_id=MASK, steps=steps, seed=11 + i)
    assert cached.sequences == ddpm.sequences
    for c, d in zip(cached.stats, ddpm.stats):
        assert c.forward_calls < d.forward_calls
        assert c.extra["steps"] == d.extra["steps"]


def test_early_stop_at_eos(model):
    gen = 16
    full = _run(model, "llada", gen, GREEDY, steps=16, block_length=4)
    eos = full.sequences[0][5]
    stopped = _run(model, "llada", gen, GREEDY, steps=16, block_length=4, stop=[eos])
    for f, s, fs, ss in zip(full.sequences, stopped.sequences, full.stats, stopped.stats):
        assert s == ref.cut_at_stop(f, {eos})
        assert ss.forward_calls <= fs.forward_calls
    assert stopped.stats[0].finish_reason == "stop" and len(stopped.sequences[0]) <= 6
    assert stopped.stats[0].forward_calls < full.stats[0].forward_calls


def test_reproducible_and_batch_invariant(model):
    sampling = SamplingParams(temperature=1.0)
    for preset, knobs in (("llada", dict(steps=8, block_length=4)), ("dream", dict(steps=4, alg="entropy")),
                          ("fast_dllm", dict(block_length=4, threshold=0.5, cache="dual"))):
        batch = _run(model, preset, 8, sampling, seed=[7, 8], **knobs)
        again = _run(model, preset, 8, sampling, seed=[7, 8], **knobs)
        assert batch.sequences == again.sequences
        alone = _run(model, preset, 8, sampling, seed=[8], prompts=[PROMPTS[1]], **knobs)
        assert alone.sequences[0] == batch.sequences[1]
        other = _run(model, preset, 8, sampling, seed=[9], prompts=[PROMPTS[1]], **knobs)
        assert other.sequences[0] != batch.sequences[1]


def test_bad_inputs(model):
    causal = tiny_transformer(V, attention="causal")
    with pytest.raises(ValueError, match="bidirectional"):
        MaskedDiffusionDecoder(causal, mask_token_id=MASK)
    with pytest.raises(ValueError, match="mask_token_id"):
        MaskedDiffusionDecoder(model, mask_token_id=V)
    with pytest.raises(ValueError, match="steps"):
        MaskedDiffusionDecoder(model, mask_token_id=MASK, steps=0)
    with pytest.raises(ValueError, match="preset"):
        MaskedDiffusionDecoder(model, mask_token_id=MASK, preset="sedd")
    with pytest.raises(ValueError, match="alg"):
        MaskedDiffusionDecoder(model, mask_token_id=MASK, preset="llada", alg="entropy")
    with pytest.raises(ValueError, match="threshold"):
        MaskedDiffusionDecoder(model, mask_token_id=MASK, preset="fast_dllm", threshold=1.5)
    with pytest.raises(ValueError, match="cache"):
        MaskedDiffusionDecoder(model, mask_token_id=MASK, cache="full")
    decoder = MaskedDiffusionDecoder(model, mask_token_id=MASK, block_length=3)
    with pytest.raises(ValueError, match="block_length"):
        decoder.generate(PROMPTS, max_new_tokens=8)
    decoder = MaskedDiffusionDecoder(model, mask_token_id=MASK, block_length=4, steps=3)
    with pytest.raises(ValueError, match="steps"):
        decoder.generate(PROMPTS, max_new_tokens=8)
    decoder = MaskedDiffusionDecoder(model, mask_token_id=MASK)
    with pytest.raises(ValueError, match="penalty"):
        decoder.generate(PROMPTS, max_new_tokens=8, sampling=SamplingParams(repetition_penalty=1.2))
    with pytest.raises(ValueError, match="context"):
        decoder.generate([[1] * 250], max_new_tokens=8)


# ------------------------------------------------------------------ paged cache: rewrite(starts=...)


def test_rewrite_starts_in_the_middle():
    """With one layer a position's K/V depend only on its own token, so rewriting a middle block
    in place must give exactly the logits of a fresh forward of the changed sequence."""
    one = tiny_transformer(V, attention="bidirectional", num_layers=1, init_std=0.7, seed=2)
    seq = [1, 4, 9, 16, 25, 3, 8, 15, 24, 2, 7]
    cache = one.make_cache(4, 4)
    cache.allocator.allocate("s")
    forward_step(one, cache, ["s"], [seq], logits="all")
    changed = seq[:4] + [30, 29, 28] + seq[7:]
    got = forward_step(one, cache, ["s"], [changed[4:7]], logits="all", rewrite=True, starts=[4])
    want = ref.model_logits(one, changed)[4:7]
    torch.testing.assert_close(got.float(), want, rtol=1e-5, atol=1e-5)
    assert cache.allocator.length("s") == len(seq)
    meta = cache.rewrite(["s"], [3], starts=[4])
    assert meta.slot_mapping.tolist() == cache.allocator.slots("s", 4, 7).tolist()
    assert meta.seq_lens.tolist() == [len(seq)]
    with pytest.raises(ValueError, match="starts"):
        cache.rewrite(["s"], [3], starts=[9])
    with pytest.raises(ValueError, match="starts"):
        forward_step(one, cache, ["s"], [[1, 2]], rewrite=True, starts=[2], mask="causal")
    with pytest.raises(ValueError, match="starts"):
        forward_step(one, cache, ["s"], [[1, 2]], starts=[2])
