"""Triton kernels of the ``spec_verify`` op family: verify_chain, verify_tree.

Semantics are those of decodekit/reference/spec_verify.py (the spec); the raw functions at the
end follow the backend contract of decodekit/ops/spec_verify.py: arguments validated,
contiguous and on one device, outputs preallocated, no host-device synchronisation.

One program per batch row walks the tree from the root, as the spec does, and reads only the
target rows of the nodes it visits. At a visited node:

1. one summary pass (max and its first index, min, NaN / +inf) — all a greedy row needs;
2. sampled rows: the top-k -> top-p threshold of ``sample`` (shared helpers, no pass when off),
   then one pass for the softmax normaliser S (and the entropy sum of typical rows), and one
   pass writing p = e / S into a per-row float32 workspace row;
3. children in index order: lossless rows test ``coin * q(x) < r(x)`` against the workspace; a
   rejection costs two passes (the residual mass D, then r = max(0, r - q) / D in place).

The correction / bonus token is a Gumbel-max pass over the workspace. Scalar reads of the
workspace follow a barrier, because another thread of the program wrote that element.
Path and emitted tokens live in registers (one lane per output column) and are stored once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from decodekit.reference.rng import Stream

from .rng import contract_uniform
from .sampling import _kept_threshold, _orderable_key, _row_block, _row_summary, _row_warps

ACCEPT_COIN = tl.constexpr(int(Stream.ACCEPT_COIN))
RESIDUAL_TOKEN = tl.constexpr(int(Stream.RESIDUAL_TOKEN))
LOSSLESS = tl.constexpr(0)
GREEDY = tl.constexpr(1)
TYPICAL = tl.constexpr(2)


@triton.jit
def _coin(seed, offset, node):
    """uniform(seed, offset, ACCEPT_COIN, node) as a scalar (Philox works on tiles)."""
    lanes = tl.arange(0, 2)
    u = contract_uniform(seed, offset, ACCEPT_COIN, node + lanes)
    return tl.sum(tl.where(lanes == 0, u, 0.0), axis=0)


@triton.jit
def _kept(x, tau):
    """sample's keep rule with min-p off: key >= tau and not -inf."""
    return (_orderable_key(x) >= tau) & (x > float("-inf"))


@triton.jit
def _normaliser(row_ptr, V, tau, m, temperature, BLOCK: tl.constexpr):
    """(S, T): S = sum of e = exp(z - m) over kept tokens, T = sum of e * (z - m) where e > 0."""
    lane_s = tl.zeros([BLOCK], tl.float32)
    lane_t = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        index = start + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + index, mask=index < V, other=float("-inf")).to(tl.float32)
        kept = _kept(x, tau)
        # z - m only where kept: elsewhere it may be -inf, and 0 * -inf would be NaN
        zm = tl.where(kept, tl.div_rn(x, temperature) - m, 0.0)
        e = tl.where(kept, tl.exp(zm), 0.0)
        lane_s += e
        lane_t += tl.where(kept & (e > 0.0), e * zm, 0.0)
    return tl.sum(lane_s, axis=0), tl.sum(lane_t, axis=0)


@triton.jit
def _write_probs(row_ptr, ws_ptr, V, tau, m, temperature, s, BLOCK: tl.constexpr):
    """Workspace row = p = e / S (0 outside the kept set)."""
    for start in range(0, V, BLOCK):
        index = start + tl.arange(0, BLOCK)
        in_row = index < V
        x = tl.load(row_ptr + index, mask=in_row, other=float("-inf")).to(tl.float32)
        z = tl.div_rn(x, temperature)
        e = tl.where(_kept(x, tau), tl.exp(z - m), 0.0)
        tl.store(ws_ptr + index, tl.div_rn(e, s), mask=in_row)


