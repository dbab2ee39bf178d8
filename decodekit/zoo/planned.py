"""The planned-diffusion text format of the zoo, and the training mask and targets that match
:class:`~decodekit.decoders.PlannedDiffusionDecoder` exactly.

A document is a few consecutive verses of one chapter: the first verse as plain text (what a
user's prompt looks like), then rounds. A round plans its verses, then writes them as spans::

    Ge1:1 In the beginning God created the heaven and the earth.\\n        <- plain text
    <promise>15</promise><promise>6</promise>                              <- plan (AR)
    <async>Ge1:2 And the earth ... waters.\\n<pad>x8</async>                <- span: 150 slots
    <async>Ge1:3 And God said, ... light.\\n<pad>x3</async>                 <- span: 60 slots
    <sync>                                                                 <- spans visible
    <promise>9</promise> <async>...</async> <eos>                          <- last round of the chapter

Each promise holds the span length bucket ``ceil(bytes / 10)`` in decimal (the decoder's
``length_scale=10``, ``max_length_digits=2``; KJV's longest verse needs 54); a span is the verse
line padded with ``<pad>`` to ``10 x bucket`` slots. The planner ends a plan with ``<sync>`` (more
verses follow) or ``<eos>`` (the chapter ends); the decoder holds that terminal back, appends the
scaffold (``<async>`` masks ``</async>`` per span), and after the spans writes the ``<sync>`` (or
the ``<eos>``), so the training sequence is exactly the decoder's output and the row before a
round's first ``<async>`` is trained to predict the terminal.

Attention (:func:`attention_mask`): causal, except that the rows of a span (tags included) see
everything before their round plus their own span only, which is what the decoder's
``round_attention_mask`` over the cached prompt + plan gives; a ``<sync>`` row sees every span.
Targets (:func:`targets`): next-token (shifted, Dream-style: the decoder's ``shift_logits=True``)
on plain text, plan tokens and terminals; masked-diffusion on the span slots of the LAST round
only (its rows then see clean earlier rounds, as at inference where finished spans are cached
with their final tokens; nothing after the noisy round is trained).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

LENGTH_SCALE = 10
MAX_LENGTH_DIGITS = 2
# token kinds of an annotated document
TEXT, TAG, SPAN, SYNC, END = 0, 1, 2, 3, 4


@dataclass
class PlannedDoc:
    """An annotated document.

    Attributes:
        tokens: the token ids.
        kinds: per token: TEXT (plain text and plan), TAG (``<async>``/``</async>``), SPAN (a
            span slot: verse byte or ``<pad>``), SYNC (a round's closing ``<sync>``), END (a
            round's closing ``<eos>``).
        rounds: per round ``(round_start, blocks, terminal)``: the index of its first
            ``<async>``, the ``(start, end)`` of each span tags included, and the terminal id the
            plan ends with (sync or eos).
        verse_bytes: bytes of verse text in the spans (for bits per byte).
    """

    tokens: list[int] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    rounds: list[tuple[int, list[tuple[int, int]], int]] = field(default_factory=list)
    verse_bytes: int = 0


def length_bucket(num_bytes: int) -> int:
    """The promise number of a verse of ``num_bytes`` bytes: ``ceil(num_bytes / 10)``."""
    bucket = math.ceil(num_bytes / LENGTH_SCALE)
    if not 1 <= bucket < 10 ** MAX_LENGTH_DIGITS:
        raise ValueError(f"a span of {num_bytes} bytes needs length bucket {bucket}, outside [1, 99]")
    return bucket


def annotate(prefix: str, rounds: Sequence[Sequence[str]], tokenizer, *, final_eos: bool) -> PlannedDoc:
    """The document ``prefix`` (plain text, may be empty) then one round per list of verse lines;
    every round but the last ends with ``<sync>``, the last with ``<eos>`` if ``final_eos`` else
    ``<sync>``."""
    doc = PlannedDoc()

    def add(ids, kind):
        doc.tokens.extend(ids)
        doc.kinds.extend([kind] * len(ids))

    add(tokenizer.encode(prefix), TEXT)
    for r, lines in enumerate(rounds):
        if not lines:
            raise ValueError(f"round {r} has no verses")
        encoded = [tokenizer.encode(line) for line in lines]
        buckets = [length_bucket(len(ids)) for ids in encoded]
        for bucket in buckets:
            add([tokenizer.span_start_id, *tokenizer.encode(str(bucket)), tokenizer.span_end_id], TEXT)
        last = r + 1 == len(rounds)
        terminal = tokenizer.eos_token_id if last and final_eos else tokenizer.sync_id
        round_start, blocks = len(doc.tokens), []
        for ids, bucket in zip(encoded, buckets):
            start = len(doc.tokens)
            add([tokenizer.async_start_id], TAG)
            add(ids + [tokenizer.pad_token_id] * (bucket * LENGTH_SCALE - len(ids)), SPAN)
            add([tokenizer.async_end_id], TAG)
            blocks.append((start, len(doc.tokens)))
            doc.verse_bytes += len(ids)
        add([terminal], END if terminal == tokenizer.eos_token_id else SYNC)
        doc.rounds.append((round_start, blocks, terminal))
    return doc


def attention_mask(doc: PlannedDoc, length: int | None = None) -> torch.Tensor:
    """``[L, L]`` bool (True = may attend) for ``doc`` padded to ``length`` rows (padding rows
    are causal and never seen by the document's rows)."""
    length = length or len(doc.tokens)
    mask = torch.tril(torch.ones(length, length, dtype=torch.bool))
    for round_start, blocks, _ in doc.rounds:
        for start, end in blocks:
            mask[start:end, round_start:] = False
            mask[start:end, start:end] = True
    return mask


def targets(doc: PlannedDoc, mask_id: int, t: float, generator: torch.Generator,
            length: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(inputs [L], labels [L], weights [L])`` of one training example; row i predicts
    ``labels[i]`` with loss weight ``weights[i]`` (0 = no loss).

    Next-token rows (weight 1): TEXT or SYNC rows followed by TEXT, and each round's last plan
    row, whose label is the round's terminal. Diffusion rows (weight ``1 / t``): in the last
    round, each span slot is masked with probability ``t`` (drawn from ``generator``); the row
    before a masked slot predicts it (shifted logits)."""
    n = len(doc.tokens)
    length = length or n
    inputs = torch.full((length,), doc.tokens[-1], dtype=torch.int64)
    inputs[:n] = torch.tensor(doc.tokens)
    labels = torch.zeros(length, dtype=torch.int64)
    weights = torch.zeros(length)
    kinds = doc.kinds
    for i in range(n - 1):
        if kinds[i + 1] == TEXT and kinds[i] in (TEXT, SYNC):
            labels[i], weights[i] = doc.tokens[i + 1], 1.0
    for round_start, _, terminal in doc.rounds:
        labels[round_start - 1], weights[round_start - 1] = terminal, 1.0
    last_start, blocks, _ = doc.rounds[-1]
    slots = torch.tensor([i for start, end in blocks for i in range(start + 1, end - 1)])
    masked = slots[torch.rand(len(slots), generator=generator) < t]
    inputs[masked] = mask_id
    labels[masked - 1] = torch.tensor(doc.tokens)[masked]
    weights[masked - 1] = 1.0 / t
    return inputs, labels, weights
