"""Masked-diffusion decoding (LLaDA, Dream, Fast-dLLM, MDLM) on the paged cache with the fused
``denoise_step`` op.

The canvas of a request is ``prompt + gen_length`` masks (``gen_length = max_new_tokens``). Each
step runs the model over (some of) the canvas, takes the logits of the current commit block and
lets one ``denoise_step`` call propose a token and a confidence at every position of the block
and commit the chosen masked positions. Committed tokens are never changed. Per-preset rules and
knobs: :mod:`decodekit.decoders.diffusion_presets`.

Which keys each row attends to (``cache``; ``mask="full"`` on the paged cache):

* ``"none"``: every step recomputes the whole canvas; every row sees every position's current
  token (the published loops).
* ``"prefix"`` (Fast-dLLM PrefixCache): a block's first step recomputes the whole canvas; later
  steps of the block recompute the rows from the block start to the end of the canvas (block
  plus masked suffix, with their current tokens); those rows see the fresh K/V of themselves and
  the prefix K/V cached at the block's first step.
* ``"dual"`` (Fast-dLLM DualCache): a block's first step recomputes the whole canvas; later steps
  recompute only the block's rows and overwrite their K/V in place; the rows see the prefix and
  the suffix K/V cached at the block's first step and the block's fresh K/V.
* ``refresh_every=n`` also recomputes the whole canvas every n steps inside a block (n = 1 makes
  both caches equal to ``"none"``).
With ``shift_logits`` (Dream) the row before the block is recomputed too, since its logits
predict the block's first position.

Randomness: every draw is keyed by the request's seed and its step counter (``offset``), and the
op's position counter is the position inside the generated region, so a request's tokens do not
depend on the rest of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decodekit import ops
from decodekit.decoders.base import Decoder, Request
from decodekit.decoders.canvas import (
    CanvasRows, CanvasRunner, Canvases, check_gen_length, check_mask_id, check_sampling, finish_canvas, stop_cut,
)
from decodekit.decoders.diffusion_presets import DiffusionConfig, make_config

_CONFIDENCE = {"low_confidence": "prob", "random": "random", "origin": "prob", "maskgit_plus": "prob",
               "topk_margin": "margin", "entropy": "neg_entropy"}


@dataclass
class _Slot:
    """A request's progress: its canvas row, current block and step counters."""

    request: Request
    row: int
    block: int = 0
    step_in_block: int = 0
    offset: int = 0  # steps taken so far: the RNG offset
    k_table: torch.Tensor | None = None  # [steps] commits per step of the current block (top-k rules)
    logits: torch.Tensor | None = None  # last block logits [W, V] (mdlm ddpm_cache)
    changed: bool = True
    canvas: list | None = None  # the canvas as read back after the last step (host copy)

    @property
    def seq_id(self):
        return self.request.seq_id

    @property
    def uncond_id(self):
        return (*self.request.seq_id, "uncond")


