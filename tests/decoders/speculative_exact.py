"""Exact distributions for the speculative decoder's statistical tests: the target model's joint
distribution of the first two generated tokens, and a chi-square goodness-of-fit p-value."""

from __future__ import annotations

import torch

from decodekit import ops
from decodekit.decoders import forward_step


def _filtered(logits: torch.Tensor, sampling) -> torch.Tensor:
    """The distribution ``sample`` draws from: temperature, then top-k, then top-p."""
    probs = torch.softmax(logits.double() / sampling.temperature, -1).float()
    return ops.top_k_top_p_renorm(probs, sampling.top_k, sampling.top_p).double()


@torch.no_grad()
def exact_first_two(model, prompt: list[int], sampling) -> torch.Tensor:
    """``[V, V]`` float64: P(t1, t2 | prompt) = p(t1 | prompt) * p(t2 | prompt, t1), enumerated
    with one plain (non-speculative) forward over all V continuations."""
    vocab = model.vocab_size
    cache = model.make_cache(vocab * (-(-(len(prompt) + 2) // 16) + 1), 16)
    seqs = [("exact", t) for t in range(vocab)]
    for s in seqs:
        cache.allocator.allocate(s)
    logits = forward_step(model, cache, seqs, [prompt + [t] for t in range(vocab)], logits="all")
    width = len(prompt) + 1
    logits = logits.reshape(vocab, width, vocab)
    first = _filtered(logits[0, -2][None], sampling)[0]  # every sequence shares the prompt rows
    second = _filtered(logits[:, -1], sampling)
    return first[:, None] * second


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson chi-square p-value of observed ``counts`` against ``probs`` (same shape); cells
    expected below ``min_expected`` are pooled into one cell. A draw in a zero-probability cell
    gives p = 0."""
    counts, probs = counts.double().reshape(-1), probs.double().reshape(-1)
    total = counts.sum()
    if bool((counts[probs == 0] > 0).any()):
        return 0.0
    expected = probs * total
    small = expected < min_expected
    obs = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    exp = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = ((obs - exp) ** 2 / exp).sum()
    dof = obs.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2))


def first_two_counts(sequences: list[list[int]], vocab: int) -> torch.Tensor:
    """``[V, V]`` counts of the (first, second) generated tokens over many requests."""
    counts = torch.zeros(vocab, vocab)
    for seq in sequences:
        counts[seq[0], seq[1]] += 1
    return counts
