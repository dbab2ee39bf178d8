"""Parallel mask-denoising: ``denoise_step``, ``remask_lowest``, ``transfer_schedule``.

Semantics (the spec is ``decodekit/reference/denoise.py``): one fused step of every masked-
diffusion and mask-predict sampler. For each window position, one pass over the vocabulary gives
a proposed token (greedy argmax, or a Gumbel-max draw with temperature / top-k / top-p under the
Philox contract) and a confidence (``prob``, ``margin``, ``neg_entropy`` or ``random``); then a
selection on the device commits some of the masked positions inside the commit window
(``topk`` with per-row or per-span counts, ``threshold``, ``factor``, ``bernoulli``) into the
canvas in place. Committed tokens are never rewritten.

Backends share one raw-function contract (``decodekit/ops/_reference_kernels.py`` is the readable
instance; the contract text is in the module docstring of ``reference/denoise.py``):
``denoise_propose`` writes proposal/confidence ``[B, W]`` and ``denoise_select`` writes the canvas,
the committed mask and the counts. Top-k / top-p floors for sampled proposals are computed here
with torch (a sort over the vocabulary: the slow path, off by default); greedy and plain
temperature proposals read the logits exactly once.

``remask_lowest`` and ``transfer_schedule`` are small ``[B, L]`` / ``[B, steps]`` computations done
with device torch ops on every backend (no loop over rows, no host sync).
"""

from __future__ import annotations

import functools
import numbers
from typing import NamedTuple

import torch

from decodekit.ops import _args
from decodekit.ops._backend import kernel, resolve
from decodekit.reference import denoise as ref
from decodekit.reference.denoise import ConfMode, DenoiseOutput, SelectMode

__all__ = ["DenoiseOutput", "RemaskOutput", "denoise_step", "remask_lowest", "transfer_schedule"]

FAMILY = "denoise"
PROPOSALS = ("greedy", "sample")
CONFIDENCES = {"prob": ConfMode.PROB, "margin": ConfMode.MARGIN, "neg_entropy": ConfMode.NEG_ENTROPY,
               "random": ConfMode.RANDOM}
SELECTS = {"topk": SelectMode.TOPK, "threshold": SelectMode.THRESHOLD, "factor": SelectMode.FACTOR,
           "bernoulli": SelectMode.BERNOULLI}
# c0 of a proposal draw is pos * V + v in 32 bits (reference/denoise.py)
MAX_COUNTERS = 2**32


class RemaskOutput(NamedTuple):
    tokens: torch.Tensor  # [B, L] int64, the canvas (updated in place)
    remasked: torch.Tensor  # [B, L] bool


# ----------------------------------------------------------------------------- custom op


