"""`denoise_step` equals straightforward re-implementations of the published samplers' steps
(research note diffusion_nar_hybrid.md): LLaDA low_confidence / random, Dream maskgit_plus /
topk_margin / entropy / origin, Fast-dLLM threshold / factor, Planned Diffusion per-span top-k and
Mask-Predict re-masking. Greedy proposals, so the comparison is exact. The published loops are
written here as the sources do it (softmax over the whole tensor, Python loops over the batch);
where a source draws with torch.rand, the re-implementation takes the Philox uniforms of the
contract instead, which is the only intended difference."""

import pytest
import torch

from decodekit import ops
from decodekit.reference.rng import Stream

NEG_INF = float("-inf")


def _model(vocab, length, seed):
    """A fake bidirectional LM: logits depend on the position and on the neighbours' tokens, so
    every step sees new logits and the loops below really iterate. The mask id is V - 1."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(length, vocab, generator=gen) * 3
    mix = torch.randn(vocab, vocab, generator=gen)

    def forward(x):
        left = torch.cat([x[:, :1], x[:, :-1]], 1)
        right = torch.cat([x[:, 1:], x[:, -1:]], 1)
        logits = base.unsqueeze(0) + 0.5 * mix[left] + 0.3 * mix[right]
        logits[..., vocab - 1] = NEG_INF  # every test's mask id: a real model never proposes it
        return logits

    return forward


def _canvas(batch, prompt, gen_length, vocab, mask_id, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.full((batch, prompt + gen_length), mask_id)
    x[:, :prompt] = torch.randint(0, vocab - 2, (batch, prompt), generator=gen)
    return x


def _philox(stream, batch, length, seed, offset):
    return ops.philox_uniform(torch.arange(batch) + seed, torch.full((batch,), offset), stream, length,
                              backend="reference")


# ------------------------------------------------------------------ LLaDA


def llada_get_num_transfer_tokens(mask_index, steps):
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num[i, : remainder[i]] += 1
    return num


def llada_generate(model, x, mask_id, steps, gen_length, block_length, remasking, eos=None, seed=0):
    """LLaDA generate() at temperature 0 (research note §1.3); `random` confidence from Philox."""
    x = x.clone()
    batch = x.shape[0]
    prompt = x.shape[1] - gen_length
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    step = 0
    for b in range(num_blocks):
        block = x[:, prompt + b * block_length : prompt + (b + 1) * block_length]
        k_sched = llada_get_num_transfer_tokens(block == mask_id, steps_per_block)
        for i in range(steps_per_block):
            mask_index = x == mask_id
            logits = model(x)
            if eos is not None:
                logits[:, :, eos] = NEG_INF
            x0 = torch.argmax(logits, dim=-1)
            if remasking == "low_confidence":
                p = torch.softmax(logits.to(torch.float64), dim=-1)
                x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
            else:
                x0_p = _philox(Stream.CONFIDENCE_NOISE, batch, x.shape[1], seed, step).to(torch.float64)
            x0_p[:, prompt + (b + 1) * block_length :] = NEG_INF
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, NEG_INF)
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(batch):
                _, select = torch.topk(confidence[j], k=int(k_sched[j, i]))
                transfer[j, select] = True
            x[transfer] = x0[transfer]
            step += 1
    return x


def decodekit_llada(model, x, mask_id, steps, gen_length, block_length, remasking, eos=None, seed=0):
    x = x.clone()
    batch = x.shape[0]
    prompt = x.shape[1] - gen_length
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    step = 0
    for b in range(num_blocks):
        start, end = prompt + b * block_length, prompt + (b + 1) * block_length
        k_sched = ops.transfer_schedule((x[:, start:end] == mask_id).sum(1), steps_per_block, "linear")
        for i in range(steps_per_block):
            ops.denoise_step(model(x), x, mask_id=mask_id, confidence="prob" if remasking == "low_confidence"
                             else "random", select="topk", k=k_sched[:, i], block_end=end, suppress_ids=eos,
                             seed=torch.arange(batch) + seed, offset=step, backend="reference")
            step += 1
    return x


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("block_length", [24, 8], ids=["one_block", "semi_ar"])
def test_llada_generate(remasking, block_length):
    vocab, mask_id, eos = 50, 49, [7]
    model = _model(vocab, 8 + 24, seed=1)
    x = _canvas(3, 8, 24, vocab, mask_id, seed=2)
    want = llada_generate(model, x, mask_id, 12, 24, block_length, remasking, eos=eos, seed=5)
    got = decodekit_llada(model, x, mask_id, 12, 24, block_length, remasking, eos=eos, seed=5)
    assert torch.equal(got, want)
    assert not (got == 7).any()


# ------------------------------------------------------------------ Dream


def dream_sample_tokens(logits, margin_confidence=False, neg_entropy=False):
    """Dream's sample_tokens at temperature 0 (research note §2.2)."""
    probs = torch.softmax(logits, dim=-1)
    confidence, x0 = probs.max(dim=-1)
    if margin_confidence:
        sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
        confidence = sorted_probs[..., 0] - sorted_probs[..., 1]
    if neg_entropy:
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


