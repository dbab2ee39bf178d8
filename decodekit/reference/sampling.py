"""Plain-PyTorch sampling: the executable spec of the `sampling` op family.

Every backend (cpu, triton, cuda) must give the same result as these functions; sorting and
full-vocabulary temporaries are fine here and nowhere else.

Semantics of one row of ``logits`` (``x``, read as float32):

* **Invalid rows**: a row containing NaN or +inf, or whose entries are all -inf, gives
  ``valid=False``, token -1 and logprob NaN, whatever the parameters; so does a sampled row whose
  filters keep nothing (only possible when ``x / temperature`` overflows to +inf).
* **Greedy** (``temperature == 0``): the first index of the maximum of ``x``; logprob 0.0 (the
  filtered distribution is a point mass); filters are ignored.
* **Sampled** (``temperature > 0``), filters compose in this order:
  1. temperature: ``z = x / temperature``;
  2. top-k (``0 < k``): keep ``x >= `` the k-th largest ``x`` (ties at the boundary are kept, as
     Hugging Face's ``TopKLogitsWarper``); ``k == 0`` or ``k >= V`` keeps everything;
  3. top-p (``p < 1``) on the distribution renormalised after top-k: keep token i iff the mass of
     the tokens strictly larger than it is ``< p`` (the smallest top set with mass >= p, ties kept);
  4. min-p (``min_p > 0``): keep ``exp(z_i - z_max) >= min_p`` (probability at least ``min_p``
     times the largest one);
  -inf logits are never kept. The kept set is always ``{x >= tau}`` for one per-row threshold.
* **Draw**: Gumbel-max over the kept set with the RNG contract: ``u_i = uniform(seed, offset,
  Stream.SAMPLE_TOKEN, i)`` and ``token = argmax over kept i of (z_i - log(-log(u_i)))`` (first kept index on ties;
  ``u_i == 0`` gives -inf noise, so that token only wins if every kept token drew 0). logprob is
  ``(z_tok - z_max) - log(sum over kept of exp(z_j - z_max))``: the log of the chosen token's
  probability under the final filtered, renormalised distribution.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from decodekit.reference.rng import Stream, philox_uniform


class SampleOutput(NamedTuple):
    tokens: torch.Tensor  # [B] int64, -1 where invalid
    logprobs: torch.Tensor | None  # [B] float32
    valid: torch.Tensor  # [B] bool


def invalid_rows(x: torch.Tensor) -> torch.Tensor:
    """[B] bool: rows with NaN or +inf, or with no finite-or-(-inf)-free entry."""
    return torch.isnan(x).any(-1) | (x == float("inf")).any(-1) | (x == float("-inf")).all(-1)


def first_argmax(x: torch.Tensor, eligible: torch.Tensor | None = None) -> torch.Tensor:
    """First index of the row maximum among ``eligible`` entries (all by default).

    torch.argmax's tie rule is not documented, so be explicit. If every eligible entry is -inf the
    first eligible index wins (a Gumbel draw whose uniforms were all exactly 0).
    """
    if eligible is None:
        eligible = torch.ones_like(x, dtype=torch.bool)
    best = torch.where(eligible, x, float("-inf")).max(dim=-1, keepdim=True).values
    is_max = eligible & (x == best)
    index = torch.arange(x.shape[-1], device=x.device).expand_as(x)
    return torch.where(is_max, index, x.shape[-1]).min(dim=-1).values


def top_k_threshold(x: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """[B, 1] value of the k-th largest logit (-inf where top-k is off or k >= V)."""
    batch, vocab = x.shape
    k = top_k.to(torch.int64).reshape(-1, 1)
    active = (k > 0) & (k < vocab)
    kth = torch.sort(x, dim=-1, descending=True).values.gather(-1, (k.clamp(1, vocab) - 1))
    return torch.where(active, kth, torch.full_like(kth, float("-inf")))


def top_p_threshold(x: torch.Tensor, mass: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """[B, 1] logit threshold of top-p over unnormalised ``mass`` (0 outside the candidates).

    Keep token i iff (mass strictly above x_i) < p * total. In descending order the kept tokens
    are the prefix whose exclusive cumulative mass is < p * total, plus ties of its last value.
    """
    p = top_p.to(torch.float32).reshape(-1, 1)
    order = torch.sort(x, dim=-1, descending=True)
    sorted_mass = mass.gather(-1, order.indices)
    exclusive = torch.cumsum(sorted_mass, dim=-1) - sorted_mass
    total = sorted_mass.sum(-1, keepdim=True)
    last_kept = (exclusive < p * total).sum(-1, keepdim=True).clamp(min=1) - 1
    tau = order.values.gather(-1, last_kept)
    return torch.where(p < 1.0, tau, torch.full_like(tau, float("-inf")))


def kept_mask(x: torch.Tensor, z: torch.Tensor, top_k, top_p, min_p) -> torch.Tensor:
    """[B, V] bool: the tokens that survive top-k -> top-p -> min-p on tempered logits ``z``."""
    finite = x > float("-inf")
    keep = finite & (x >= top_k_threshold(x, top_k))
    z_max = torch.where(keep, z, float("-inf")).max(-1, keepdim=True).values
    mass = torch.where(keep, torch.exp(z - z_max), 0.0)
    keep &= x >= top_p_threshold(x, mass, top_p)
    m = min_p.to(torch.float32).reshape(-1, 1)
    keep &= torch.exp(z - z_max) >= m
    return keep


def _as_row_tensor(value, batch: int, dtype, device) -> torch.Tensor:
    return torch.as_tensor(value, dtype=dtype, device=device).reshape(-1).expand(batch).contiguous()


def sample(
    logits: torch.Tensor,
    *,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    min_p=0.0,
    seed=0,
    offset=0,
    return_logprobs: bool = False,
) -> SampleOutput:
    """Sample one token per row of ``logits [B, V]``; see the module docstring for the semantics.

    Every parameter is a scalar or a ``[B]`` tensor; ``seed`` and ``offset`` are int64.
    """
    x = logits.to(torch.float32)
    batch, vocab = x.shape
    dev = x.device
    temperature = _as_row_tensor(temperature, batch, torch.float32, dev)
    top_k = _as_row_tensor(top_k, batch, torch.int64, dev)
    top_p = _as_row_tensor(top_p, batch, torch.float32, dev)
    min_p = _as_row_tensor(min_p, batch, torch.float32, dev)
    seed = _as_row_tensor(seed, batch, torch.int64, dev)
    offset = _as_row_tensor(offset, batch, torch.int64, dev)

    invalid = invalid_rows(x)
    safe_x = torch.where(invalid.unsqueeze(-1), torch.zeros_like(x), x)
    greedy = temperature == 0
    safe_t = torch.where(greedy, torch.ones_like(temperature), temperature).unsqueeze(-1)
    z = safe_x / safe_t

    keep = kept_mask(safe_x, z, top_k, top_p, min_p)
    u = philox_uniform(seed, offset, Stream.SAMPLE_TOKEN, vocab).to(dev)
    sampled = first_argmax(z - torch.log(-torch.log(u)), keep)
    # (z_tok - z_max) - log(sum exp(z - z_max)): subtracting the max first keeps logprobs near 0
    # accurate (z_tok - logsumexp(z) loses an ulp of |z_max|)
    z_max = torch.where(keep, z, float("-inf")).max(-1, keepdim=True).values
    kept_mass = torch.where(keep, torch.exp(z - z_max), 0.0).sum(-1)
    z_tok = z.gather(-1, sampled.clamp(max=vocab - 1).unsqueeze(-1))
    sampled_logprob = (z_tok - z_max).squeeze(-1) - torch.log(kept_mass)

    # x / temperature can overflow to +inf for tiny temperatures; if that leaves no token kept
    # the row cannot be sampled and is reported invalid rather than guessed
    invalid |= ~greedy & ~keep.any(-1)
    tokens = torch.where(greedy, first_argmax(safe_x), sampled)
    logprobs = torch.where(greedy, torch.zeros_like(sampled_logprob), sampled_logprob)
    tokens = torch.where(invalid, -1, tokens)
    logprobs = torch.where(invalid, float("nan"), logprobs)
    return SampleOutput(tokens, logprobs if return_logprobs else None, ~invalid)


def apply_penalties(
    logits: torch.Tensor,
    token_counts: torch.Tensor,
    repetition=1.0,
    frequency=0.0,
    presence=0.0,
) -> torch.Tensor:
    """Penalised copy of ``logits [B, V]`` given ``token_counts [B, V]`` (occurrences so far).

    For every token seen at least once: repetition (CTRL / Hugging Face) divides a positive logit
    by ``repetition`` and multiplies a negative one by it; then frequency and presence (OpenAI)
    subtract ``frequency * count + presence``. Unseen tokens are untouched. Output dtype = input.
    """
    batch, _ = logits.shape
    dev = logits.device
    x = logits.to(torch.float32)
    r = _as_row_tensor(repetition, batch, torch.float32, dev).unsqueeze(-1)
    f = _as_row_tensor(frequency, batch, torch.float32, dev).unsqueeze(-1)
    p = _as_row_tensor(presence, batch, torch.float32, dev).unsqueeze(-1)
    counts = token_counts.to(torch.float32)
    seen = counts > 0
    penalised = torch.where(x > 0, x / r, x * r) - f * counts - p
    return torch.where(seen, penalised, x).to(logits.dtype)


def token_counts_from_ids(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, V] int32 occurrence counts of ``token_ids [B, L]`` (negative or >= V ids are ignored)."""
    batch = token_ids.shape[0]
    ids = token_ids.to(torch.int64)
    valid = (ids >= 0) & (ids < vocab_size)
    counts = torch.zeros(batch, vocab_size + 1, dtype=torch.int32, device=token_ids.device)
    counts.scatter_add_(1, torch.where(valid, ids, vocab_size), valid.to(torch.int32))
    return counts[:, :vocab_size].contiguous()


