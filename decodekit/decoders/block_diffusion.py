"""Block diffusion (BD3-LM): autoregressive over blocks, masked diffusion inside the current block.

Attention (block-causal, as BD3-LM trains it): the prompt is one clean segment that sees itself;
each finished block sees the prompt, the earlier blocks and itself; the current (noisy) block
sees everything before it and itself. On the paged cache:

* a block's first step appends its ``block_length`` masks; in the same call the previous block,
  now finished, is recomputed once from its clean tokens (a ``"custom"`` mask keeps it from seeing
  the new masks) so its K/V enter the cache; finished blocks are never recomputed again;
* later steps rewrite only the current block's rows (``mask="full"``: cached prefix + block).
Models without custom-mask support get the finished block's clean K/V in a separate call.

Per-block samplers (``bd3lms`` ``_semi_ar_sampler``):

* ``"first_hitting"`` (BD3-LM's default): each step commits exactly one uniformly chosen masked
  position of the block (``steps = block_length``);
* ``"ddpm"``: ``steps`` steps per block, each masked position revealed with probability
  ``1 - t_{i+1} / t_i`` on ``linspace(1, eps, steps + 1)``, all remaining ones on the last step;
  a step whose input did not change reuses the previous logits (BD3-LM/MDLM's ddpm caching).
Tokens are drawn from ``softmax(logits / temperature)`` with top-k / top-p (BD3-LM's
``nucleus_p``) through ``denoise_step``; the mask token is never proposed.
"""

from __future__ import annotations

import torch

from decodekit import ops
from decodekit.decoders.base import Decoder, Request, forward_step
from decodekit.decoders.canvas import (
    FORWARD_TOKENS, Canvases, check_gen_length, check_mask_id, check_sampling, finish_canvas, stop_cut,
)

SAMPLERS = ("first_hitting", "ddpm")


