"""Mask-Predict (CMLM, Ghazvininejad et al. 2019): non-autoregressive decoding of a whole canvas.

A canvas of ``N`` masks follows the prompt. Iteration 0 predicts every position; iterations
``t = 1 .. T-1`` re-mask the ``max(1, floor(N (T - t) / T))`` tokens with the lowest stored
probability (earlier predictions included) and re-predict them; a re-predicted position stores
its new probability, the others keep theirs. With a length beam, ``ℓ`` canvases of different
lengths run side by side and the one with the highest mean log-probability wins (the published
``avg_log_prob`` rule).

Per-token work goes through ``ops.denoise_step`` (propose + commit every masked position) and
``ops.remask_lowest``; the decoder only moves lists of token ids and lengths.

Paged-cache layout (one sequence per canvas): ``[prompt][canvas]``. The canvas rows are appended
once and re-run with ``rewrite=True`` (the last ``N`` positions), so the canvas is always the
sequence's tail. See :class:`MaskPredictDecoder` for how the prompt is encoded.
"""

from __future__ import annotations

import numbers
from typing import Callable, Sequence

import torch

from decodekit import ops
from decodekit.decoders.base import Decoder, Request, forward_step
from decodekit.decoders.params import BatchSampling

LengthHead = Callable[[list], object]


