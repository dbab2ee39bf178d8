"""The ``reference`` backend in the raw-function contract: write outputs computed by the spec."""

from __future__ import annotations

import torch

from decodekit.reference import denoise, paged_kv, rng, sampling


def sample(logits, temperature, top_k, top_p, min_p, seed, offset, tokens_out, logprobs_out, valid_out):
    result = sampling.sample(
        logits,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        seed=seed,
        offset=offset,
        return_logprobs=True,
    )
    tokens_out.copy_(result.tokens)
    logprobs_out.copy_(result.logprobs)
    valid_out.copy_(result.valid)


def apply_penalties(logits, token_counts, repetition, frequency, presence, out):
    out.copy_(sampling.apply_penalties(logits, token_counts, repetition, frequency, presence))


def mask_logits(logits, top_k, top_p, out):
    out.copy_(sampling.mask_logits(logits, top_k, top_p))


def top_k_top_p_renorm(probs, top_k, top_p, out):
    out.copy_(sampling.top_k_top_p_renorm(probs, top_k, top_p))


def philox_uniform(seed: torch.Tensor, offset: torch.Tensor, stream: int, out: torch.Tensor):
    out.copy_(rng.philox_uniform(seed, offset, stream, out.shape[1]))


# ----------------------------------------------------------------------------- paged_kv


def kv_append(k, v, k_cache, v_cache, slot_mapping):
    paged_kv.kv_append(k, v, k_cache, v_cache, slot_mapping)


def kv_copy_blocks(k_cache, v_cache, src, dst):
    paged_kv.kv_copy_blocks(k_cache, v_cache, src, dst)


def paged_attention(
    q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, mask_mode, scale, custom_mask, mask_indptr, out
):
    paged_kv.paged_attention(
        q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, mask_mode, scale, custom_mask, mask_indptr, out=out
    )


# ----------------------------------------------------------------------------- denoise


def denoise_propose(
    logits, temperature, keep_floor, suppress_ids, seed, offset, window_start, conf_mode, tempered,
    proposal_out, confidence_out,
):
    proposal, confidence = denoise.propose(
        logits,
        temperature,
        keep_floor if keep_floor.numel() else None,
        suppress_ids if suppress_ids.numel() else None,
        seed,
        offset,
        window_start,
        int(conf_mode),
        bool(tempered),
    )
    proposal_out.copy_(proposal)
    confidence_out.copy_(confidence)


def denoise_select(
    tokens, proposal, confidence, window_start, block_start, block_end, mask_id, select_mode, k, tau, factor,
    p_transfer, span_ids, seed, offset, committed_out, num_committed_out,
):
    new_tokens, committed, num_committed = denoise.select(
        tokens,
        proposal,
        confidence,
        window_start,
        block_start,
        block_end,
        int(mask_id),
        int(select_mode),
        k,
        tau,
        factor,
        p_transfer,
        span_ids if span_ids.numel() else None,
        seed,
        offset,
    )
    tokens.copy_(new_tokens)
    committed_out.copy_(committed)
    num_committed_out.copy_(num_committed)
