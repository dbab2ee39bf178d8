"""Plain-PyTorch parallel mask-denoising: the executable spec of the `denoise` op family.

One denoising step of every masked-diffusion / CMLM sampler (LLaDA, Dream, Fast-dLLM, MDLM,
Mask-Predict, Planned Diffusion) is: logits over the vocabulary at each window position -> a
proposed token and a confidence (``propose``) -> choose which masked positions to commit and write
them into the canvas (``select``). Every backend must give the same integers as these functions;
full-vocabulary temporaries and ``[B, W, W]`` comparison tables are fine here and nowhere else.

**propose**, per window position ``(b, j)`` at canvas position ``pos = window_start[b] + j``
(logits read as float32 ``x``):

1. ``x[v] = -inf`` for every suppressed id (before everything else, confidence included: LLaDA's
   ``logits_eos_inf``).
2. Invalid position: any NaN or +inf, or every entry -inf; or, sampled, ``max over kept of x / T``
   overflows to +inf. Invalid -> proposal -1, confidence NaN, never committed.
3. Greedy (``T == 0``): first index of the maximum. Sampled (``T > 0``): ``z = x / T``; kept set
   ``K = {x > -inf and x >= keep_floor[b, j]}`` (the floor encodes top-k / top-p, see
   ``keep_floor``); ``u_v = uniform(seed, offset, PROPOSAL_TOKEN, c0 = (pos * V + v) mod 2**32)``;
   proposal = first index in K of the maximum of ``z_v - log(-log(u_v))``.
4. Confidence over a distribution D: the untempered, unfiltered softmax of x (LLaDA; always for
   greedy rows) or, with ``tempered``, the softmax of z restricted to K (Dream).
   ``prob`` = D(proposal); ``margin`` = top-1 minus top-2 entry of D; ``neg_entropy`` =
   ``sum D log D``; ``random`` = ``uniform(seed, offset, CONFIDENCE_NOISE, c0 = pos)``.

**select**: a window position is eligible iff its canvas position is inside ``[0, L)``, holds
``mask_id``, lies in the commit window ``[block_start, block_end)``, has a valid proposal and (per-
span top-k) a span id in ``[0, S)``. Inside a group (the row, or one span of it) eligible positions
are ranked by (confidence descending, position ascending); ``r`` is the 0-based rank and ``n`` the
group's eligible count.

* ``topk``: commit ``r < min(k, n)`` (k larger than the eligible count is clamped, not an error);
* ``threshold``: commit ``r == 0 or confidence >= tau`` (Fast-dLLM: at least the most confident);
* ``factor``: commit ``r < N``, N = the smallest ``r >= 1`` with ``c_r < float32(1 - f / (r + 2))``
  (the threshold computed in float64), else n (Fast-dLLM's ``1 - f / (n + 1)`` with 1-based n);
* ``bernoulli``: commit iff ``uniform(seed, offset, TRANSFER_COIN, c0 = pos) < p_transfer``.

**sampled selection** (``topk`` with ``selection_temperature`` t > 0 for a row, Dream's
``alg_temp``): before ranking, each confidence c becomes ``c / t + g`` with Gumbel noise
``g = -log(-log(u))``, ``u = uniform(seed, offset, SELECTION_NOISE, c0 = pos)``. Top-k of
Gumbel-perturbed scores is a draw of k positions without replacement from ``softmax(c / t)`` over
the eligible positions (Plackett-Luce), which is what Dream's ``multinomial(softmax(c / t), k)``
does. This is a ``[B, W]`` computation with torch ops, shared by every backend
(``perturb_confidence``).

Committed positions get the proposal; no other canvas entry changes.
"""

from __future__ import annotations

import enum
import math
from typing import NamedTuple

import torch

from decodekit.reference import rng
from decodekit.reference.rng import Stream
from decodekit.reference.sampling import first_argmax, top_k_threshold, top_p_threshold


class ConfMode(enum.IntEnum):
    """Raw-contract code of the confidence."""

    PROB = 0
    MARGIN = 1
    NEG_ENTROPY = 2
    RANDOM = 3