class MaskPredictDecoder(Decoder):
    """Mask-Predict over a bidirectional model (``model.attention == "bidirectional"``).

    Example::

        model = tiny_transformer(64, attention="bidirectional", init_std=0.7)
        decoder = MaskPredictDecoder(model, mask_token_id=63, iterations=10, length_beam=3)
        result = decoder.generate([[1, 2, 3]], max_new_tokens=16, sampling=SamplingParams.greedy())

    Args:
        model: a bidirectional :class:`decodekit.models.Model` (a causal model is rejected: its
            rows never see the positions to their right, so nothing is predicted from context).
        mask_token_id: the mask id, in ``[0, V)``. It is never proposed (its logit is set to
            -inf): a committed mask would read as still masked.
        iterations: ``T >= 1`` model calls over the canvas (published: ``--decoding-iterations``,
            10 in the README's runs).
        length_beam: ``ℓ >= 1`` candidate lengths per prompt (published ``--length-beam`` 5, with
            the model's length predictor). The candidates are the ``ℓ`` most likely lengths of a
            length head that returns a distribution; otherwise the ``ℓ`` consecutive lengths
            centred on the predicted length ``L`` (the ``--gold-target-len`` window), shifted
            into ``[1, max_new_tokens]``. Without a length head ``L = max_new_tokens``, so the
            window is ``max_new_tokens - ℓ + 1 .. max_new_tokens``.
        length_head: None, or a callable ``length_head(prompt_ids: list[int])`` returning either
            an int ``L >= 1`` (values above ``max_new_tokens`` are clipped to it) or a 1-D
            sequence / tensor of scores indexed by length (probabilities, log-probabilities or
            logits: only their order is used; index 0 is never a candidate, as in CMLM, and
            indices above ``max_new_tokens`` are ignored). Called once per prompt, before any
            model work.
        recompute_prompt: False (default): the prompt is encoded once on its own (full attention
            among its tokens, CMLM's encoder reading the source alone) and each iteration re-runs
            only the ``N`` canvas rows, which see the prompt and the whole canvas; ``T + 1``
            model calls. True: every iteration re-runs prompt and canvas with full attention (a
            bidirectional LM over the whole sequence, as LLaDA's models are run); ``T`` calls of
            ``P + N`` rows.
        tokenizer, num_blocks, block_size: see :class:`~decodekit.decoders.base.Decoder`.

    ``generate``: ``max_new_tokens`` is the canvas length ``N`` (the maximum length with a
    length beam or head); ``prompt + max_new_tokens`` must fit the model's context. Sampling:
    greedy (``temperature=0``, published) or Gumbel-max proposals with temperature / top-k /
    top-p (``min_p`` and penalties are rejected); the stored probability is the untempered
    probability of the proposed token. Randomness is keyed by the request's seed and the
    iteration index; all length candidates of a request share those draws (common random
    numbers, so the length comparison is not decided by noise). The chosen canvas is emitted up
    to and including the first stop token. Stats: ``forward_calls``, ``tokens_per_forward``
    and ``extra`` = ``{"iterations", "length_candidates", "length_scores", "chosen_length"}``.
    """

    model_attention = "bidirectional"

    def __init__(
        self,
        model,
        mask_token_id: int,
        *,
        iterations: int = 10,
        length_beam: int = 1,
        length_head: LengthHead | None = None,
        recompute_prompt: bool = False,
        tokenizer=None,
        num_blocks: int | None = None,
        block_size: int = 16,
    ):
        super().__init__(model, tokenizer=tokenizer, num_blocks=num_blocks, block_size=block_size)
        vocab = model.vocab_size
        if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or not 0 <= mask_token_id < vocab:
            raise ValueError(f"mask_token_id must be a token id in [0, {vocab}), got {mask_token_id!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
        if isinstance(length_beam, bool) or not isinstance(length_beam, int) or length_beam < 1:
            raise ValueError(f"length_beam must be an int >= 1, got {length_beam!r}")
        if length_head is not None and not callable(length_head):
            raise TypeError(f"length_head must be None or a callable, got {type(length_head).__name__}")
        if not isinstance(recompute_prompt, bool):
            raise TypeError(f"recompute_prompt must be a bool, got {type(recompute_prompt).__name__}")
        self.mask_token_id = mask_token_id
        self.iterations = iterations
        self.length_beam = length_beam
        self.length_head = length_head
        self.recompute_prompt = recompute_prompt

    # ------------------------------------------------------------------ argument checks

    def _requests(self, prompts, max_new_tokens, sampling, stop_token_ids, seed) -> list[Request]:
        requests = super()._requests(prompts, max_new_tokens, sampling, stop_token_ids, seed)
        limit = self.model.max_positions
        for r in requests:
            if len(r.prompt) + max_new_tokens > limit:
                raise ValueError(
                    f"max_new_tokens={max_new_tokens}: the canvas of prompts[{r.index}] ({len(r.prompt)} tokens) "
                    f"would need {len(r.prompt) + max_new_tokens} positions; the model's context is {limit}"
                )
            check_denoise_sampling(r)
        return requests

    # ------------------------------------------------------------------ the loop

    def _run(self, requests: list[Request], caches: dict) -> None:
        model, mask_id, device = self.model, self.mask_token_id, self.model.device
        candidates = [self._candidates(r) for r in requests]
        rows = [(r, length) for r, lengths in zip(requests, candidates) for length in lengths]
        beam = max(len(c) for c in candidates)
        widest = max(len(r.prompt) + r.max_new_tokens for r in requests)
        cache = self._cache(model, requests, caches, reserve=(beam - 1) * (widest + 2 * self.block_size))
        seq_ids = self._start_sequences(cache, requests, candidates)
        lengths = [length for _, length in rows]
        width = max(lengths)
        canvas = CanvasBatch(lengths, mask_id, device)
        sampler = DenoiseSampling([r for r, _ in rows], device)
        tokens, eligible = canvas.tokens, canvas.eligible
        scores = torch.ones(tokens.shape, dtype=torch.float32, device=device)
        host = tokens.tolist()
        iterations = self.iterations
        for t in range(iterations):
            if t > 0:
                n = [max(1, length * (iterations - t) // iterations) for length in lengths]
                ops.remask_lowest(tokens, scores, torch.tensor(n, device=device), mask_id, eligible)
                host = tokens.tolist()
            logits = self._canvas_logits(cache, seq_ids, rows, host, append=(t == 0))
            out = ops.denoise_step(
                canvas.pad_logits(logits), tokens, mask_id=mask_id, suppress_ids=[mask_id], confidence="prob",
                select="topk", k=width, offset=t, **sampler.kwargs(),
            )
            scores = torch.where(out.committed, out.confidence, scores)
            host = tokens.tolist()
        self._finish_requests(requests, candidates, rows, host, scores, eligible)

    def _candidates(self, request: Request) -> list[int]:
        limit = request.max_new_tokens
        prediction = limit if self.length_head is None else self.length_head(list(request.prompt))
        return length_candidates(prediction, self.length_beam, limit, f"length_head(prompts[{request.index}])")

    def _start_sequences(self, cache, requests, candidates) -> list:
        """Allocate one sequence per candidate; without ``recompute_prompt`` encode each prompt
        once and fork it (copy-on-write) into its candidates."""
        seq_ids = [(r.seq_id, c) for r, lengths in zip(requests, candidates) for c in range(len(lengths))]
        if self.recompute_prompt:
            for seq in seq_ids:
                cache.allocator.allocate(seq)
            return seq_ids
        firsts = [(r.seq_id, 0) for r in requests]
        for seq in firsts:
            cache.allocator.allocate(seq)
        self._count_call(requests)
        forward_step(self.model, cache, firsts, [r.prompt for r in requests], mask="full")
        for r, lengths in zip(requests, candidates):
            for c in range(1, len(lengths)):
                cache.allocator.fork((r.seq_id, 0), (r.seq_id, c))
        return seq_ids

    def _canvas_logits(self, cache, seq_ids, rows, host, *, append: bool) -> torch.Tensor:
        """``[sum N, V]`` logits of every canvas row (the canvases laid end to end)."""
        canvases = [host[i][:length] for i, (_, length) in enumerate(rows)]
        if self.recompute_prompt:
            new = [r.prompt + canvas for (r, _), canvas in zip(rows, canvases)]
        else:
            new = canvases
        self._count_call(list({id(r): r for r, _ in rows}.values()))
        logits = forward_step(self.model, cache, seq_ids, new, mask="full", logits="all", rewrite=not append)
        if self.recompute_prompt:  # drop the prompt rows
            keep, start = [], 0
            for (r, length), n in zip(rows, (len(x) for x in new)):
                keep.extend(range(start + len(r.prompt), start + n))
                start += n
            logits = logits.index_select(0, torch.tensor(keep, device=logits.device))
        return logits

    def _count_call(self, requests) -> None:
        for r in requests:
            r.stats.forward_calls += 1
        self._forward_calls += 1

    def _finish_requests(self, requests, candidates, rows, host, scores, eligible) -> None:
        mean_log_prob = (torch.where(eligible, scores.clamp_min(0).log(), 0.0).sum(1)
                         / eligible.sum(1).clamp_min(1)).tolist()
        filled = ((torch.tensor(host) == self.mask_token_id) & eligible.cpu()).sum(1).eq(0).tolist()
        i = 0
        for r, lengths in zip(requests, candidates):
            chosen = None
            for c in range(len(lengths)):
                if filled[i + c] and mean_log_prob[i + c] == mean_log_prob[i + c]:
                    if chosen is None or mean_log_prob[i + c] > mean_log_prob[i + chosen]:
                        chosen = c
            r.stats.extra.update(iterations=self.iterations, length_candidates=list(lengths),
                                 length_scores=mean_log_prob[i : i + len(lengths)],
                                 chosen_length=None if chosen is None else lengths[chosen])
            if chosen is None:
                self._finish(r, "invalid_logits")
            else:
                r.emit(host[i + chosen][: lengths[chosen]])
                self._finish(r, None if r.finished else "length")
            i += len(lengths)


# ---------------------------------------------------------------------------- shared helpers


def check_denoise_sampling(request: Request) -> None:
    """``denoise_step`` proposals take temperature, top-k and top-p only."""
    s = request.sampling
    if s.min_p != 0.0 or s.has_penalties:
        raise ValueError(
            f"sampling of prompts[{request.index}]: this decoder supports temperature, top_k and top_p only; "
            f"got min_p={s.min_p}, repetition_penalty={s.repetition_penalty}, "
            f"frequency_penalty={s.frequency_penalty}, presence_penalty={s.presence_penalty}"
        )


def length_candidates(prediction, beam: int, limit: int, name: str = "length_head") -> list[int]:
    """Candidate canvas lengths (ascending for a window, most likely first for a distribution).

    Args:
        prediction: an int ``L >= 1`` (clipped to ``limit``) or a 1-D sequence/tensor of scores
            indexed by length (index 0 and indices above ``limit`` are never candidates).
        beam: how many candidates (fewer if fewer lengths exist).
        limit: the largest allowed length (``max_new_tokens``).
        name: how errors name the prediction.
    """
    if isinstance(prediction, torch.Tensor) and prediction.dim() == 0:
        prediction = prediction.item()
    if isinstance(prediction, numbers.Integral) and not isinstance(prediction, bool):
        if prediction < 1:
            raise ValueError(f"{name} returned length {prediction}; lengths must be >= 1")
        centre = min(int(prediction), limit)
        low = max(1, min(centre - (beam - 1) // 2, limit - beam + 1))
        return list(range(low, min(low + beam, limit + 1)))
    if isinstance(prediction, (list, tuple)):
        prediction = torch.tensor(prediction, dtype=torch.float64)
    if not isinstance(prediction, torch.Tensor) or not prediction.dtype.is_floating_point or prediction.dim() != 1:
        raise TypeError(f"{name} must return an int length or a 1-D float sequence of scores indexed by length, "
                        f"got {prediction!r}")
    scores = prediction.detach().to("cpu", torch.float64)[1 : limit + 1]
    if scores.numel() == 0:
        raise ValueError(f"{name} returned {prediction.numel()} scores: no length >= 1 to choose")
    if torch.isnan(scores).any():
        raise ValueError(f"{name} returned NaN scores")
    order = torch.sort(-scores, stable=True).indices[:beam]  # ties: the shorter length first
    return [int(i) + 1 for i in order]


class CanvasBatch:
    """Canvases of different lengths as one ``[R, W]`` int64 tensor (``W`` = the longest);
    positions past a canvas's length hold a non-mask filler and are not ``eligible``."""

    def __init__(self, lengths: Sequence[int], mask_id: int, device):
        width = max(lengths)
        filler = 0 if mask_id != 0 else 1
        length = torch.tensor(lengths, device=device).unsqueeze(1)
        self.eligible = torch.arange(width, device=device).unsqueeze(0) < length
        self.tokens = torch.where(self.eligible, mask_id, filler).to(torch.int64).contiguous()
        self.lengths = list(lengths)
        self.width = width
        flat = [i * width + j for i, n in enumerate(lengths) for j in range(n)]
        self._flat = torch.tensor(flat, dtype=torch.int64, device=device)

    def pad_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``[sum N, V]`` canvas logits -> ``[R, W, V]`` (zeros past each canvas)."""
        rows = len(self.lengths)
        padded = logits.new_zeros(rows * self.width, logits.shape[-1])
        padded.index_copy_(0, self._flat, logits)
        return padded.view(rows, self.width, -1)


class DenoiseSampling:
    """``denoise_step`` keyword arguments of a batch of rows (one request per row): greedy when
    every row is greedy, else Gumbel-max proposals with per-row temperature (0 = greedy row)."""

    def __init__(self, requests: Sequence[Request], device):
        params = BatchSampling.of([r.sampling for r in requests], device)
        self.seed = torch.tensor([r.seed for r in requests], dtype=torch.int64, device=device)
        self.greedy = all(r.sampling.is_greedy for r in requests)
        self.filters = any(r.sampling.top_k or r.sampling.top_p < 1.0 for r in requests)
        self.params = params

    def kwargs(self) -> dict:
        if self.greedy:
            return dict(proposal="greedy", seed=self.seed)
        out = dict(proposal="sample", temperature=self.params.temperature, seed=self.seed)
        if self.filters:
            out.update(top_k=self.params.top_k, top_p=self.params.top_p)
        return out
