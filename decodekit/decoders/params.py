"""Per-request sampling parameters, shared by every decoder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one request turns logits into tokens (the knobs of vLLM / Hugging Face).

    Attributes:
        temperature: >= 0; 0 = greedy (exact argmax, lowest index on ties).
        top_k: >= 0; 0 = off.
        top_p: in (0, 1]; 1 = off.
        min_p: in [0, 1]; 0 = off.
        repetition_penalty: > 0; 1 = off (CTRL / Hugging Face: over prompt and output tokens).
        frequency_penalty, presence_penalty: finite; 0 = off (OpenAI / vLLM: over the same
            token counts).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    def __post_init__(self):
        def number(name, value, ok, allowed):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
                raise ValueError(f"SamplingParams.{name} must be {allowed}, got {value!r}")

        number("temperature", self.temperature, lambda x: x >= 0, "a finite float >= 0")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be an int >= 0, got {self.top_k!r}")
        number("top_p", self.top_p, lambda x: 0 < x <= 1, "in (0, 1]")
        number("min_p", self.min_p, lambda x: 0 <= x <= 1, "in [0, 1]")
        number("repetition_penalty", self.repetition_penalty, lambda x: x > 0, "a finite float > 0")
        number("frequency_penalty", self.frequency_penalty, lambda x: True, "a finite float")
        number("presence_penalty", self.presence_penalty, lambda x: True, "a finite float")

    @classmethod
    def greedy(cls) -> "SamplingParams":
        return cls(temperature=0.0)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


@dataclass
class BatchSampling:
    """The sampling parameters of a batch of requests as ``[N]`` tensors (built once per
    ``generate``; rows of the active requests are gathered with :meth:`rows`)."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor
    repetition: torch.Tensor
    frequency: torch.Tensor
    presence: torch.Tensor
    any_penalty: bool

    @classmethod
    def of(cls, params: Sequence[SamplingParams], device) -> "BatchSampling":
        def column(name, dtype):
            return torch.tensor([getattr(p, name) for p in params], dtype=dtype, device=device)

        return cls(
            temperature=column("temperature", torch.float32),
            top_k=column("top_k", torch.int32),
            top_p=column("top_p", torch.float32),
            min_p=column("min_p", torch.float32),
            repetition=column("repetition_penalty", torch.float32),
            frequency=column("frequency_penalty", torch.float32),
            presence=column("presence_penalty", torch.float32),
            any_penalty=any(p.has_penalties for p in params),
        )

    def rows(self, index: torch.Tensor) -> "BatchSampling":
        pick = lambda t: t.index_select(0, index)  # noqa: E731
        return BatchSampling(pick(self.temperature), pick(self.top_k), pick(self.top_p), pick(self.min_p),
                             pick(self.repetition), pick(self.frequency), pick(self.presence), self.any_penalty)