@torch.library.custom_op("decodekit::denoise_step", mutates_args=("tokens",))
def _denoise_op(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: torch.Tensor,
    keep_floor: torch.Tensor,
    suppress_ids: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    window_start: torch.Tensor,
    block_start: torch.Tensor,
    block_end: torch.Tensor,
    k: torch.Tensor,
    tau: torch.Tensor,
    factor: torch.Tensor,
    p_transfer: torch.Tensor,
    span_ids: torch.Tensor,
    selection_temperature: torch.Tensor,
    mask_id: int,
    conf_mode: int,
    tempered: bool,
    select_mode: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _denoise_impl(
        logits, tokens, temperature, keep_floor, suppress_ids, seed, offset, window_start, block_start, block_end,
        k, tau, factor, p_transfer, span_ids, selection_temperature, mask_id, conf_mode, tempered, select_mode,
        backend,
    )


@_denoise_op.register_fake
def _(logits, tokens, temperature, keep_floor, suppress_ids, seed, offset, window_start, block_start, block_end,
      k, tau, factor, p_transfer, span_ids, selection_temperature, mask_id, conf_mode, tempered, select_mode,
      backend):
    batch, width, _ = logits.shape
    return (
        torch.empty_like(tokens, dtype=torch.bool),
        tokens.new_empty(batch, dtype=torch.int32),
        tokens.new_empty(batch, width, dtype=torch.int64),
        logits.new_empty(batch, width, dtype=torch.float32),
    )


def _denoise_impl(
    logits, tokens, temperature, keep_floor, suppress_ids, seed, offset, window_start, block_start, block_end,
    k, tau, factor, p_transfer, span_ids, selection_temperature, mask_id, conf_mode, tempered, select_mode, backend,
):
    batch, width, _ = logits.shape
    device = logits.device
    proposal = torch.empty(batch, width, dtype=torch.int64, device=device)
    confidence = torch.empty(batch, width, dtype=torch.float32, device=device)
    committed = torch.empty(tokens.shape, dtype=torch.bool, device=device)
    num_committed = torch.empty(batch, dtype=torch.int32, device=device)
    kernel(backend, FAMILY, "denoise_propose")(
        logits, temperature, keep_floor, suppress_ids, seed, offset, window_start, int(conf_mode), int(tempered),
        proposal, confidence,
    )
    ranked = confidence
    if selection_temperature.numel():
        ranked = ref.perturb_confidence(confidence, selection_temperature, seed, offset, window_start).contiguous()
    kernel(backend, FAMILY, "denoise_select")(
        tokens, proposal, ranked, window_start, block_start, block_end, int(mask_id), int(select_mode),
        k, tau, factor, p_transfer, span_ids, seed, offset, committed, num_committed,
    )
    return committed, num_committed, proposal, confidence


# ----------------------------------------------------------------------------- validation


def _choice(name: str, value, allowed) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _check_logits(logits) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in _args.FLOAT_DTYPES:
        raise TypeError(f"logits must be float32, float16 or bfloat16, got {logits.dtype}")
    if logits.dim() != 3 or min(logits.shape) == 0:
        raise ValueError(f"logits must have shape [B, W, V] with B, W, V >= 1, got {tuple(logits.shape)}")
    return logits.contiguous()


def _check_tokens(tokens, batch: int, width: int, device: torch.device) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.dtype != torch.int64:
        raise TypeError(f"tokens must be int64 (it is updated in place), got {tokens.dtype}")
    if tokens.dim() != 2 or tokens.shape[0] != batch:
        raise ValueError(f"tokens must have shape [{batch}, L], got {tuple(tokens.shape)}")
    if tokens.shape[1] < width:
        raise ValueError(f"tokens has L={tokens.shape[1]} positions, fewer than the logits window W={width}")
    if tokens.device != device:
        raise ValueError(f"tokens is on {tokens.device} but logits are on {device}")
    if not tokens.is_contiguous():
        raise ValueError("tokens must be contiguous (it is updated in place)")
    return tokens


def _check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value < high:
        raise ValueError(f"{name} must be in [0, {high}), got {value}")
    return int(value)


def _suppress_ids(value, vocab: int, device: torch.device) -> torch.Tensor:
    if value is None:
        return torch.empty(0, dtype=torch.int64, device=device)
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype == torch.bool or value.dim() != 1:
            raise TypeError(f"suppress_ids must be a 1-D integer tensor or a list of ints, got {value.dtype} "
                            f"of shape {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"suppress_ids is on {value.device} but logits are on {device}")
        if device.type == "cpu" and value.numel() and not torch.compiler.is_compiling():
            if int(value.min()) < 0 or int(value.max()) >= vocab:
                raise ValueError(f"suppress_ids must be token ids in [0, {vocab})")
        return value.to(torch.int64).contiguous()
    ids = tuple(value)
    for i in ids:
        _check_int("suppress_ids entry", i, 0, vocab)
    if torch.compiler.is_compiling():
        return torch.tensor(ids, dtype=torch.int64, device=device)
    return _constant_ids(ids, device)


@functools.lru_cache(maxsize=64)
def _constant_ids(ids: tuple, device: torch.device) -> torch.Tensor:
    """Decode loops pass the same id list every step; building it each call would copy host to
    device (and wait for the copy) on the hot path. Kernels only read it, so sharing is safe."""
    return torch.tensor(ids, dtype=torch.int64, device=device)


def _k_param(k, batch: int, device: torch.device, spans: bool) -> torch.Tensor:
    """``k`` as int32 ``[B, S]``: a scalar or ``[B]`` (S = 1), or ``[B, S]`` per-span counts."""
    if isinstance(k, torch.Tensor) and k.dim() == 2:
        if not spans:
            raise ValueError(f"k of shape {tuple(k.shape)} (per-span counts) needs span_ids")
        if k.shape[0] != batch or k.shape[1] == 0:
            raise ValueError(f"k must have shape [{batch}, S] with S >= 1, got {tuple(k.shape)}")
        if k.device != device:
            raise ValueError(f"k is on {k.device} but logits are on {device}")
        if k.dtype.is_floating_point or k.dtype == torch.bool:
            raise TypeError(f"k must be an integer tensor, got {k.dtype}")
        if device.type == "cpu" and not torch.compiler.is_compiling() and bool((k < 0).any()):
            raise ValueError("k must be >= 0")
        return k.to(torch.int32).contiguous()
    return _args.row_param("k", k, batch, device, torch.int32, low=0, high=2**31 - 1).reshape(batch, 1)


def _span_ids(span_ids, batch: int, length: int, device: torch.device) -> torch.Tensor:
    if not isinstance(span_ids, torch.Tensor):
        raise TypeError(f"span_ids must be a torch.Tensor, got {type(span_ids).__name__}")
    if span_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"span_ids must be int32 or int64, got {span_ids.dtype}")
    if tuple(span_ids.shape) != (batch, length):
        raise ValueError(f"span_ids must have shape [{batch}, {length}] like tokens, got {tuple(span_ids.shape)}")
    if span_ids.device != device:
        raise ValueError(f"span_ids is on {span_ids.device} but logits are on {device}")
    return span_ids.to(torch.int32).contiguous()


def _filters_on(top_k, top_p) -> bool:
    tensors = isinstance(top_k, torch.Tensor) or isinstance(top_p, torch.Tensor)
    return tensors or top_k != 0 or top_p != 1.0


# ----------------------------------------------------------------------------- public API


def denoise_step(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    mask_id: int,
    window_start=0,
    proposal: str = "greedy",
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    suppress_ids=None,
    confidence: str = "prob",
    tempered_confidence: bool = False,
    select: str = "topk",
    k=1,
    tau=0.9,
    factor=1.0,
    p_transfer=1.0,
    span_ids: torch.Tensor | None = None,
    selection_temperature=0.0,
    block_start=0,
    block_end=None,
    seed=None,
    offset=0,
    backend: str | None = None,
) -> DenoiseOutput:
    """One fused denoising step: propose a token and a confidence at every window position, then
    commit the chosen masked positions into ``tokens`` in place.

    Args:
        logits: ``[B, W, V]`` float32, float16 or bfloat16; row ``j`` belongs to canvas position
            ``window_start + j``.
        tokens: ``[B, L]`` int64 contiguous canvas, ``L >= W``; updated in place and returned.
        mask_id: int in ``[0, V)``, the mask token.
        window_start: int or ``[B]`` int64 in ``[0, L - W]``.
        proposal: ``"greedy"`` (first argmax) or ``"sample"`` (Gumbel-max with Philox).
        temperature: ``"sample"`` only: scalar > 0 or ``[B]`` float >= 0 (0 = greedy row).
        top_k: ``"sample"`` only: scalar or ``[B]`` int >= 0 (0 = off); ties at the k-th kept.
        top_p: ``"sample"`` only: scalar or ``[B]`` float in (0, 1] (1 = off), after top-k, on the
            tempered distribution. Either filter costs a sort over the vocabulary.
        suppress_ids: None, list of ints or ``[S]`` int tensor of token ids in ``[0, V)`` set to
            -inf before everything (LLaDA's ``logits_eos_inf``).
        confidence: ``"prob"`` | ``"margin"`` | ``"neg_entropy"`` | ``"random"``.
        tempered_confidence: False: confidence under the untempered, unfiltered softmax (LLaDA);
            True: under the tempered, filtered one used for the draw (Dream).
        select: ``"topk"`` | ``"threshold"`` | ``"factor"`` | ``"bernoulli"``.
        k: ``"topk"``: scalar or ``[B]`` int >= 0 commits per row, or ``[B, S]`` per-span counts
            with ``span_ids``. More than the eligible count commits all eligible (clamped).
        tau: ``"threshold"``: scalar or ``[B]`` float in (0, 1]; commits confidence >= tau and
            always the most confident eligible position.
        factor: ``"factor"``: scalar or ``[B]`` float >= 0 (Fast-dLLM's ``1 - f / (n + 1)``).
        p_transfer: ``"bernoulli"``: scalar or ``[B]`` float in [0, 1].
        span_ids: ``"topk"`` only: ``[B, L]`` int32/int64 span of each canvas position (``-1`` or
            ``>= S`` = in no span); each span commits its own ``k[:, s]``.
        selection_temperature: ``"topk"`` only: scalar or ``[B]`` float >= 0; > 0 draws the k
            positions without replacement from ``softmax(confidence / t)`` (Gumbel-top-k, Dream's
            ``alg_temp``) instead of taking the k most confident; 0 = off. The returned
            ``confidence`` stays unperturbed.
        block_start, block_end: int or ``[B]`` int64, the commit window ``[block_start,
            block_end)`` inside ``[0, L]`` (default the whole canvas).
        seed: int, ``[B]`` int64, or None (fresh per-row seeds from torch's generator).
        offset: int or ``[B]`` int64 >= 0, the per-request step counter.
        backend: ``"reference" | "cpu" | "triton" | "cuda"``; default per DESIGN.md.

    Returns:
        ``DenoiseOutput(tokens [B, L] int64 (the same tensor), committed [B, L] bool,
        num_committed [B] int32, proposal [B, W] int64 (-1 where the logits row has NaN/+inf or
        is all -inf), confidence [B, W] float32 (NaN there))``.
    """
    logits = _check_logits(logits)
    batch, width, vocab = logits.shape
    device = logits.device
    tokens = _check_tokens(tokens, batch, width, device)
    length = tokens.shape[1]
    mask_id = _check_int("mask_id", mask_id, 0, vocab)
    _choice("proposal", proposal, PROPOSALS)
    _choice("confidence", confidence, tuple(CONFIDENCES))
    _choice("select", select, tuple(SELECTS))
    if not isinstance(tempered_confidence, bool):
        raise TypeError(f"tempered_confidence must be a bool, got {type(tempered_confidence).__name__}")
    window_start = _args.row_param("window_start", window_start, batch, device, torch.int64,
                                   low=0, high=length - width)
    block_start = _args.row_param("block_start", block_start, batch, device, torch.int64, low=0, high=length)
    block_end = _args.row_param("block_end", length if block_end is None else block_end, batch, device,
                                torch.int64, low=0, high=length)
    suppress = _suppress_ids(suppress_ids, vocab, device)

    if proposal == "greedy":
        if _filters_on(top_k, top_p):
            raise ValueError("top_k / top_p apply to proposal='sample' only")
        temperature = _args.row_param("temperature", 0.0, batch, device, torch.float32)
    else:
        if isinstance(temperature, numbers.Real) and not isinstance(temperature, bool) and temperature == 0:
            raise ValueError("temperature must be > 0 for proposal='sample' (use proposal='greedy')")
        temperature = _args.row_param("temperature", temperature, batch, device, torch.float32, low=0.0)
        if length * vocab > MAX_COUNTERS:
            raise ValueError(f"sampled proposals need L * V <= 2**32 (32-bit Philox counter pos * V + v); "
                             f"got L={length}, V={vocab}")
    floor = torch.empty(0, dtype=torch.float32, device=device)
    if proposal == "sample" and _filters_on(top_k, top_p):
        top_k = _args.row_param("top_k", top_k, batch, device, torch.int32, low=0, high=2**31 - 1)
        top_p = _args.row_param("top_p", top_p, batch, device, torch.float32, low=0.0, high=1.0, low_open=True)
        floor = ref.keep_floor(ref.suppress(logits, suppress), temperature, top_k, top_p).contiguous()

    spans = span_ids is not None
    if spans and select != "topk":
        raise ValueError(f"span_ids works with select='topk' only, got select={select!r}")
    k = _k_param(k, batch, device, spans)
    span_ids = _span_ids(span_ids, batch, length, device) if spans else torch.empty(0, dtype=torch.int32, device=device)
    tau = _args.row_param("tau", tau, batch, device, torch.float32, low=0.0, high=1.0, low_open=True)
    factor = _args.row_param("factor", factor, batch, device, torch.float32, low=0.0)
    p_transfer = _args.row_param("p_transfer", p_transfer, batch, device, torch.float32, low=0.0, high=1.0)
    seed = _args.seed_param(seed, batch, device)
    offset = _args.offset_param(offset, batch, device)
    backend = resolve(backend, device)
    sel_temp = torch.empty(0, dtype=torch.float32, device=device)
    if not (isinstance(selection_temperature, numbers.Real) and not isinstance(selection_temperature, bool)
            and selection_temperature == 0):
        if select != "topk":
            raise ValueError(f"selection_temperature works with select='topk' only, got select={select!r}")
        sel_temp = _args.row_param("selection_temperature", selection_temperature, batch, device, torch.float32,
                                   low=0.0)

    call = _denoise_op if torch.compiler.is_compiling() else _denoise_impl
    committed, num_committed, proposal_out, confidence_out = call(
        logits, tokens, temperature, floor, suppress, seed, offset, window_start, block_start, block_end,
        k, tau, factor, p_transfer, span_ids, sel_temp, mask_id, int(CONFIDENCES[confidence]), tempered_confidence,
        int(SELECTS[select]), backend,
    )
    return DenoiseOutput(tokens, committed, num_committed, proposal_out, confidence_out)


def remask_lowest(
    tokens: torch.Tensor,
    scores: torch.Tensor,
    n,
    mask_id: int,
    eligible: torch.Tensor | None = None,
) -> RemaskOutput:
    """Mask-Predict re-masking: in each row set the ``n`` lowest-score eligible positions to
    ``mask_id`` in place, whether or not they were committed earlier.

    Args:
        tokens: ``[B, L]`` int64 contiguous canvas, updated in place.
        scores: ``[B, L]`` float (e.g. the stored probability of each token); ties go to the
            lowest position, NaN counts as +inf.
        n: int or ``[B]`` int >= 0; larger than the eligible count re-masks all eligible.
        mask_id: int >= 0.
        eligible: ``[B, L]`` bool or None (every position); e.g. not padding.

    Returns:
        ``RemaskOutput(tokens (the same tensor), remasked [B, L] bool)``.
    """
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.dim() != 2 or tokens.shape[0] == 0:
        raise ValueError(f"tokens must have shape [B, L] with B >= 1, got {tuple(tokens.shape)}")
    batch, device = tokens.shape[0], tokens.device
    tokens = _check_tokens(tokens, batch, 0, device)
    mask_id = _check_int("mask_id", mask_id, 0, 2**63)
    if not isinstance(scores, torch.Tensor) or not scores.dtype.is_floating_point:
        raise TypeError(f"scores must be a floating-point tensor, got {getattr(scores, 'dtype', type(scores))}")
    if scores.shape != tokens.shape or scores.device != device:
        raise ValueError(f"scores must have shape {tuple(tokens.shape)} on {device}, got "
                         f"{tuple(scores.shape)} on {scores.device}")
    if eligible is not None:
        if not isinstance(eligible, torch.Tensor) or eligible.dtype != torch.bool:
            raise TypeError(f"eligible must be a bool tensor, got {getattr(eligible, 'dtype', type(eligible))}")
        if eligible.shape != tokens.shape or eligible.device != device:
            raise ValueError(f"eligible must have shape {tuple(tokens.shape)} on {device}, got "
                             f"{tuple(eligible.shape)} on {eligible.device}")
    n = _args.row_param("n", n, batch, device, torch.int64, low=0)
    new_tokens, remasked = ref.remask_lowest(tokens, scores, n, mask_id, eligible)
    tokens.copy_(new_tokens)
    return RemaskOutput(tokens, remasked)


def transfer_schedule(num_masked, steps: int, kind: str = "linear", *, eps: float = 1e-3) -> torch.Tensor:
    """``[B, steps]`` int32 number of tokens to commit at each step; every row sums to its count.

    Args:
        num_masked: int or ``[B]`` int tensor >= 0, masked positions at the start.
        steps: int >= 1.
        kind: ``"linear"`` (LLaDA), ``"log_linear"`` (Dream / MDLM ``1 - s/t`` with
            ``t = linspace(1, eps, steps + 1)``) or ``"cosine"`` (MaskGIT).
        eps: ``"log_linear"`` final time, in (0, 1).
    """
    _choice("kind", kind, ref.SCHEDULES)
    steps = _check_int("steps", steps, 1, 2**31)
    if not isinstance(eps, numbers.Real) or not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    if isinstance(num_masked, torch.Tensor):
        if num_masked.dim() != 1 or num_masked.numel() == 0:
            raise ValueError(f"num_masked must be an int or a non-empty [B] tensor, got shape {tuple(num_masked.shape)}")
        device, batch = num_masked.device, num_masked.shape[0]
    else:
        device, batch = torch.device("cpu"), 1
    num_masked = _args.row_param("num_masked", num_masked, batch, device, torch.int64, low=0)
    return ref.transfer_schedule(num_masked, steps, kind, eps)