class SelectMode(enum.IntEnum):
    """Raw-contract code of the commit rule (``TOPK`` is per span when span ids are given)."""

    TOPK = 0
    THRESHOLD = 1
    FACTOR = 2
    BERNOULLI = 3


SCHEDULES = ("linear", "log_linear", "cosine")


class DenoiseOutput(NamedTuple):
    tokens: torch.Tensor  # [B, L] int64, the canvas after the step
    committed: torch.Tensor  # [B, L] bool, positions written by this step
    num_committed: torch.Tensor  # [B] int32
    proposal: torch.Tensor  # [B, W] int64, -1 where the logits row is invalid
    confidence: torch.Tensor  # [B, W] float32, NaN where invalid


NEG_INF = float("-inf")


def suppress(x: torch.Tensor, suppress_ids: torch.Tensor | None) -> torch.Tensor:
    """float32 copy of ``x [..., V]`` with ``suppress_ids [S]`` set to -inf."""
    x = x.to(torch.float32).clone()
    if suppress_ids is not None and suppress_ids.numel():
        x[..., suppress_ids.to(torch.int64)] = NEG_INF
    return x


def keep_floor(x: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """``[B, W]`` float32 logit floor of top-k -> top-p for suppressed float32 logits ``x [B, W, V]``.

    The kept set is ``{x > -inf and x >= floor}``: sampling's filters (reference/sampling.py):
    top-k keeps ties at the k-th largest, top-p runs on the tempered distribution renormalised
    after top-k. Per-row ``temperature`` float32, ``top_k`` int, ``top_p`` float32, all ``[B]``;
    greedy rows get a floor too, which ``propose`` ignores.
    """
    batch, width, vocab = x.shape
    flat = torch.nan_to_num(x.reshape(batch * width, vocab), nan=0.0)
    repeat = lambda t: t.reshape(-1, 1).expand(batch, width).reshape(-1)  # noqa: E731
    t = repeat(torch.where(temperature > 0, temperature, torch.ones_like(temperature)))
    k_floor = top_k_threshold(flat, repeat(top_k))
    keep = (flat > NEG_INF) & (flat >= k_floor)
    z = flat / t.unsqueeze(-1)
    z_max = torch.where(keep, z, NEG_INF).max(-1, keepdim=True).values
    mass = torch.where(keep, torch.exp(z - z_max), 0.0)
    p_floor = top_p_threshold(flat, mass, repeat(top_p))
    return torch.maximum(k_floor, p_floor).reshape(batch, width)


def canvas_positions(window_start: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, W]`` int64 canvas position of every window row."""
    return window_start.to(torch.int64).reshape(-1, 1) + torch.arange(width, device=window_start.device)


def _distribution_stats(y: torch.Tensor, domain: torch.Tensor):
    """(m, e, Z) of the softmax of ``y`` over ``domain``: max, exp(y - m) (0 outside), sum."""
    y = torch.where(domain, y, NEG_INF)
    m = y.max(-1, keepdim=True).values
    e = torch.where(y > NEG_INF, torch.exp(y - m), 0.0)
    return y, m, e, e.sum(-1, keepdim=True)


def propose(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    floor: torch.Tensor | None,
    suppress_ids: torch.Tensor | None,
    seed: torch.Tensor,
    offset: torch.Tensor,
    window_start: torch.Tensor,
    conf_mode: int,
    tempered: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposal ``[B, W]`` int64 and confidence ``[B, W]`` float32 of ``logits [B, W, V]``.

    ``temperature`` float32 ``[B]`` (0 = greedy); ``floor`` float32 ``[B, W]`` or None (no
    filter); ``suppress_ids`` int64 ``[S]`` or None; ``seed``/``offset``/``window_start`` int64
    ``[B]``; ``conf_mode`` a ``ConfMode``; ``tempered`` chooses D (module docstring).
    """
    x = suppress(logits, suppress_ids)
    batch, width, vocab = x.shape
    dev = x.device
    invalid = torch.isnan(x).any(-1) | (x == float("inf")).any(-1) | (x == NEG_INF).all(-1)
    safe_x = torch.where(invalid.unsqueeze(-1), 0.0, x)
    greedy = (temperature == 0).reshape(-1, 1)
    safe_t = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).reshape(-1, 1, 1)
    z = safe_x / safe_t
    if floor is None:
        floor = torch.full((batch, width), NEG_INF, device=dev)
    keep = (safe_x > NEG_INF) & (safe_x >= floor.unsqueeze(-1))

    pos = canvas_positions(window_start, width)
    if bool(greedy.all()):  # the spec may sync; skipping [B, W, V] Philox keeps greedy tests fast
        sampled = torch.zeros(batch, width, dtype=torch.int64, device=dev)
    else:
        c0 = (pos.unsqueeze(-1) * vocab + torch.arange(vocab, device=dev)) & rng.MASK32
        u = rng.uniform(seed.reshape(-1, 1, 1), offset.reshape(-1, 1, 1), Stream.PROPOSAL_TOKEN, c0)
        sampled = first_argmax(z - torch.log(-torch.log(u)), keep)
    tok = torch.where(greedy, first_argmax(safe_x), sampled)
    kept_z_max = torch.where(keep, z, NEG_INF).max(-1).values
    invalid |= ~greedy & (kept_z_max == float("inf"))

    use_tempered = torch.full_like(greedy, bool(tempered)) & ~greedy
    y = torch.where(use_tempered.unsqueeze(-1), z, safe_x)
    domain = torch.where(use_tempered.unsqueeze(-1), keep, torch.ones_like(keep))
    y, m, e, total = _distribution_stats(y, domain)
    if conf_mode == ConfMode.PROB:
        conf = e.gather(-1, tok.clamp(0, vocab - 1).unsqueeze(-1)) / total
    elif conf_mode == ConfMode.MARGIN:
        top2 = torch.cat([y, torch.full_like(y[..., :1], NEG_INF)], -1).topk(2, dim=-1).values
        e2 = torch.where(top2 > NEG_INF, torch.exp(top2 - m), 0.0)
        conf = (e2[..., :1] - e2[..., 1:]) / total
    elif conf_mode == ConfMode.NEG_ENTROPY:
        s = torch.where(y > NEG_INF, e * (y - m), 0.0).sum(-1, keepdim=True)
        conf = s / total - torch.log(total)
    elif conf_mode == ConfMode.RANDOM:
        conf = rng.uniform(seed.reshape(-1, 1), offset.reshape(-1, 1), Stream.CONFIDENCE_NOISE, pos)
    else:
        raise ValueError(f"unknown conf_mode {conf_mode}")
    conf = conf.reshape(batch, width)
    proposal = torch.where(invalid, -1, tok)
    confidence = torch.where(invalid, float("nan"), conf)
    return proposal, confidence


