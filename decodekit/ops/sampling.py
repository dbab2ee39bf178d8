"""Fused token sampling: ``sample``, ``apply_penalties``, ``top_k_top_p_renorm``, ``mask_logits``.

Semantics (the spec is ``decodekit/reference/sampling.py``):

* Filters compose in the order **temperature -> top-k -> top-p -> min-p**. top-k keeps every
  logit >= the k-th largest (ties kept); top-p runs on the distribution renormalised after top-k
  and keeps the smallest top set whose mass reaches ``top_p`` (ties kept); min-p keeps tokens
  whose probability is at least ``min_p`` times the largest.
* ``temperature == 0`` rows are exact greedy (first index of the maximum) in the same batch as
  sampled rows.
* Sampled rows draw by Gumbel-max with Philox4x32-10 (DESIGN.md's RNG contract): the token of a
  row depends only on (its logits, its parameters, its seed, its offset), on every backend and
  whatever else is in the batch. Every row's seed is honoured.
* Rows with NaN or +inf, or with every logit -inf, give ``valid=False`` and token -1.

Backends share one raw-function contract (``decodekit/ops/_reference_kernels.py`` is the
readable instance): inputs contiguous and validated, per-row parameters as ``[B]`` tensors
(temperature/top_p/min_p float32, top_k int32, seed/offset int64), outputs preallocated.

Each op is a ``torch.library`` custom op (``decodekit::sample`` ...) with a fake implementation,
so it traces under ``torch.compile(fullgraph=True)``; eager calls go straight to the kernel to
keep dispatch overhead off the decode hot path.
"""

from __future__ import annotations

import torch

from decodekit.ops import _args
from decodekit.ops._backend import kernel, resolve
from decodekit.reference.sampling import SampleOutput, token_counts_from_ids

__all__ = ["SampleOutput", "sample", "apply_penalties", "top_k_top_p_renorm", "mask_logits"]

