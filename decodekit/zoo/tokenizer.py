"""Byte-level tokenizer of the model zoo: ids 0..255 are the UTF-8 bytes, then eight special
tokens (end of text, mask, padding and planned diffusion's five control tags).

Digits need no tokens of their own: a planned-diffusion promise writes its span length with the
byte ids of ``'0'..'9'`` (48..57), which :class:`~decodekit.decoders.ControlTokens` takes as
``digits``.
"""

from __future__ import annotations

from typing import Iterable

from decodekit.decoders.plan import ControlTokens

NUM_BYTES = 256

# (name, rendering) in id order, starting at 256; the names are the ByteTokenizer attributes.
SPECIAL_TOKENS = (
    ("eos", "<eos>"),  # end of a text (stop token)
    ("mask", "<mask>"),  # masked-diffusion mask
    ("pad", "<pad>"),  # fills a planned span after its verse; batch padding
    ("span_start", "<promise>"),  # planned diffusion: opens a promise in the plan
    ("span_end", "</promise>"),  # closes it
    ("async_start", "<async>"),  # brackets a span in the diffusion scaffold
    ("async_end", "</async>"),
    ("sync", "<sync>"),  # ends a plan segment; after the spans it makes them visible
)
DIGIT_IDS = tuple(range(ord("0"), ord("9") + 1))


class ByteTokenizer:
    """UTF-8 bytes plus :data:`SPECIAL_TOKENS` (``vocab_size`` 264).

    Attributes:
        eos_token_id, mask_token_id, pad_token_id: 256, 257, 258.
        span_start_id, span_end_id, async_start_id, async_end_id, sync_id: 259..263.
        vocab_size: 264.
    """

    def __init__(self):
        self.special_ids = {name: NUM_BYTES + i for i, (name, _) in enumerate(SPECIAL_TOKENS)}
        self._render = {NUM_BYTES + i: text for i, (_, text) in enumerate(SPECIAL_TOKENS)}
        self.vocab_size = NUM_BYTES + len(SPECIAL_TOKENS)
        self.eos_token_id = self.special_ids["eos"]
        self.mask_token_id = self.special_ids["mask"]
        self.pad_token_id = self.special_ids["pad"]
        self.span_start_id = self.special_ids["span_start"]
        self.span_end_id = self.special_ids["span_end"]
        self.async_start_id = self.special_ids["async_start"]
        self.async_end_id = self.special_ids["async_end"]
        self.sync_id = self.special_ids["sync"]

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of ``text`` as ids (no special tokens are added or parsed)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``: bytes decoded as UTF-8 (invalid sequences become U+FFFD, which a
        sampled byte stream can produce), special tokens as their tags (``<eos>``, ``<mask>``,
        ``<promise>`` ...) or dropped with ``skip_special_tokens``."""
        pieces, run = [], bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < NUM_BYTES:
                run.append(i)
                continue
            if i not in self._render:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            pieces.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
            if not skip_special_tokens:
                pieces.append(self._render[i])
        pieces.append(run.decode("utf-8", errors="replace"))
        return "".join(pieces)

    def control_tokens(self) -> ControlTokens:
        """Planned diffusion's tags for :class:`~decodekit.decoders.PlannedDiffusionDecoder`
        (digits = the byte ids of ``'0'..'9'``)."""
        return ControlTokens(span_start=self.span_start_id, span_end=self.span_end_id,
                             async_start=self.async_start_id, async_end=self.async_end_id,
                             sync=self.sync_id, digits=DIGIT_IDS)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"
