"""Property tests of `denoise_step` (hypothesis): committed positions were masked and inside both
the logits window and the commit window; the count per row follows the select rule; tokens that
were not masked never change. Run on the reference and the C++ CPU backend."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decodekit import ops


@st.composite
def denoise_problems(draw):
    batch = draw(st.integers(1, 3))
    length = draw(st.integers(1, 12))
    width = draw(st.integers(1, length))
    vocab = draw(st.integers(2, 20))
    seed = draw(st.integers(0, 2**31))
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, width, vocab, generator=gen) * draw(st.sampled_from([0.5, 3.0]))
    if draw(st.booleans()):
        logits = torch.round(logits)  # exact ties in logits and confidences
    mask_id = vocab - 1
    tokens = torch.randint(0, vocab, (batch, length), generator=gen)
    tokens[torch.rand(batch, length, generator=gen) < draw(st.sampled_from([0.3, 0.8, 1.0]))] = mask_id
    window_start = torch.randint(0, length - width + 1, (batch,), generator=gen)
    block_start = torch.randint(0, length + 1, (batch,), generator=gen)
    block_end = torch.minimum(block_start + torch.randint(0, length + 1, (batch,), generator=gen),
                              torch.tensor(length))
    select = draw(st.sampled_from(["topk", "threshold", "factor", "bernoulli"]))
    kwargs = dict(
        mask_id=mask_id,
        window_start=window_start,
        block_start=block_start,
        block_end=block_end,
        confidence=draw(st.sampled_from(["prob", "margin", "neg_entropy", "random"])),
        select=select,
        k=torch.randint(0, width + 2, (batch,), generator=gen),
        tau=draw(st.sampled_from([0.05, 0.5, 1.0])),
        factor=draw(st.sampled_from([0.0, 1.0, 4.0])),
        p_transfer=draw(st.sampled_from([0.0, 0.5, 1.0])),
        seed=seed,
        offset=draw(st.integers(0, 5)),
    )
    if draw(st.booleans()):
        kwargs.update(proposal="sample", temperature=draw(st.sampled_from([0.3, 1.0])))
    return logits, tokens, kwargs


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@settings(max_examples=60, deadline=None)
@given(problem=denoise_problems())
def test_denoise_step_properties(backend, problem):
    logits, tokens, kwargs = problem
    before = tokens.clone()
    out = ops.denoise_step(logits, tokens, backend=backend, **kwargs)
    batch, width, _ = logits.shape
    length = tokens.shape[1]
    assert out.tokens is tokens

    pos = kwargs["window_start"].reshape(-1, 1) + torch.arange(width)
    in_window = torch.zeros(batch, length, dtype=torch.bool).scatter_(1, pos, True)
    canvas_pos = torch.arange(length)
    in_block = (canvas_pos >= kwargs["block_start"].reshape(-1, 1)) & (canvas_pos < kwargs["block_end"].reshape(-1, 1))
    masked = before == kwargs["mask_id"]
    assert not (out.committed & ~(masked & in_window & in_block)).any()
    assert torch.equal(tokens[~out.committed], before[~out.committed])
    proposal_on_canvas = torch.full_like(tokens, -2).scatter_(1, pos, out.proposal)
    assert torch.equal(tokens[out.committed], proposal_on_canvas[out.committed])
    assert torch.equal(out.num_committed, out.committed.sum(1).to(torch.int32))

    valid_on_canvas = proposal_on_canvas >= 0
    eligible = masked & in_window & in_block & valid_on_canvas
    n = eligible.sum(1)
    num = out.num_committed.to(torch.int64)
    select = kwargs["select"]
    if select == "topk":
        assert torch.equal(num, torch.minimum(n, kwargs["k"]))
    elif select == "threshold":
        conf = torch.full((batch, length), float("nan")).scatter_(1, pos, out.confidence)
        above = (eligible & (conf >= kwargs["tau"])).sum(1)
        assert torch.equal(num, torch.where(n > 0, above.clamp(min=1), 0))
    elif select == "factor":
        assert bool(((num >= 1) | (n == 0)).all()) and bool((num <= n).all())
        if kwargs["factor"] == 0.0:  # thresholds 1 - 0 = 1: only confidences >= 1 pass after the first
            assert bool((num <= n).all())
    else:
        if kwargs["p_transfer"] == 1.0:
            assert torch.equal(num, n)
        elif kwargs["p_transfer"] == 0.0:
            assert int(num.sum()) == 0
        assert bool((num <= n).all())