def eligible_positions(
    tokens: torch.Tensor,
    proposal: torch.Tensor,
    window_start: torch.Tensor,
    block_start: torch.Tensor,
    block_end: torch.Tensor,
    mask_id: int,
    span_ids: torch.Tensor | None,
    num_spans: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eligible ``[B, W]`` bool, canvas position ``[B, W]``, group id ``[B, W]`` int64)."""
    length = tokens.shape[1]
    pos = canvas_positions(window_start, proposal.shape[1])
    inside = (pos >= 0) & (pos < length)
    safe_pos = pos.clamp(0, length - 1)
    masked = tokens.gather(1, safe_pos) == mask_id
    in_block = (pos >= block_start.reshape(-1, 1)) & (pos < block_end.reshape(-1, 1))
    eligible = inside & masked & in_block & (proposal >= 0)
    group = torch.zeros_like(pos)
    if span_ids is not None and span_ids.numel():
        group = span_ids.to(torch.int64).gather(1, safe_pos)
        eligible &= (group >= 0) & (group < num_spans)
    return eligible, pos, group


def group_ranks(confidence: torch.Tensor, eligible: torch.Tensor, group: torch.Tensor):
    """(rank ``[B, W]``, group size ``[B, W]``) of each eligible position inside its group, by
    (confidence descending, position ascending); window order is position order."""
    width = confidence.shape[1]
    c_i, c_j = confidence.unsqueeze(2), confidence.unsqueeze(1)  # i: the other position, j: this one
    idx = torch.arange(width, device=confidence.device)
    before = (c_i > c_j) | ((c_i == c_j) & (idx.reshape(-1, 1) < idx.reshape(1, -1)))
    same = eligible.unsqueeze(2) & (group.unsqueeze(2) == group.unsqueeze(1))
    rank = (same & before).sum(1)
    size = same.sum(1)
    return rank, size


def select(
    tokens: torch.Tensor,
    proposal: torch.Tensor,
    confidence: torch.Tensor,
    window_start: torch.Tensor,
    block_start: torch.Tensor,
    block_end: torch.Tensor,
    mask_id: int,
    select_mode: int,
    k: torch.Tensor,
    tau: torch.Tensor,
    factor: torch.Tensor,
    p_transfer: torch.Tensor,
    span_ids: torch.Tensor | None,
    seed: torch.Tensor,
    offset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(new canvas ``[B, L]`` int64, committed ``[B, L]`` bool, num_committed ``[B]`` int32).

    ``tokens [B, L]`` int64 is not modified; ``proposal``/``confidence [B, W]``; ``k`` int32
    ``[B, S]`` (S = 1 without spans); ``tau``/``factor``/``p_transfer`` float32 ``[B]``;
    ``span_ids`` int32 ``[B, L]`` or None; the rest as in the module docstring.
    """
    num_spans = k.shape[1]
    eligible, pos, group = eligible_positions(
        tokens, proposal, window_start, block_start, block_end, mask_id, span_ids, num_spans
    )
    if select_mode != SelectMode.BERNOULLI:  # ranks are a [B, W, W] table: only when the rule reads them
        rank, _ = group_ranks(confidence, eligible, group)
    if select_mode == SelectMode.TOPK:
        row_k = k.to(torch.int64).gather(1, group.clamp(0, num_spans - 1))
        commit = rank < row_k
    elif select_mode == SelectMode.THRESHOLD:
        commit = (rank == 0) | (confidence >= tau.reshape(-1, 1))
    elif select_mode == SelectMode.FACTOR:
        threshold = (1.0 - factor.to(torch.float64).reshape(-1, 1) / (rank + 2).to(torch.float64)).to(torch.float32)
        fails = eligible & (rank >= 1) & (confidence < threshold)
        cut = torch.where(fails, rank, proposal.shape[1]).min(1, keepdim=True).values
        commit = rank < cut
    elif select_mode == SelectMode.BERNOULLI:
        coin = rng.uniform(seed.reshape(-1, 1), offset.reshape(-1, 1), Stream.TRANSFER_COIN, pos)
        commit = coin < p_transfer.reshape(-1, 1)
    else:
        raise ValueError(f"unknown select_mode {select_mode}")
    commit &= eligible

    length = tokens.shape[1]
    target = torch.where(commit, pos, length)  # uncommitted rows go to a spill column
    committed = torch.zeros(tokens.shape[0], length + 1, dtype=torch.bool, device=tokens.device)
    committed.scatter_(1, target, commit)
    written = torch.zeros(tokens.shape[0], length + 1, dtype=torch.int64, device=tokens.device)
    written.scatter_(1, target, torch.where(commit, proposal, 0))
    committed, written = committed[:, :length], written[:, :length]
    new_tokens = torch.where(committed, written, tokens)
    return new_tokens, committed, commit.sum(1).to(torch.int32)


