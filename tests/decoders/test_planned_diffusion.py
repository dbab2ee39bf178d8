"""PlannedDiffusionDecoder: span isolation through the model, plan parsing, the end-to-end loop
against a full-recompute re-implementation with a forced plan, reproducibility, batch
invariance, malformed plans and bad inputs."""

import pytest
import torch

from decodekit.decoders import ControlTokens, PlanError, PlannedDiffusionDecoder, SamplingParams, forward_step
from decodekit.decoders.plan import build_scaffold, parse_plan, round_attention_mask
from decodekit.models.tiny import tiny_transformer

from cmlm_planned_reference_loops import ScriptedPlanner, planned_diffusion

V, MASK, EOS = 40, 39, 36
C = ControlTokens(span_start=30, span_end=31, async_start=32, async_end=33, sync=34, digits=tuple(range(20, 30)),
                  topic=35)
SS, SE, SYNC, TOPIC = C.span_start, C.span_end, C.sync, C.topic
D = {i: 20 + i for i in range(10)}  # digit ids
SUPPRESS = sorted({MASK, *C.tags().values(), EOS})


def script(prompt_len, segments):
    """Scripted positions of a plan: segments of (plan tokens, terminal, span lengths)."""
    out, pos = {}, prompt_len
    for plan, terminal, lengths in segments:
        for token in plan:
            out[pos] = token
            pos += 1
        out[pos] = terminal
        pos += (sum(n + 2 for n in lengths) + (terminal == SYNC)) if lengths else 1
    return out


# two rounds: spans of 3 and 2 tokens, a sync, free text, one span of 4, then the stop token
PLAN_A = [([SS, TOPIC, 5, D[3], SE, SS, D[2], SE], SYNC, [3, 2]), ([7, SS, D[4], SE], EOS, [4])]
# text, an empty segment ending in sync (nothing to fill), then one span of 5 and the stop token
PLAN_B = [([11, 12], SYNC, []), ([SS, D[5], SE], EOS, [5])]


@pytest.fixture(scope="module")
def base():
    return tiny_transformer(V, attention="causal", init_std=0.7, seed=1)


def _reference(model, prompt, index, max_new_tokens=40, shift=True):
    return planned_diffusion(model, prompt, index, mask_id=MASK, span_start=SS, span_end=SE, async_start=C.async_start,
                             async_end=C.async_end, sync=SYNC, digits=list(C.digits), stop_ids=[EOS],
                             max_new_tokens=max_new_tokens, length_scale=1, shift=shift, suppress=SUPPRESS)


@pytest.mark.parametrize("shift", [True, False], ids=["shift", "no_shift"])
def test_end_to_end_matches_reference(base, shift):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    model = ScriptedPlanner(base, {0: script(3, PLAN_A), 1: script(5, PLAN_B)})
    decoder = PlannedDiffusionDecoder(model, MASK, control=C, length_scale=1, shift_logits=shift)
    got = decoder.generate(prompts, max_new_tokens=40, sampling=SamplingParams.greedy(), stop_token_ids=[EOS], seed=0)
    want = [_reference(model, p, i, shift=shift) for i, p in enumerate(prompts)]
    assert got.sequences == want
    a, b = got.stats
    assert a.finish_reason == b.finish_reason == "stop"
    assert (a.extra["rounds"], a.extra["spans"], a.extra["span_tokens"]) == (2, 3, 9)
    assert (b.extra["rounds"], b.extra["spans"], b.extra["span_tokens"]) == (1, 1, 5)
    # round A1: 3 steps + 1 refresh; round A2: 4 steps; 12 planning tokens + the prefill
    assert a.extra["diffusion_calls"] == 8 and a.forward_calls == 8 + a.extra["planning_calls"]
    assert a.tokens_per_forward > 1.0
    assert got.sequences[0][8] == C.async_start and got.sequences[0][17] == SYNC


