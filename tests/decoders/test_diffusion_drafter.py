"""DiffusionDrafter: a bidirectional masked-diffusion model drafts a chain in one forward and the
causal target verifies it. Greedy verification equals autoregressive greedy output; sampled
verification is lossless (chi-square against the target's exact two-token distribution)."""

import copy

import pytest
import torch

from decodekit.decoders import AutoregressiveDecoder, DiffusionDrafter, SamplingParams, SpeculativeDecoder
from decodekit.models.tiny import tiny_transformer
from speculative_exact import chi_square_pvalue, exact_first_two, first_two_counts

P_THRESHOLD = 1e-6
PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 4], [3, 3, 8, 3, 3, 8, 3, 3, 8, 10, 11]]


def _bidirectional_copy(model, noise=0.0, seed=0):
    """The target's weights under full attention (a stand-in for a diffusion model trained on the
    same data: correlated drafts, so both acceptance and rejection happen)."""
    draft = copy.deepcopy(model)
    draft.config.attention = "bidirectional"
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            if p.dim() == 2 and noise:
                p.add_(noise * torch.randn(p.shape, generator=gen))
    return draft


@pytest.fixture(scope="module")
def models():
    target = tiny_transformer(16, seed=1, init_std=0.5)
    return target, _bidirectional_copy(target, noise=0.2, seed=3)


@pytest.mark.parametrize("shift", [False, True], ids=["plain", "shifted"])
def test_greedy_equals_autoregressive(models, shift):
    target, diffusion = models
    greedy = SamplingParams.greedy()
    expected = AutoregressiveDecoder(target).generate(PROMPTS, max_new_tokens=16, sampling=greedy)
    drafter = DiffusionDrafter(diffusion, mask_token_id=15, num_draft=3, shift_logits=shift)
    result = SpeculativeDecoder(target, drafter).generate(PROMPTS, max_new_tokens=16, sampling=greedy)
    assert result.sequences == expected.sequences
    accepted = sum(s.accepted_tokens for s in result.stats)
    proposed = sum(s.proposed_tokens for s in result.stats)
    assert 0 < accepted < proposed, (accepted, proposed)
    # one draft call per step for all num_draft tokens
    assert all(s.draft_forward_calls == s.forward_calls for s in result.stats)
    assert 15 not in {t for s in result.sequences for t in s} or 15 in {t for s in expected.sequences for t in s}


# (drawing from the filtered q but reporting the unfiltered softmax as draft_probs fails the
# second case with p ~ 1e-43)
@pytest.mark.parametrize("sampling", [SamplingParams(temperature=0.8, top_k=7), SamplingParams(temperature=1.5)],
                         ids=["t0.8-top_k", "t1.5"])
def test_sampling_is_lossless(sampling):
    vocab, prompt, draws = 10, [1, 2, 3, 1, 2], 2000
    target = tiny_transformer(vocab, seed=3, init_std=0.6, num_layers=1)
    drafter = DiffusionDrafter(_bidirectional_copy(target, noise=0.3, seed=5), mask_token_id=9, num_draft=2)
    exact = exact_first_two(target, prompt, sampling)
    result = SpeculativeDecoder(target, drafter).generate([prompt] * draws, max_new_tokens=2, sampling=sampling,
                                                          seed=list(range(500, 500 + draws)))
    counts = first_two_counts(result.sequences, vocab)
    with_accepted = sum(s.accepted_tokens > 0 for s in result.stats)
    assert 100 <= with_accepted <= draws - 100, with_accepted
    assert chi_square_pvalue(counts, exact) > P_THRESHOLD
    assert chi_square_pvalue(counts.sum(1), exact.sum(1)) > P_THRESHOLD


def test_reproducible_and_batch_invariant(models):
    target, diffusion = models
    decoder = SpeculativeDecoder(target, DiffusionDrafter(diffusion, mask_token_id=15, num_draft=3))
    sampling = SamplingParams(temperature=0.9, top_p=0.95)
    first = decoder.generate(PROMPTS, max_new_tokens=10, sampling=sampling, seed=[4, 5, 6]).sequences
    again = decoder.generate(PROMPTS, max_new_tokens=10, sampling=sampling, seed=[4, 5, 6]).sequences
    alone = decoder.generate([PROMPTS[2]], max_new_tokens=10, sampling=sampling, seed=[6]).sequences
    assert first == again and alone[0] == first[2]


def test_bad_inputs(models):
    target, diffusion = models
    with pytest.raises(ValueError, match="bidirectional"):
        DiffusionDrafter(target, mask_token_id=15)
    with pytest.raises(ValueError, match="mask_token_id"):
        DiffusionDrafter(diffusion, mask_token_id=16)
    with pytest.raises(ValueError, match="num_draft"):
        DiffusionDrafter(diffusion, mask_token_id=15, num_draft=0)
    with pytest.raises(ValueError, match="vocab_size"):
        SpeculativeDecoder(tiny_transformer(17, seed=1), DiffusionDrafter(diffusion, mask_token_id=15))
