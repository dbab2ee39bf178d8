"""Score-based discrete diffusion decoding (SEDD, Lou, Meng & Ermon 2024): the Euler and analytic
(Tweedie tau-leaping) samplers on the absorbing or uniform graph, one fused
``discrete_diffusion_step`` per step.

The canvas of a request is ``prompt + max_new_tokens`` positions. It starts all-mask on the
absorbing graph and as uniform random states on the uniform graph; positions the request gives
(``canvas=`` templates: infilling anywhere) and the prompt never change (SEDD's projector). With
``timesteps = linspace(1, eps, steps + 1)`` and ``dt = (1 - eps) / steps``, step ``i`` runs the
model over every changed canvas and one op call moves the whole batch from ``t_i`` to ``t_i - dt``:

* ``euler``: ``sigma = sigma(t_i)``, ``dsigma = rate(t_i) dt`` (SEDD's ``EulerPredictor``);
* ``analytic``: ``sigma = sigma(t_i)``, ``dsigma = sigma(t_i) - sigma(t_i - dt)``;
* ``denoise`` (default on): one more step, sampler ``final`` at ``t = eps`` with ``dsigma = sigma(eps)``
  (SEDD's ``Denoiser``: the absorbing graph unmasks every position).

The generated region ``[N, max_new_tokens]`` is the op's canvas (the prompt is fixed by
construction and only feeds the model), so the op's counter ``c0 = j * V + v`` counts the
position ``j`` inside the generated region: a request's draws do not depend on its prompt length
or on the rest of the batch. Step ``i`` uses ``offset = i`` (the final step ``offset = steps``).
The uniform graph's starting canvas is drawn with the same Philox contract: state
``floor(u_j * V)`` with ``u_j = uniform(seed, INIT_OFFSET, DIFFUSION_TOKEN, c0 = j)`` (an offset no
step reaches).

**The uniform graph's states.** The graph moves between the ids ``[0, num_states)`` and ``V`` in
its formulas is ``num_states``: the decoder hands the op the logits of those ids only, so tokens
outside them (mask, padding, control ids) are never proposed -- a ``-inf`` logit would not do,
since uniform noise itself jumps to every state of the graph. ``num_states`` must be the set the
model was trained to denoise over (zoo ``kjv-udm``: bytes and eos, 257, read from its config).

**Few analytic steps on the uniform graph.** The op's staggered score ``S (E + 1) - E sum S / V``
(``E = expm1(dsigma)``) is computed in float32; with SEDD's geometric schedule the first of fewer
than about 8 analytic steps has ``dsigma > 17`` and the two terms cancel to nothing, so the op
returns -1 (an error here); up to about 16 steps the first step's weights are rounded coarsely.
Use 16 or more analytic steps on the uniform graph (SEDD's default is 128).

**Reused forwards.** The models here have no time input, so a canvas that did not change since
the last step gives the same model output: such requests skip the model call (MDLM's
``ddpm_cache``; most absorbing steps move nothing when ``steps`` exceeds the canvas length).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Sequence

import torch

from decodekit import ops
from decodekit.decoders.base import Decoder, Request
from decodekit.decoders.canvas import CanvasRows, CanvasRunner, check_gen_length, check_mask_id, finish_canvas
from decodekit.decoders.noise_schedules import Geometric, LogLinear, NoiseSchedule
from decodekit.ops.discrete_diffusion import GRAPHS, PARAMETERIZATIONS

INIT_OFFSET = 2**63 - 1  # Philox offset of the uniform graph's starting canvas (steps use 0..steps)
SAMPLERS = ("euler", "analytic")
NOISES = ("loglinear", "geometric")


@dataclass
class _Slot:
    """A request's canvas (host copy) and its last model output over the generated region."""

    request: Request
    row: int
    canvas: list
    scores: torch.Tensor | None = None  # [G, V] of the last forward
    changed: bool = True


