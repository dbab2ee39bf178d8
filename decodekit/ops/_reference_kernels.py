"""The ``reference`` backend in the raw-function contract: write outputs computed by the spec."""

from __future__ import annotations

import torch

from decodekit.reference import denoise, discrete_diffusion, paged_kv, rng, sampling, spec_verify


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


# ----------------------------------------------------------------------------- spec_verify


def _draft_probs_or_none(draft_probs, has_draft_probs):
    return draft_probs if has_draft_probs else None


def verify_chain(
    target_logits,
    draft_tokens,
    draft_probs,
    has_draft_probs,
    method,
    temperature,
    top_k,
    top_p,
    typical_eps,
    typical_delta,
    seed,
    offset,
    tokens_out,
    num_accepted_out,
    num_emitted_out,
    valid_out,
):
    result = spec_verify.verify_chain(
        target_logits,
        draft_tokens,
        _draft_probs_or_none(draft_probs, has_draft_probs),
        method=method,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        typical_eps=typical_eps,
        typical_delta=typical_delta,
        seed=seed,
        offset=offset,
    )
    tokens_out.copy_(result.tokens)
    num_accepted_out.copy_(result.num_accepted)
    num_emitted_out.copy_(result.num_emitted)
    valid_out.copy_(result.valid)


def verify_tree(
    target_logits,
    tokens,
    first_child,
    next_sibling,
    draft_probs,
    has_draft_probs,
    method,
    temperature,
    top_k,
    top_p,
    typical_eps,
    typical_delta,
    seed,
    offset,
    accepted_nodes_out,
    tokens_out,
    num_accepted_out,
    num_emitted_out,
    valid_out,
):
    result = spec_verify.verify_tree_arrays(
        target_logits,
        tokens,
        first_child,
        next_sibling,
        _draft_probs_or_none(draft_probs, has_draft_probs),
        tokens_out.shape[1],
        method=method,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        typical_eps=typical_eps,
        typical_delta=typical_delta,
        seed=seed,
        offset=offset,
    )
    accepted_nodes_out.copy_(result.accepted_nodes)
    tokens_out.copy_(result.tokens)
    num_accepted_out.copy_(result.num_accepted)
    num_emitted_out.copy_(result.num_emitted)
    valid_out.copy_(result.valid)


def discrete_diffusion_step(scores, tokens, sigma, dsigma, fixed, seed, offset, graph, sampler, param, mask_id, out):
    fixed = fixed if fixed.numel() else None
    out.copy_(discrete_diffusion.discrete_diffusion_step(
        scores, tokens, sigma, dsigma, fixed, seed, offset, graph, sampler, param, mask_id))
