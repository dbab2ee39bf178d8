"""Straightforward re-implementations of the published masked-diffusion loops (research note
diffusion_nar_hybrid.md sections 1-4 and 7), one request at a time, in plain torch over the full
logits of a model run WITHOUT any cache reuse (a fresh paged cache per call, every row computed).
They share no code with the decoders.

The only intended differences from the sources: randomness comes from the Philox uniforms of
DESIGN.md's RNG contract (``reference.rng.uniform``) with the keys the decoders use (seed, step
counter as offset, position inside the generated region as counter), and the mask token's logit
is -inf (MDLM's SUBS rule; trained models give it ~0 probability anyway).
"""

import torch

from decodekit.decoders import forward_step
from decodekit.reference import rng
from decodekit.reference.rng import Stream

NEG_INF = float("-inf")


def model_logits(model, seq, custom_mask=None):
    """``[L, V]`` float32 logits of every position of ``seq``, computed from scratch."""
    cache = model.make_cache(-(-len(seq) // 16) + 1, 16)
    cache.allocator.allocate("ref")
    mask = "full" if custom_mask is None else "custom"
    out = forward_step(model, cache, ["ref"], [list(seq)], mask=mask,
                       custom_mask=None if custom_mask is None else [custom_mask], logits="all")
    return out.float()


def _uniform(seed, offset, stream, counters):
    return rng.uniform(torch.tensor(seed), torch.tensor(offset), stream, counters)


def _masked_logits(logits, mask_id, suppress=()):
    logits = logits.clone()
    logits[:, [mask_id, *suppress]] = NEG_INF
    return logits


def gumbel_argmax(logits, temperature, seed, offset, positions):
    """LLaDA's add_gumbel_noise + argmax: ``argmax exp(l) / (-log u) ** T`` in float64."""
    if temperature == 0:
        return logits.argmax(-1)
    vocab = logits.shape[-1]
    c0 = (positions.reshape(-1, 1) * vocab + torch.arange(vocab)) & 0xFFFFFFFF
    u = _uniform(seed, offset, Stream.PROPOSAL_TOKEN, c0).double()
    noisy = logits.double().exp() / (-torch.log(u)) ** temperature
    return noisy.argmax(-1)


def _commit_top(x, proposal, confidence, eligible, k):
    """Commit the k most confident eligible positions (ties: lower position first)."""
    order = sorted((i for i in range(len(x)) if eligible[i]), key=lambda i: (-float(confidence[i]), i))
    for i in order[:k]:
        x[i] = int(proposal[i])


def llada_generate(model, prompt, gen_length, *, mask_id, steps, block_length, remasking="low_confidence",
                   temperature=0.0, cfg_scale=0.0, suppress=(), seed=0, threshold=None, factor=None):
    """LLaDA ``generate`` (section 1.3); with ``threshold``/``factor`` Fast-dLLM's parallel rules
    (section 3.1, no cache): loop over a block until it has no mask."""
    x = [mask_id] * gen_length
    p = len(prompt)
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks if steps else block_length
    offset = 0
    for b in range(num_blocks):
        lo, hi = b * block_length, (b + 1) * block_length
        m = sum(t == mask_id for t in x[lo:hi])
        schedule = [m // steps_per_block + (1 if i < m % steps_per_block else 0) for i in range(steps_per_block)]
        i = 0
        while any(t == mask_id for t in x[lo:hi]):
            if threshold is None and factor is None and i >= steps_per_block:
                break
            logits = model_logits(model, prompt + x)[p:]
            if cfg_scale > 0:
                un = model_logits(model, [mask_id] * p + x)[p:]
                logits = un + (cfg_scale + 1) * (logits - un)
            logits = _masked_logits(logits, mask_id, suppress)
            positions = torch.arange(gen_length)
            x0 = gumbel_argmax(logits, temperature, seed, offset, positions)
            if remasking == "low_confidence":
                x0_p = torch.softmax(logits.double(), -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            else:
                x0_p = _uniform(seed, offset, Stream.CONFIDENCE_NOISE, positions).double()
            eligible = [lo <= j < hi and x[j] == mask_id for j in range(gen_length)]
            if threshold is not None:
                ranked = sorted((j for j in range(gen_length) if eligible[j]), key=lambda j: (-float(x0_p[j]), j))
                for rank, j in enumerate(ranked):
                    if rank == 0 or x0_p[j] >= threshold:
                        x[j] = int(x0[j])
            elif factor is not None:
                ranked = sorted((j for j in range(gen_length) if eligible[j]), key=lambda j: (-float(x0_p[j]), j))
                accepted = 1
                while accepted < len(ranked) and float(x0_p[ranked[accepted]]) >= 1 - factor / (accepted + 2):
                    accepted += 1
                for j in ranked[:accepted]:
                    x[j] = int(x0[j])
            else:
                _commit_top(x, x0, x0_p, eligible, schedule[i])
            i += 1
            offset += 1
    return x


def _tempered(logits, temperature, top_p):
    """Dream's sample_tokens preprocessing: divide by T, then top-p (HF style: keep the
    smallest prefix of the sorted distribution whose mass reaches top_p)."""
    if temperature > 0:
        logits = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.cumsum(torch.softmax(sorted_logits, -1), -1)
        drop = cum > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), NEG_INF)
    return logits


def dream_generate(model, prompt, gen_length, *, mask_id, steps, alg="origin", eps=1e-3, temperature=0.0,
                   top_p=1.0, seed=0, alg_temp=0.0):
    """Dream ``_sample`` (section 2.3) for one request, logits shifted by one position."""
    x = [mask_id] * gen_length
    p = len(prompt)
    timesteps = torch.linspace(1, eps, steps + 1)
    positions = torch.arange(gen_length)
    for i in range(steps):
        full = model_logits(model, prompt + x)
        logits = _masked_logits(full[p - 1 : p - 1 + gen_length], mask_id)  # shift: j uses j - 1
        z = _tempered(logits, temperature, top_p)
        probs = torch.softmax(z, -1)
        if temperature > 0:
            u = _uniform(seed, i, Stream.PROPOSAL_TOKEN,
                         (positions.reshape(-1, 1) * z.shape[-1] + torch.arange(z.shape[-1])) & 0xFFFFFFFF)
            x0 = (z - torch.log(-torch.log(u))).argmax(-1)
        else:
            x0 = probs.argmax(-1)
        masked = [t == mask_id for t in x]
        t, s = timesteps[i], timesteps[i + 1]
        if alg == "origin":
            p_transfer = float(1 - s / t) if i < steps - 1 else 1.0
            coins = _uniform(seed, i, Stream.TRANSFER_COIN, positions)
            for j in range(gen_length):
                if masked[j] and coins[j] < p_transfer:
                    x[j] = int(x0[j])
            continue
        if alg == "maskgit_plus":
            confidence = probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        elif alg == "topk_margin":
            top = torch.sort(probs, -1, descending=True).values
            confidence = top[:, 0] - top[:, 1]
        else:
            confidence = torch.sum(probs * torch.log(probs + 1e-10), -1)
        num_mask = torch.tensor(sum(masked), dtype=torch.float32)
        k = int(num_mask * (1 - s / t)) if i < steps - 1 else int(num_mask)
        if alg_temp > 0:
            # multinomial(softmax(confidence / alg_temp), k) without replacement, drawn as
            # Gumbel-top-k with Philox noise keyed like the decoder's.
            u = _uniform(seed, i, Stream.SELECTION_NOISE, positions)
            confidence = confidence / alg_temp - torch.log(-torch.log(u))
        _commit_top(x, x0, confidence, masked, k)
    return x


def mdlm_generate(model, prompt, gen_length, *, mask_id, steps, eps=1e-5, temperature=1.0, seed=0,
                  noise_removal=True):
    """MDLM ancestral ``ddpm`` sampling (section 4.2): a masked slot becomes a token w.p.
    (t - s) / t, the token drawn from p(x0); then a greedy noise-removal step."""
    x = [mask_id] * gen_length
    p = len(prompt)
    t = torch.linspace(1.0, eps, steps + 1, dtype=torch.float32)
    reveal = 1.0 - t[1:] / t[:-1]
    positions = torch.arange(gen_length)
    for i in range(steps):
        if mask_id not in x:
            break
        logits = _masked_logits(model_logits(model, prompt + x)[p:], mask_id)
        x0 = gumbel_argmax(logits, temperature, seed, i, positions)
        coins = _uniform(seed, i, Stream.TRANSFER_COIN, positions)
        for j in range(gen_length):
            if x[j] == mask_id and coins[j] < reveal[i]:
                x[j] = int(x0[j])
    if noise_removal and mask_id in x:
        logits = _masked_logits(model_logits(model, prompt + x)[p:], mask_id)
        x = [int(a) if b == mask_id else b for a, b in zip(logits.argmax(-1), x)]
    return x


def block_causal_mask(sizes):
    """Segments of ``sizes`` (prompt, block 0, ...): a row sees its own and earlier segments."""
    seg = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    return seg.reshape(-1, 1) >= seg.reshape(1, -1)


def bd3_generate(model, prompt, gen_length, *, mask_id, block_length, sampler="first_hitting", steps=None,
                 eps=1e-5, temperature=1.0, seed=0):
    """BD3-LM semi-AR sampling (section 7): blocks in order, each denoised with block-causal
    attention over the clean prompt and earlier blocks."""
    x = []
    offset = 0
    steps = block_length if steps is None else steps
    t = torch.linspace(1.0, eps, steps + 1, dtype=torch.float32)
    reveal = (1.0 - t[1:] / t[:-1]).tolist()
    reveal[-1] = 1.0
    for b in range(gen_length // block_length):
        lo = b * block_length
        x += [mask_id] * block_length
        positions = torch.arange(lo, lo + block_length)
        for i in range(steps):
            mask = block_causal_mask([len(prompt)] + [block_length] * (b + 1))
            logits = _masked_logits(model_logits(model, prompt + x, mask)[-block_length:], mask_id)
            x0 = gumbel_argmax(logits, temperature, seed, offset, positions)
            masked = [x[lo + j] == mask_id for j in range(block_length)]
            if sampler == "first_hitting":
                noise = _uniform(seed, offset, Stream.CONFIDENCE_NOISE, positions)
                candidates = [j for j in range(block_length) if masked[j]]
                if candidates:
                    j = min(candidates, key=lambda j: (-float(noise[j]), j))
                    x[lo + j] = int(x0[j])
            else:
                coins = _uniform(seed, offset, Stream.TRANSFER_COIN, positions)
                for j in range(block_length):
                    if masked[j] and coins[j] < reveal[i]:
                        x[lo + j] = int(x0[j])
            offset += 1
    return x


def cut_at_stop(canvas, stop_ids):
    """The decoders' output of a full canvas: up to the first stop token (included)."""
    for i, t in enumerate(canvas):
        if t in stop_ids:
            return canvas[: i + 1]
    return canvas
