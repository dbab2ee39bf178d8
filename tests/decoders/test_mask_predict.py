"""MaskPredictDecoder against a straightforward Mask-Predict loop (full recomputation per call),
length beams and heads, reproducibility, batch invariance and bad inputs."""

import pytest
import torch

from decodekit.decoders import MaskPredictDecoder, SamplingParams
from decodekit.decoders.mask_predict import length_candidates
from decodekit.models.tiny import tiny_transformer

from cmlm_planned_reference_loops import mask_predict

VOCAB, MASK = 32, 31
PROMPTS = [[3, 7, 1], [5, 9, 2, 11, 4, 8], [13]]


@pytest.fixture(scope="module")
def model():
    return tiny_transformer(VOCAB, attention="bidirectional", init_std=0.7, seed=3)


def _reference(model, decoder, prompts, max_new_tokens, temperature, seeds, stop_ids=(), lengths=None):
    out = []
    for i, prompt in enumerate(prompts):
        cands = lengths[i] if lengths else length_candidates(max_new_tokens, decoder.length_beam, max_new_tokens)
        out.append(mask_predict(model, prompt, MASK, decoder.iterations, cands, temperature=temperature,
                                seed=seeds[i], recompute_prompt=decoder.recompute_prompt, stop_ids=stop_ids))
    return out


@pytest.mark.parametrize("recompute_prompt", [False, True], ids=["prompt_once", "recompute_prompt"])
@pytest.mark.parametrize("temperature", [0.0, 0.9], ids=["greedy", "sampled"])
def test_given_length_matches_reference(model, recompute_prompt, temperature):
    decoder = MaskPredictDecoder(model, MASK, iterations=4, recompute_prompt=recompute_prompt)
    seeds = [11, 12, 13]
    got = decoder.generate(PROMPTS, max_new_tokens=9, sampling=SamplingParams(temperature=temperature), seed=seeds)
    want = _reference(model, decoder, PROMPTS, 9, temperature, seeds)
    assert got.sequences == [w[0] for w in want]
    assert all(len(s) == 9 for s in got.sequences)
    calls = 4 if recompute_prompt else 5  # + the prompt encoding
    assert [s.forward_calls for s in got.stats] == [calls] * 3 and got.forward_calls == calls
    # the iterations really revise earlier predictions: one iteration alone gives other tokens
    once = MaskPredictDecoder(model, MASK, iterations=1, recompute_prompt=recompute_prompt)
    assert once.generate(PROMPTS, max_new_tokens=9, sampling=SamplingParams(temperature=temperature),
                         seed=seeds).sequences != got.sequences


@pytest.mark.parametrize("temperature", [0.0, 0.9], ids=["greedy", "sampled"])
def test_length_beam_matches_reference(model, temperature):
    decoder = MaskPredictDecoder(model, MASK, iterations=3, length_beam=4)
    got = decoder.generate(PROMPTS, max_new_tokens=10, sampling=SamplingParams(temperature=temperature), seed=5)
    want = _reference(model, decoder, PROMPTS, 10, temperature, [5, 6, 7])
    assert got.sequences == [w[0] for w in want]
    for stats, (_, chosen, scores) in zip(got.stats, want):
        assert stats.extra["length_candidates"] == [7, 8, 9, 10]
        assert stats.extra["chosen_length"] == chosen
        assert stats.extra["length_scores"] == pytest.approx(scores, abs=1e-4)
    assert len({s.extra["chosen_length"] for s in got.stats}) > 1 or any(
        s.extra["chosen_length"] != 10 for s in got.stats), "every prompt chose the longest canvas: weak test"


