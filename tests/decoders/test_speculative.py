"""SpeculativeDecoder with ModelDrafter (chain), NgramDrafter and TreeDrafter: greedy output equals
autoregressive greedy output, sampling is lossless (chi-square against the target's exact joint
distribution of the first two tokens), reproducibility and batch invariance, statistics, bad
inputs."""

import copy

import pytest
import torch

from decodekit.decoders import (
    AutoregressiveDecoder,
    ModelDrafter,
    NgramDrafter,
    SamplingParams,
    SpeculativeDecoder,
    TreeDrafter,
)
from decodekit.models.tiny import tiny_transformer
from speculative_exact import chi_square_pvalue, exact_first_two, first_two_counts

# fixed seeds make every statistical test deterministic; this threshold is far below any p-value
# a correct decoder gives here and far above what the injected bugs give (see the report)
P_THRESHOLD = 1e-6

GREEDY_V = 16
PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 4], [3, 3, 8, 3, 3, 8, 3, 3, 8, 10, 11]]


@pytest.fixture(scope="module")
def greedy_models():
    target = tiny_transformer(GREEDY_V, seed=1, init_std=0.5)
    draft = tiny_transformer(GREEDY_V, seed=2, init_std=0.5, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1)
    return target, draft


def _drafters(draft):
    return {
        "chain": ModelDrafter(draft, num_draft=3),
        "ngram": NgramDrafter(n=2, num_draft=3),
        "tree": TreeDrafter(draft, top_k=3, depth=3, num_nodes=8),
    }


@pytest.mark.parametrize("kind", ["chain", "ngram", "tree"])
def test_greedy_equals_autoregressive(greedy_models, kind):
    target, draft = greedy_models
    greedy = SamplingParams.greedy()
    expected = AutoregressiveDecoder(target).generate(PROMPTS, max_new_tokens=20, sampling=greedy)
    result = SpeculativeDecoder(target, _drafters(draft)[kind]).generate(PROMPTS, max_new_tokens=20, sampling=greedy)
    assert result.sequences == expected.sequences
    accepted = sum(s.accepted_tokens for s in result.stats)
    proposed = sum(s.proposed_tokens for s in result.stats)
    assert 0 < accepted < proposed, (accepted, proposed)  # drafts were both accepted and rejected
    assert all(s.forward_calls < s.generated_tokens for s in result.stats if s.accepted_tokens)
    if kind != "ngram":
        assert all(s.draft_forward_calls > 0 for s in result.stats)


def test_greedy_stop_token_inside_accepted_run(greedy_models):
    """Self-drafting accepts everything, so the stop token sits inside an accepted run: the
    request must end there (stop token kept, later tokens dropped), as autoregressive does."""
    target, _ = greedy_models
    greedy = SamplingParams.greedy()
    free = AutoregressiveDecoder(target).generate(PROMPTS, max_new_tokens=12, sampling=greedy).sequences
    stop = free[0][5]
    expected = AutoregressiveDecoder(target).generate(PROMPTS, max_new_tokens=12, sampling=greedy, stop_token_ids=[stop])
    decoder = SpeculativeDecoder(target, ModelDrafter(target, num_draft=4))
    result = decoder.generate(PROMPTS, max_new_tokens=12, sampling=greedy, stop_token_ids=[stop])
    assert result.sequences == expected.sequences
    assert result.stats[0].finish_reason == "stop" and result.sequences[0][-1] == stop


def test_self_drafting_accepts_everything(greedy_models):
    target, _ = greedy_models
    twin = copy.deepcopy(target)
    result = SpeculativeDecoder(target, ModelDrafter(twin, num_draft=3)).generate(
        PROMPTS, max_new_tokens=16, sampling=SamplingParams.greedy()
    )
    for s in result.stats:
        assert s.acceptance_rate == 1.0
        assert s.accepted_tokens <= s.proposed_tokens
        assert s.tokens_per_forward > 3.0  # 4 tokens per target call, the last call may be cut short
        assert s.draft_forward_calls == 3 * s.forward_calls
    assert result.tokens_per_forward > 1.0 and result.acceptance_rate == 1.0


def test_context_limit_leaves_room_for_drafts():
    target = tiny_transformer(GREEDY_V, seed=1, init_std=0.5, max_positions=24)
    draft = tiny_transformer(GREEDY_V, seed=2, init_std=0.5, max_positions=20, hidden_size=16, num_layers=1)
    for drafter in (ModelDrafter(draft, num_draft=3), TreeDrafter(draft, top_k=2, depth=3, num_nodes=6)):
        result = SpeculativeDecoder(target, drafter).generate([[1, 2, 3, 4]], max_new_tokens=100, seed=0)
        reserve = drafter.reserve_positions(target)
        assert reserve == 3 + 4  # the draft model's shorter context counts too
        assert len(result.sequences[0]) == 24 - reserve - 4
        assert result.stats[0].finish_reason == "length"


# ----------------------------------------------------------------------------- losslessness

LOSSLESS_V = 10
LOSSLESS_PROMPT = [1, 2, 3, 1, 2]
DRAWS = 2000


@pytest.fixture(scope="module")
def lossless_models():
    target = tiny_transformer(LOSSLESS_V, seed=3, init_std=0.6, num_layers=1)
    # a perturbed copy: correlated with the target, so drafts are accepted often enough to
    # exercise acceptance as well as the residual path
    draft = copy.deepcopy(target)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in draft.parameters():
            if p.dim() == 2:
                p.add_(0.4 * torch.randn(p.shape, generator=gen))
    return target, draft