def _choice(name: str, value, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def _positive(name: str, value, *, below_one: bool = False) -> float:
    high = 1.0 if below_one else float("inf")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < high:
        raise ValueError(f"{name} must be a float in (0, {'1' if below_one else 'inf'}), got {value!r}")
    return float(value)


class DiscreteDiffusionDecoder(Decoder):
    """SEDD's samplers (module docstring) on a bidirectional model.

    Example::

        model, tok = decodekit.zoo.load("kjv-udm", dtype=torch.float32)
        decoder = DiscreteDiffusionDecoder(model, graph="uniform", sampler="analytic", steps=64, tokenizer=tok)
        out = decoder.generate(["Ruth1:1 Now it came to pass"], max_new_tokens=64, seed=0)
        # infilling: None marks the positions to generate, ints are kept
        tpl = [None] * 20 + tok.encode(" the LORD") + [None] * 20
        out = decoder.generate(["Ruth1:1 "], max_new_tokens=len(tpl), canvas=[tpl], seed=0)

    Args:
        model: a bidirectional model (:class:`decodekit.models.Model`).
        graph: ``"absorbing"`` (tokens jump to the mask) or ``"uniform"`` (to uniform states).
        sampler: ``"euler"`` or ``"analytic"`` (Tweedie tau-leaping).
        noise: ``"loglinear"`` (default on absorbing; ``loglinear_eps``), ``"geometric"`` (default on
            uniform; ``sigma_min``, ``sigma_max``) or a :class:`NoiseSchedule` (with the schedule
            keywords left None).
        steps: int >= 1 reverse steps; eps: the last time in (0, 1) (SEDD's 1e-5).
        parameterization: ``"clean_logits"`` (the model predicts the clean token, MDLM / the zoo)
            or ``"log_score"`` (a SEDD score network).
        mask_token_id: the absorbing state; default ``model.config.mask_token_id``, else the
            tokenizer's. Not used on the uniform graph.
        num_states: uniform graph: its states are the ids ``[0, num_states)``; default the model
            config's ``extra["diffusion_states"]`` (zoo ``kjv-udm``), else the whole vocabulary.
        denoise: run the final noise-removal step (SEDD's ``denoise=True``).
        sigma_min, sigma_max: the geometric schedule's (default 1e-4, 20).
        loglinear_eps: the log-linear schedule's (default 1e-3).
        backend: ``discrete_diffusion_step``'s (None: DESIGN.md's default).
        tokenizer, num_blocks, block_size: as :class:`~decodekit.decoders.base.Decoder`.

    ``generate(prompts, *, max_new_tokens, sampling, stop_token_ids, seed, canvas=None)``:
    ``max_new_tokens`` is the canvas length (prompt + canvas must fit the model's context);
    ``canvas`` optionally gives one template per prompt, a list of ``max_new_tokens`` entries, each
    a token id to keep or None to generate (on the absorbing graph the mask id also means
    "generate"); ``sampling`` must be the default (SEDD's samplers draw from the model's
    distribution as is); the output is cut after the first stop token. Statistics:
    ``forward_calls``, ``extra["steps"]`` (op calls), ``extra["forward_tokens"]`` (model rows).
    """

    model_attention = "bidirectional"
    _canvas_arg = None  # generate's ``canvas``, read by _requests

    def __init__(self, model, *, graph: str = "absorbing", sampler: str = "euler", noise=None, steps: int = 128,
                 eps: float = 1e-5, parameterization: str = "clean_logits", mask_token_id: int | None = None,
                 num_states: int | None = None, denoise: bool = True, sigma_min: float | None = None,
                 sigma_max: float | None = None, loglinear_eps: float | None = None, backend: str | None = None,
                 tokenizer=None, num_blocks: int | None = None, block_size: int = 16):
        super().__init__(model, tokenizer=tokenizer, num_blocks=num_blocks, block_size=block_size)
        self.graph = _choice("graph", graph, tuple(GRAPHS))
        self.sampler = _choice("sampler", sampler, SAMPLERS)
        self.parameterization = _choice("parameterization", parameterization, tuple(PARAMETERIZATIONS))
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        self.steps = steps
        self.eps = _positive("eps", eps, below_one=True)
        if not isinstance(denoise, bool):
            raise TypeError(f"denoise must be a bool, got {type(denoise).__name__}")
        self.denoise = denoise
        if backend is not None and not isinstance(backend, str):
            raise TypeError(f"backend must be None or a str, got {type(backend).__name__}")
        self.backend = backend
        self.noise = self._schedule(noise, sigma_min, sigma_max, loglinear_eps)
        config = getattr(model, "config", None)
        if graph == "absorbing":
            if num_states is not None:
                raise ValueError("num_states is the uniform graph's; the absorbing graph uses the whole vocabulary")
            if mask_token_id is None:
                mask_token_id = getattr(config, "mask_token_id", None)
            if mask_token_id is None:
                mask_token_id = getattr(tokenizer, "mask_token_id", None)
            if mask_token_id is None:
                raise ValueError("graph='absorbing' needs mask_token_id (not given, and neither the model config "
                                 "nor the tokenizer has one)")
            self.mask_id = check_mask_id(mask_token_id, model.vocab_size)
            self.num_states = model.vocab_size
        else:
            if num_states is None:
                num_states = (getattr(config, "extra", None) or {}).get("diffusion_states", model.vocab_size)
            vocab = model.vocab_size
            if isinstance(num_states, bool) or not isinstance(num_states, int) or not 2 <= num_states <= vocab:
                raise ValueError(f"num_states must be an int in [2, {model.vocab_size}], got {num_states!r}")
            self.mask_id = None
            self.num_states = num_states

    def _schedule(self, noise, sigma_min, sigma_max, loglinear_eps) -> NoiseSchedule:
        if isinstance(noise, NoiseSchedule):
            if any(v is not None for v in (sigma_min, sigma_max, loglinear_eps)):
                raise ValueError("sigma_min, sigma_max and loglinear_eps configure a named noise; "
                                 "leave them None with a NoiseSchedule instance")
            return noise
        if noise is None:
            noise = "loglinear" if self.graph == "absorbing" else "geometric"
        _choice("noise", noise, NOISES)
        if noise == "loglinear":
            if sigma_min is not None or sigma_max is not None:
                raise ValueError("sigma_min and sigma_max belong to noise='geometric', not 'loglinear'")
            return LogLinear(1e-3 if loglinear_eps is None else loglinear_eps)
        if loglinear_eps is not None:
            raise ValueError("loglinear_eps belongs to noise='loglinear', not 'geometric'")
        return Geometric(1e-4 if sigma_min is None else sigma_min, 20.0 if sigma_max is None else sigma_max)

    def plan(self) -> list[tuple[str, float, float]]:
        """``(sampler, sigma, dsigma)`` of every op call, in order (float64 math, module docstring)."""
        t = torch.linspace(1.0, self.eps, self.steps + 1, dtype=torch.float64)
        dt = (1.0 - self.eps) / self.steps
        out = []
        for ti in t[:-1]:
            sigma = self.noise.sigma(ti)
            if self.sampler == "euler":
                dsigma = self.noise.rate(ti) * dt
            else:
                dsigma = sigma - self.noise.sigma(ti - dt)
            out.append((self.sampler, float(sigma), float(dsigma)))
        if self.denoise:
            sigma = float(self.noise.sigma(t[-1]))
            out.append(("final", sigma, sigma))
        return out

    # ------------------------------------------------------------------ generate and its checks

    def generate(self, prompts, *, max_new_tokens: int, sampling=None, stop_token_ids: Sequence[int] | None = None,
                 seed=None, canvas: Sequence[Sequence[int | None]] | None = None):
        """As :meth:`Decoder.generate`, plus ``canvas``: infilling templates (class docstring)."""
        self._canvas_arg = canvas
        try:
            return super().generate(prompts, max_new_tokens=max_new_tokens, sampling=sampling,
                                    stop_token_ids=stop_token_ids, seed=seed)
        finally:
            self._canvas_arg = None

    def _requests(self, prompts, max_new_tokens, sampling, stop_token_ids, seed):
        requests = super()._requests(prompts, max_new_tokens, sampling, stop_token_ids, seed)
        check_gen_length(requests, max_new_tokens, self.model.max_positions)
        for r in requests:
            if r.sampling != type(r.sampling)():
                raise ValueError(f"sampling for prompts[{r.index}] is not the default: SEDD's samplers draw from "
                                 "the model's distribution (no temperature, top-k/p, min_p or penalties)")
        self._templates = self._check_templates(self._canvas_arg, len(requests), max_new_tokens)
        return requests

    def _check_templates(self, canvas, count: int, length: int) -> list[list[int | None]]:
        if canvas is None:
            return [[None] * length for _ in range(count)]
        if isinstance(canvas, (str, torch.Tensor)) or not isinstance(canvas, (list, tuple)) or len(canvas) != count:
            raise ValueError(f"canvas must be a list of {count} templates (one per prompt), got {canvas!r:.80}")
        high = self.num_states if self.graph == "uniform" else self.model.vocab_size
        out = []
        for i, template in enumerate(canvas):
            if not isinstance(template, (list, tuple)) or len(template) != length:
                raise ValueError(f"canvas[{i}] must be a list of max_new_tokens={length} entries (token id or None)")
            row = []
            for token in template:
                if token is None or token == self.mask_id:
                    row.append(None)
                    continue
                if isinstance(token, bool) or not isinstance(token, int):
                    raise TypeError(f"canvas[{i}] entries must be token ids or None, got {token!r}")
                if not 0 <= token < high:
                    raise ValueError(f"canvas[{i}] has token {token} outside [0, {high})"
                                     + (" (the uniform graph's states)" if self.graph == "uniform" else ""))
                row.append(token)
            out.append(row)
        return out

    # ------------------------------------------------------------------ the loop

    def _run(self, requests: list[Request], caches: dict) -> None:
        model, dev = self.model, self.model.device
        runner = CanvasRunner(self, model, self._cache(model, requests, caches))
        seeds = torch.tensor([r.seed for r in requests], dtype=torch.int64, device=dev)
        fixed = torch.tensor([[t is not None for t in tpl] for tpl in self._templates], dtype=torch.bool, device=dev)
        tokens = self._initial_canvas(seeds, fixed)
        host = tokens.tolist()
        active = [_Slot(r, r.index, host[r.index]) for r in requests]
        for offset, (sampler, sigma, dsigma) in enumerate(self.plan()):
            if not active:
                break
            rows = torch.tensor([s.row for s in active], dtype=torch.int64, device=dev)
            batch = len(active)
            out = ops.discrete_diffusion_step(
                self._scores(runner, active), tokens.index_select(0, rows),
                sigma=torch.full((batch,), sigma, dtype=torch.float32, device=dev),
                dsigma=torch.full((batch,), dsigma, dtype=torch.float32, device=dev),
                graph=self.graph, sampler=sampler, parameterization=self.parameterization, mask_id=self.mask_id,
                fixed=fixed.index_select(0, rows) if bool(fixed.any()) else None, seed=seeds.index_select(0, rows),
                offset=torch.full((batch,), offset, dtype=torch.int64, device=dev), backend=self.backend)
            tokens.index_copy_(0, rows, out)
            active = self._advance(runner, active, out.tolist(), offset)
        for s in active:
            self._emit(runner, s)

    def _initial_canvas(self, seeds: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """``[N, G]`` int64: the given tokens, and masks (absorbing) or uniform states elsewhere."""
        count, length = fixed.shape
        if self.graph == "absorbing":
            start = torch.full((count, length), self.mask_id, dtype=torch.int64, device=fixed.device)
        else:
            u = ops.philox_uniform(seeds, INIT_OFFSET, ops.Stream.DIFFUSION_TOKEN, length, backend=self.backend)
            start = (u.double() * self.num_states).to(torch.int64).clamp_(0, self.num_states - 1)
        given = torch.tensor([[0 if t is None else t for t in tpl] for tpl in self._templates], dtype=torch.int64,
                             device=fixed.device)
        return torch.where(fixed, given, start)

    def _scores(self, runner: CanvasRunner, active: list[_Slot]) -> torch.Tensor:
        """``[B, G, V]`` model output over the generated regions (V = the graph's states); canvases
        unchanged since their last forward reuse it."""
        need = [s for s in active if s.changed]
        if need:
            items = []
            for s in need:
                prompt, g = s.request.prompt, len(s.canvas)
                items.append(CanvasRows(s.request, s.request.seq_id, prompt + s.canvas, 0, len(prompt) + g,
                                        range(len(prompt), len(prompt) + g)))
            logits = runner.run(items)
            per = logits.view(len(need), -1, logits.shape[-1])[..., : self.num_states]
            for s, rows in zip(need, per):
                s.scores, s.changed = rows, False
        return torch.stack([s.scores for s in active])

    def _advance(self, runner: CanvasRunner, active: list[_Slot], new: list[list[int]], offset: int) -> list[_Slot]:
        """Host bookkeeping after a step: invalid rows raise, absorbing canvases without masks are done."""
        still = []
        for s, canvas in zip(active, new):
            if -1 in canvas:
                hint = ""
                if self.graph == "uniform" and self.sampler == "analytic" and offset == 0:
                    hint = (f"; the first step's dsigma={self.plan()[0][2]:.3g} may be too large for the op's "
                            "float32 staggered score (expm1(dsigma) cancels): use more steps")
                raise RuntimeError(
                    f"discrete_diffusion_step returned -1 for prompts[{s.request.index}] at canvas position "
                    f"{canvas.index(-1)} (step {offset}): the model's output there is invalid (NaN/+inf, or no "
                    f"transition with positive weight){hint}")
            s.changed = canvas != s.canvas
            s.canvas = canvas
            extra = s.request.stats.extra
            extra["steps"] = extra.get("steps", 0) + 1
            if self.graph == "absorbing" and self.mask_id not in canvas:
                self._emit(runner, s)  # unmasked tokens never change: later steps would move nothing
            else:
                still.append(s)
        return still

    def _emit(self, runner: CanvasRunner, slot: _Slot) -> None:
        mask = self.mask_id if self.mask_id is not None else -1
        finish_canvas(self, slot.request, slot.canvas, mask)
        runner.release([slot.request.seq_id])