@triton.jit
def _residual_terms(ws_ptr, q_ptr, index, in_row, tok, HAS_Q: tl.constexpr):
    """d = r - q where positive, else 0 (a NaN difference counts as 0)."""
    r = tl.load(ws_ptr + index, mask=in_row, other=0.0)
    if HAS_Q:
        q = tl.load(q_ptr + index, mask=in_row, other=0.0)
    else:
        q = tl.where(index == tok, 1.0, 0.0)  # deterministic drafter: q = one_hot(tok)
    diff = r - q
    return tl.where(diff > 0.0, diff, 0.0)


@triton.jit
def _update_residual(ws_ptr, q_ptr, V, tok, HAS_Q: tl.constexpr, BLOCK: tl.constexpr):
    """r <- max(0, r - q) / D in place, unless D is 0 or not finite (then r is kept)."""
    lane_d = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        index = start + tl.arange(0, BLOCK)
        lane_d += _residual_terms(ws_ptr, q_ptr, index, index < V, tok, HAS_Q)
    d_sum = tl.sum(lane_d, axis=0)
    if (d_sum > 0.0) & (d_sum < float("inf")):
        for start in range(0, V, BLOCK):
            index = start + tl.arange(0, BLOCK)
            in_row = index < V
            d = _residual_terms(ws_ptr, q_ptr, index, in_row, tok, HAS_Q)
            tl.store(ws_ptr + index, tl.div_rn(d, d_sum), mask=in_row)


@triton.jit
def _residual_draw(ws_ptr, V, seed, offset, BLOCK: tl.constexpr):
    """First index of the max of log(r) - log(-log(u)) over r > 0 (V if none)."""
    lane_score = tl.full([BLOCK], float("-inf"), tl.float32)
    lane_index = tl.zeros([BLOCK], tl.int32) + V
    for start in range(0, V, BLOCK):
        index = start + tl.arange(0, BLOCK)
        r = tl.load(ws_ptr + index, mask=index < V, other=0.0)
        eligible = r > 0.0
        u = contract_uniform(seed, offset, RESIDUAL_TOKEN, index)
        score = tl.log(tl.where(eligible, r, 1.0)) - tl.log(-tl.log(u))
        take = eligible & ((score > lane_score) | (lane_index == V))
        lane_score = tl.where(take, score, lane_score)
        lane_index = tl.where(take, index, lane_index)
    best = tl.max(tl.where(lane_index < V, lane_score, float("-inf")), axis=0)
    return tl.min(tl.where((lane_index < V) & (lane_score == best), lane_index, V), axis=0)


@triton.jit
def _first_child(first_child_ptr, node, N, IS_CHAIN: tl.constexpr):
    if IS_CHAIN:
        child = tl.where(node + 1 < N, node + 1, -1)
    else:
        child = tl.load(first_child_ptr + node).to(tl.int64)
        child = tl.where((child > node) & (child < N), child, -1)
    return child


@triton.jit
def _next_sibling(next_sibling_ptr, child, N, IS_CHAIN: tl.constexpr):
    if IS_CHAIN:
        sibling = child * 0 - 1
    else:
        sibling = tl.load(next_sibling_ptr + child).to(tl.int64)
        sibling = tl.where((sibling > child) & (sibling < N), sibling, -1)
    return sibling