LOSSLESS_CASES = [
    ("chain", SamplingParams(temperature=0.5, top_k=6)),
    ("chain", SamplingParams(temperature=1.5, top_p=0.9)),
    ("ngram", SamplingParams(temperature=1.3, top_p=0.9)),
    ("tree", SamplingParams(temperature=0.7, top_k=7, top_p=0.95)),
]


def _lossless_drafter(kind, draft):
    if kind == "chain":
        return ModelDrafter(draft, num_draft=3)
    if kind == "ngram":
        return NgramDrafter(n=2, num_draft=3)
    return TreeDrafter(draft, top_k=2, depth=3, num_nodes=6)


@pytest.mark.parametrize("kind,sampling", LOSSLESS_CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(LOSSLESS_CASES)])
def test_sampling_is_lossless(lossless_models, kind, sampling):
    target, draft = lossless_models
    exact = exact_first_two(target, LOSSLESS_PROMPT, sampling)
    decoder = SpeculativeDecoder(target, _lossless_drafter(kind, draft))
    result = decoder.generate([LOSSLESS_PROMPT] * DRAWS, max_new_tokens=2, sampling=sampling,
                              seed=list(range(7000, 7000 + DRAWS)))
    counts = first_two_counts(result.sequences, LOSSLESS_V)
    # both paths were exercised many times: requests that accepted drafts and ones that did not
    with_accepted = sum(s.accepted_tokens > 0 for s in result.stats)
    assert 100 <= with_accepted <= DRAWS - 100, with_accepted
    assert chi_square_pvalue(counts, exact) > P_THRESHOLD
    # the first token alone: fewer cells, more power against a biased acceptance rule
    assert chi_square_pvalue(counts.sum(1), exact.sum(1)) > P_THRESHOLD


# ----------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("kind", ["chain", "ngram", "tree"])
def test_reproducible_and_batch_invariant(greedy_models, kind):
    target, draft = greedy_models
    sampling = [SamplingParams(temperature=0.9, top_p=0.95), SamplingParams(temperature=1.2, top_k=8),
                SamplingParams.greedy()]
    seeds = [11, 22, 33]
    decoder = SpeculativeDecoder(target, _drafters(draft)[kind])
    first = decoder.generate(PROMPTS, max_new_tokens=12, sampling=sampling, seed=seeds).sequences
    again = decoder.generate(PROMPTS, max_new_tokens=12, sampling=sampling, seed=seeds).sequences
    alone = decoder.generate([PROMPTS[1]], max_new_tokens=12, sampling=sampling[1], seed=[22]).sequences
    other = decoder.generate(PROMPTS, max_new_tokens=12, sampling=sampling, seed=[12, 23, 34]).sequences
    assert first == again
    assert alone[0] == first[1]
    assert other[:2] != first[:2]  # the seed matters


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs(greedy_models):
    target, draft = greedy_models
    other_vocab = tiny_transformer(GREEDY_V + 1, seed=2)
    bidirectional = tiny_transformer(GREEDY_V, attention="bidirectional", seed=2)
    no_custom = copy.deepcopy(target)
    no_custom.supports_custom_mask = False
    cases = [
        (lambda: SpeculativeDecoder(target, ModelDrafter(other_vocab)), "vocab_size"),
        (lambda: SpeculativeDecoder(target, TreeDrafter(other_vocab)), "vocab_size"),
        (lambda: ModelDrafter(bidirectional), "causal"),
        (lambda: TreeDrafter(bidirectional), "causal"),
        (lambda: ModelDrafter(draft, num_draft=0), "num_draft"),
        (lambda: ModelDrafter(draft, num_draft=65), "num_draft"),
        (lambda: NgramDrafter(n=0), "n must"),
        (lambda: NgramDrafter(num_draft=0), "num_draft"),
        (lambda: TreeDrafter(draft, top_k=0), "top_k"),
        (lambda: TreeDrafter(draft, top_k=GREEDY_V + 1), "top_k"),
        (lambda: TreeDrafter(draft, depth=0), "depth"),
        (lambda: TreeDrafter(draft, num_nodes=1), "num_nodes"),
        (lambda: TreeDrafter(draft, top_k=2, depth=2, num_nodes=8), "num_nodes"),  # capacity 1 + 2 + 4
        (lambda: TreeDrafter(no_custom), "supports_custom_mask"),
        (lambda: SpeculativeDecoder(no_custom, TreeDrafter(draft)), "supports_custom_mask"),
        (lambda: SpeculativeDecoder(target, ModelDrafter(draft), method="medusa"), "method"),
        (lambda: SpeculativeDecoder(target, ModelDrafter(draft), typical_eps=-1.0), "typical_eps"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message):
            make()
    with pytest.raises(TypeError, match="drafter"):
        SpeculativeDecoder(target, draft)
    # sampling the verify ops cannot honour: rejected before any model call, pool left usable
    decoder = SpeculativeDecoder(target, ModelDrafter(draft, num_draft=2), num_blocks=64)
    for sampling in (SamplingParams(min_p=0.1), SamplingParams(repetition_penalty=1.2),
                     SamplingParams(frequency_penalty=0.5), SamplingParams(presence_penalty=0.5)):
        with pytest.raises(ValueError, match="temperature, top_k and top_p only"):
            decoder.generate(PROMPTS, max_new_tokens=4, sampling=[SamplingParams(), SamplingParams(), sampling])
        assert decoder._forward_calls == 0
    ok = decoder.generate(PROMPTS, max_new_tokens=4, sampling=SamplingParams.greedy())
    assert all(len(s) == 4 for s in ok.sequences)
    assert all(cache.allocator.num_free_blocks == 64 for cache in decoder._pools.values())
