"""BlockDiffusionDecoder (BD3-LM) against an independent re-implementation with block-causal
attention recomputed from scratch every step (masked_diffusion_reference_loops.py); the cached
prefix is never recomputed; early stop, batch invariance, bad inputs."""

import pytest

from decodekit.decoders import BlockDiffusionDecoder, SamplingParams
from decodekit.models.tiny import tiny_transformer

import masked_diffusion_reference_loops as ref

V, MASK = 32, 31
PROMPTS = [[3, 9, 14], [5, 1, 2, 7, 30, 11]]
SAMPLED = SamplingParams(temperature=1.0)


@pytest.fixture(scope="module")
def model():
    return tiny_transformer(V, attention="bidirectional", init_std=0.7, seed=3)


def _run(model, gen=12, block=4, sampling=SAMPLED, seed=5, prompts=PROMPTS, stop=None, **knobs):
    decoder = BlockDiffusionDecoder(model, mask_token_id=MASK, block_length=block, **knobs)
    return decoder.generate(prompts, max_new_tokens=gen, sampling=sampling, seed=seed, stop_token_ids=stop)


@pytest.mark.parametrize("knobs", [dict(sampler="first_hitting"), dict(sampler="ddpm", steps=3)],
                         ids=["first_hitting", "ddpm"])
def test_matches_published_loop(model, knobs):
    result = _run(model, **knobs)
    for i, prompt in enumerate(PROMPTS):
        want = ref.bd3_generate(model, prompt, 12, mask_id=MASK, block_length=4, seed=5 + i, **knobs)
        assert result.sequences[i] == want
    if knobs["sampler"] == "first_hitting":
        # 3 blocks x 4 steps; rows: (prompt + block) once, then (finished block + new block) twice, the block 9 times
        for prompt, stats in zip(PROMPTS, result.stats):
            assert stats.forward_calls == 12
            assert stats.extra["forward_tokens"] == (len(prompt) + 4) + 2 * 8 + 9 * 4


def test_without_custom_mask_same_tokens(model):
    class NoCustom:
        """The same model without custom-mask support (one extra call per block)."""

        def __init__(self, inner):
            self.inner = inner
            self.supports_custom_mask = False

        def __getattr__(self, name):
            return getattr(self.inner, name)

    base = _run(model)
    plain = _run(NoCustom(model))
    assert plain.sequences == base.sequences
    assert all(p.forward_calls == b.forward_calls + 3 for p, b in zip(plain.stats, base.stats))


def test_ddpm_skips_unchanged_steps(model):
    result = _run(model, sampler="ddpm", steps=12)
    for stats in result.stats:
        assert 24 < stats.extra["steps"] <= 36  # the last block ends once it has no mask
        assert stats.forward_calls < stats.extra["steps"]  # steps that revealed nothing reuse the logits
    want = ref.bd3_generate(model, PROMPTS[0], 12, mask_id=MASK, block_length=4, sampler="ddpm", steps=12, seed=5)
    assert result.sequences[0] == want


def test_early_stop_and_batch_invariance(model):
    full = _run(model)
    eos = full.sequences[1][2]
    stopped = _run(model, stop=[eos])
    for f, s in zip(full.sequences, stopped.sequences):
        assert s == ref.cut_at_stop(f, {eos})
    assert stopped.stats[1].finish_reason == "stop"
    assert stopped.stats[1].forward_calls < full.stats[1].forward_calls
    alone = _run(model, prompts=[PROMPTS[1]], seed=[6])
    assert alone.sequences[0] == full.sequences[1]
    assert _run(model, prompts=[PROMPTS[1]], seed=[6]).sequences == alone.sequences
    assert _run(model, prompts=[PROMPTS[1]], seed=[7]).sequences != alone.sequences


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="bidirectional"):
        BlockDiffusionDecoder(tiny_transformer(V), mask_token_id=MASK)
    with pytest.raises(ValueError, match="mask_token_id"):
        BlockDiffusionDecoder(model, mask_token_id=-1)
    with pytest.raises(ValueError, match="steps"):
        BlockDiffusionDecoder(model, mask_token_id=MASK, steps=4)
    with pytest.raises(ValueError, match="steps"):
        BlockDiffusionDecoder(model, mask_token_id=MASK, sampler="ddpm", steps=0)
    with pytest.raises(ValueError, match="sampler"):
        BlockDiffusionDecoder(model, mask_token_id=MASK, sampler="analytic")
    with pytest.raises(ValueError, match="block_length"):
        _run(model, gen=10, block=4)
    with pytest.raises(ValueError, match="context"):
        _run(model, prompts=[[1] * 250])