def _nan_rows(x: torch.Tensor) -> torch.Tensor:
    return torch.isnan(x).any(-1, keepdim=True)


def mask_logits(logits: torch.Tensor, top_k=0, top_p=1.0) -> torch.Tensor:
    """``logits [B, V]`` with every token outside top-k -> top-p (at temperature 1) set to -inf.

    Rows containing NaN come back all NaN. Output dtype = input dtype.
    """
    batch, _ = logits.shape
    dev = logits.device
    x = logits.to(torch.float32)
    top_k = _as_row_tensor(top_k, batch, torch.int64, dev)
    top_p = _as_row_tensor(top_p, batch, torch.float32, dev)
    keep = kept_mask(x, x, top_k, top_p, torch.zeros(batch, device=dev))
    out = torch.where(keep, x, float("-inf"))
    out = torch.where(_nan_rows(x), float("nan"), out)
    return out.to(logits.dtype)


def top_k_top_p_renorm(probs: torch.Tensor, top_k=0, top_p=1.0) -> torch.Tensor:
    """``probs [B, V]`` restricted to top-k -> top-p and renormalised to sum 1 (0 elsewhere).

    Ranking uses the probabilities themselves; top-p mass is relative to the row's mass after
    top-k. Rows containing NaN come back all NaN. Output dtype = input dtype.
    """
    batch, _ = probs.shape
    dev = probs.device
    p = probs.to(torch.float32)
    top_k = _as_row_tensor(top_k, batch, torch.int64, dev)
    top_p = _as_row_tensor(top_p, batch, torch.float32, dev)
    keep = (p > 0) & (p >= top_k_threshold(p, top_k))
    mass = torch.where(keep, p, 0.0)
    keep &= p >= top_p_threshold(p, mass, top_p)
    kept = torch.where(keep, p, 0.0)
    out = kept / kept.sum(-1, keepdim=True)
    out = torch.where(_nan_rows(p), float("nan"), out)
    return out.to(probs.dtype)