class BlockDiffusionDecoder(Decoder):
    """BD3-LM sampling on the paged cache.

    Args:
        model: a bidirectional model; block-causal attention needs ``supports_custom_mask`` for
            the one-call block switch (otherwise one extra call per block).
        mask_token_id: the mask token, in ``[0, vocab_size)``.
        block_length: tokens per block (BD3-LM checkpoints: 4, 8, 16; default 16);
            ``max_new_tokens`` must be a multiple.
        sampler: ``"first_hitting"`` (default) or ``"ddpm"``.
        steps: ``"ddpm"`` only: steps per block (default ``block_length``).
        eps: ``"ddpm"`` only: end of the time grid (default 1e-5, MDLM/BD3-LM).
        suppress_token_ids: ids never proposed (besides the mask token).
        tokenizer, num_blocks, block_size: as :class:`~decodekit.decoders.base.Decoder`.

    ``generate`` as :class:`~decodekit.decoders.MaskedDiffusionDecoder`: ``max_new_tokens`` is the
    total of all blocks; generation stops after the block in which a stop token is committed
    with every position before it filled. Statistics: ``forward_calls``,
    ``extra["forward_tokens"]`` (rows computed), ``extra["steps"]``, ``extra["committed_tokens"]``.
    """

    model_attention = "bidirectional"

    def __init__(self, model, *, mask_token_id: int, block_length: int = 16, sampler: str = "first_hitting",
                 steps: int | None = None, eps: float = 1e-5, suppress_token_ids=None, tokenizer=None,
                 num_blocks: int | None = None, block_size: int = 16):
        super().__init__(model, tokenizer=tokenizer, num_blocks=num_blocks, block_size=block_size)
        self.mask_id = check_mask_id(mask_token_id, model.vocab_size)
        if isinstance(block_length, bool) or not isinstance(block_length, int) or block_length < 1:
            raise ValueError(f"block_length must be an int >= 1, got {block_length!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if steps is not None:
            if sampler != "ddpm":
                raise ValueError("steps is only used by sampler='ddpm' (first_hitting takes block_length steps)")
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ValueError(f"eps must be a float in (0, 1), got {eps!r}")
        ids = tuple(suppress_token_ids or ())
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < model.vocab_size:
                raise ValueError(f"suppress_token_ids must be token ids in [0, {model.vocab_size}), got {t!r}")
        self.block_length, self.sampler, self.eps = block_length, sampler, float(eps)
        self.steps = block_length if steps is None else steps
        self.suppress = sorted({self.mask_id, *ids})

    def _requests(self, prompts, max_new_tokens, sampling, stop_token_ids, seed):
        requests = super()._requests(prompts, max_new_tokens, sampling, stop_token_ids, seed)
        check_gen_length(requests, max_new_tokens, self.model.max_positions)
        check_sampling(requests)
        if max_new_tokens % self.block_length:
            raise ValueError(f"block_length={self.block_length} must divide max_new_tokens={max_new_tokens}")
        return requests

    # ------------------------------------------------------------------ the loop

    def _run(self, requests: list[Request], caches: dict) -> None:
        model, bl = self.model, self.block_length
        gen_length = requests[0].max_new_tokens
        cache = self._cache(model, requests, caches, reserve=bl)
        canvases = Canvases(len(requests), gen_length, self.mask_id, model.device)
        seeds = torch.tensor([r.seed for r in requests], dtype=torch.int64, device=model.device)
        t = torch.linspace(1.0, self.eps, self.steps + 1, dtype=torch.float32)
        reveal = (1.0 - t[1:] / t[:-1]).tolist()
        reveal[-1] = 1.0
        for r in requests:
            cache.allocator.allocate(r.seq_id)
        active = list(requests)
        offsets = {r.index: 0 for r in requests}
        num_blocks = gen_length // bl
        for block in range(num_blocks):
            lo = block * bl
            opened = self._open_block(model, cache, active, canvases, block)
            logits = {r.index: lg for r, lg in zip(active, opened)}
            changed = set()
            for step in range(self.steps):
                need = [r for r in active if r.index in changed]
                if need:  # unchanged canvases reuse their logits (ddpm caching)
                    rows = canvases.tokens[[r.index for r in need], lo : lo + bl].tolist()
                    fresh = self._count(need, bl, forward_step(
                        model, cache, [r.seq_id for r in need], rows, mask="full", logits="all", rewrite=True))
                    self._forward_calls += 1
                    logits.update({r.index: lg for r, lg in zip(need, fresh)})
                out = self._denoise(torch.stack([logits[r.index] for r in active]), active, canvases, seeds,
                                    offsets, lo, reveal[step])
                host = torch.cat([out.tokens, out.num_committed.unsqueeze(1).to(torch.int64)], 1).tolist()
                still, changed = [], set()
                for r, row in zip(active, host):
                    canvas, n = row[:-1], row[-1]
                    offsets[r.index] += 1
                    r.stats.extra["steps"] = r.stats.extra.get("steps", 0) + 1
                    r.stats.extra["committed_tokens"] = r.stats.extra.get("committed_tokens", 0) + n
                    if n:
                        changed.add(r.index)
                    cut = stop_cut(canvas, self.mask_id, r.stop_ids)
                    last = block == num_blocks - 1 and self.mask_id not in canvas[lo:]
                    if cut is not None or last:
                        finish_canvas(self, r, canvas[:cut] if cut is not None else canvas, self.mask_id)
                        cache.allocator.free(r.seq_id)
                        model.release([r.seq_id])
                    else:
                        still.append(r)
                active = still
                if not active:
                    return
        host = canvases.tokens[[r.index for r in active]].tolist()
        for r, canvas in zip(active, host):  # only when a model gave invalid logits: masks remain
            finish_canvas(self, r, canvas, self.mask_id)

    def _count(self, requests, rows: int, logits):
        for r in requests:
            r.stats.forward_calls += 1
            r.stats.extra[FORWARD_TOKENS] = r.stats.extra.get(FORWARD_TOKENS, 0) + rows
        return logits.view(len(requests), rows, -1)

    def _open_block(self, model, cache, active, canvases, block: int) -> torch.Tensor:
        """Append the new block's masks (and compute the finished previous block's clean K/V,
        or the prompt's at block 0); returns the new block's logits ``[B, W, V]``."""
        bl = self.block_length
        masks = [self.mask_id] * bl
        if block == 0:
            clean = [r.prompt for r in active]
        else:
            prev = canvases.tokens[[r.index for r in active], (block - 1) * bl : block * bl].tolist()
            clean = prev
            for r in active:  # the dirty K/V of the finished block's last step are dropped
                cache.allocator.truncate(r.seq_id, cache.allocator.length(r.seq_id) - bl)
        seq_ids = [r.seq_id for r in active]
        if getattr(model, "supports_custom_mask", False):
            masks_of = []
            for c in clean:
                n = len(c) + bl
                m = torch.ones(n, n, dtype=torch.bool)
                m[: len(c), len(c):] = False  # clean rows do not see the new masks
                masks_of.append(m.to(model.device))
            rows = torch.cat([torch.arange(bl) + sum(len(c) + bl for c in clean[:i]) + len(clean[i])
                              for i in range(len(clean))])
            logits = forward_step(model, cache, seq_ids, [c + masks for c in clean], mask="custom",
                                  custom_mask=masks_of, logits=rows)
            counts = [len(c) + bl for c in clean]
            self._forward_calls += 1
        else:
            forward_step(model, cache, seq_ids, clean, mask="full", logits="last")
            logits = forward_step(model, cache, seq_ids, [masks] * len(active), mask="full", logits="all")
            counts = [len(c) + bl for c in clean]
            for r in active:
                r.stats.forward_calls += 1
            self._forward_calls += 2
        for r, n in zip(active, counts):
            r.stats.forward_calls += 1
            r.stats.extra[FORWARD_TOKENS] = r.stats.extra.get(FORWARD_TOKENS, 0) + n
        return logits.view(len(active), bl, -1)

    def _denoise(self, logits, active, canvases, seeds, offsets, lo: int, reveal: float) -> ops.DenoiseOutput:
        dev = logits.device
        rows = torch.tensor([r.index for r in active], dtype=torch.int64, device=dev)
        params = [r.sampling for r in active]
        temperature = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=dev)
        sampled = bool((temperature > 0).any())
        kwargs = dict(mask_id=self.mask_id, window_start=lo, block_start=lo, block_end=lo + self.block_length,
                      suppress_ids=self.suppress, seed=seeds.index_select(0, rows),
                      offset=torch.tensor([offsets[r.index] for r in active], dtype=torch.int64, device=dev),
                      proposal="sample" if sampled else "greedy")
        if sampled:
            kwargs.update(temperature=temperature)
        if sampled and any(p.top_k or p.top_p < 1.0 for p in params):  # the filters cost a sort over V
            kwargs.update(top_k=torch.tensor([p.top_k for p in params], dtype=torch.int32, device=dev),
                          top_p=torch.tensor([p.top_p for p in params], dtype=torch.float32, device=dev))
        if self.sampler == "first_hitting":
            kwargs.update(confidence="random", select="topk", k=1)
        else:
            kwargs.update(select="bernoulli", p_transfer=reveal)
        tokens = canvases.tokens.index_select(0, rows)
        out = ops.denoise_step(logits.float(), tokens, **kwargs)
        canvases.tokens.index_copy_(0, rows, out.tokens)
        return out