def dream_generate(model, x, mask_id, steps, alg, eps=1e-3, seed=0):
    """Dream's _sample loop (research note §2.3) for B rows handled one at a time (Dream averages
    the masked count over the batch; per row it is the same rule); `origin` coins from Philox."""
    x = x.clone()
    batch = x.shape[0]
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        logits = model(x)
        t, s = timesteps[i], timesteps[i + 1]
        for j in range(batch):
            row = x[j : j + 1]
            mask_index = row == mask_id
            mask_logits = logits[j : j + 1][mask_index]
            if alg == "origin":
                p_transfer = 1 - s / t if i < steps - 1 else 1
                coins = _philox(Stream.TRANSFER_COIN, batch, x.shape[1], seed, i)[j : j + 1][mask_index]
                x0 = torch.zeros_like(row[mask_index]) + mask_id
                transfer = coins < p_transfer
                if transfer.any():
                    _, x0[transfer] = dream_sample_tokens(mask_logits[transfer])
                row[mask_index] = x0
            else:
                confidence, x0 = dream_sample_tokens(mask_logits, alg == "topk_margin", alg == "entropy")
                num_mask_token = mask_index.sum() / mask_index.shape[0]
                k = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
                full_confidence = torch.full_like(row, NEG_INF, dtype=logits.dtype)
                full_confidence[mask_index] = confidence
                if k > 0:
                    _, transfer_index = torch.topk(full_confidence, k)
                    x_ = torch.zeros_like(row) + mask_id
                    x_[mask_index] = x0.clone()
                    row_index = torch.arange(1).unsqueeze(1).expand_as(transfer_index)
                    row[row_index, transfer_index] = x_[row_index, transfer_index]
    return x


def decodekit_dream(model, x, mask_id, steps, alg, eps=1e-3, seed=0):
    x = x.clone()
    batch = x.shape[0]
    timesteps = torch.linspace(1, eps, steps + 1)
    confidence = {"maskgit_plus": "prob", "topk_margin": "margin", "entropy": "neg_entropy", "origin": "random"}[alg]
    k_sched = ops.transfer_schedule((x == mask_id).sum(1), steps, "log_linear", eps=eps)
    for i in range(steps):
        kwargs = dict(mask_id=mask_id, confidence=confidence, tempered_confidence=True,
                      seed=torch.arange(batch) + seed, offset=i, backend="reference")
        if alg == "origin":
            p = float(1 - timesteps[i + 1] / timesteps[i]) if i < steps - 1 else 1.0
            ops.denoise_step(model(x), x, select="bernoulli", p_transfer=p, **kwargs)
        else:
            ops.denoise_step(model(x), x, select="topk", k=k_sched[:, i], **kwargs)
    return x


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy", "origin"])
def test_dream_generate(alg):
    vocab, mask_id = 40, 39
    model = _model(vocab, 4 + 20, seed=3)
    x = _canvas(2, 4, 20, vocab, mask_id, seed=4)
    want = dream_generate(model, x, mask_id, 6, alg, seed=9)
    got = decodekit_dream(model, x, mask_id, 6, alg, seed=9)
    assert torch.equal(got, want)
    assert not (got == mask_id).any() or alg == "origin"


