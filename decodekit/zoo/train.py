"""Training of the zoo's models: one loss per kind, AdamW with warmup + cosine decay, a tqdm bar
showing the loss, held-out bits per byte, fp16 safetensors out.

Kinds (the model protocol's ``attention`` in brackets):

* ``"ar"`` (causal): next-token cross-entropy on windows of the verse stream.
* ``"mdm"`` (bidirectional): masked diffusion as MDLM / LLaDA: ``t ~ U(eps, 1]`` per sequence,
  each token masked with probability ``t``, cross-entropy on the masked positions weighted
  ``1 / t`` (no logit shift: the mask at j is read from row j, as the LLaDA/MDLM presets,
  MaskPredictDecoder, BlockDiffusionDecoder and DiffusionDrafter read it by default). Every
  ``block_every``-th step trains block decoding instead (BD3-LM): the sequence is a clean prompt
  segment then blocks of 4-32 tokens; a clean copy runs block-causally and a noisy copy of each
  block sees the clean earlier blocks and itself, as :class:`BlockDiffusionDecoder` attends.
* ``"planned"`` (causal config; the decoder passes its own masks): next-token loss on plans and
  masked-diffusion loss on spans, on the text format of :mod:`decodekit.zoo.planned`.
* ``"udm"`` (bidirectional): uniform-noise discrete diffusion (SEDD's uniform graph) with a
  clean-token network: ``t ~ U(eps, 1]`` per sequence, ``sigma = Geometric()(t)``, each position
  replaced with probability ``1 - e^-sigma`` by a uniform draw from the graph's states (the ids
  ``[0, UDM_STATES)``: bytes and eos, every id the verse stream holds; so ``p_t = e^-sigma
  delta(x0) + (1 - e^-sigma) / UDM_STATES`` exactly), and plain cross-entropy of the clean token
  at every position (unweighted: every noise level counts the same; the ELBO's weighting would
  put almost all weight on the high-noise end), over the states' logits only, as
  :class:`~decodekit.decoders.DiscreteDiffusionDecoder` reads them. There is no time input: the
  Transformer infers the noise level from how garbled its context is.

Losses are ``nats / count`` (count = next-token rows, or all canvas positions for diffusion, as
MDLM normalises); held-out bits per byte are total nats / (ln 2 x byte tokens) — for the
diffusion kinds an upper bound (the negative ELBO, estimated with a fixed-seed draw of ``t``;
for ``"udm"`` SEDD's score-entropy ELBO of the model's scores, see :func:`udm_elbo_nats`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.nn import functional as F

from decodekit.decoders.noise_schedules import Geometric
from decodekit.models import Transformer, TransformerConfig
from decodekit.zoo import planned as pl
from decodekit.zoo.corpus import Verse, chapters, token_stream
from decodekit.zoo.tokenizer import NUM_BYTES, ByteTokenizer

KINDS = ("ar", "mdm", "planned", "udm")
DIFFUSION_KINDS = ("mdm", "udm")  # bidirectional models
# the uniform graph's states: bytes and eos (the ids of the verse stream), never mask/pad/control
UDM_STATES = NUM_BYTES + 1
EPS = 1e-3  # smallest diffusion time: the 1/t weight stays <= 1000
BLOCK_LENGTHS = (4, 8, 16, 32)
UDM_ELBO_DRAWS = 4  # t draws per held-out window: the ELBO's Monte-Carlo spread shrinks to ~1%


@dataclass
class TrainSettings:
    """Hyper-parameters of one run (see :data:`decodekit.zoo.ZOO` for the zoo's values).

    Attributes:
        steps: optimiser steps. batch_size, seq_len: examples per step and their tokens.
        lr: peak AdamW learning rate (linear warmup over ``warmup`` steps, cosine to 10%).
        weight_decay: AdamW's. seed: initial weights, data order and noise.
        block_every: ``"mdm"``: every n-th step trains block decoding (0 = never).
        max_round_verses: ``"planned"``: verses per round are drawn from 1..this.
        eval_examples: held-out windows/documents for bits per byte.
    """

    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.1
    seed: int = 0
    block_every: int = 2
    max_round_verses: int = 3
    eval_examples: int = 64


# ---------------------------------------------------------------------------- data


class StreamData:
    """Random windows of the verse stream (``"ar"``, ``"mdm"``)."""

    def __init__(self, verses: Sequence[Verse], tokenizer: ByteTokenizer, window: int):
        self.ids = torch.tensor(token_stream(verses, tokenizer), dtype=torch.int64)
        self.window = window

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        if len(self.ids) <= self.window:
            raise ValueError(f"the corpus has {len(self.ids)} tokens, fewer than one window of {self.window + 1}")
        starts = torch.randint(0, len(self.ids) - self.window, (batch,), generator=generator)
        return torch.stack([self.ids[s:s + self.window] for s in starts.tolist()])

    def tiles(self, count: int) -> torch.Tensor:
        """Up to ``count`` consecutive non-overlapping windows from the start (evaluation); a
        stream shorter than one window is one shorter window."""
        window = min(self.window, len(self.ids))
        n = min(count, len(self.ids) // window)
        return self.ids[: n * window].view(n, window)


class PlannedData:
    """Random planned documents inside one chapter: a plain verse, then rounds of 1..max verses
    until the next would not fit ``seq_len``; the chapter's end closes the last round with eos."""

    def __init__(self, verses: Sequence[Verse], tokenizer: ByteTokenizer, seq_len: int, max_round_verses: int):
        self.chapters = [c for c in chapters(verses) if len(c) >= 2]
        if not self.chapters:
            raise ValueError("planned training needs chapters of at least 2 verses")
        self.tokenizer, self.seq_len, self.max_round = tokenizer, seq_len, max_round_verses

    def document(self, generator: torch.Generator) -> pl.PlannedDoc:
        for _ in range(1000):
            doc = self._try(generator)
            if doc is not None:
                return doc
        raise ValueError(f"seq_len={self.seq_len} is too short for the corpus's planned documents")

    def _try(self, generator):
        rand = lambda n: int(torch.randint(0, n, (1,), generator=generator))  # noqa: E731
        chapter = self.chapters[rand(len(self.chapters))]
        first = rand(len(chapter) - 1)
        prefix, rest = chapter[first].line, chapter[first + 1:]
        rounds, used, doc = [], 0, None
        while used < len(rest):
            size = 1 + rand(self.max_round)
            candidate = rounds + [[v.line for v in rest[used:used + size]]]
            taken = used + len(candidate[-1])
            trial = pl.annotate(prefix, candidate, self.tokenizer, final_eos=taken == len(rest))
            if len(trial.tokens) > self.seq_len:
                break
            rounds, used, doc = candidate, taken, trial
        return doc

    def batch(self, docs: Sequence[pl.PlannedDoc], generator: torch.Generator, mask_id: int):
        inputs, labels, weights, masks = [], [], [], []
        for doc in docs:
            t = EPS + (1 - EPS) * float(torch.rand((), generator=generator))
            x, y, w = pl.targets(doc, mask_id, t, generator, self.seq_len)
            inputs.append(x), labels.append(y), weights.append(w)
            masks.append(pl.attention_mask(doc, self.seq_len))
        # the diffusion loss covers the last round's span slots (pl.targets)
        counts = sum(end - start - 2 for d in docs for start, end in d.rounds[-1][1])
        return torch.stack(inputs), torch.stack(labels), torch.stack(weights), torch.stack(masks), counts


# ---------------------------------------------------------------------------- losses


def ar_nats(model: Transformer, windows: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """``(nats, rows, byte targets)`` of next-token prediction on ``windows [B, L + 1]``."""
    logits = model.forward_train(windows[:, :-1], "causal")
    target = windows[:, 1:]
    nats = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), reduction="sum")
    return nats, target.numel(), int((target < NUM_BYTES).sum())