FAMILY = "sampling"


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("decodekit::sample", mutates_args=())
def _sample_op(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _sample_impl(logits, temperature, top_k, top_p, min_p, seed, offset, backend)


@_sample_op.register_fake
def _(logits, temperature, top_k, top_p, min_p, seed, offset, backend):
    batch = logits.shape[0]
    return (
        logits.new_empty(batch, dtype=torch.int64),
        logits.new_empty(batch, dtype=torch.float32),
        logits.new_empty(batch, dtype=torch.bool),
    )


def _sample_impl(logits, temperature, top_k, top_p, min_p, seed, offset, backend):
    batch = logits.shape[0]
    tokens = torch.empty(batch, dtype=torch.int64, device=logits.device)
    logprobs = torch.empty(batch, dtype=torch.float32, device=logits.device)
    valid = torch.empty(batch, dtype=torch.bool, device=logits.device)
    kernel(backend, FAMILY, "sample")(
        logits, temperature, top_k, top_p, min_p, seed, offset, tokens, logprobs, valid
    )
    return tokens, logprobs, valid


@torch.library.custom_op("decodekit::apply_penalties", mutates_args=("out",))
def _apply_penalties_op(
    logits: torch.Tensor,
    token_counts: torch.Tensor,
    repetition: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
    out: torch.Tensor,
    backend: str,
) -> None:
    kernel(backend, FAMILY, "apply_penalties")(logits, token_counts, repetition, frequency, presence, out)


@_apply_penalties_op.register_fake
def _(logits, token_counts, repetition, frequency, presence, out, backend):
    return None


def _filter_op_impl(name, values, top_k, top_p, backend):
    out = torch.empty_like(values)
    kernel(backend, FAMILY, name)(values, top_k, top_p, out)
    return out


@torch.library.custom_op("decodekit::mask_logits", mutates_args=())
def _mask_logits_op(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, backend: str) -> torch.Tensor:
    return _filter_op_impl("mask_logits", logits, top_k, top_p, backend)


@_mask_logits_op.register_fake
def _(logits, top_k, top_p, backend):
    return torch.empty_like(logits)


@torch.library.custom_op("decodekit::top_k_top_p_renorm", mutates_args=())
def _renorm_op(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, backend: str) -> torch.Tensor:
    return _filter_op_impl("top_k_top_p_renorm", probs, top_k, top_p, backend)


@_renorm_op.register_fake
def _(probs, top_k, top_p, backend):
    return torch.empty_like(probs)


# ----------------------------------------------------------------------------- public API


def _top_k_top_p(top_k, top_p, batch, device):
    top_k = _args.row_param("top_k", top_k, batch, device, torch.int32, low=0, high=2**31 - 1)
    top_p = _args.row_param("top_p", top_p, batch, device, torch.float32, low=0.0, high=1.0, low_open=True)
    return top_k, top_p


def sample(
    logits: torch.Tensor,
    *,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    min_p=0.0,
    seed=None,
    offset=0,
    return_logprobs: bool = False,
    backend: str | None = None,
) -> SampleOutput:
    """Draw one token per row of ``logits``, with all filters fused into one pass.

    Args:
        logits: ``[B, V]`` float32, float16 or bfloat16 (made contiguous if it is not).
        temperature: scalar or ``[B]`` float, >= 0; 0 means greedy for that row.
        top_k: scalar or ``[B]`` int, >= 0; 0 (or >= V) disables it.
        top_p: scalar or ``[B]`` float in (0, 1]; 1 disables it.
        min_p: scalar or ``[B]`` float in [0, 1]; 0 disables it.
        seed: int (read as 64-bit), ``[B]`` int64 tensor (one seed per row, all honoured), or None
            for fresh per-row seeds from torch's default generator (``torch.manual_seed`` makes
            them reproducible). A scalar seed is every row's seed: since random counters are
            row-local (batch invariance), rows with identical logits then draw identical tokens;
            pass a ``[B]`` tensor for independent rows (e.g. n samples of one prompt).
        offset: int or ``[B]`` int64 tensor >= 0: the per-request step counter; the same (seed,
            offset) always gives the same token for the same logits.
        return_logprobs: also return the chosen token's log-probability under the final filtered
            distribution (0.0 for greedy rows).
        backend: ``"reference" | "cpu" | "triton" | "cuda"``; default per DESIGN.md.

    Returns:
        ``SampleOutput(tokens [B] int64, logprobs [B] float32 or None, valid [B] bool)``.
    """
    logits = _args.check_float_matrix("logits", logits)
    batch, device = logits.shape[0], logits.device
    temperature = _args.row_param("temperature", temperature, batch, device, torch.float32, low=0.0)
    top_k, top_p = _top_k_top_p(top_k, top_p, batch, device)
    min_p = _args.row_param("min_p", min_p, batch, device, torch.float32, low=0.0, high=1.0)
    seed = _args.seed_param(seed, batch, device)
    offset = _args.offset_param(offset, batch, device)
    backend = resolve(backend, device)
    call = _sample_op if torch.compiler.is_compiling() else _sample_impl
    tokens, logprobs, valid = call(logits, temperature, top_k, top_p, min_p, seed, offset, backend)
    return SampleOutput(tokens, logprobs if return_logprobs else None, valid)


def apply_penalties(
    logits: torch.Tensor,
    *,
    token_counts: torch.Tensor | None = None,
    token_ids: torch.Tensor | None = None,
    repetition=1.0,
    frequency=0.0,
    presence=0.0,
    inplace: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Repetition, frequency and presence penalties in one fused pass.

    For each token that occurred (count > 0): a positive logit is divided by ``repetition`` and a
    negative one multiplied by it (CTRL / Hugging Face), then ``frequency * count + presence`` is
    subtracted (OpenAI / vLLM). Unseen tokens are untouched.

    Args:
        logits: ``[B, V]`` float32, float16 or bfloat16.
        token_counts: ``[B, V]`` int32/int64 occurrence counts, or
        token_ids: ``[B, L]`` int32/int64 token history, ``-1`` = padding (exactly one of the two);
            ids >= V raise on CPU and are ignored on GPU (checking would synchronise).
        repetition: scalar or ``[B]`` float > 0 (1 = off).
        frequency, presence: scalar or ``[B]`` float (0 = off).
        inplace: write into ``logits`` (must then be contiguous) instead of a new tensor.

    Returns:
        The penalised logits, same shape and dtype (``logits`` itself when ``inplace``).
    """
    if inplace and isinstance(logits, torch.Tensor) and not logits.is_contiguous():
        raise ValueError("logits must be contiguous for inplace=True")
    logits = _args.check_float_matrix("logits", logits)
    batch, vocab = logits.shape
    device = logits.device
    if (token_counts is None) == (token_ids is None):
        raise ValueError("pass exactly one of token_counts [B, V] or token_ids [B, L]")
    int_types = (torch.int32, torch.int64)
    if token_ids is not None:
        token_ids = _args.check_int_matrix("token_ids", token_ids, batch, device, int_types)
        checkable = device.type == "cpu" and not torch.compiler.is_compiling()
        if checkable and token_ids.numel() and int(token_ids.max()) >= vocab:
            raise ValueError(f"token_ids must be < V={vocab} (or -1 for padding)")
        token_counts = token_counts_from_ids(token_ids, vocab)
    token_counts = _args.check_int_matrix("token_counts", token_counts, batch, device, int_types)
    if token_counts.shape[1] != vocab:
        raise ValueError(f"token_counts must have shape [{batch}, {vocab}], got {tuple(token_counts.shape)}")
    token_counts = token_counts.to(torch.int32)
    repetition = _args.row_param("repetition", repetition, batch, device, torch.float32, low=0.0, low_open=True)
    frequency = _args.row_param("frequency", frequency, batch, device, torch.float32)
    presence = _args.row_param("presence", presence, batch, device, torch.float32)
    backend = resolve(backend, device)
    out = logits if inplace else torch.empty_like(logits)
    if torch.compiler.is_compiling():
        _apply_penalties_op(logits, token_counts, repetition, frequency, presence, out, backend)
    else:
        kernel(backend, FAMILY, "apply_penalties")(logits, token_counts, repetition, frequency, presence, out)
    return out


def mask_logits(logits: torch.Tensor, top_k=0, top_p=1.0, *, backend: str | None = None) -> torch.Tensor:
    """``logits [B, V]`` with every token outside top-k -> top-p set to -inf (temperature 1).

    ``top_k``/``top_p`` as in :func:`sample`. Rows containing NaN come back all NaN. Same dtype.
    """
    logits = _args.check_float_matrix("logits", logits)
    top_k, top_p = _top_k_top_p(top_k, top_p, logits.shape[0], logits.device)
    backend = resolve(backend, logits.device)
    if torch.compiler.is_compiling():
        return _mask_logits_op(logits, top_k, top_p, backend)
    return _filter_op_impl("mask_logits", logits, top_k, top_p, backend)


def top_k_top_p_renorm(probs: torch.Tensor, top_k=0, top_p=1.0, *, backend: str | None = None) -> torch.Tensor:
    """``probs [B, V]`` restricted to top-k -> top-p and renormalised to sum to 1 (0 elsewhere).

    Tokens are ranked by probability; top-p mass is relative to the row's mass after top-k. Rows
    containing NaN come back all NaN. Same dtype as ``probs``.
    """
    probs = _args.check_float_matrix("probs", probs)
    top_k, top_p = _top_k_top_p(top_k, top_p, probs.shape[0], probs.device)
    backend = resolve(backend, probs.device)
    if torch.compiler.is_compiling():
        return _renorm_op(probs, top_k, top_p, backend)
    return _filter_op_impl("top_k_top_p_renorm", probs, top_k, top_p, backend)
