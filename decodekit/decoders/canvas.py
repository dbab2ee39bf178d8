"""Canvas and paged-cache handling shared by the diffusion-style decoders (masked diffusion,
block diffusion; reusable by mask-predict / planned diffusion).

A *canvas* is the generated region of a request: ``gen_length`` positions that start as the mask
token and are filled in place by ``decodekit.ops.denoise_step``. The decoders keep the canvases
of a batch in one ``[N, G]`` int64 tensor (:class:`Canvases`, the prompt excluded), so the op's
counter ``c0`` (the position inside the op's ``tokens``) is the position inside the generated
region, whatever the prompt length: a request's draws do not depend on the other requests.

The model sees ``prompt + canvas`` as one sequence of the paged cache. :class:`CanvasRunner`
runs a batch of such sequences through the model, each with its own range of recomputed rows:

* the first call of a sequence appends all of it (the canvas enters the cache once);
* later calls rewrite positions ``[start, end)`` in place (``forward_step(rewrite=True,
  starts=...)``) under ``mask="full"``: every recomputed row attends to ALL keys of its sequence
  -- the rows recomputed now plus the cached K/V of every other position as left by the last call
  that computed it. Which rows to recompute is the caller's cache policy (no cache: all;
  Fast-dLLM prefix cache: from the block start to the end; dual cache: the block only).

It counts the rows it computed per request (``RequestStats.extra["forward_tokens"]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Sequence

import torch

from decodekit.decoders.base import Decoder, Request, forward_step

FORWARD_TOKENS = "forward_tokens"


@dataclass
class CanvasRows:
    """One sequence's part of a model call.

    Attributes:
        request: the request the rows are counted for.
        seq_id: the sequence in the paged cache (a request may own several, e.g. CFG).
        tokens: the whole sequence now (prompt + canvas), ``list[int]``.
        start, end: positions ``[start, end)`` to recompute (ignored on the sequence's first
            call, which computes all of it).
        logit_positions: sequence positions whose logits are returned; each must be computed
            by this call.
    """

    request: Request
    seq_id: Hashable
    tokens: list[int]
    start: int
    end: int
    logit_positions: Sequence[int]


@dataclass
class CanvasRunner:
    """Runs canvases through ``model`` on the paged ``cache`` (see the module docstring)."""

    decoder: Decoder
    model: object
    cache: object
    started: set = field(default_factory=set)

    def run(self, items: list[CanvasRows]) -> torch.Tensor:
        """One model call over ``items``; returns ``[sum(len(logit_positions)), V]`` logits in
        item order. New sequences are allocated and appended whole; started ones are rewritten
        over ``[start, end)``."""
        fresh = [it for it in items if it.seq_id not in self.started]
        if fresh and len(fresh) != len(items):
            raise ValueError("a call either starts new canvases or reruns started ones, not both "
                             "(forward_step appends or rewrites); start every canvas in the first call")
        rewrite = not fresh
        rows, row_index, offset = [], [], 0
        for it in items:
            start, end = (it.start, it.end) if rewrite else (0, len(it.tokens))
            if not all(start <= p < end for p in it.logit_positions):
                raise ValueError(f"logit positions of {it.seq_id!r} are outside the recomputed rows [{start}, {end})")
            rows.append(it.tokens[start:end])
            row_index.extend(offset + p - start for p in it.logit_positions)
            offset += end - start
            extra = it.request.stats.extra
            extra[FORWARD_TOKENS] = extra.get(FORWARD_TOKENS, 0) + end - start
        if fresh:
            for it in items:
                self.cache.allocator.allocate(it.seq_id)
                self.started.add(it.seq_id)
        seq_ids = [it.seq_id for it in items]
        logits_rows = torch.tensor(row_index, dtype=torch.int64)
        starts = [it.start for it in items] if rewrite else None
        requests = list({id(it.request): it.request for it in items}.values())
        return self._step(requests, seq_ids, rows, logits_rows, rewrite, starts)

    def _step(self, requests, seq_ids, rows, logits_rows, rewrite, starts):
        logits = forward_step(self.model, self.cache, seq_ids, rows, mask="full", logits=logits_rows,
                              rewrite=rewrite, starts=starts)
        for request in requests:
            request.stats.forward_calls += 1
        self.decoder._forward_calls += 1
        return logits

    def release(self, seq_ids: Sequence[Hashable]) -> None:
        """Free finished sequences now (``generate`` frees the rest at the end)."""
        for seq in seq_ids:
            if seq in self.started:
                self.cache.allocator.free(seq)
                self.started.discard(seq)
        self.model.release(list(seq_ids))


class Canvases:
    """The generated regions of a batch: ``tokens [N, G]`` int64 on ``device``, all masks at
    first; ``row(i)`` reads request i's canvas back to the host (one read per step)."""

    def __init__(self, count: int, gen_length: int, mask_id: int, device):
        self.mask_id = mask_id
        self.tokens = torch.full((count, gen_length), mask_id, dtype=torch.int64, device=device)

    @property
    def gen_length(self) -> int:
        return self.tokens.shape[1]


def stop_cut(canvas: Sequence[int], mask_id: int, stop_ids) -> int | None:
    """Early stop: the length to keep (stop token included) once a stop token is committed and
    every position before it is filled; None while that is not the case. ``canvas`` is a
    request's generated region read back to the host."""
    for index, token in enumerate(canvas):
        if token == mask_id:
            return None
        if token in stop_ids:
            return index + 1
    return None


def finish_canvas(decoder: Decoder, request: Request, canvas: Sequence[int], mask_id: int) -> None:
    """Emit a finished canvas: tokens up to the first stop token (included; later ones are
    dropped) or all of them; any position still masked ends the output there."""
    out = []
    for token in canvas:
        if token == mask_id:
            break
        out.append(token)
    request.emit(out)
    if not request.finished:
        request.finish("length")
    decoder._finish(request)


def check_gen_length(requests: list[Request], gen_length: int, max_positions: int) -> None:
    """ValueError if a canvas (prompt + gen_length) does not fit the model's context."""
    for r in requests:
        if len(r.prompt) + gen_length > max_positions:
            raise ValueError(f"prompts[{r.index}] has {len(r.prompt)} tokens; with max_new_tokens={gen_length} the "
                             f"canvas needs {len(r.prompt) + gen_length} positions but the model's context is "
                             f"{max_positions}")


def check_sampling(requests: list[Request]) -> None:
    """ValueError for sampling knobs the diffusion decoders do not apply (penalties, min_p):
    ``denoise_step`` proposes with temperature, top-k and top-p only."""
    for r in requests:
        p = r.sampling
        if p.has_penalties or p.min_p > 0:
            raise ValueError(f"sampling for prompts[{r.index}] sets min_p or a penalty; diffusion decoders use "
                             "temperature, top_k and top_p only")


def check_mask_id(mask_token_id, vocab_size: int) -> int:
    if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id must be a token id in [0, {vocab_size}), got {mask_token_id!r}")
    return mask_token_id