# ------------------------------------------------------------------ Fast-dLLM


def fast_dllm_transfer_index(logits, mask_index, x, threshold=None, factor=None):
    """Fast-dLLM get_transfer_index (threshold) / get_transfer_index_dynamic (factor), T = 0."""
    x0 = torch.argmax(logits, dim=-1)
    p = torch.softmax(logits.to(torch.float64), dim=-1)
    x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, NEG_INF)
    transfer = torch.zeros_like(x0, dtype=torch.bool)
    num_transfer = mask_index.sum(dim=1)
    for j in range(confidence.shape[0]):
        n = int(num_transfer[j])
        if n == 0:
            continue
        if threshold is not None:
            _, select = torch.topk(confidence[j], k=n)
            transfer[j, select] = True
            for k in range(1, n):
                if confidence[j, select[k]] < threshold:
                    transfer[j, select[k]] = False
        else:
            thresholds = [1 - factor / (m + 1) for m in range(1, n + 1)]
            thresholds[0] = -1
            sorted_confidence = torch.sort(confidence[j][mask_index[j]], descending=True)[0]
            accepted = 0
            while accepted < n and sorted_confidence[accepted] >= thresholds[accepted]:
                accepted += 1
            _, select = torch.topk(confidence[j], k=accepted)
            transfer[j, select] = True
    return x0, transfer


