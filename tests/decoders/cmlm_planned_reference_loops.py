"""Straightforward re-implementations of Mask-Predict and Planned Diffusion for the decoder tests.

Independent of the decoders' code: every model call runs the WHOLE sequence from scratch (a fresh
cache that is never reused, every row queried) under an explicit ``[n, n]`` visibility matrix
built from the sequence's structure, and the selection rules are written as the papers describe
them, with Python loops and plain torch. Sampled proposals take the Philox uniforms of decodekit's
RNG contract (DESIGN.md), which is the only thing shared with the library.
"""

from __future__ import annotations

import math

import torch

from decodekit import ops
from decodekit.models.protocol import ForwardBatch
from decodekit.reference.rng import Stream

NEG_INF = float("-inf")


def full_logits(model, tokens: list[int], visible: torch.Tensor) -> torch.Tensor:
    """``[n, V]`` float32 logits of every position of ``tokens``; row i attends to key j iff
    ``visible[i, j]``."""
    n = len(tokens)
    block = 16
    cache = model.make_cache(-(-n // block), block)
    batch = ForwardBatch(
        input_ids=torch.tensor(tokens, dtype=torch.int64),
        positions=torch.arange(n, dtype=torch.int64),
        cu_seqlens_q=torch.tensor([0, n], dtype=torch.int32),
        block_table=torch.arange(-(-n // block), dtype=torch.int32).unsqueeze(0),
        seq_lens=torch.tensor([n], dtype=torch.int32),
        slot_mapping=torch.arange(n, dtype=torch.int64),
        cache=cache,
        mask="custom",
        custom_mask=[visible],
    )
    return model.forward(batch).float().clone()


def gumbel_proposal(logits: torch.Tensor, temperature: float, seed: int, offset: int) -> torch.Tensor:
    """Per-row token of ``logits [N, V]`` (row = canvas position): argmax when temperature is 0,
    else argmax of ``logits / T + Gumbel`` with the contract's uniforms (counter pos * V + v)."""
    if temperature == 0:
        return logits.argmax(-1)
    rows, vocab = logits.shape
    u = ops.philox_uniform(torch.tensor([seed]), torch.tensor([offset]), Stream.PROPOSAL_TOKEN, rows * vocab,
                           backend="reference").reshape(rows, vocab)
    return (logits / temperature - torch.log(-torch.log(u))).argmax(-1)


# ---------------------------------------------------------------------------- Mask-Predict


def mask_predict(model, prompt, mask_id, iterations, lengths, *, temperature=0.0, seed=0,
                 recompute_prompt=False, stop_ids=()):
    """Mask-Predict for one prompt: returns (emitted tokens, chosen length, per-length scores)."""
    outcomes = []
    for length in lengths:
        canvas = [mask_id] * length
        probs = [0.0] * length
        for t in range(iterations):
            if t == 0:
                todo = list(range(length))
            else:
                n = max(1, math.floor(length * (iterations - t) / iterations + 1e-9))
                todo = sorted(range(length), key=lambda i: (probs[i], i))[:n]
                for i in todo:
                    canvas[i] = mask_id
            p = len(prompt)
            total = p + length
            visible = torch.ones(total, total, dtype=torch.bool)
            if not recompute_prompt:
                visible[:p, p:] = False  # the prompt is encoded on its own
            logits = full_logits(model, prompt + canvas, visible)[p:]
            logits[:, mask_id] = NEG_INF
            token = gumbel_proposal(logits, temperature, seed, t)
            prob = torch.softmax(logits, -1).gather(1, token.unsqueeze(1)).squeeze(1)
            for i in todo:
                canvas[i] = int(token[i])
                probs[i] = float(prob[i])
        score = sum(math.log(q) for q in probs) / length
        outcomes.append((score, canvas))
    best = max(range(len(lengths)), key=lambda c: (outcomes[c][0], -c))
    canvas = outcomes[best][1]
    for i, token in enumerate(canvas):
        if token in stop_ids:
            canvas = canvas[: i + 1]
            break
    return canvas, lengths[best], [o[0] for o in outcomes]


# ---------------------------------------------------------------------------- Planned Diffusion


class ScriptedPlanner:
    """A model wrapper that forces a plan: the row at position p of request i gets +``bonus`` on
    ``scripts[i][p + 1]`` (the token the script wants next); every other logit is the model's.
    Request i is read from the sequence id ``(..., i)`` (decoders use ``("decodekit", i)``)."""

    def __init__(self, model, scripts: dict, bonus: float = 60.0):
        self.model, self.scripts, self.bonus = model, scripts, bonus
        for name in ("vocab_size", "max_positions", "attention", "supports_custom_mask", "device", "dtype"):
            setattr(self, name, getattr(model, name))

    def make_cache(self, num_blocks, block_size):
        return self.model.make_cache(num_blocks, block_size)

    def release(self, seq_ids):
        self.model.release(seq_ids)

    def forward(self, batch):
        rows = batch.logits_rows
        batch.logits_rows = None
        logits = self.model.forward(batch).float().clone()
        cu = batch.cu_seqlens_q.tolist()
        positions = batch.positions.tolist()
        for b, seq in enumerate(batch.seq_ids):
            script = self.scripts.get(seq[-1], {})
            for row in range(cu[b], cu[b + 1]):
                if positions[row] + 1 in script:
                    logits[row, script[positions[row] + 1]] += self.bonus
        return logits if rows is None else logits.index_select(0, rows)


def pasta_visibility(kinds: list) -> torch.Tensor:
    """The published attention rule over a whole sequence. ``kinds[i]`` is None for a causal
    token (prompt, plan, sync) or ``(round_start, block)`` for a token of a span: a span token
    sees everything before its round and its own span; every other token sees all before it."""
    n = len(kinds)
    visible = torch.zeros(n, n, dtype=torch.bool)
    for i, kind in enumerate(kinds):
        for j in range(n):
            if kind is None:
                visible[i, j] = j <= i
            else:
                visible[i, j] = j < kind[0] or kinds[j] == kind
    return visible


def simple_plan_lengths(segment, span_start, span_end, digits, scale=10):
    """Lengths of a WELL-FORMED plan segment: first 1-2 digits inside each promise, times scale."""
    lengths, inside, number, count = [], False, 0, -1
    for token in segment:
        if token == span_start:
            inside, number, count = True, 0, 0
        elif token == span_end:
            lengths.append(number * scale)
            inside = False
        elif inside and token in digits and 0 <= count < 2:
            number, count = number * 10 + digits.index(token), count + 1
        elif inside and count > 0:
            count = -1  # the number is over
    return lengths


def planned_diffusion(model, prompt, index, *, mask_id, span_start, span_end, async_start, async_end, sync, digits,
                      stop_ids, max_new_tokens, length_scale=10, steps_ratio=1.0, eps=1e-3, shift=True, suppress=()):
    """Greedy planned diffusion for request ``index`` of a ScriptedPlanner (pd_entropy), every
    call over the whole sequence."""
    seq, kinds, out, segment_start = list(prompt), [None] * len(prompt), [], 0

    def logits_of(tokens, token_kinds):
        batch_model = model.model
        scripts = model.scripts.get(index, {})
        logits = full_logits(batch_model, tokens, pasta_visibility(token_kinds))
        for p in range(len(tokens)):
            if p + 1 in scripts:
                logits[p, scripts[p + 1]] += model.bonus
        return logits

    while len(out) < max_new_tokens:
        token = int(logits_of(seq, kinds)[-1].argmax())
        lengths = simple_plan_lengths(out[segment_start:], span_start, span_end, digits, length_scale)
        if (token == sync or token in stop_ids) and lengths:
            round_start = len(seq)
            rows, row_kinds, spans = [], [], []
            for b, n in enumerate(lengths):
                spans.append(list(range(len(rows) + 1, len(rows) + 1 + n)))
                rows += [async_start] + [mask_id] * n + [async_end]
                row_kinds += [(round_start, b)] * (n + 2)
            if token == sync:
                rows.append(sync)
                row_kinds.append(None)
            steps = max(1, int(max(lengths) * steps_ratio))
            t = torch.linspace(1, eps, steps + 1)
            for i in range(steps):
                logits = logits_of(seq + rows, kinds + row_kinds)[round_start:]
                logits[:, list(suppress)] = NEG_INF
                probs = torch.softmax(logits, -1)
                x0 = probs.argmax(-1)
                confidence = torch.sum(probs * torch.log(probs + 1e-10), -1)
                ratio = 1 - t[i + 1] / t[i] if i < steps - 1 else 1.0
                for positions in spans:
                    masked = [p for p in positions if rows[p] == mask_id]
                    if not masked:
                        continue
                    k = min(len(masked), max(1, int(len(masked) * ratio)))
                    source = (lambda p: p - 1) if shift else (lambda p: p)
                    best = sorted(masked, key=lambda p: (-float(confidence[source(p)]), p))[:k]
                    for p in best:
                        rows[p] = int(x0[source(p)])
            seq += rows
            kinds += row_kinds
            out += rows if token == sync else rows + [token]
            segment_start = len(out)
            if token != sync:
                break
            continue
        out.append(token)
        seq.append(token)
        kinds.append(None)
        if token == sync:
            segment_start = len(out)
        if token in stop_ids:
            break
    return out[:max_new_tokens]
