"""Noise schedules of score-based discrete diffusion (SEDD's ``noise_lib.py``): the total noise
``sigma(t)`` of the forward process at time ``t in [0, 1]`` and its rate ``d sigma / d t``.

Both take a Python float or a tensor ``t`` and compute in float64 (the steps near ``t = eps``
subtract close numbers; the decoder converts to float32 only when it calls the op).
"""

from __future__ import annotations

import abc
import math

import torch


def _as_float64(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class NoiseSchedule(abc.ABC):
    """``sigma(t)`` (total noise, increasing, ``sigma(0)`` small) and ``rate(t) = sigma'(t)``."""

    @abc.abstractmethod
    def sigma(self, t) -> torch.Tensor:
        """Total noise at ``t`` (float64 tensor of ``t``'s shape)."""

    @abc.abstractmethod
    def rate(self, t) -> torch.Tensor:
        """``d sigma / d t`` at ``t`` (float64)."""


class LogLinear(NoiseSchedule):
    """``sigma(t) = -log1p(-(1 - eps) t)``: on the absorbing graph a token is masked with
    probability ``1 - e^-sigma = (1 - eps) t``, linear in ``t`` (SEDD / MDLM, eps 1e-3 keeps
    ``sigma(1)`` finite)."""

    def __init__(self, eps: float = 1e-3):
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ValueError(f"eps must be a float in (0, 1), got {eps!r}")
        self.eps = float(eps)

    def sigma(self, t) -> torch.Tensor:
        return -torch.log1p(-(1 - self.eps) * _as_float64(t))

    def rate(self, t) -> torch.Tensor:
        return (1 - self.eps) / (1 - (1 - self.eps) * _as_float64(t))

    def __repr__(self) -> str:
        return f"LogLinear(eps={self.eps})"


class Geometric(NoiseSchedule):
    """``sigma(t) = sigma_min^(1 - t) sigma_max^t`` (SEDD's uniform-graph schedule, defaults
    1e-4 and 20: at ``t = 1`` a token is uniform up to ``e^-20``)."""

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0):
        for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite float > 0, got {value!r}")
        if not sigma_min < sigma_max:
            raise ValueError(f"sigma_min must be < sigma_max, got {sigma_min!r} and {sigma_max!r}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def sigma(self, t) -> torch.Tensor:
        t = _as_float64(t)
        return self.sigma_min ** (1 - t) * self.sigma_max ** t

    def rate(self, t) -> torch.Tensor:
        return self.sigma(t) * (math.log(self.sigma_max) - math.log(self.sigma_min))

    def __repr__(self) -> str:
        return f"Geometric(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"