def fast_dllm_generate(model, x, mask_id, gen_length, block_length, threshold=None, factor=None):
    x = x.clone()
    prompt = x.shape[1] - gen_length
    nfe = 0
    for b in range(gen_length // block_length):
        end = prompt + (b + 1) * block_length
        while (x[:, prompt + b * block_length : end] == mask_id).any() and nfe < 200:
            mask_index = x == mask_id
            mask_index[:, end:] = False
            x0, transfer = fast_dllm_transfer_index(model(x), mask_index, x, threshold, factor)
            x[transfer] = x0[transfer]
            nfe += 1
    return x, nfe


def decodekit_fast_dllm(model, x, mask_id, gen_length, block_length, threshold=None, factor=None):
    x = x.clone()
    prompt = x.shape[1] - gen_length
    nfe = 0
    for b in range(gen_length // block_length):
        start, end = prompt + b * block_length, prompt + (b + 1) * block_length
        while (x[:, start:end] == mask_id).any() and nfe < 200:
            if threshold is not None:
                ops.denoise_step(model(x), x, mask_id=mask_id, select="threshold", tau=threshold, block_end=end,
                                 backend="reference")
            else:
                ops.denoise_step(model(x), x, mask_id=mask_id, select="factor", factor=factor, block_end=end,
                                 backend="reference")
            nfe += 1
    return x, nfe


@pytest.mark.parametrize("rule", [dict(threshold=0.9), dict(threshold=0.5), dict(factor=1.0), dict(factor=2.0)],
                         ids=["tau0.9", "tau0.5", "f1", "f2"])
def test_fast_dllm_generate(rule):
    vocab, mask_id = 30, 29
    model = _model(vocab, 6 + 32, seed=5)
    # a peaked model so that several tokens pass the threshold per step
    peaked = lambda x: model(x) * 2.5  # noqa: E731
    x = _canvas(3, 6, 32, vocab, mask_id, seed=6)
    want, want_nfe = fast_dllm_generate(peaked, x, mask_id, 32, 16, **rule)
    got, got_nfe = decodekit_fast_dllm(peaked, x, mask_id, 32, 16, **rule)
    assert torch.equal(got, want) and got_nfe == want_nfe
    assert want_nfe < 32, "the rule never committed more than one token per step: the test is too weak"


# ------------------------------------------------------------------ Planned Diffusion


def planned_diffusion_step(logits, x, span_ids, num_spans, mask_id, frac):
    """pd_entropy: per span, k = max(1, int(masked_in_span * frac)) top-k by negative entropy."""
    probs = torch.softmax(logits, -1)
    x0 = probs.argmax(-1)
    confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    x = x.clone()
    for j in range(x.shape[0]):
        for s in range(num_spans):
            in_span = (span_ids[j] == s) & (x[j] == mask_id)
            masked = int(in_span.sum())
            if masked == 0:
                continue
            k = max(1, int(masked * frac))
            conf = torch.where(in_span, confidence[j], NEG_INF)
            select = torch.topk(conf, k).indices
            x[j, select] = x0[j, select]
    return x


def test_planned_diffusion_per_span_topk():
    vocab, mask_id, length, num_spans = 30, 29, 30, 3
    model = _model(vocab, length, seed=7)
    x = _canvas(2, 6, 24, vocab, mask_id, seed=8)
    span_ids = torch.full((2, length), -1, dtype=torch.int32)
    span_ids[0, 6:14], span_ids[0, 14:20], span_ids[0, 20:30] = 0, 1, 2
    span_ids[1, 6:10], span_ids[1, 10:26], span_ids[1, 26:30] = 2, 0, 1
    want, got = x.clone(), x.clone()
    for step, frac in enumerate([0.25, 0.4, 0.5, 1.0]):
        want = planned_diffusion_step(model(want), want, span_ids, num_spans, mask_id, frac)
        masked = torch.stack([((span_ids == s) & (got == mask_id)).sum(1) for s in range(num_spans)], 1)
        k = torch.where(masked > 0, (masked * frac).to(torch.int64).clamp(min=1), 0)
        ops.denoise_step(model(got), got, mask_id=mask_id, confidence="neg_entropy", select="topk", k=k,
                         span_ids=span_ids, backend="reference")
        assert torch.equal(got, want), f"step {step}"
    assert not (got[:, 6:] == mask_id).any()


# ------------------------------------------------------------------ Mask-Predict


def mask_predict(model, x, mask_id, iterations, pad):
    """Mask-Predict (research note §5): predict all, then re-mask the n lowest-probability
    tokens (pads have probability 1) and re-predict them."""
    length = (x != pad).sum(1)
    probs_all = torch.softmax(model(x), -1)
    probs, tokens = probs_all.max(-1)
    tokens = torch.where(x == pad, pad, tokens)
    probs = torch.where(x == pad, 1.0, probs)
    for c in range(1, iterations):
        n = (length.double() * (1 - c / iterations)).long()
        for j in range(x.shape[0]):
            order = sorted(range(x.shape[1]), key=lambda i: (float(probs[j, i]), i))[: int(n[j])]
            tokens[j, order] = mask_id
        masked = tokens == mask_id
        new_probs, new_tokens = torch.softmax(model(tokens), -1).max(-1)
        tokens = torch.where(masked, new_tokens, tokens)
        probs = torch.where(masked, new_probs, probs)
    return tokens


def decodekit_mask_predict(model, x, mask_id, iterations, pad):
    tokens = x.clone()
    eligible = x != pad
    length = eligible.sum(1)
    out = ops.denoise_step(model(tokens), tokens, mask_id=mask_id, k=tokens.shape[1], backend="reference")
    probs = torch.where(out.committed, out.confidence, 1.0)
    for c in range(1, iterations):
        n = (length.double() * (1 - c / iterations)).long()
        ops.remask_lowest(tokens, probs, n, mask_id, eligible)
        out = ops.denoise_step(model(tokens), tokens, mask_id=mask_id, k=tokens.shape[1], backend="reference")
        probs = torch.where(out.committed, out.confidence, probs)
    return tokens


def test_mask_predict():
    vocab, mask_id, pad = 25, 24, 23
    model = _model(vocab, 16, seed=9)
    x = torch.full((3, 16), mask_id)
    x[1, 12:] = pad
    x[2, 9:] = pad
    masked_model = lambda t: model(t).index_fill(-1, torch.tensor([pad]), NEG_INF)  # noqa: E731
    want = mask_predict(masked_model, x, mask_id, 5, pad)
    got = decodekit_mask_predict(masked_model, x, mask_id, 5, pad)
    assert torch.equal(got, want)
    assert not (got == mask_id).any()