def test_span_isolation_through_the_model(base):
    """Changing one span's tokens leaves the other span's logits unchanged (and changes its own
    and the sync row's), with the decoder's custom mask on the paged cache."""
    scaffold = build_scaffold([3, 4], C, MASK, budget=100, sync=True)
    mask = round_attention_mask(scaffold.blocks, len(scaffold.tokens))
    cache = base.make_cache(8, 4)
    cache.allocator.allocate("s")
    forward_step(base, cache, ["s"], [[1, 2, 3, SS, D[3], SE, SS, D[4], SE]], mask="causal")
    rows = list(scaffold.tokens)
    first = forward_step(base, cache, ["s"], [rows], mask="custom", custom_mask=[mask], logits="all").clone()
    (a0, a1), (b0, b1) = scaffold.blocks
    changed = list(rows)
    changed[b0 + 1: b1 - 1] = [5, 6, 7, 8]
    second = forward_step(base, cache, ["s"], [changed], mask="custom", custom_mask=[mask], logits="all",
                          rewrite=True).clone()
    assert torch.equal(first[a0:a1], second[a0:a1])
    assert not torch.allclose(first[b0:b1], second[b0:b1])
    assert not torch.allclose(first[-1], second[-1])  # the sync row sees every span
    other = list(rows)
    other[a0 + 1: a1 - 1] = [9, 10, 11]
    third = forward_step(base, cache, ["s"], [other], mask="custom", custom_mask=[mask], logits="all",
                         rewrite=True).clone()
    assert torch.equal(first[b0:b1], third[b0:b1]) and not torch.allclose(first[a0:a1], third[a0:a1])
    # and a causal mask would leak span A into span B: the mask really isolates
    leaky = forward_step(base, cache, ["s"], [changed], mask="causal", logits="all", rewrite=True)
    assert not torch.allclose(leaky[b0:b1], second[b0:b1])


def test_round_attention_mask_layout():
    mask = round_attention_mask([(0, 3), (3, 5)], 6)
    want = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                         [0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, want)


def _parse(tokens, **kwargs):
    return parse_plan(tokens, C, MASK, **kwargs)


def test_plan_parsing():
    assert _parse([SS, TOPIC, 7, D[3], SE, 9, SS, D[1], D[2], SE]) == [30, 120]
    assert _parse([SS, D[1], D[2], D[3], SE], length_scale=1) == [12]  # the first two digits (published)
    assert _parse([SS, D[1], 4, D[5], SE], length_scale=1) == [1]  # the first run of digits only
    assert _parse([SS, D[3], SE], length_scale=2.5) == [7]
    assert _parse([1, 2, 3]) == [] and _parse([]) == []  # no spans at all is a valid plan
    assert _parse([SS, D[9], D[9], SE]) == [990]  # oversized: the budget cuts it (test below)
    for bad, match in [
        ([SS, D[3]], "missing span_end"),
        ([SS, D[3], SS, D[2], SE], "nested span_start"),
        ([SS, 5, 6, SE], "no digit"),
        ([SS, D[0], SE], "length 0"),
        ([SS, D[0], D[0], SE], "length 0"),
        ([SE], "span_end"),
        ([C.async_start, SS, D[2], SE], "async_start"),
        ([SS, D[2], C.async_end, SE], "async_end"),
        ([SS, D[2], SYNC, SE], "sync"),
        ([SS, D[2], TOPIC, SE], "topic"),
        ([TOPIC, SS, D[2], SE], "topic"),
        ([SS, D[2], MASK, SE], "mask"),
    ]:
        with pytest.raises(PlanError, match=match):
            _parse(bad)


def test_scaffold_budget_cut():
    s = build_scaffold([3, 4], C, MASK, budget=8, sync=True)
    assert s.tokens == [C.async_start, MASK, MASK, MASK, C.async_end, C.async_start, MASK, MASK]
    assert s.span_lengths == [3, 2] and s.blocks == [(0, 5), (5, 8)]


def test_oversized_span_is_cut_to_the_budget(base):
    model = ScriptedPlanner(base, {0: script(3, [([SS, D[9], D[9], SE], SYNC, [99])])})
    decoder = PlannedDiffusionDecoder(model, MASK, control=C, length_scale=1)
    got = decoder.generate([[1, 2, 3]], max_new_tokens=12, sampling=SamplingParams.greedy(), seed=0)
    out = got.sequences[0]
    assert len(out) == 12 and got.stats[0].finish_reason == "length"
    assert out[:5] == [SS, D[9], D[9], SE, C.async_start] and MASK not in out
    assert got.stats[0].extra["span_tokens"] == 7


