"""Planned diffusion (Israel et al. 2025, arXiv 2510.18087): an autoregressive plan of spans,
then all spans filled in parallel by masked diffusion, with ONE model for both stages.

Loop per request:

1. Planning (autoregressive, KV-cached, causal rows): tokens are sampled one per call until the
   model writes ``sync`` or a stop token (the terminal). The plan segment written since the last
   sync is parsed (:mod:`decodekit.decoders.plan`): each promise ``span_start .. digits ..
   span_end`` asks for a span of ``digits x length_scale`` tokens.
2. Diffusion: the round's rows ``[async_start, mask x n, async_end]`` per span (plus the held-back
   ``sync``) are appended after the plan and re-run at every step with ``rewrite=True`` under a
   custom mask: each span sees the cached prompt + plan and itself only; per span, the
   ``max(1, int(m (1 - s/t)))`` most confident of its ``m`` masks are committed (published
   ``pd_*`` rule, ``t = linspace(1, eps, steps + 1)``), all of them on the last step.
3. ``sync``: once the spans are full, the round's rows are re-run once more with their final
   tokens (so the cache holds the spans' final K/V; the sync row sees every span) and planning
   continues from the sync row's logits. A stop terminal ends the request after the spans.

Per-token work: ``ops.sample`` (planning) and ``ops.denoise_step`` with per-span counts
(``span_ids``) (diffusion). Rows re-run by a step are always the sequence's tail.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from decodekit import ops
from decodekit.decoders.autoregressive import TokenSampler
from decodekit.decoders.base import Decoder, Request
from decodekit.decoders.mask_predict import DenoiseSampling, check_denoise_sampling
from decodekit.decoders.plan import ControlTokens, PlanError, Scaffold, build_scaffold, parse_plan, round_attention_mask

CONFIDENCES = ("neg_entropy", "prob", "margin")
ON_BAD_PLAN = ("raise", "autoregressive")


@dataclass
class _Round:
    scaffold: Scaffold
    terminal: int  # the held-back token: sync or a stop id
    steps: int
    mask: torch.Tensor
    step: int = 0
    refresh: bool = False  # spans full; the next call only refreshes the K/V and reads the sync row


@dataclass
class _State:
    request: Request
    plan_from: int = 0  # output index where the current plan segment starts
    counter: int = 0  # the request's RNG step counter
    pending: int | None = None  # sampled token to append at the next planning call
    round: _Round | None = None
    ar_only: bool = False  # after a malformed plan with on_bad_plan="autoregressive"
    stats: dict = field(default_factory=lambda: {"rounds": 0, "spans": 0, "span_tokens": 0,
                                                  "diffusion_calls": 0, "planning_calls": 0})


class PlannedDiffusionDecoder(Decoder):
    """Planned diffusion with one model for the plan (causal rows) and the spans (custom mask).

    Example::

        control = ControlTokens(span_start=..., span_end=..., async_start=..., async_end=...,
                                sync=..., digits=tokenizer.convert_tokens_to_ids(list("0123456789")))
        decoder = PlannedDiffusionDecoder(model, mask_token_id, control=control)
        result = decoder.generate(prompts, max_new_tokens=512, stop_token_ids=[eos],
                                  sampling=SamplingParams(temperature=0.2, top_p=0.95))

    Args:
        model: a :class:`decodekit.models.Model` with ``supports_custom_mask``. Every call passes
            an explicit mask (``"causal"`` for planning rows, ``"custom"`` for span rows), so the
            model's ``attention`` setting (its default when no mask is given) does not matter:
            a model configured ``"causal"`` is valid here because the per-call mask makes its
            span rows bidirectional. A model without custom-mask support is rejected (a purely
            causal one could not attend inside a span, a purely bidirectional one could not
            plan causally or isolate spans).
        mask_token_id: the mask id in ``[0, V)``.
        control: :class:`~decodekit.decoders.plan.ControlTokens`; all ids in the vocabulary and
            distinct from each other, the digits and the mask id.
        steps_per_span: denoising steps of each round (all its spans in parallel); None
            (default, published) = ``max(1, int(longest span x steps_ratio))``.
        steps_ratio: > 0, published default 1.0 (one step per token of the longest span).
        length_scale: > 0, span length per unit of the plan's number (published 10).
        max_length_digits: >= 1, digits read from a promise's number (published 2).
        confidence: which masks a span commits first: ``"neg_entropy"`` (published default
            ``pd_entropy``), ``"prob"`` (``pd_maskgit_plus``) or ``"margin"``
            (``pd_topk_margin``); computed on the tempered, top-k/top-p filtered distribution
            like Dream.
        eps: final diffusion time of ``linspace(1, eps, steps + 1)`` (Dream's 1e-3).
        shift_logits: True (published, Dream-based models): the mask at position j is
            predicted by the logits of row j - 1; False: by its own row (LLaDA-style models).
        on_bad_plan: ``"raise"`` (default, as the published code): a malformed plan raises
            :class:`~decodekit.decoders.plan.PlanError` (a ValueError) naming the request and
            the fault; ``"autoregressive"``: the request keeps the malformed plan as plain text
            and continues purely autoregressively (the terminal is emitted as an ordinary
            token; no more diffusion rounds for it).
        tokenizer, num_blocks, block_size: see :class:`~decodekit.decoders.base.Decoder`.

    Output: the generated sequence as the model reads it (plan tokens, each span with its
    ``async_start``/``async_end`` tags, the sync tokens, the final stop token). Spans never
    contain control, mask or stop tokens (suppressed in their proposals: a stop inside a span
    would end the request before the other spans). A plan segment without promises is valid:
    its terminal is emitted as an ordinary token. ``max_new_tokens`` caps everything; a round
    whose rows do not fit is cut to the budget (a cut span keeps the masks that fit) and the
    request ends with reason ``"length"``. Sampling: temperature / top-k / top-p for both stages
    (published: 0.2 / 0.95); randomness keyed by the request's seed and a step counter shared
    by both stages. Stats ``extra``: rounds, spans, span_tokens, planning_calls,
    diffusion_calls.
    """

    model_attention = None

    def __init__(
        self,
        model,
        mask_token_id: int,
        *,
        control: ControlTokens,
        steps_per_span: int | None = None,
        steps_ratio: float = 1.0,
        length_scale: float = 10,
        max_length_digits: int = 2,
        confidence: str = "neg_entropy",
        eps: float = 1e-3,
        shift_logits: bool = True,
        on_bad_plan: str = "raise",
        tokenizer=None,
        num_blocks: int | None = None,
        block_size: int = 16,
    ):
        super().__init__(model, tokenizer=tokenizer, num_blocks=num_blocks, block_size=block_size)
        if not getattr(model, "supports_custom_mask", False):
            raise ValueError(
                f"model ({model.attention} attention) does not support custom masks; planned diffusion needs "
                "per-call masks (causal planning rows, span-isolating diffusion rows)"
            )
        vocab = model.vocab_size
        if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or not 0 <= mask_token_id < vocab:
            raise ValueError(f"mask_token_id must be a token id in [0, {vocab}), got {mask_token_id!r}")
        if not isinstance(control, ControlTokens):
            raise TypeError(f"control must be a ControlTokens, got {type(control).__name__}")
        control.check(vocab, mask_token_id)
        if steps_per_span is not None and (isinstance(steps_per_span, bool) or not isinstance(steps_per_span, int)
                                           or steps_per_span < 1):
            raise ValueError(f"steps_per_span must be None or an int >= 1, got {steps_per_span!r}")
        for name, value in (("steps_ratio", steps_ratio), ("length_scale", length_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if isinstance(max_length_digits, bool) or not isinstance(max_length_digits, int) or max_length_digits < 1:
            raise ValueError(f"max_length_digits must be an int >= 1, got {max_length_digits!r}")
        if confidence not in CONFIDENCES:
            raise ValueError(f"confidence must be one of {CONFIDENCES}, got {confidence!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps!r}")
        if on_bad_plan not in ON_BAD_PLAN:
            raise ValueError(f"on_bad_plan must be one of {ON_BAD_PLAN}, got {on_bad_plan!r}")
        self.mask_token_id = mask_token_id
        self.control = control
        self.steps_per_span = steps_per_span
        self.steps_ratio = float(steps_ratio)
        self.length_scale = length_scale
        self.max_length_digits = max_length_digits
        self.confidence = confidence
        self.eps = float(eps)
        self.shift_logits = bool(shift_logits)
        self.on_bad_plan = on_bad_plan

    # ------------------------------------------------------------------ argument checks

    def _requests(self, prompts, max_new_tokens, sampling, stop_token_ids, seed) -> list[Request]:
        requests = super()._requests(prompts, max_new_tokens, sampling, stop_token_ids, seed)
        reserved = {v: f"control.{k}" for k, v in self.control.tags().items()}
        reserved[self.mask_token_id] = "mask_token_id"
        for stop in requests[0].stop_ids:
            if stop in reserved:
                raise ValueError(f"stop_token_ids contains {stop}, which is {reserved[stop]}")
        for r in requests:
            check_denoise_sampling(r)
        return requests

    # ------------------------------------------------------------------ the loop

    def _run(self, requests: list[Request], caches: dict) -> None:
        model = self.model
        self._cache_ref = cache = self._cache(model, requests, caches)
        self._sampler = TokenSampler(requests, model.vocab_size, model.device)
        self._suppress = sorted({self.mask_token_id, *self.control.tags().values(), *requests[0].stop_ids})
        states = [_State(r) for r in requests]
        for r in requests:
            cache.allocator.allocate(r.seq_id)
        logits = self._call(states, [r.prompt for r in requests], "planning_calls", mask="causal")
        self._planned(states, logits)
        active = [s for s in states if not s.request.finished]
        while active:
            planning = [s for s in active if s.round is None]
            diffusing = [s for s in active if s.round is not None]
            if planning:
                logits = self._call(planning, [[s.pending] for s in planning], "planning_calls", mask="causal")
                self._planned(planning, logits)
            if diffusing:
                self._diffusion_step(diffusing)
            active = [s for s in active if not s.request.finished]
        for s in states:
            s.request.stats.extra.update(s.stats)

    def _call(self, states, rows, counter: str, **kwargs) -> torch.Tensor:
        requests = [s.request for s in states]
        for s in states:
            s.stats[counter] += 1
        return self._model_step(self.model, self._cache_ref, requests, rows, **kwargs)

    # ------------------------------------------------------------------ planning

    def _planned(self, states, logits: torch.Tensor) -> None:
        """Sample one token per state from ``logits [B, V]`` and act on it."""
        out = self._sampler.sample(logits, self._sampler.rows([s.request for s in states]),
                                   [s.counter for s in states])
        for state, token, ok in zip(states, out.tokens.tolist(), out.valid.tolist()):
            state.counter += 1
            state.pending = None
            if not ok:
                self._done(state, "invalid_logits")
            else:
                self._on_token(state, token)

    def _on_token(self, state: _State, token: int) -> None:
        r = state.request
        terminal = token == self.control.sync or token in r.stop_ids
        if terminal and not state.ar_only:
            segment = r.output[state.plan_from:]
            try:
                lengths = parse_plan(segment, self.control, self.mask_token_id, length_scale=self.length_scale,
                                     max_digits=self.max_length_digits)
            except PlanError as error:
                if self.on_bad_plan == "raise":
                    raise PlanError(f"prompts[{r.index}]: malformed plan: {error}") from None
                state.ar_only = True
                lengths = []
            if lengths:
                self._start_round(state, lengths, token)
                return
        r.emit([token])
        if token == self.control.sync:
            state.plan_from = len(r.output)
        if r.finished:
            self._done(state)
        else:
            state.pending = token

    def _done(self, state: _State, reason: str | None = None) -> None:
        self._finish(state.request, reason)
        self._cache_ref.allocator.free(state.request.seq_id)
        self.model.release([state.request.seq_id])

    # ------------------------------------------------------------------ diffusion

    def _start_round(self, state: _State, lengths: list[int], terminal: int) -> None:
        r = state.request
        scaffold = build_scaffold(lengths, self.control, self.mask_token_id, r.remaining,
                                  sync=terminal == self.control.sync)
        if not any(n for n in scaffold.span_lengths):  # only tags fit in the budget
            r.emit(scaffold.tokens + [terminal])
            self._done(state)
            return
        steps = self.steps_per_span or max(1, int(max(scaffold.span_lengths) * self.steps_ratio))
        mask = round_attention_mask(scaffold.blocks, len(scaffold.tokens), self.model.device)
        state.round = _Round(scaffold, terminal, steps, mask)
        state.stats["rounds"] += 1
        state.stats["spans"] += len(scaffold.blocks)
        state.stats["span_tokens"] += sum(scaffold.span_lengths)
        self._cache_ref.append([r.seq_id], [len(scaffold.tokens)])  # slots only: every step rewrites them

    def _diffusion_step(self, states) -> None:
        rows = [s.round.scaffold.tokens for s in states]
        logits = self._call(states, rows, "diffusion_calls", rewrite=True, mask="custom",
                            custom_mask=[s.round.mask for s in states], logits="all")
        starts, total = [], 0
        for tokens in rows:
            starts.append(total)
            total += len(tokens)
        denoise = [(i, s) for i, s in enumerate(states) if not s.round.refresh]
        refresh = [(i, s) for i, s in enumerate(states) if s.round.refresh]
        if denoise:
            self._denoise([s for _, s in denoise], logits, [starts[i] for i, _ in denoise])
        if refresh:
            last = torch.tensor([starts[i] + len(rows[i]) - 1 for i, _ in refresh], device=logits.device)
            for _, s in refresh:
                s.round = None
            self._planned([s for _, s in refresh], logits.index_select(0, last))

    def _denoise(self, states, logits: torch.Tensor, starts: list[int]) -> None:
        device = logits.device
        width = max(len(s.round.scaffold.tokens) for s in states)
        num_spans = max(len(s.round.scaffold.blocks) for s in states)
        filler = 0 if self.mask_token_id != 0 else 1
        tokens, span_ids, source, masked, ratio = [], [], [], [], []
        for s, start in zip(states, starts):
            sc, rnd = s.round.scaffold, s.round
            n = len(sc.tokens)
            tokens.append(sc.tokens + [filler] * (width - n))
            span_ids.append(sc.span_ids + [-1] * (width - n))
            shift = 1 if self.shift_logits else 0
            source.extend(start + max(j - shift, 0) for j in range(n))
            source.extend([start] * (width - n))
            counts = [0] * num_spans
            for x, sid in zip(sc.tokens, sc.span_ids):
                if sid >= 0 and x == self.mask_token_id:
                    counts[sid] += 1
            masked.append(counts)
            ratio.append(self._unmask_ratio(rnd.step, rnd.steps))
        # per span: max(1, int(m * (1 - s/t))) in float32 like the published code; all on the last step
        m = torch.tensor(masked, dtype=torch.int64)
        part = (m.to(torch.float32) * torch.stack(ratio).unsqueeze(1)).to(torch.int64).clamp(min=1)
        k = torch.where(m > 0, torch.minimum(part, m), 0)
        canvas = torch.tensor(tokens, dtype=torch.int64, device=device)
        window = logits.index_select(0, torch.tensor(source, device=device)).view(len(states), width, -1)
        sampling = DenoiseSampling([s.request for s in states], device)
        ops.denoise_step(
            window, canvas, mask_id=self.mask_token_id, suppress_ids=self._suppress, confidence=self.confidence,
            tempered_confidence=True, select="topk", k=k.to(device), span_ids=torch.tensor(span_ids, device=device),
            offset=torch.tensor([s.counter for s in states], device=device), **sampling.kwargs(),
        )
        for s, row in zip(states, canvas.tolist()):
            rnd = s.round
            rnd.scaffold.tokens = row[: len(rnd.scaffold.tokens)]
            rnd.step += 1
            s.counter += 1
            if self.mask_token_id not in [x for x, sid in zip(rnd.scaffold.tokens, rnd.scaffold.span_ids) if sid >= 0]:
                self._round_filled(s)
            elif rnd.step >= rnd.steps:  # the last step commits every valid proposal
                self._done(s, "invalid_logits")

    def _unmask_ratio(self, step: int, steps: int) -> torch.Tensor:
        if step >= steps - 1:
            return torch.tensor(1.0)
        t = torch.linspace(1, self.eps, steps + 1)
        return 1 - t[step + 1] / t[step]

    def _round_filled(self, state: _State) -> None:
        r, rnd = state.request, state.round
        ends_with_sync = rnd.scaffold.tokens[-1] == self.control.sync and rnd.terminal == self.control.sync
        r.emit(rnd.scaffold.tokens if ends_with_sync else rnd.scaffold.tokens + [rnd.terminal])
        if r.finished or not ends_with_sync:  # a stop terminal or the budget ended it
            self._done(state)
            return
        state.plan_from = len(r.output)
        rnd.refresh = True  # one more call: final span K/V, then plan from the sync row
