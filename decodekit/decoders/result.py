"""What every decoder's ``generate`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestStats:
    """Per-request statistics.

    Attributes:
        prompt_tokens, generated_tokens: lengths.
        forward_calls: calls of the (target) model that computed rows of this request.
        draft_forward_calls: calls of the draft model (speculative decoding), else 0.
        proposed_tokens, accepted_tokens: draft tokens offered to / accepted by verification
            (speculative decoding), else 0.
        wall_time: seconds from the start of ``generate`` until this request finished.
        finish_reason: ``"stop"`` (a stop token), ``"length"`` (max_new_tokens) or
            ``"invalid_logits"`` (the model produced NaN/inf logits for it).
        extra: decoder-specific numbers (e.g. denoising steps).
        choice: set by :class:`~decodekit.decoders.auto.AutoDecoder`: the method it picked for
            this request and the profile numbers behind the pick; None for every other decoder.
    """

    prompt_tokens: int
    generated_tokens: int = 0
    forward_calls: int = 0
    draft_forward_calls: int = 0
    proposed_tokens: int = 0
    accepted_tokens: int = 0
    wall_time: float = 0.0
    finish_reason: str = "length"
    extra: dict = field(default_factory=dict)
    choice: dict | None = None

    @property
    def tokens_per_forward(self) -> float:
        return self.generated_tokens / self.forward_calls if self.forward_calls else 0.0

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / proposed draft tokens; None for decoders without drafts."""
        return self.accepted_tokens / self.proposed_tokens if self.proposed_tokens else None

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.wall_time if self.wall_time > 0 else 0.0


@dataclass
class GenerationResult:
    """Generated tokens (prompt excluded, stop token included) and statistics, in prompt order.

    Attributes:
        sequences: one token-id list per prompt.
        stats: one :class:`RequestStats` per prompt.
        wall_time: seconds of the whole ``generate`` call.
        forward_calls: model calls of the whole batch (target model).
        texts: decoded sequences when the decoder has a tokenizer, else None.
    """

    sequences: list[list[int]]
    stats: list[RequestStats]
    wall_time: float
    forward_calls: int
    texts: list[str] | None = None

    @property
    def generated_tokens(self) -> int:
        return sum(s.generated_tokens for s in self.stats)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.wall_time if self.wall_time > 0 else 0.0

    @property
    def tokens_per_forward(self) -> float:
        """Mean over requests of tokens emitted per model call that computed the request."""
        return sum(s.tokens_per_forward for s in self.stats) / max(len(self.stats), 1)

    @property
    def acceptance_rate(self) -> float | None:
        proposed = sum(s.proposed_tokens for s in self.stats)
        return sum(s.accepted_tokens for s in self.stats) / proposed if proposed else None

    def summary(self) -> dict:
        """The batch's headline numbers as a flat dict (for tables)."""
        return {
            "requests": len(self.sequences),
            "generated_tokens": self.generated_tokens,
            "wall_time_s": self.wall_time,
            "tokens_per_second": self.tokens_per_second,
            "forward_calls": self.forward_calls,
            "tokens_per_forward": self.tokens_per_forward,
            "acceptance_rate": self.acceptance_rate,
        }