class MaskedDiffusionDecoder(Decoder):
    """Masked-diffusion sampler with the published presets.

    Example::

        decoder = MaskedDiffusionDecoder(model, mask_token_id=126336, preset="llada", block_length=32)
        result = decoder.generate([prompt], max_new_tokens=128, sampling=SamplingParams.greedy(),
                                  stop_token_ids=[126081])

    Args:
        model: a bidirectional model (:class:`decodekit.models.Model`).
        mask_token_id: the mask token, in ``[0, vocab_size)``.
        preset: ``"llada" | "dream" | "fast_dllm" | "mdlm"``.
        steps, block_length, remasking, cfg_scale, suppress_token_ids, alg, alg_temp, eps, shift_logits,
        threshold, factor, cache, refresh_every, predictor, noise_removal: preset knobs; None =
            the preset's published default. Meanings and defaults:
            :mod:`decodekit.decoders.diffusion_presets`. A knob the preset does not read raises.
        tokenizer, num_blocks, block_size: as :class:`~decodekit.decoders.base.Decoder`.

    ``generate``: ``max_new_tokens`` is the canvas size (gen_length; the canvas must fit the
    model's context); ``sampling`` gives temperature (Gumbel-max proposals; 0 = greedy), top_k
    and top_p (penalties and min_p are not used); ``stop_token_ids`` end a request once a stop
    token is committed and every position before it is filled (later tokens are dropped).
    Statistics: ``forward_calls`` per request, ``extra["forward_tokens"]`` (rows the model
    computed for the request, CFG rows included), ``extra["steps"]`` (denoising steps) and
    ``extra["committed_tokens"]``.
    """

    model_attention = "bidirectional"

    def __init__(self, model, *, mask_token_id: int, preset: str = "llada", steps: int | None = None,
                 block_length: int | None = None, remasking: str | None = None, cfg_scale: float | None = None,
                 suppress_token_ids=None, alg: str | None = None, alg_temp: float | None = None,
                 eps: float | None = None,
                 shift_logits: bool | None = None, threshold: float | None = None, factor: float | None = None,
                 cache: str | None = None, refresh_every: int | None = None, predictor: str | None = None,
                 noise_removal: bool | None = None, tokenizer=None, num_blocks: int | None = None,
                 block_size: int = 16):
        super().__init__(model, tokenizer=tokenizer, num_blocks=num_blocks, block_size=block_size)
        self.mask_id = check_mask_id(mask_token_id, model.vocab_size)
        self.config: DiffusionConfig = make_config(
            preset, model.vocab_size, steps=steps, block_length=block_length, remasking=remasking,
            cfg_scale=cfg_scale, suppress_token_ids=suppress_token_ids, alg=alg, alg_temp=alg_temp, eps=eps,
            shift_logits=shift_logits, threshold=threshold, factor=factor, cache=cache,
            refresh_every=refresh_every, predictor=predictor, noise_removal=noise_removal,
        )
        self.suppress = sorted({self.mask_id, *self.config.suppress_token_ids})

    # ------------------------------------------------------------------ checks before any work

    def _requests(self, prompts, max_new_tokens, sampling, stop_token_ids, seed):
        requests = super()._requests(prompts, max_new_tokens, sampling, stop_token_ids, seed)
        check_gen_length(requests, max_new_tokens, self.model.max_positions)
        check_sampling(requests)
        self.block_length, self.steps_per_block = self.config.plan(max_new_tokens)
        if self.config.shift_logits and any(len(r.prompt) < 1 for r in requests):
            raise ValueError("shift_logits needs a prompt of at least one token")
        return requests

    # ------------------------------------------------------------------ the loop

    def _run(self, requests: list[Request], caches: dict) -> None:
        model, cfg = self.model, self.config
        gen_length = requests[0].max_new_tokens
        # with CFG each request also holds an unconditional canvas of the same length
        extra = max(len(r.prompt) for r in requests) + gen_length if cfg.cfg_scale > 0 else 0
        cache = self._cache(model, requests, caches, reserve=extra)
        runner = CanvasRunner(self, model, cache)
        canvases = Canvases(len(requests), gen_length, self.mask_id, model.device)
        seeds = torch.tensor([r.seed for r in requests], dtype=torch.int64, device=model.device)
        slots = [_Slot(r, r.index, canvas=[self.mask_id] * gen_length) for r in requests]
        for s in slots:
            self._start_block(s, canvases)
        total_steps = self._total_steps(gen_length)
        active = slots
        while active:
            logits = self._block_logits(runner, active, canvases)
            out = self._denoise(logits, active, canvases, seeds, total_steps)
            active = self._advance(runner, active, canvases, out, total_steps)

    def _total_steps(self, gen_length: int) -> int | None:
        """Fixed-length presets: the number of steps of the whole canvas (mdlm adds the noise
        removal step after it); None for the adaptive Fast-dLLM rules."""
        if self.config.adaptive:
            return None
        return self.steps_per_block * (gen_length // self.block_length)

    def _start_block(self, slot: _Slot, canvases: Canvases) -> None:
        cfg = self.config
        slot.step_in_block = 0
        if cfg.adaptive or cfg.preset == "mdlm" or (cfg.preset == "dream" and cfg.alg == "origin"):
            return
        lo = slot.block * self.block_length
        masked = (canvases.tokens[slot.row, lo : lo + self.block_length] == self.mask_id).sum().reshape(1)
        kind = "log_linear" if cfg.preset == "dream" else "linear"
        slot.k_table = ops.transfer_schedule(masked, self.steps_per_block, kind, eps=cfg.eps)[0]

    def _rows(self, slot: _Slot, seq_id, prompt: list[int], canvas: list[int]) -> CanvasRows:
        cfg = self.config
        p, g = len(prompt), len(canvas)
        lo = p + slot.block * self.block_length
        hi = lo + self.block_length
        shift = 1 if cfg.shift_logits else 0
        positions = range(lo - shift, hi - shift)
        every = cfg.refresh_every
        refresh = slot.step_in_block == 0 or (every is not None and slot.step_in_block % every == 0)
        if cfg.cache == "none" or refresh:
            start, end = 0, p + g
        elif cfg.cache == "prefix":
            start, end = lo - shift, p + g
        else:
            start, end = lo - shift, hi
        return CanvasRows(slot.request, seq_id, prompt + canvas, start, end, positions)

    def _block_logits(self, runner: CanvasRunner, active: list[_Slot], canvases: Canvases) -> torch.Tensor:
        """``[B, W, V]`` float32 logits of each active request's current block (CFG combined)."""
        cfg = self.config
        reuse = cfg.preset == "mdlm" and cfg.predictor == "ddpm_cache"
        need = [s for s in active if not (reuse and s.logits is not None and not s.changed)]
        if need:
            items = []
            for s in need:
                items.append(self._rows(s, s.seq_id, s.request.prompt, s.canvas))
                if cfg.cfg_scale > 0:
                    items.append(self._rows(s, s.uncond_id, [self.mask_id] * len(s.request.prompt), s.canvas))
            logits = runner.run(items).float()
            width = self.block_length
            per = logits.view(len(need), -1, width, logits.shape[-1])
            if cfg.cfg_scale > 0:  # LLaDA's unsupervised CFG: u + (w + 1) (c - u)
                block = torch.lerp(per[:, 1], per[:, 0], cfg.cfg_scale + 1.0)
            else:
                block = per[:, 0]
            for s, lg in zip(need, block):
                s.logits = lg
        return torch.stack([s.logits for s in active])

    def _denoise(self, logits, active: list[_Slot], canvases: Canvases, seeds, total_steps) -> ops.DenoiseOutput:
        cfg = self.config
        dev = logits.device
        rows = torch.tensor([s.row for s in active], dtype=torch.int64, device=dev)
        final = [cfg.preset == "mdlm" and total_steps is not None and s.offset >= total_steps for s in active]
        params = [s.request.sampling for s in active]
        temperature = torch.tensor([0.0 if f else p.temperature for p, f in zip(params, final)],
                                   dtype=torch.float32, device=dev)
        sampled = bool((temperature > 0).any())
        start = torch.tensor([s.block * self.block_length for s in active], dtype=torch.int64, device=dev)
        kwargs = dict(mask_id=self.mask_id, window_start=start, block_start=start, block_end=start + self.block_length,
                      suppress_ids=self.suppress, seed=seeds.index_select(0, rows),
                      offset=torch.tensor([s.offset for s in active], dtype=torch.int64, device=dev),
                      proposal="sample" if sampled else "greedy",
                      confidence=_CONFIDENCE[cfg.alg if cfg.preset == "dream" else cfg.remasking],
                      tempered_confidence=cfg.preset == "dream")
        if sampled:
            kwargs.update(temperature=temperature)
        if sampled and any(p.top_k or p.top_p < 1.0 for p in params):  # the filters cost a sort over V
            kwargs.update(top_k=torch.tensor([p.top_k for p in params], dtype=torch.int32, device=dev),
                          top_p=torch.tensor([p.top_p for p in params], dtype=torch.float32, device=dev))
        if cfg.adaptive:
            if cfg.threshold is not None:
                kwargs.update(select="threshold", tau=cfg.threshold)
            else:
                kwargs.update(select="factor", factor=cfg.factor)
        elif cfg.preset == "mdlm" or (cfg.preset == "dream" and cfg.alg == "origin"):
            kwargs.update(select="bernoulli", p_transfer=self._p_transfer(active, final, total_steps, dev))
        else:
            k = torch.stack([s.k_table[s.step_in_block] for s in active]).to(dev)
            kwargs.update(select="topk", k=k)
            if cfg.alg_temp:
                kwargs.update(selection_temperature=cfg.alg_temp)
        tokens = canvases.tokens.index_select(0, rows)
        out = ops.denoise_step(logits, tokens, **kwargs)
        canvases.tokens.index_copy_(0, rows, out.tokens)
        return out

    def _p_transfer(self, active, final, total_steps, dev) -> torch.Tensor:
        """Reveal probability ``1 - t_{i+1} / t_i`` on ``linspace(1, eps, steps + 1)`` (float32);
        Dream reveals everything on its last step, MDLM's noise removal step too."""
        cfg = self.config
        t = torch.linspace(1.0, cfg.eps, total_steps + 1, dtype=torch.float32)
        fraction = 1.0 - t[1:] / t[:-1]
        if cfg.preset == "dream":
            fraction[-1] = 1.0
        values = [1.0 if f else float(fraction[s.offset]) for s, f in zip(active, final)]
        return torch.tensor(values, dtype=torch.float32, device=dev)

    def _advance(self, runner, active: list[_Slot], canvases: Canvases, out, total_steps) -> list[_Slot]:
        """Host bookkeeping after a step (one read of the step's tokens): block and step counters,
        early stop, finishing."""
        cfg = self.config
        invalid = (out.proposal < 0).any(1, keepdim=True).to(torch.int64)
        host = torch.cat([out.tokens, out.num_committed.unsqueeze(1).to(torch.int64), invalid], 1).tolist()
        still = []
        for s, row in zip(active, host):
            canvas, committed, bad = row[:-2], row[-2], row[-1]
            s.canvas = canvas
            r = s.request
            r.stats.extra["steps"] = r.stats.extra.get("steps", 0) + 1
            r.stats.extra["committed_tokens"] = r.stats.extra.get("committed_tokens", 0) + committed
            s.changed = committed > 0
            s.offset += 1
            s.step_in_block += 1
            lo = s.block * self.block_length
            block_full = self.mask_id not in canvas[lo : lo + self.block_length]
            if cfg.adaptive or cfg.preset in ("llada", "fast_dllm"):
                block_done = block_full or (not cfg.adaptive and s.step_in_block >= self.steps_per_block)
            else:
                block_done = False  # one block: the step count decides
            done = self.mask_id not in canvas
            if total_steps is not None:
                last = total_steps + (1 if cfg.preset == "mdlm" and cfg.noise_removal else 0)
                done = done or s.offset >= last
            cut = stop_cut(canvas, self.mask_id, r.stop_ids)
            if bad and not done and cut is None and committed == 0:
                self._finish(r, "invalid_logits")
                runner.release([s.seq_id, s.uncond_id])
                continue
            if cut is not None or done:
                finish_canvas(self, r, canvas[:cut] if cut is not None else canvas, self.mask_id)
                runner.release([s.seq_id, s.uncond_id])
                continue
            if block_done:
                s.block += 1
                self._start_block(s, canvases)
            still.append(s)
        return still