def remask_lowest(
    tokens: torch.Tensor, scores: torch.Tensor, n: torch.Tensor, mask_id: int, eligible: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask-Predict re-masking: (new canvas, remasked ``[B, L]`` bool).

    In each row the ``min(n, #eligible)`` eligible positions with the lowest ``scores`` (ties:
    lowest position first; NaN counts as +inf) become ``mask_id``, whether or not they were
    committed earlier. ``tokens [B, L]`` int64, ``scores [B, L]`` float, ``n [B]`` int,
    ``eligible [B, L]`` bool or None (all).
    """
    if eligible is None:
        eligible = torch.ones_like(tokens, dtype=torch.bool)
    s = torch.nan_to_num(scores.to(torch.float32), nan=float("inf"), posinf=float("inf"))
    # stable sorts: by score, then ineligible last; equal keys keep position order
    by_score = torch.sort(s, dim=1, stable=True).indices
    by_group = torch.sort((~eligible).gather(1, by_score).to(torch.int8), dim=1, stable=True).indices
    order = by_score.gather(1, by_group)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(tokens.shape[1], device=tokens.device).expand_as(order))
    remasked = eligible & (rank < n.to(torch.int64).reshape(-1, 1))
    return torch.where(remasked, mask_id, tokens), remasked


def transfer_schedule(num_masked: torch.Tensor, steps: int, kind: str, eps: float = 1e-3) -> torch.Tensor:
    """``[B, steps]`` int32 tokens to commit per step for ``num_masked [B]`` masked positions.

    * ``linear`` (LLaDA ``get_num_transfer_tokens``): ``M // steps`` each, the first
      ``M % steps`` steps one more;
    * ``log_linear`` (Dream, MDLM): with ``t_i = linspace(1, eps, steps + 1)`` in float32, step i
      commits ``trunc(float32(M_i) * (1 - t_{i+1} / t_i))`` of the ``M_i`` still masked, the last
      step all of them;
    * ``cosine`` (MaskGIT): ``M_i = floor(M cos(pi/2 (i+1)/steps))`` stay masked after step i.

    Every row sums to ``num_masked``.
    """
    m = num_masked.to(torch.int64).reshape(-1)
    dev = m.device
    i = torch.arange(steps, device=dev)
    if kind == "linear":
        counts = (m // steps).unsqueeze(1) + (i.unsqueeze(0) < (m % steps).unsqueeze(1)).to(torch.int64)
    elif kind == "log_linear":
        t = torch.linspace(1.0, eps, steps + 1, device=dev, dtype=torch.float32)
        fraction = 1.0 - t[1:] / t[:-1]
        columns, remaining = [], m
        for step in range(steps):
            if step < steps - 1:
                now = (remaining.to(torch.float32) * fraction[step]).to(torch.int64)
            else:
                now = remaining
            columns.append(now)
            remaining = remaining - now
        counts = torch.stack(columns, 1)
    elif kind == "cosine":
        left = torch.cos(math.pi / 2 * (i + 1).to(torch.float64) / steps)
        still = torch.floor(m.to(torch.float64).unsqueeze(1) * left.unsqueeze(0)).to(torch.int64)
        still[:, -1] = 0
        before = torch.cat([m.unsqueeze(1), still[:, :-1]], 1)
        counts = before - still
    else:
        raise ValueError(f"unknown schedule kind {kind!r}; choose one of {', '.join(SCHEDULES)}")
    return counts.to(torch.int32)


def perturb_confidence(confidence, selection_temperature, seed, offset, window_start):
    """Gumbel-perturbed confidences of a sampled top-k selection (see the module docstring).

    Args:
        confidence: ``[B, W]`` float32 (NaN = invalid position, kept NaN).
        selection_temperature: ``[B]`` float32 >= 0; rows with 0 are returned unchanged.
        seed, offset, window_start: ``[B]`` int64.
    """
    width = confidence.shape[1]
    pos = window_start.reshape(-1, 1) + torch.arange(width, dtype=torch.int64, device=confidence.device)
    u = rng.uniform(seed.reshape(-1, 1), offset.reshape(-1, 1), Stream.SELECTION_NOISE, pos)
    # u can be exactly 0.0 (DESIGN.md): clamp so the noise stays finite.
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)))
    t = selection_temperature.reshape(-1, 1)
    sampled = confidence / t.clamp_min(1e-30) + gumbel
    return torch.where(t > 0, sampled, confidence)