@triton.jit
def _verify_kernel(
    logits_ptr,
    tokens_ptr,  # tree: [B, N] node tokens; chain: [B, N - 1] draft tokens (node c has draft c - 1)
    first_child_ptr,
    next_sibling_ptr,
    q_ptr,
    q_batch_stride,
    method_ptr,
    temperature_ptr,
    top_k_ptr,
    top_p_ptr,
    eps_ptr,
    delta_ptr,
    seed_ptr,
    offset_ptr,
    ws_ptr,
    path_out_ptr,
    tokens_out_ptr,
    num_accepted_ptr,
    num_emitted_ptr,
    valid_ptr,
    N,
    V,
    W,
    IS_CHAIN: tl.constexpr,
    HAS_Q: tl.constexpr,
    HAS_PATH: tl.constexpr,
    WBLOCK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    method = tl.load(method_ptr + b)
    temperature = tl.load(temperature_ptr + b)
    greedy = (method == GREEDY) | (temperature == 0.0)
    typical = (not greedy) & (method == TYPICAL)
    lossless = (not greedy) & (method != TYPICAL)
    safe_t = tl.where(greedy, 1.0, temperature)
    top_k = tl.load(top_k_ptr + b)
    top_p = tl.load(top_p_ptr + b)
    eps = tl.load(eps_ptr + b)
    delta = tl.load(delta_ptr + b)
    seed = tl.load(seed_ptr + b)
    offset = tl.load(offset_ptr + b)
    ws_row = ws_ptr + b * V
    if IS_CHAIN:
        tok_row = tokens_ptr + b * (N - 1) - 1
    else:
        tok_row = tokens_ptr + b * N
    links = b * N

    lanes = tl.arange(0, WBLOCK)
    path = tl.where(lanes == 0, 0, -1).to(tl.int64)
    emitted = tl.full([WBLOCK], -1, tl.int64)
    node = b * 0  # int64 scalar
    accepted = 0
    invalid = False
    done = False
    while not done:
        row_ptr = logits_ptr + (b * N + node) * V
        x_max, first_max, x_min, has_nan, has_pos_inf = _row_summary(row_ptr, V, BLOCK)
        node_invalid = has_nan | has_pos_inf | (x_max == float("-inf"))
        threshold = 0.0
        if (not node_invalid) & (not greedy):
            m = tl.div_rn(x_max, safe_t)  # division by t > 0 is monotone: max(x / t) == max(x) / t
            tau = _kept_threshold(row_ptr, V, top_k, top_p, x_min, x_max, m, safe_t, False, BLOCK)
            s, t_sum = _normaliser(row_ptr, V, tau, m, safe_t, BLOCK)
            node_invalid = not ((s > 0.0) & (s < float("inf")))
            if not node_invalid:
                entropy = tl.log(s) - tl.div_rn(t_sum, s)
                threshold = tl.minimum(eps, delta * tl.exp(-entropy))
                _write_probs(row_ptr, ws_row, V, tau, m, safe_t, s, BLOCK)
                tl.debug_barrier()
        if node_invalid:
            invalid = True
            done = True
        else:
            child = _first_child(first_child_ptr + links, node, N, IS_CHAIN)
            child = tl.where(accepted >= W - 1, -1, child)
            found = False
            while (child >= 0) & (not found):
                tok = tl.load(tok_row + child)
                in_range = (tok >= 0) & (tok < V)
                safe_tok = tl.where(in_range, tok, 0)
                if greedy:
                    found = tok == first_max
                else:
                    r_tok = tl.load(ws_row + safe_tok)
                    if typical:
                        found = in_range & (r_tok > threshold)
                    else:
                        if HAS_Q:
                            q_tok = tl.load(q_ptr + b * q_batch_stride + node * V + safe_tok)
                        else:
                            q_tok = 1.0
                        found = in_range & (_coin(seed, offset, child.to(tl.int32)) * q_tok < r_tok)
                        if not found:
                            _update_residual(ws_row, q_ptr + b * q_batch_stride + node * V, V, tok, HAS_Q, BLOCK)
                            tl.debug_barrier()
                if found:
                    accepted += 1
                    path = tl.where(lanes == accepted, child, path)
                    emitted = tl.where(lanes == accepted - 1, tok, emitted)
                    node = child
                else:
                    child = _next_sibling(next_sibling_ptr + links, child, N, IS_CHAIN)
            if not found:
                if greedy:
                    final = first_max
                else:
                    final = _residual_draw(ws_row, V, seed, offset, BLOCK)
                emitted = tl.where(lanes == accepted, final.to(tl.int64), emitted)
                done = True
    in_width = lanes < W
    path = tl.where(invalid, -1, path)
    emitted = tl.where(invalid, -1, emitted)
    if HAS_PATH:
        tl.store(path_out_ptr + b * W + lanes, path.to(tl.int32), mask=in_width)
    tl.store(tokens_out_ptr + b * W + lanes, emitted, mask=in_width)
    tl.store(num_accepted_ptr + b, tl.where(invalid, 0, accepted))
    tl.store(num_emitted_ptr + b, tl.where(invalid, 0, accepted + 1))
    tl.store(valid_ptr + b, not invalid)


def _launch(target_logits, tokens, first_child, next_sibling, draft_probs, has_draft_probs, q_batch_stride,
            params, path_out, tokens_out, num_accepted_out, num_emitted_out, valid_out, is_chain):  # fmt: skip
    batch, nodes, vocab = target_logits.shape
    width = tokens_out.shape[1]
    block = _row_block(vocab)
    workspace = torch.empty(batch, vocab, dtype=torch.float32, device=target_logits.device)
    has_path = path_out is not None
    _verify_kernel[(batch,)](
        target_logits,
        tokens,
        first_child,
        next_sibling,
        draft_probs,
        q_batch_stride,
        *params,
        workspace,
        path_out if has_path else tokens_out,
        tokens_out,
        num_accepted_out,
        num_emitted_out,
        valid_out,
        nodes,
        vocab,
        width,
        IS_CHAIN=is_chain,
        HAS_Q=bool(has_draft_probs),
        HAS_PATH=has_path,
        WBLOCK=max(2, triton.next_power_of_2(width)),
        BLOCK=block,
        num_warps=_row_warps(block),
    )


def verify_chain(target_logits, draft_tokens, draft_probs, has_draft_probs, method, temperature, top_k, top_p,
                 typical_eps, typical_delta, seed, offset, tokens_out, num_accepted_out, num_emitted_out,
                 valid_out) -> None:  # fmt: skip
    """Verify chains: ``target_logits [B, n+1, V]`` (f32 / f16 / bf16), ``draft_tokens [B, n]``
    int64, ``draft_probs [B, n, V]`` f32 (or empty with ``has_draft_probs=False``); per-row
    ``method`` int32, temperature / top_p / typical_eps / typical_delta f32, top_k int32, seed /
    offset int64. Writes tokens_out int64 ``[B, n+1]``, num_accepted_out / num_emitted_out int32
    ``[B]``, valid_out bool ``[B]``."""
    vocab = target_logits.shape[2]
    params = (method, temperature, top_k, top_p, typical_eps, typical_delta, seed, offset)
    q_stride = draft_tokens.shape[1] * vocab
    _launch(target_logits, draft_tokens, draft_tokens, draft_tokens, draft_probs, has_draft_probs, q_stride, params,
            None, tokens_out, num_accepted_out, num_emitted_out, valid_out, True)  # fmt: skip


def verify_tree(target_logits, tokens, first_child, next_sibling, draft_probs, has_draft_probs, method, temperature,
                top_k, top_p, typical_eps, typical_delta, seed, offset, accepted_nodes_out, tokens_out,
                num_accepted_out, num_emitted_out, valid_out) -> None:  # fmt: skip
    """Verify trees: ``target_logits [B, N, V]``, node ``tokens [B, N]`` int64, ``first_child`` /
    ``next_sibling [B, N]`` int32, ``draft_probs [B, N, V]`` f32 (or empty); per-row parameters as
    in :func:`verify_chain`. Writes accepted_nodes_out int32 and tokens_out int64 ``[B, W]``,
    num_accepted_out / num_emitted_out int32 ``[B]``, valid_out bool ``[B]``."""
    batch, nodes, vocab = target_logits.shape
    params = (method, temperature, top_k, top_p, typical_eps, typical_delta, seed, offset)
    _launch(target_logits, tokens, first_child, next_sibling, draft_probs, has_draft_probs, nodes * vocab, params,
            accepted_nodes_out, tokens_out, num_accepted_out, num_emitted_out, valid_out, False)  # fmt: skip
