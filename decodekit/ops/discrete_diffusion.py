"""Score-based discrete diffusion: ``discrete_diffusion_step``, one fused reverse step of SEDD.

Semantics (the spec is ``decodekit/reference/discrete_diffusion.py``): at every canvas position,
from the model's row over the vocabulary (a log concrete score, or logits of the clean token
converted to the concrete score), the weights of the next token under the absorbing or uniform
graph and the Euler, analytic (Tweedie tau-leaping) or final denoising update, then a Gumbel-max
draw with the Philox contract (stream ``DIFFUSION_TOKEN``, ``c0 = pos * V + v``). Fixed positions
(prompts anywhere in the canvas) and, on the absorbing graph, unmasked positions keep their token
and their row is never read.

Backends share one raw-function contract (``decodekit/ops/_reference_kernels.py`` is the readable
instance): ``discrete_diffusion_step(scores [B, L, V] float, tokens [B, L] int64, sigma [B] float32,
dsigma [B] float32, fixed [B, L] bool or an empty tensor, seed [B] int64, offset [B] int64,
graph: int, sampler: int, param: int, mask_id: int, out [B, L] int64)`` writes ``out``. Kernels
keep ``[B, L, V]`` temporaries out: two passes over each row (statistics, then weights and draw).
"""

from __future__ import annotations

import numbers

import torch

from decodekit.ops import _args
from decodekit.ops._backend import kernel, resolve
from decodekit.reference.discrete_diffusion import Graph, Parameterization, Sampler

__all__ = ["GRAPHS", "PARAMETERIZATIONS", "SAMPLERS", "discrete_diffusion_step"]

FAMILY = "discrete_diffusion"
GRAPHS = {"absorbing": Graph.ABSORBING, "uniform": Graph.UNIFORM}
SAMPLERS = {"euler": Sampler.EULER, "analytic": Sampler.ANALYTIC, "final": Sampler.FINAL}
PARAMETERIZATIONS = {"log_score": Parameterization.LOG_SCORE, "clean_logits": Parameterization.CLEAN_LOGITS}
# c0 of a draw is pos * V + v in 32 bits (reference/discrete_diffusion.py)
MAX_COUNTERS = 2**32


@torch.library.custom_op("decodekit::discrete_diffusion_step", mutates_args=())
def _step_op(
    scores: torch.Tensor,
    tokens: torch.Tensor,
    sigma: torch.Tensor,
    dsigma: torch.Tensor,
    fixed: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    graph: int,
    sampler: int,
    param: int,
    mask_id: int,
    backend: str,
) -> torch.Tensor:
    return _step_impl(scores, tokens, sigma, dsigma, fixed, seed, offset, graph, sampler, param, mask_id, backend)


@_step_op.register_fake
def _(scores, tokens, sigma, dsigma, fixed, seed, offset, graph, sampler, param, mask_id, backend):
    return torch.empty_like(tokens)


def _step_impl(scores, tokens, sigma, dsigma, fixed, seed, offset, graph, sampler, param, mask_id, backend):
    out = torch.empty_like(tokens)
    kernel(backend, FAMILY, "discrete_diffusion_step")(
        scores, tokens, sigma, dsigma, fixed, seed, offset, int(graph), int(sampler), int(param), int(mask_id), out
    )
    return out


def _choice(name: str, value, allowed) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _check_scores(scores) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dtype not in _args.FLOAT_DTYPES:
        raise TypeError(f"scores must be float32, float16 or bfloat16, got {scores.dtype}")
    if scores.dim() != 3 or min(scores.shape) == 0:
        raise ValueError(f"scores must have shape [B, L, V] with B, L, V >= 1, got {tuple(scores.shape)}")
    if scores.shape[1] * scores.shape[2] > MAX_COUNTERS:
        raise ValueError(f"scores needs L * V <= 2**32 (32-bit Philox counter pos * V + v), got {tuple(scores.shape)}")
    return scores.contiguous()


def _check_tokens(tokens, batch: int, length: int, vocab: int, device: torch.device) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.dtype != torch.int64:
        raise TypeError(f"tokens must be int64, got {tokens.dtype}")
    if tuple(tokens.shape) != (batch, length):
        raise ValueError(f"tokens must have shape [{batch}, {length}] like scores' [B, L], got {tuple(tokens.shape)}")
    if tokens.device != device:
        raise ValueError(f"tokens is on {tokens.device} but scores are on {device}")
    if device.type == "cpu" and not torch.compiler.is_compiling():
        bad = (tokens < 0) | (tokens >= vocab)
        if bool(bad.any()):
            raise ValueError(f"tokens must be ids in [0, {vocab}), got {int(tokens[bad][0])}")
    return tokens.contiguous()


