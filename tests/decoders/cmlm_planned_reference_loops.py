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