def mdm_nats(model: Transformer, x: torch.Tensor, mask_id: int, generator: torch.Generator):
    """MDLM/LLaDA negative ELBO of ``x [B, L]`` with full attention: ``(nats, B*L, bytes)``."""
    t = EPS + (1 - EPS) * torch.rand(x.shape[0], 1, generator=generator)
    masked = torch.rand(x.shape, generator=generator) < t
    logits = model.forward_train(torch.where(masked, mask_id, x), "full")
    ce = F.cross_entropy(logits[masked].float(), x[masked], reduction="none")
    nats = (ce / t.expand_as(x)[masked]).sum()
    return nats, x.numel(), int((x < NUM_BYTES).sum())


def block_mask(length: int, prompt: int, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BD3-LM's training layout for ``[clean x (length) ; noisy x[prompt:]]``: ``(mask [T, T],
    positions [T], noisy segment ids [length - prompt])`` with segment 0 = the prompt, 1.. = blocks.
    Clean rows see clean segments <= theirs; a noisy block sees the clean segments before it and
    its own noisy copy."""
    seg = torch.zeros(length, dtype=torch.int64)
    seg[prompt:] = 1 + torch.arange(length - prompt) // block
    seg_all = torch.cat([seg, seg[prompt:]])
    noisy = torch.cat([torch.zeros(length, dtype=torch.bool), torch.ones(length - prompt, dtype=torch.bool)])
    sq, sk = seg_all[:, None], seg_all[None, :]
    nq, nk = noisy[:, None], noisy[None, :]
    mask = (~nq & ~nk & (sk <= sq)) | (nq & ~nk & (sk < sq)) | (nq & nk & (sk == sq))
    positions = torch.cat([torch.arange(length), torch.arange(prompt, length)])
    return mask, positions, seg[prompt:]


def block_nats(model: Transformer, x: torch.Tensor, mask_id: int, generator: torch.Generator):
    """Block-diffusion negative ELBO of ``x [B, L]`` (random prompt length and block length,
    ``t`` per block): ``(nats, noisy positions, bytes)``."""
    batch, length = x.shape
    block = BLOCK_LENGTHS[int(torch.randint(0, len(BLOCK_LENGTHS), (1,), generator=generator))]
    prompt = int(torch.randint(0, length // 2 + 1, (1,), generator=generator))
    mask, positions, seg = block_mask(length, prompt, block)
    target = x[:, prompt:]
    t_block = EPS + (1 - EPS) * torch.rand(batch, int(seg.max()), generator=generator)
    t = t_block[:, seg - 1]
    masked = torch.rand(target.shape, generator=generator) < t
    logits = model.forward_train(torch.cat([x, torch.where(masked, mask_id, target)], 1), mask, positions)
    noisy_logits = logits[:, length:]
    ce = F.cross_entropy(noisy_logits[masked].float(), target[masked], reduction="none")
    return (ce / t[masked]).sum(), target.numel(), int((target < NUM_BYTES).sum())


def planned_nats(model: Transformer, batch, from_rows: Sequence[int] | None = None):
    """Next-token + diffusion nats of a planned batch ``(inputs, labels, weights, masks, span
    slots)``; ``from_rows``: per example, rows before it carry no loss (evaluation skips the
    plain-text prompt). Returns ``(nats, next-token rows + span slots, weighted rows)``."""
    inputs, labels, weights, masks, slots = batch
    if from_rows is not None:
        weights = weights.clone()
        for i, start in enumerate(from_rows):
            weights[i, :start] = 0
    logits = model.forward_train(inputs, masks)
    rows = weights > 0
    ce = F.cross_entropy(logits[rows].float(), labels[rows], reduction="none")
    next_token_rows = int((weights == 1).sum())
    return (ce * weights[rows]).sum(), next_token_rows + slots, int(rows.sum())


def uniform_noise(x: torch.Tensor, sigma: torch.Tensor, num_states: int, generator: torch.Generator) -> torch.Tensor:
    """``x [B, L]`` through the uniform graph's forward process: each position replaced with
    probability ``1 - e^-sigma`` (``sigma [B, 1]``) by a uniform draw from ``[0, num_states)``."""
    replaced = torch.rand(x.shape, generator=generator, dtype=torch.float64) < -torch.expm1(-sigma.cpu())
    noise = torch.randint(0, num_states, x.shape, generator=generator)
    return torch.where(replaced, noise, x.cpu()).to(x.device)


def udm_nats(model: Transformer, x: torch.Tensor, num_states: int, generator: torch.Generator):
    """Clean-token cross-entropy of ``x [B, L]`` under uniform noise at ``t ~ U(eps, 1]``
    (module docstring): ``(nats, B*L, bytes)``."""
    t = EPS + (1 - EPS) * torch.rand(x.shape[0], 1, generator=generator, dtype=torch.float64)
    noisy = uniform_noise(x, Geometric().sigma(t), num_states, generator)
    logits = model.forward_train(noisy.to(x.device), "full")[..., :num_states]
    nats = F.cross_entropy(logits.flatten(0, 1).float(), x.flatten(), reduction="sum")
    return nats, x.numel(), int((x < NUM_BYTES).sum())


def uniform_concrete_score(log_p: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The concrete score ``S_y = sum_x0 p(x0) p_t(y | x0) / p_t(x | x0)`` of a clean-token
    distribution on the uniform graph (the discrete_diffusion spec's conversion), written as
    ``p_y a / c + (a (1 - p_x) + c) / (a + c)`` with ``a = e^-sigma``, ``c = (1 - a) / V`` so no
    two close numbers are subtracted. ``log_p [B, L, V]``, ``noisy [B, L]``, ``sigma [B, 1]``."""
    vocab = log_p.shape[-1]
    a = torch.exp(-sigma).unsqueeze(-1)
    c = -torch.expm1(-sigma).unsqueeze(-1) / vocab
    p = log_p.exp()
    p_x = p.gather(-1, noisy.unsqueeze(-1))
    return p * (a / c) + (a * (1 - p_x) + c) / (a + c)