def test_length_head(model):
    def head(prompt):  # a distribution over lengths 0..12: the prompt decides the favourite
        scores = torch.full((13,), -5.0)
        scores[len(prompt) + 2] = 0.0
        scores[len(prompt) + 4] = -1.0
        scores[0] = 10.0  # never a candidate
        return scores

    decoder = MaskPredictDecoder(model, MASK, iterations=3, length_beam=2, length_head=head)
    got = decoder.generate(PROMPTS, max_new_tokens=12, sampling=SamplingParams.greedy(), seed=0)
    lengths = [[len(p) + 2, len(p) + 4] for p in PROMPTS]
    want = _reference(model, decoder, PROMPTS, 12, 0.0, [0, 1, 2], lengths=lengths)
    assert got.sequences == [w[0] for w in want]
    assert [s.extra["length_candidates"] for s in got.stats] == lengths

    single = MaskPredictDecoder(model, MASK, iterations=3, length_head=lambda prompt: len(prompt) + 1)
    got = single.generate(PROMPTS, max_new_tokens=5, sampling=SamplingParams.greedy(), seed=0)
    assert [len(s) for s in got.sequences] == [4, 5, 2]  # the 6-token prompt's 7 is clipped to 5


def test_length_candidates_rules():
    assert length_candidates(5, 3, 10) == [4, 5, 6]
    assert length_candidates(1, 3, 10) == [1, 2, 3]
    assert length_candidates(10, 4, 10) == [7, 8, 9, 10]
    assert length_candidates(40, 1, 10) == [10]
    assert length_candidates(3, 5, 2) == [1, 2]
    assert length_candidates([9.0, 0.1, 0.5, 0.5, 0.2], 3, 3) == [2, 3, 1]
    assert length_candidates(torch.tensor(4), 1, 10) == [4]


def test_stop_token_truncates(model):
    decoder = MaskPredictDecoder(model, MASK, iterations=3)
    full = decoder.generate(PROMPTS[:1], max_new_tokens=12, sampling=SamplingParams.greedy(), seed=0).sequences[0]
    stop = full[4]
    got = decoder.generate(PROMPTS[:1], max_new_tokens=12, sampling=SamplingParams.greedy(), seed=0,
                           stop_token_ids=[stop])
    assert got.sequences[0] == full[: full.index(stop) + 1]
    assert got.stats[0].finish_reason == "stop"


def test_reproducible_and_batch_invariant(model):
    decoder = MaskPredictDecoder(model, MASK, iterations=4, length_beam=2)
    sampling = [SamplingParams(temperature=1.0), SamplingParams.greedy(), SamplingParams(temperature=0.7, top_k=5)]
    seeds = [101, 202, 303]
    batch = decoder.generate(PROMPTS, max_new_tokens=8, sampling=sampling, seed=seeds)
    again = decoder.generate(PROMPTS, max_new_tokens=8, sampling=sampling, seed=seeds)
    assert batch.sequences == again.sequences
    for i in range(3):
        alone = decoder.generate([PROMPTS[i]], max_new_tokens=8, sampling=sampling[i], seed=[seeds[i]])
        assert alone.sequences[0] == batch.sequences[i]
    other = decoder.generate(PROMPTS, max_new_tokens=8, sampling=sampling, seed=[1, 2, 3])
    assert other.sequences[0] != batch.sequences[0]


def test_bad_inputs(model):
    causal = tiny_transformer(VOCAB, attention="causal")
    with pytest.raises(ValueError, match="bidirectional"):
        MaskPredictDecoder(causal, MASK)
    for kwargs, match in [
        (dict(mask_token_id=VOCAB), "mask_token_id"),
        (dict(mask_token_id=-1), "mask_token_id"),
        (dict(mask_token_id=MASK, iterations=0), "iterations"),
        (dict(mask_token_id=MASK, length_beam=0), "length_beam"),
    ]:
        with pytest.raises(ValueError, match=match):
            MaskPredictDecoder(model, **kwargs)
    decoder = MaskPredictDecoder(model, MASK)
    with pytest.raises(ValueError, match="context"):
        decoder.generate([[1, 2]], max_new_tokens=model.max_positions - 1)
    with pytest.raises(ValueError, match="min_p"):
        decoder.generate([[1, 2]], max_new_tokens=4, sampling=SamplingParams(min_p=0.1))
    for head, error in [(lambda p: 0, ValueError), (lambda p: [0.1, float("nan")], ValueError),
                        (lambda p: "long", TypeError), (lambda p: [1.0], ValueError)]:
        with pytest.raises(error, match="length_head"):
            MaskPredictDecoder(model, MASK, length_head=head).generate([[1, 2]], max_new_tokens=4)