def test_malformed_plan_raises_or_falls_back(base):
    bad = {0: {3: SS, 4: 7, 5: SE, 6: SYNC, 7: 9, 8: 10}}  # a promise without a length
    model = ScriptedPlanner(base, bad)
    with pytest.raises(PlanError, match=r"prompts\[0\].*no digit"):
        PlannedDiffusionDecoder(model, MASK, control=C).generate([[1, 2, 3]], max_new_tokens=8, seed=0,
                                                                 sampling=SamplingParams.greedy())
    fallback = PlannedDiffusionDecoder(model, MASK, control=C, on_bad_plan="autoregressive")
    got = fallback.generate([[1, 2, 3]], max_new_tokens=8, sampling=SamplingParams.greedy(), seed=0)
    assert got.sequences[0][:6] == [SS, 7, SE, SYNC, 9, 10]  # the plan stays as text, AR goes on
    assert got.stats[0].extra["rounds"] == 0 and len(got.sequences[0]) == 8


def test_reproducible_and_batch_invariant(base):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 9]]
    scripts = [script(3, PLAN_A), script(5, PLAN_B), script(2, PLAN_A)]
    make = lambda scripts: PlannedDiffusionDecoder(ScriptedPlanner(base, dict(enumerate(scripts))), MASK,  # noqa: E731
                                                   control=C, length_scale=1, steps_per_span=2)
    decoder = make(scripts)
    sampling = [SamplingParams(temperature=1.0), SamplingParams(temperature=0.8, top_p=0.9), SamplingParams.greedy()]
    seeds = [7, 8, 9]
    batch = decoder.generate(prompts, max_new_tokens=30, sampling=sampling, stop_token_ids=[EOS], seed=seeds)
    assert batch.sequences == decoder.generate(prompts, max_new_tokens=30, sampling=sampling, stop_token_ids=[EOS],
                                               seed=seeds).sequences
    for i in range(3):
        alone = make([scripts[i]]).generate([prompts[i]], max_new_tokens=30, sampling=sampling[i], stop_token_ids=[EOS],
                                 seed=[seeds[i]])
        assert alone.sequences[0] == batch.sequences[i]
    other = decoder.generate(prompts, max_new_tokens=30, sampling=sampling, stop_token_ids=[EOS], seed=[1, 2, 3])
    assert other.sequences[0] != batch.sequences[0]
    assert all(s.extra["rounds"] >= 1 for s in batch.stats)


class _NoCustomMask:
    def __init__(self, model):
        self.model = model
        for name in ("vocab_size", "max_positions", "attention", "device", "dtype", "make_cache", "forward", "release"):
            setattr(self, name, getattr(model, name))
        self.supports_custom_mask = False


def test_bad_inputs(base):
    with pytest.raises(ValueError, match="custom masks"):
        PlannedDiffusionDecoder(_NoCustomMask(base), MASK, control=C)
    bidirectional = tiny_transformer(V, attention="bidirectional")
    PlannedDiffusionDecoder(bidirectional, MASK, control=C)  # either attention works with per-call masks
    cases = [
        (dict(mask_token_id=V), "mask_token_id"),
        (dict(mask_token_id=MASK, control=ControlTokens(30, 31, 32, 33, V, digits=tuple(range(20, 30)))), "sync"),
        (dict(mask_token_id=MASK, control=ControlTokens(30, 30, 32, 33, 34, digits=tuple(range(20, 30)))),
         "collides"),
        (dict(mask_token_id=MASK, control=ControlTokens(30, 31, 32, 33, 34, digits=tuple(range(20, 29)))), "10"),
        (dict(mask_token_id=30, control=C), "collides"),
        (dict(mask_token_id=MASK, control=ControlTokens(30, 31, 32, 33, 34, digits=tuple(range(25, 35)))),
         "collides"),
        (dict(mask_token_id=MASK, control=C, steps_per_span=0), "steps_per_span"),
        (dict(mask_token_id=MASK, control=C, steps_ratio=0), "steps_ratio"),
        (dict(mask_token_id=MASK, control=C, confidence="entropy"), "confidence"),
        (dict(mask_token_id=MASK, control=C, on_bad_plan="ignore"), "on_bad_plan"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            PlannedDiffusionDecoder(base, **{"control": C, **kwargs})
    decoder = PlannedDiffusionDecoder(base, MASK, control=C)
    with pytest.raises(ValueError, match="control.sync"):
        decoder.generate([[1, 2]], max_new_tokens=4, stop_token_ids=[SYNC])
    with pytest.raises(ValueError, match="penalty"):
        decoder.generate([[1, 2]], max_new_tokens=4, sampling=SamplingParams(repetition_penalty=1.2))