def _check_fixed(fixed, batch: int, length: int, device: torch.device) -> torch.Tensor:
    if fixed is None:
        return torch.empty(0, dtype=torch.bool, device=device)
    if not isinstance(fixed, torch.Tensor):
        raise TypeError(f"fixed must be a torch.Tensor or None, got {type(fixed).__name__}")
    if fixed.dtype != torch.bool:
        raise TypeError(f"fixed must be a bool tensor, got {fixed.dtype}")
    if tuple(fixed.shape) != (batch, length):
        raise ValueError(f"fixed must have shape [{batch}, {length}], got {tuple(fixed.shape)}")
    if fixed.device != device:
        raise ValueError(f"fixed is on {fixed.device} but scores are on {device}")
    return fixed.contiguous()


def discrete_diffusion_step(
    scores: torch.Tensor,
    tokens: torch.Tensor,
    *,
    sigma,
    dsigma,
    graph: str = "absorbing",
    sampler: str = "euler",
    parameterization: str = "log_score",
    mask_id: int | None = None,
    fixed: torch.Tensor | None = None,
    seed=None,
    offset=0,
    backend: str | None = None,
) -> torch.Tensor:
    """One fused reverse step of a SEDD sampler; returns the next canvas (``tokens`` is not modified).

    Args:
        scores: ``[B, L, V]`` float32, float16 or bfloat16, the model's output at every canvas position:
            log concrete scores (``parameterization="log_score"``, a SEDD score network) or logits
            of the clean token (``"clean_logits"``, an MDLM / LLaDA style network; on the absorbing
            graph the mask column is ignored).
        tokens: ``[B, L]`` int64 ids in ``[0, V)``, the current canvas.
        sigma: scalar > 0 or ``[B]`` float, the total noise ``sigma(t)`` at the current time (used by
            the ``clean_logits`` conversion).
        dsigma: scalar >= 0 or ``[B]`` float: ``euler`` ``rate(t) * dt``; ``analytic``
            ``sigma(t) - sigma(t - dt)``; ``final`` ``sigma(t)``.
        graph: ``"absorbing"`` (needs ``mask_id``) or ``"uniform"``.
        sampler: ``"euler"``, ``"analytic"`` (Tweedie tau-leaping) or ``"final"`` (the last
            denoising step: analytic to time 0, never the mask).
        mask_id: the absorbing state, an id in ``[0, V)``.
        fixed: ``[B, L]`` bool or None; True positions keep their token (prompts, infilling).
        seed: int, ``[B]`` int64, or None (fresh per-row seeds from torch's generator).
        offset: int or ``[B]`` int64 >= 0, the per-request step counter.
        backend: ``"reference" | "cpu" | "triton" | "cuda"``; default per DESIGN.md.

    Returns:
        ``[B, L]`` int64, the next canvas; ``-1`` at a position whose row is invalid (NaN or +inf
        in ``scores``, no positive transition weight).
    """
    scores = _check_scores(scores)
    batch, length, vocab = scores.shape
    device = scores.device
    tokens = _check_tokens(tokens, batch, length, vocab, device)
    _choice("graph", graph, tuple(GRAPHS))
    _choice("sampler", sampler, tuple(SAMPLERS))
    _choice("parameterization", parameterization, tuple(PARAMETERIZATIONS))
    if graph == "absorbing":
        if mask_id is None:
            raise ValueError("graph='absorbing' needs mask_id (the absorbing state)")
        if isinstance(mask_id, bool) or not isinstance(mask_id, numbers.Integral) or not 0 <= mask_id < vocab:
            raise ValueError(f"mask_id must be an int in [0, {vocab}), got {mask_id!r}")
    mask = int(mask_id) if mask_id is not None else -1
    sigma = _args.row_param("sigma", sigma, batch, device, torch.float32, low=0.0, low_open=True)
    dsigma = _args.row_param("dsigma", dsigma, batch, device, torch.float32, low=0.0)
    fixed = _check_fixed(fixed, batch, length, device)
    seed = _args.seed_param(seed, batch, device)
    offset = _args.offset_param(offset, batch, device)
    backend = resolve(backend, device)
    call = _step_op if torch.compiler.is_compiling() else _step_impl
    return call(scores, tokens, sigma, dsigma, fixed, seed, offset, int(GRAPHS[graph]), int(SAMPLERS[sampler]),
                int(PARAMETERIZATIONS[parameterization]), mask, backend)
