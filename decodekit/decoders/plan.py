"""Planned diffusion's plan format: control tokens, plan parsing, span scaffolds and the
span-isolating attention mask (small host-side bookkeeping of :mod:`planned_diffusion`).

A plan is what the autoregressive stage writes between two syncs. Grammar (token level)::

    segment  := (text | promise)*            then the terminal: sync, or a stop token
    promise  := span_start [topic] body span_end
    body     := any tokens except control tokens and the mask id; its FIRST run of digit tokens
                gives the span length: the first ``max_digits`` digits of the run as a decimal
                number, times ``length_scale`` (published: 1-2 digits, x 10)
    text     := any token except async_start, async_end, span_end, topic and the mask id

Each promise becomes one span, in plan order, scaffolded as ``async_start, mask x n,
async_end``. Malformed segments raise :class:`PlanError`: a promise without ``span_end``
(missing span end), a nested ``span_start``, a promise without digits, a length of 0, a control
tag where the grammar does not allow it (unknown tags), or the mask id written by the planner.
A segment without promises is valid (nothing to fill).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


class PlanError(ValueError):
    """A plan the diffusion stage cannot follow."""


@dataclass(frozen=True)
class ControlTokens:
    """Token ids of planned diffusion's control tags (the published Dream ids in brackets).

    Attributes:
        span_start: opens a promise (``<promise>`` 151669).
        span_end: closes a promise (``</topic>`` 151670).
        async_start, async_end: bracket each span in the scaffold (``<async>`` 151667,
            ``</async>`` 151668).
        sync: ends a plan segment and makes the finished spans visible (``<sync>`` 151671).
        digits: the ten ids of the digits 0..9 (Dream: 15..24).
        topic: optional tag allowed right after ``span_start`` (the published tag text is
            ``<promise>-<topic>``); None = no such tag.
    """

    span_start: int
    span_end: int
    async_start: int
    async_end: int
    sync: int
    digits: tuple = tuple(range(10))
    topic: int | None = None

    def tags(self) -> dict[str, int]:
        named = {"span_start": self.span_start, "span_end": self.span_end, "async_start": self.async_start,
                 "async_end": self.async_end, "sync": self.sync}
        if self.topic is not None:
            named["topic"] = self.topic
        return named

    def check(self, vocab: int, mask_id: int) -> None:
        """ValueError unless every id is in ``[0, vocab)`` and all tags, digits and the mask id
        are distinct."""
        digits = tuple(self.digits)
        if len(digits) != 10:
            raise ValueError(f"control.digits must list the 10 ids of the digits 0..9, got {len(digits)} ids")
        named = dict(self.tags())
        named.update({f"digits[{i}]": d for i, d in enumerate(digits)})
        seen = {mask_id: "mask_token_id"}
        for name, value in named.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab:
                raise ValueError(f"control.{name} must be a token id in [0, {vocab}), got {value!r}")
            if value in seen:
                raise ValueError(f"control.{name} = {value} collides with {seen[value]}; control ids, digits and "
                                 "the mask id must be distinct")
            seen[value] = f"control.{name}"


def parse_plan(tokens: Sequence[int], control: ControlTokens, mask_id: int, *, length_scale: float = 10,
               max_digits: int = 2) -> list[int]:
    """Span lengths of one plan segment (the generated tokens since the last sync, terminal
    excluded), in plan order; raises :class:`PlanError` (see the module docstring)."""
    digit_value = {d: i for i, d in enumerate(control.digits)}
    outside_forbidden = {control.async_start: "async_start", control.async_end: "async_end",
                         control.span_end: "span_end", mask_id: "the mask id"}
    if control.topic is not None:
        outside_forbidden[control.topic] = "topic"
    inside_forbidden = {control.span_start: "a nested span_start", control.async_start: "async_start",
                        control.async_end: "async_end", control.sync: "sync", mask_id: "the mask id"}
    lengths = []
    body = None  # tokens of the open promise
    for i, token in enumerate(tokens):
        if body is None:
            if token == control.span_start:
                body = []
            elif token in outside_forbidden:
                raise PlanError(f"plan token {i}: {outside_forbidden[token]} ({token}) outside a promise")
            continue
        if token == control.span_end:
            lengths.append(_promise_length(body, digit_value, control, length_scale, max_digits, i))
            body = None
        elif token in inside_forbidden:
            raise PlanError(f"plan token {i}: {inside_forbidden[token]} ({token}) inside a promise")
        elif token == control.topic and body:
            raise PlanError(f"plan token {i}: topic ({token}) must directly follow span_start")
        else:
            body.append(token)
    if body is not None:
        raise PlanError(f"the plan ends inside a promise (missing span_end {control.span_end})")
    return lengths


def _promise_length(body, digit_value, control, length_scale, max_digits, end) -> int:
    number, digits = 0, 0
    for token in body:
        if token in digit_value:
            number, digits = number * 10 + digit_value[token], digits + 1
            if digits == max_digits:
                break
        elif digits:
            break
    if not digits:
        raise PlanError(f"the promise ending at plan token {end} gives no length (no digit token)")
    length = int(number * length_scale)
    if length < 1:
        raise PlanError(f"the promise ending at plan token {end} asks for a span of length {length}")
    return length


@dataclass
class Scaffold:
    """One diffusion round's rows: the spans (tags included) and optionally the sync after them.

    Attributes:
        tokens: the rows' token ids (masks to fill).
        span_ids: per row, the span index of a mask row, else -1 (tags, sync).
        blocks: ``(start, end)`` rows of each span, tags included.
        span_lengths: masks per span (after truncation to the budget).
    """

    tokens: list[int]
    span_ids: list[int]
    blocks: list[tuple[int, int]]
    span_lengths: list[int]


def build_scaffold(lengths: Sequence[int], control: ControlTokens, mask_id: int, budget: int,
                   sync: bool) -> Scaffold:
    """The rows ``async_start, mask x n, async_end`` per span (then ``sync`` if asked), cut
    after ``budget`` rows: a span cut by the budget keeps the masks that fit."""
    tokens, span_ids, blocks = [], [], []
    for s, n in enumerate(lengths):
        start = len(tokens)
        tokens += [control.async_start] + [mask_id] * n + [control.async_end]
        span_ids += [-1] + [s] * n + [-1]
        blocks.append((start, len(tokens)))
    if sync:
        tokens.append(control.sync)
        span_ids.append(-1)
    tokens, span_ids = tokens[:budget], span_ids[:budget]
    blocks = [(a, min(b, budget)) for a, b in blocks if a < budget]
    kept = [sum(1 for x in span_ids if x == s) for s in range(len(blocks))]
    return Scaffold(tokens, span_ids, blocks, kept)


def round_attention_mask(blocks: Sequence[tuple[int, int]], rows: int, device=None) -> torch.Tensor:
    """``[rows, rows]`` bool ``custom_mask`` of one round (the cached prompt + plan is visible to
    every row anyway): a span's rows see their own span only (bidirectional inside it, tags
    included); a row outside every span (the sync) sees every row up to itself, which is how a
    sync makes the finished spans visible."""
    mask = torch.tril(torch.ones(rows, rows, dtype=torch.bool))
    for start, end in blocks:
        mask[start:end, :] = False
        mask[start:end, start:end] = True
    return mask.to(device) if device is not None else mask