def udm_elbo_nats(model: Transformer, x: torch.Tensor, num_states: int, generator: torch.Generator,
                  schedule=None, t: torch.Tensor | None = None) -> torch.Tensor:
    """One Monte-Carlo draw (``t ~ U(0, 1)`` per sequence) of the negative ELBO of ``x [B, L]``
    in nats, for the generative model "uniform prior at ``t = 1``, the reverse process with the
    network's concrete scores, then a draw of the clean tokens from the network at ``t = 0``
    (``sigma_min``)": reconstruction ``-log p(x0 | x_0)`` + ``sigma'(t)`` times SEDD's denoising
    score entropy ``sum_{y != x} (1/V) [S_y - r_y log S_y + r_y (log r_y - 1)]`` (``r`` the true
    ratios ``p_t(y | x0) / p_t(x | x0)``) + the prior's KL (about ``e^-20``), summed over
    positions. An upper bound of that model's negative log-likelihood (float64). ``t [B, 1]``
    overrides the draw of the times (tests)."""
    schedule = schedule or Geometric()
    batch, vocab = x.shape[0], num_states
    if t is None:
        t = torch.rand(batch, 1, generator=generator, dtype=torch.float64)
    sigma = schedule.sigma(t)
    noisy = uniform_noise(x, sigma, vocab, generator)
    log_p = F.log_softmax(model.forward_train(noisy, "full")[..., :vocab].double(), -1)
    score = uniform_concrete_score(log_p, noisy, sigma)
    a = torch.exp(-sigma)
    b = -torch.expm1(-sigma) / vocab  # p_t(y | x0) for y != x0
    clean = (noisy == x).unsqueeze(-1)
    at_x0 = torch.nn.functional.one_hot(x, vocab).bool()
    at_x = torch.nn.functional.one_hot(noisy, vocab).bool()
    ratio = torch.where(clean, (b / (a + b)).unsqueeze(-1), torch.where(at_x0, ((a + b) / b).unsqueeze(-1), 1.0))
    entropy = score - ratio * torch.log(score) + ratio * (torch.log(ratio) - 1)
    dse = torch.where(at_x, 0.0, entropy).sum(-1) / vocab
    path = (schedule.rate(t) * dse).sum()

    start = uniform_noise(x, schedule.sigma(torch.zeros(batch, 1)), vocab, generator)
    recon = F.cross_entropy(model.forward_train(start, "full")[..., :vocab].flatten(0, 1).double(), x.flatten(),
                            reduction="sum")
    end = schedule.sigma(torch.ones(()))
    stay = torch.exp(-end) + (-torch.expm1(-end)) / vocab
    move = -torch.expm1(-end) / vocab
    prior_kl = stay * torch.log(stay * vocab) + (vocab - 1) * move * torch.log(move * vocab)
    return path + recon + prior_kl * x.numel()


@torch.no_grad()
def udm_clean_token_bits(model: Transformer, x: torch.Tensor, num_states: int, sigma: float,
                         generator: torch.Generator) -> float:
    """Held-out clean-token cross-entropy (bits per token) of ``x [B, L]`` at noise level ``sigma``."""
    noisy = uniform_noise(x, torch.full((x.shape[0], 1), sigma, dtype=torch.float64), num_states, generator)
    logits = model.forward_train(noisy, "full")[..., :num_states]
    return float(F.cross_entropy(logits.flatten(0, 1).float(), x.flatten())) / math.log(2)


# ---------------------------------------------------------------------------- training


def lr_lambda(steps: int, warmup: int) -> Callable[[int], float]:
    """Linear warmup to 1, then cosine decay to 0.1 at ``steps``."""
    warmup = max(1, min(warmup, steps // 10 or 1))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def build_model(config: dict, seed: int, device) -> Transformer:
    """A freshly initialised :class:`Transformer` from config kwargs (init keyed by ``seed``)."""
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(**config)).to(device)


def train(kind: str, config: dict, train_verses: Sequence[Verse], held_out: Sequence[Verse],
          settings: TrainSettings, *, device="cpu", out_dir: str | Path | None = None, name: str | None = None,
          progress: bool = True) -> tuple[Transformer, dict]:
    """Train one model and evaluate it; save it to ``out_dir`` when given.

    Args:
        kind: one of :data:`KINDS`.
        config: :class:`~decodekit.models.TransformerConfig` kwargs (``vocab_size`` must be the
            tokenizer's; ``attention`` must be ``"bidirectional"`` for ``"mdm"``).
        train_verses, held_out: from :func:`decodekit.zoo.corpus.split_by_books`.
        settings: :class:`TrainSettings`.
        device: where to train. out_dir: directory for ``config.json``, ``model.safetensors``
            (fp16) and ``zoo.json`` (these settings, the loss curve's ends, held-out bits per
            byte, timings). name: recorded in ``zoo.json``. progress: show a tqdm bar.

    Returns ``(model in float32 eval mode, metadata dict)``.
    """
    from tqdm.auto import tqdm

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    tokenizer = ByteTokenizer()
    if config.get("vocab_size") != tokenizer.vocab_size:
        raise ValueError(f"config vocab_size must be {tokenizer.vocab_size}, got {config.get('vocab_size')!r}")
    wanted = "bidirectional" if kind in DIFFUSION_KINDS else "causal"
    if config.get("attention", "causal") != wanted:
        raise ValueError(f"kind {kind!r} needs attention={wanted!r}, got {config.get('attention')!r}")
    s = settings
    model = build_model(config, s.seed, device)
    model.train()
    generator = torch.Generator().manual_seed(s.seed + 1)
    mask_id = tokenizer.mask_token_id
    if kind == "planned":
        data = PlannedData(train_verses, tokenizer, s.seq_len, s.max_round_verses)
    else:
        data = StreamData(train_verses, tokenizer, s.seq_len + (kind == "ar"))
    if kind == "udm" and int(data.ids.max()) >= UDM_STATES:
        raise ValueError(f"the corpus holds ids >= {UDM_STATES}, outside the uniform graph's states")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=s.lr, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(s.steps, s.warmup))
    losses = []
    start = time.perf_counter()
    bar = tqdm(range(s.steps), desc=name or kind, disable=not progress, dynamic_ncols=True)
    for step in bar:
        nats, count = _step_nats(kind, model, data, s, step, generator, mask_id, device)
        loss = nats / count
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
    train_seconds = time.perf_counter() - start
    model.eval()
    bpb = evaluate(kind, model, held_out, s, device)
    meta = {
        "name": name, "kind": kind, "settings": asdict(s), "config": dict(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "first_loss": losses[0] if losses else None, "final_loss": _tail_mean(losses),
        "held_out_bits_per_byte": bpb, "train_seconds": round(train_seconds, 2),
        "seconds_per_step": round(train_seconds / max(1, s.steps), 4),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
    }
    if kind == "udm":
        meta["held_out_bits_per_byte_is"] = "upper bound: SEDD's uniform-graph negative ELBO (udm_elbo_nats)"
        meta["held_out_clean_token_bits"] = clean_token_bits_by_noise(model, held_out, s, device)
    if out_dir is not None:
        save(model, meta, out_dir)
    return model, meta


def _step_nats(kind, model, data, s: TrainSettings, step, generator, mask_id, device):
    if kind == "ar":
        nats, rows, _ = ar_nats(model, data.sample(s.batch_size, generator).to(device))
        return nats, rows
    if kind == "udm":
        nats, count, _ = udm_nats(model, data.sample(s.batch_size, generator).to(device), UDM_STATES, generator)
        return nats, count
    if kind == "mdm":
        x = data.sample(s.batch_size, generator).to(device)
        if s.block_every and step % s.block_every == s.block_every - 1:
            nats, count, _ = block_nats(model, x, mask_id, generator)
        else:
            nats, count, _ = mdm_nats(model, x, mask_id, generator)
        return nats, count
    docs = [data.document(generator) for _ in range(s.batch_size)]
    inputs, labels, weights, masks, slots = data.batch(docs, generator, mask_id)
    nats, count, _ = planned_nats(model, (inputs.to(device), labels.to(device), weights.to(device),
                                          masks.to(device), slots))
    return nats, count


def _tail_mean(values: list[float], n: int = 20) -> float | None:
    return sum(values[-n:]) / len(values[-n:]) if values else None


@torch.no_grad()
def evaluate(kind: str, model: Transformer, held_out: Sequence[Verse], settings: TrainSettings,
             device="cpu") -> float:
    """Held-out bits per byte (fixed-seed noise, so repeatable): ``"ar"`` on consecutive
    windows of ``seq_len`` (each window restarts the context), ``"mdm"`` the full-attention
    negative ELBO on the same windows, ``"planned"`` plan + span nats of one-round documents
    (prompt: the previous verse) per verse byte."""
    tokenizer = ByteTokenizer()
    generator = torch.Generator().manual_seed(1234)
    s = settings
    total, num_bytes = 0.0, 0
    if kind == "udm":
        for chunk in StreamData(held_out, tokenizer, s.seq_len).tiles(s.eval_examples).split(s.batch_size):
            for _ in range(UDM_ELBO_DRAWS):
                total += float(udm_elbo_nats(model, chunk.to(device), UDM_STATES, generator)) / UDM_ELBO_DRAWS
            num_bytes += int((chunk < NUM_BYTES).sum())
        return total / (math.log(2) * num_bytes)
    if kind in ("ar", "mdm"):
        tiles = StreamData(held_out, tokenizer, s.seq_len + (kind == "ar")).tiles(s.eval_examples)
        for chunk in tiles.split(s.batch_size):
            chunk = chunk.to(device)
            nats, _, b = ar_nats(model, chunk) if kind == "ar" else mdm_nats(model, chunk, tokenizer.mask_token_id,
                                                                             generator)
            total, num_bytes = total + float(nats), num_bytes + b
        return total / (math.log(2) * num_bytes)
    data = PlannedData(held_out, tokenizer, s.seq_len, s.max_round_verses)
    docs, starts = [], []
    for chapter in data.chapters:
        for i in range(0, len(chapter) - 1, s.max_round_verses + 1):
            prefix = chapter[i].line
            lines = [v.line for v in chapter[i + 1:i + 1 + s.max_round_verses]]
            doc = pl.annotate(prefix, [lines], tokenizer, final_eos=i + 1 + len(lines) == len(chapter))
            if len(doc.tokens) <= s.seq_len:
                docs.append(doc)
                starts.append(len(tokenizer.encode(prefix)) - 1)  # the first plan token's row
            if len(docs) == s.eval_examples:
                break
        if len(docs) == s.eval_examples:
            break
    for i in range(0, len(docs), s.batch_size):
        part = docs[i:i + s.batch_size]
        batch = data.batch(part, generator, tokenizer.mask_token_id)
        batch = tuple(b.to(device) if torch.is_tensor(b) else b for b in batch)
        nats, _, _ = planned_nats(model, batch, starts[i:i + s.batch_size])
        total += float(nats)
        num_bytes += sum(d.verse_bytes for d in part)
    return total / (math.log(2) * num_bytes)


@torch.no_grad()
def clean_token_bits_by_noise(model: Transformer, held_out: Sequence[Verse], settings: TrainSettings,
                              device="cpu") -> dict:
    """``{"sigma=...": bits per token}``: the udm model's held-out clean-token cross-entropy at a
    few noise levels (replacement probability 1 - e^-sigma: about 1%, 10%, 50%, 90%)."""
    generator = torch.Generator().manual_seed(4321)
    x = StreamData(held_out, ByteTokenizer(), settings.seq_len).tiles(settings.batch_size).to(device)
    return {f"sigma={sigma}": round(udm_clean_token_bits(model, x, UDM_STATES, sigma, generator), 4)
            for sigma in (0.01, 0.1, 0.7, 2.3)}


def save(model: Transformer, meta: dict, out_dir: str | Path) -> None:
    """``config.json`` + fp16 ``model.safetensors`` + ``zoo.json`` into ``out_dir``."""
    out = Path(out_dir)
    model.save_pretrained(out, dtype=torch.float16)
    (out / "zoo.json").write_text(json.dumps(meta, indent=2) + "\n")
