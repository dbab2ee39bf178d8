"""paged_kv ops: every backend against the reference; the reference against SDPA over gathered K/V.

Triton-interpreter cases dominate the runtime: shapes here stay small (tens of keys per request).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from decodekit import ops
from decodekit.reference import paged_kv as ref

# Per-dtype tolerances for attention outputs (|out| <= max |v| ~ 3): fp32 differs only by
# summation order; fp16/bf16 by one rounding of the output (plus fp32 noise).
TOLERANCES = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.float16: dict(atol=3e-3, rtol=3e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=2e-2),
}


def _skip_interpreted_bf16(backend, device, dtype):
    if dtype == torch.bfloat16 and backend == "triton" and device.type == "cpu":
        pytest.skip("bf16 arithmetic is wrong in the Triton interpreter (DESIGN.md): GPU-only")


# ------------------------------------------------------------------ building batches


def tree_mask(q_len: int, generator: torch.Generator) -> torch.Tensor:
    """A random draft tree (node i's parent < i): each node sees itself and its ancestors."""
    mask = torch.zeros(q_len, q_len, dtype=torch.bool)
    for i in range(q_len):
        mask[i, i] = True
        if i > 0:
            parent = int(torch.randint(0, i, (1,), generator=generator))
            mask[i] |= mask[parent]
    return mask


def spans_mask(q_len: int) -> torch.Tensor:
    """Isolated spans of length 2 (planned diffusion): each sees only its own span."""
    span = torch.arange(q_len) // 2
    return span[:, None] == span[None, :]


def custom_masks(kind: str, q_lens: list[int], generator: torch.Generator) -> list[torch.Tensor]:
    if kind == "tree":
        return [tree_mask(n, generator) for n in q_lens]
    if kind == "block":
        return [torch.ones(n, n, dtype=torch.bool) for n in q_lens]
    return [spans_mask(n) for n in q_lens]


def make_batch(requests, *, block_size=16, num_q_heads=4, num_kv_heads=2, head_dim=64, dtype=torch.float32,
               device="cpu", seed=0, spare_blocks=3):
    """Random caches and a shuffled block table for ``requests = [(q_len, kv_len), ...]``."""
    gen = torch.Generator().manual_seed(seed)
    blocks_needed = [math.ceil(kv / block_size) for _, kv in requests]
    num_blocks = sum(blocks_needed) + spare_blocks
    max_blocks = max(blocks_needed) + 1
    order = torch.randperm(num_blocks, generator=gen).tolist()
    table = torch.full((len(requests), max_blocks), -1, dtype=torch.int32)
    used = 0
    for b, n in enumerate(blocks_needed):
        table[b, :n] = torch.tensor(order[used:used + n], dtype=torch.int32)
        used += n
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(dtype)
    v_cache = torch.randn(shape, generator=gen).to(dtype)
    q_lens = [q for q, _ in requests]
    q = torch.randn(sum(q_lens), num_q_heads, head_dim, generator=gen).to(dtype)
    seq_lens = torch.tensor([kv for _, kv in requests], dtype=torch.int32)
    cu = torch.tensor([0] + np.cumsum(q_lens).tolist(), dtype=torch.int32)
    to = lambda t: t.to(device)  # noqa: E731
    return dict(q=to(q), k_cache=to(k_cache), v_cache=to(v_cache), block_table=to(table), seq_lens=to(seq_lens),
                cu_seqlens_q=to(cu))


def sdpa_oracle(batch, mode: str, masks=None, scale=None):
    """Gather each request's K/V into contiguous tensors, then SDPA (fp32) with an explicit mask."""
    q, k_cache, v_cache = batch["q"].cpu(), batch["k_cache"].cpu(), batch["v_cache"].cpu()
    table, lens, cu = batch["block_table"].cpu(), batch["seq_lens"].tolist(), batch["cu_seqlens_q"].tolist()
    block_size, group = k_cache.shape[1], q.shape[1] // k_cache.shape[2]
    outs = []
    for b, kv_len in enumerate(lens):
        q_len = cu[b + 1] - cu[b]
        j = torch.arange(kv_len)
        blocks = table[b, j // block_size].long()
        keys = k_cache[blocks, j % block_size].float().repeat_interleave(group, 1)
        values = v_cache[blocks, j % block_size].float().repeat_interleave(group, 1)
        prefix = kv_len - q_len
        if mode == "causal":
            allowed = j[None, :] <= prefix + torch.arange(q_len)[:, None]
        elif mode == "full":
            allowed = torch.ones(q_len, kv_len, dtype=torch.bool)
        else:
            allowed = torch.cat([torch.ones(q_len, prefix, dtype=torch.bool), masks[b].cpu()], dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(
            q[cu[b]:cu[b + 1]].float().transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1),
            attn_mask=allowed, scale=scale,
        )
        outs.append(out.transpose(0, 1))
    return torch.cat(outs).to(q.dtype)


def reference_attention(batch, mode: str, masks=None, scale=None):
    return ops.paged_attention(**{k: v.cpu() for k, v in batch.items()}, mask=mode, scale=scale,
                               custom_mask=None if masks is None else [m.cpu() for m in masks], backend="reference",
                               validate=False)


# Decode, verify, prefill (q_len == kv_len) and odd lengths in one call.
MIXED = [(1, 37), (5, 21), (3, 3), (7, 50)]
MODES = ["causal", "full", "tree", "block", "spans"]


def _mode_and_masks(kind, requests, device, seed=0):
    if kind in ("causal", "full"):
        return kind, None
    gen = torch.Generator().manual_seed(seed)
    return "custom", [m.to(device) for m in custom_masks(kind, [q for q, _ in requests], gen)]


# ------------------------------------------------------------------ the spec itself


@pytest.mark.parametrize("kind", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_reference_matches_sdpa_over_gathered_kv(kind, dtype):
    batch = make_batch(MIXED, dtype=dtype)
    mode, masks = _mode_and_masks(kind, MIXED, "cpu")
    got = reference_attention(batch, mode, masks)
    torch.testing.assert_close(got, sdpa_oracle(batch, mode, masks), **TOLERANCES[dtype])


def test_reference_custom_mask_reproduces_causal_and_full():
    batch = make_batch(MIXED, seed=1)
    q_lens = [q for q, _ in MIXED]
    lower = [torch.tril(torch.ones(n, n, dtype=torch.bool)) for n in q_lens]
    every = [torch.ones(n, n, dtype=torch.bool) for n in q_lens]
    assert torch.equal(reference_attention(batch, "custom", lower), reference_attention(batch, "causal"))
    assert torch.equal(reference_attention(batch, "custom", every), reference_attention(batch, "full"))


def test_reference_query_without_visible_key_gets_zeros():
    batch = make_batch([(3, 3), (2, 9)])
    nothing = torch.zeros(3, 3, dtype=torch.bool)  # prefill request: no prefix and an empty mask row set
    out = reference_attention(batch, "custom", [nothing, torch.ones(2, 2, dtype=torch.bool)])
    assert torch.equal(out[:3], torch.zeros_like(out[:3]))
    assert out[3:].abs().sum() > 0 and not out.isnan().any()


# ------------------------------------------------------------------ backends against the reference


@pytest.mark.parametrize("kind", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_attention_mask_modes_match_reference(kernel_case, kind, dtype):
    backend, device = kernel_case
    _skip_interpreted_bf16(backend, device, dtype)
    batch = make_batch(MIXED, dtype=dtype, device=device, seed=2)
    mode, masks = _mode_and_masks(kind, MIXED, device, seed=2)
    got = ops.paged_attention(**batch, mask=mode, custom_mask=masks, backend=backend)
    assert got.dtype == dtype and got.device == device
    torch.testing.assert_close(got.cpu(), reference_attention(batch, mode, masks), **TOLERANCES[dtype])


@pytest.mark.parametrize(
    "block_size, head_dim, num_q_heads, num_kv_heads",
    [(16, 64, 4, 4), (32, 128, 8, 2), (16, 128, 2, 1), (32, 64, 6, 3)],
    ids=["bs16-d64-mha", "bs32-d128-gqa4", "bs16-d128-mqa", "bs32-d64-gqa2"],
)
def test_attention_shapes_match_reference(kernel_case, block_size, head_dim, num_q_heads, num_kv_heads):
    backend, device = kernel_case
    # Decode rows over contexts that end mid-block, on a block boundary and inside the first block.
    requests = [(1, 33), (1, 64), (2, 7), (4, 45)]
    batch = make_batch(requests, block_size=block_size, num_q_heads=num_q_heads, num_kv_heads=num_kv_heads,
                       head_dim=head_dim, device=device, seed=3)
    got = ops.paged_attention(**batch, scale=0.05, backend=backend)
    torch.testing.assert_close(got.cpu(), reference_attention(batch, "causal", scale=0.05), **TOLERANCES[torch.float32])


@pytest.mark.parametrize("kind", ["causal", "tree"])
def test_attention_rows_do_not_depend_on_the_rest_of_the_batch(kernel_case, kind):
    """Batch invariance (DESIGN.md): a request's output is bitwise the same alone and in a batch.

    The long request's context splits its keys on every backend (cpu: > 512 keys; triton
    interpreter: > 64 keys at these shapes), so the test fails if a split boundary, the merge
    order or the query tiling follows the batch's size or composition rather than the request's
    own lengths. Alone, a request gets a block table of its own blocks only (as a server sizes it
    per batch), so the short request also goes through a call without any split.
    """
    backend, device = kernel_case
    interpreted = backend == "triton" and device.type == "cpu"
    long_kv = 150 if interpreted else 5000  # the Triton interpreter is slow: fewer keys there
    target = (1, long_kv) if kind == "causal" else (4, long_kv)
    # (20, 40): a prefill longer than the triton backend's split limit (16 queries) runs unsplit
    others = [(1, 40), (3, 17), (20, 40), (1, long_kv // 3), (2, 9)]
    shapes = dict(num_q_heads=4, num_kv_heads=1, head_dim=16 if interpreted else 64)
    mode = "custom" if kind == "tree" else "causal"
    for position, batch_requests in enumerate([others[:1] + [target], [target] + others, others[:4] + [target]]):
        batch = make_batch(batch_requests, device=device, seed=14, **shapes)
        masks = None
        if kind == "tree":
            gen = torch.Generator().manual_seed(14)
            masks = [m.to(device) for m in custom_masks("tree", [q for q, _ in batch_requests], gen)]
        got_batch = ops.paged_attention(**batch, mask=mode, custom_mask=masks, backend=backend)
        cu = batch["cu_seqlens_q"].tolist()
        for request in (target, others[0]):
            index = batch_requests.index(request)
            rows = slice(cu[index], cu[index + 1])
            # the same request alone: its q rows, its own blocks, the same caches
            alone = dict(batch, q=batch["q"][rows].contiguous(),
                         block_table=batch["block_table"][index:index + 1, :math.ceil(request[1] / 16)].contiguous(),
                         seq_lens=batch["seq_lens"][index:index + 1],
                         cu_seqlens_q=torch.tensor([0, request[0]], dtype=torch.int32, device=device))
            got_alone = ops.paged_attention(**alone, mask=mode, custom_mask=None if masks is None else [masks[index]],
                                            backend=backend)
            assert torch.equal(got_batch[rows], got_alone), f"request {request} differs in batch {position}"
        want = reference_attention(batch, mode, masks)
        torch.testing.assert_close(got_batch.cpu(), want, **TOLERANCES[torch.float32])
    if backend == "cpu":  # the cpu kernel balances work items over threads, but never re-splits keys
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            single = ops.paged_attention(**batch, mask=mode, custom_mask=masks, backend=backend)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(single, got_batch)


def test_attention_guards_match_reference(kernel_case):
    """With validate=False, bad values must follow the contract's guards, never read out of bounds."""
    backend, device = kernel_case
    batch = make_batch([(2, 20), (1, 5), (3, 2), (2, 9)], block_size=16, device=device, seed=4)
    table = batch["block_table"].clone()
    num_blocks = batch["k_cache"].shape[0]
    table[0, 1] = num_blocks + 7  # keys 16..19 of request 0 are invisible
    table[1, 0] = -1  # request 1 sees no key at all: zeros
    batch["block_table"] = table
    # request 2 has q_len > kv_len (negative prefix); request 3 claims more keys than its table holds.
    batch["seq_lens"] = torch.tensor([20, 5, 2, 1000], dtype=torch.int32, device=device)
    got = ops.paged_attention(**batch, backend=backend, validate=False)
    want = reference_attention(batch, "causal")
    assert not got.isnan().any()
    torch.testing.assert_close(got.cpu(), want, **TOLERANCES[torch.float32])
    assert torch.equal(got[2].cpu(), torch.zeros_like(got[2].cpu()))


def test_raw_kernel_row_and_mask_guards(kernel_case):
    """The raw contract's guards for values the ops layer never produces: query rows past T are
    skipped, rows of no request are left untouched, mask elements past the mask are invisible."""
    from decodekit.ops._backend import kernel

    backend, device = kernel_case
    batch = make_batch([(3, 10), (3, 7)], device=device, seed=13)
    q = batch["q"][:4].contiguous()  # T = 4, but request 1 claims rows 3..5
    meta = (batch["block_table"], batch["seq_lens"], batch["cu_seqlens_q"])
    mask = torch.ones(9, dtype=torch.uint8, device=device)
    indptr = torch.tensor([0, 1000, 1009], dtype=torch.int64, device=device)  # request 1's mask is out of range
    args = (q, batch["k_cache"], batch["v_cache"], *meta, 2, 0.125, mask, indptr)
    got = torch.full_like(q, 7.0)
    want = torch.full_like(q.cpu(), 7.0)
    kernel(backend, "paged_kv", "paged_attention")(*args, got)
    kernel("reference", "paged_kv", "paged_attention")(*(a.cpu() if torch.is_tensor(a) else a for a in args), want)
    torch.testing.assert_close(got.cpu(), want, **TOLERANCES[torch.float32])
    cu = torch.tensor([0, 1, 2], dtype=torch.int32, device=device)  # rows 2 and 3 belong to no request
    got = torch.full_like(q, 7.0)
    kernel(backend, "paged_kv", "paged_attention")(q, batch["k_cache"], batch["v_cache"], meta[0], meta[1], cu, 0,
                                                    0.125, mask[:0], indptr[:0], got)
    assert (got[2:] == 7.0).all() and not (got[:2] == 7.0).any()


def test_custom_mask_without_visible_key_is_zero_on_every_backend(kernel_case):
    backend, device = kernel_case
    batch = make_batch([(3, 3), (2, 9)], device=device, seed=5)
    masks = [torch.eye(3, dtype=torch.bool, device=device), torch.zeros(2, 2, dtype=torch.bool, device=device)]
    masks[0][1, 1] = False  # query 1 of a prefill request sees nothing
    got = ops.paged_attention(**batch, mask="custom", custom_mask=masks, backend=backend)
    torch.testing.assert_close(got.cpu(), reference_attention(batch, "custom", masks), **TOLERANCES[torch.float32])
    assert torch.equal(got[1].cpu(), torch.zeros_like(got[1].cpu()))


def test_empty_inputs_are_no_ops(kernel_case):
    backend, device = kernel_case
    k_cache = torch.randn(2, 16, 1, 64, device=device)
    v_cache = k_cache.clone()
    before = k_cache.clone()
    none = torch.zeros(0, 1, 64, device=device)
    ops.kv_append(none, none, k_cache, v_cache, torch.zeros(0, dtype=torch.int64, device=device), backend=backend)
    no_pairs = torch.zeros(0, dtype=torch.int32, device=device)
    ops.kv_copy_blocks(k_cache, v_cache, no_pairs, no_pairs, backend=backend)
    assert torch.equal(k_cache, before) and torch.equal(v_cache, before)
    table = torch.tensor([[0], [1]], dtype=torch.int32, device=device)
    lens = torch.tensor([5, 0], dtype=torch.int32, device=device)
    cu = torch.tensor([0, 0, 0], dtype=torch.int32, device=device)  # no request has queries
    out = ops.paged_attention(torch.zeros(0, 2, 64, device=device), k_cache, v_cache, table, lens, cu, backend=backend)
    assert out.shape == (0, 2, 64)


# ------------------------------------------------------------------ custom-mask forms


def test_custom_mask_forms_agree():
    requests = [(3, 10), (4, 4), (2, 30)]
    batch = make_batch(requests, seed=6)
    masks = custom_masks("tree", [q for q, _ in requests], torch.Generator().manual_seed(6))
    flat = torch.cat([m.reshape(-1) for m in masks])
    packed = ops.pack_custom_mask(masks)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(flat.numel() / 8)
    assert np.array_equal(packed.numpy(), np.packbits(flat.numpy(), bitorder="little"))
    want = ops.paged_attention(**batch, mask="custom", custom_mask=masks, backend="reference")
    for form in (flat, packed, tuple(masks)):
        assert torch.equal(ops.paged_attention(**batch, mask="custom", custom_mask=form, backend="reference"), want)


def test_shared_custom_mask_for_the_whole_batch():
    requests = [(4, 10), (4, 17)]
    batch = make_batch(requests, seed=7)
    tree = tree_mask(4, torch.Generator().manual_seed(7))
    got = ops.paged_attention(**batch, mask="custom", custom_mask=tree, backend="reference")
    assert torch.equal(got, ops.paged_attention(**batch, mask="custom", custom_mask=[tree, tree], backend="reference"))


# ------------------------------------------------------------------ kv_append / kv_copy_blocks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kv_append_scatters_skips_padding_and_overwrites(kernel_case, dtype):
    backend, device = kernel_case
    _skip_interpreted_bf16(backend, device, dtype)
    gen = torch.Generator().manual_seed(8)
    shape = (6, 16, 2, 64)
    k_cache = torch.randn(shape, generator=gen).to(dtype)
    v_cache = torch.randn(shape, generator=gen).to(dtype)
    slots = torch.tensor([5, -1, 17, 95, 0, -1, 40], dtype=torch.int64)
    k = torch.randn(7, 2, 64, generator=gen).to(dtype)
    v = torch.randn(7, 2, 64, generator=gen).to(dtype)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    ref.kv_append(k, v, want_k, want_v, slots)
    got_k, got_v = k_cache.to(device), v_cache.to(device)
    ops.kv_append(k.to(device), v.to(device), got_k, got_v, slots.to(device), backend=backend)
    assert torch.equal(got_k.cpu(), want_k) and torch.equal(got_v.cpu(), want_v)
    assert torch.equal(got_k[0, 5].cpu(), k[0]) and torch.equal(got_k[5, 15].cpu(), k[3])
    # A diffusion step rewrites the same slots: the second write wins, other slots stay.
    k2, v2 = torch.randn(2, 2, 64, generator=gen).to(dtype), torch.randn(2, 2, 64, generator=gen).to(dtype)
    rewrite = torch.tensor([17, 40])
    ops.kv_append(k2.to(device), v2.to(device), got_k, got_v, rewrite.to(device), backend=backend)
    ref.kv_append(k2, v2, want_k, want_v, rewrite)
    assert torch.equal(got_k.cpu(), want_k) and torch.equal(got_v.cpu(), want_v)


def test_kv_append_out_of_range_slots_are_skipped_without_validation(kernel_case):
    backend, device = kernel_case
    k_cache = torch.zeros(2, 16, 1, 64, device=device)
    v_cache = torch.zeros_like(k_cache)
    k = torch.ones(3, 1, 64, device=device)
    slots = torch.tensor([32, 10**9, -7], device=device)
    ops.kv_append(k, k, k_cache, v_cache, slots, backend=backend, validate=False)
    assert k_cache.abs().sum() == 0 and v_cache.abs().sum() == 0


@pytest.mark.parametrize("layers", [None, 3])
def test_kv_copy_blocks_matches_reference(kernel_case, layers):
    backend, device = kernel_case
    gen = torch.Generator().manual_seed(9)
    shape = (8, 16, 2, 64) if layers is None else (layers, 8, 16, 2, 64)
    k_cache, v_cache = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    src = torch.tensor([1, 4, 1], dtype=torch.int32)
    dst = torch.tensor([0, 6, 7], dtype=torch.int32)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    view = (lambda t: t.unsqueeze(0)) if layers is None else (lambda t: t)
    ref.kv_copy_blocks(view(want_k), view(want_v), src, dst)
    got_k, got_v = k_cache.to(device), v_cache.to(device)
    ops.kv_copy_blocks(got_k, got_v, src.to(device), dst.to(device), backend=backend)
    assert torch.equal(got_k.cpu(), want_k) and torch.equal(got_v.cpu(), want_v)
    assert torch.equal(want_k[..., 7, :, :, :], k_cache[..., 1, :, :, :])


def test_kv_copy_blocks_skips_out_of_range_pairs_without_validation(kernel_case):
    backend, device = kernel_case
    k_cache = torch.arange(4.0, device=device).reshape(4, 1, 1, 1).expand(4, 16, 1, 64).contiguous()
    v_cache = k_cache.clone()
    before = k_cache.clone()
    src = torch.tensor([-1, 2, 9], dtype=torch.int32, device=device)
    dst = torch.tensor([0, 40, 3], dtype=torch.int32, device=device)
    ops.kv_copy_blocks(k_cache, v_cache, src, dst, backend=backend, validate=False)
    assert torch.equal(k_cache, before) and torch.equal(v_cache, before)


# ------------------------------------------------------------------ bad input


def _good_attention_args():
    batch = make_batch([(2, 20), (1, 5)], seed=10)
    return batch


BAD_ATTENTION = [
    (lambda a: a.update(q=a["q"].numpy()), TypeError, "q"),
    (lambda a: a.update(q=a["q"].to(torch.int32)), TypeError, "q"),
    (lambda a: a.update(q=a["q"][:, :3]), ValueError, "Hq"),
    (lambda a: a.update(q=a["q"][..., :32]), ValueError, "head_dim"),
    (lambda a: a.update(k_cache=a["k_cache"].half()), TypeError, "k_cache"),
    (lambda a: a.update(v_cache=a["v_cache"][:-1]), ValueError, "v_cache"),
    (lambda a: a.update(v_cache=a["v_cache"].transpose(0, 1).contiguous().transpose(0, 1)), ValueError, "v_cache"),
    (lambda a: a.update(block_table=a["block_table"].float()), TypeError, "block_table"),
    (lambda a: a.update(block_table=a["block_table"][0]), ValueError, "block_table"),
    (lambda a: a["block_table"].__setitem__((0, 0), 10_000), ValueError, "block_table"),
    (lambda a: a["block_table"].__setitem__((0, 1), -1), ValueError, "block_table"),
    (lambda a: a["block_table"].__setitem__((1, 1), -5), ValueError, "block_table"),
    (lambda a: a.update(seq_lens=torch.tensor([20, 5, 1], dtype=torch.int32)), ValueError, "seq_lens"),
    (lambda a: a.update(seq_lens=torch.tensor([20, 100], dtype=torch.int32)), ValueError, "seq_lens"),
    (lambda a: a.update(seq_lens=torch.tensor([1, 5], dtype=torch.int32)), ValueError, "seq_lens"),
    (lambda a: a.update(seq_lens=a["seq_lens"].to("meta")), ValueError, "seq_lens"),
    (lambda a: a.update(v_cache=a["v_cache"].to("meta")), ValueError, "v_cache"),
    (lambda a: a.update(cu_seqlens_q=torch.tensor([0, 2, 4], dtype=torch.int32)), ValueError, "cu_seqlens_q"),
    (lambda a: a.update(cu_seqlens_q=torch.tensor([0, 3], dtype=torch.int32)), ValueError, "cu_seqlens_q"),
    (lambda a: a.update(mask="sliding"), ValueError, "mask"),
    (lambda a: a.update(mask="custom"), ValueError, "custom_mask"),
    (lambda a: a.update(custom_mask=[torch.ones(2, 2, dtype=torch.bool)] * 2), ValueError, "custom_mask"),
    (lambda a: a.update(mask="custom", custom_mask=[torch.ones(2, 2, dtype=torch.bool)]), ValueError, "custom_mask"),
    (lambda a: a.update(mask="custom", custom_mask=[torch.ones(2, 2, dtype=torch.bool)] * 2), ValueError,
     "custom_mask"),
    (lambda a: a.update(mask="custom", custom_mask=[torch.ones(2, 2), torch.ones(1, 1)]), TypeError, "custom_mask"),
    (lambda a: a.update(mask="custom", custom_mask=torch.ones(6, dtype=torch.bool)), ValueError, "custom_mask"),
    (lambda a: a.update(mask="custom", custom_mask=torch.ones(2, dtype=torch.uint8)), ValueError, "custom_mask"),
    (lambda a: a.update(mask="custom", custom_mask=torch.ones(5, dtype=torch.int32)), TypeError, "custom_mask"),
    (lambda a: a.update(scale=float("nan")), ValueError, "scale"),
    (lambda a: a.update(scale="big"), TypeError, "scale"),
    (lambda a: a.update(backend="nope"), ValueError, "backend"),
]


@pytest.mark.parametrize("mutate, error, name", BAD_ATTENTION)
def test_paged_attention_bad_input_names_the_argument(mutate, error, name):
    args = _good_attention_args()
    mutate(args)
    with pytest.raises(error, match=name):
        ops.paged_attention(**args)


def _append_args():
    cache = torch.zeros(4, 16, 2, 64)
    return dict(k=torch.ones(3, 2, 64), v=torch.ones(3, 2, 64), k_cache=cache, v_cache=cache.clone(),
                slot_mapping=torch.tensor([0, 5, -1]))


BAD_APPEND = [
    (lambda a: a.update(k=a["k"][:, :1]), ValueError, "k"),
    (lambda a: a.update(v=a["v"][:2]), ValueError, "v"),
    (lambda a: a.update(k=a["k"].half()), TypeError, "k"),
    (lambda a: a.update(slot_mapping=a["slot_mapping"].float()), TypeError, "slot_mapping"),
    (lambda a: a.update(slot_mapping=a["slot_mapping"][:2]), ValueError, "slot_mapping"),
    (lambda a: a.update(slot_mapping=torch.tensor([0, 64, -1])), ValueError, "slot_mapping"),
    (lambda a: a.update(slot_mapping=torch.tensor([3, 3, -1])), ValueError, "slot_mapping"),
    (lambda a: a.update(k_cache=a["k_cache"][:, ::2]), ValueError, "k_cache"),
]


@pytest.mark.parametrize("mutate, error, name", BAD_APPEND)
def test_kv_append_bad_input_names_the_argument(mutate, error, name):
    args = _append_args()
    mutate(args)
    with pytest.raises(error, match=name):
        ops.kv_append(**args)


def test_kv_append_padding_slots_may_repeat():
    args = _append_args()
    args["slot_mapping"] = torch.tensor([-1, 7, -1])
    ops.kv_append(**args, backend="reference")
    assert torch.equal(args["k_cache"][0, 7], args["k"][1])


@pytest.mark.parametrize(
    "src, dst, name",
    [([0, 1], [2, 2], "dst"), ([0, 1], [1, 3], "src"), ([0, 9], [2, 3], "src"), ([0, 1], [2, -1], "dst")],
)
def test_kv_copy_blocks_bad_pairs_name_the_argument(src, dst, name):
    cache = torch.zeros(4, 16, 2, 64)
    with pytest.raises(ValueError, match=name):
        ops.kv_copy_blocks(cache, cache.clone(), torch.tensor(src, dtype=torch.int32),
                           torch.tensor(dst, dtype=torch.int32))


# ------------------------------------------------------------------ torch.library and torch.compile


def test_custom_ops_pass_opcheck():
    batch = make_batch([(2, 20), (1, 5)], seed=11)
    mask, indptr = torch.ones(5, dtype=torch.uint8), torch.tensor([0, 4, 5])
    torch.library.opcheck(
        torch.ops.decodekit.paged_attention.default,
        (*batch.values(), 2, 0.125, mask, indptr, "reference"),
    )
    cache = torch.zeros(4, 16, 2, 64)
    torch.library.opcheck(
        torch.ops.decodekit.kv_append.default,
        (torch.ones(2, 2, 64), torch.ones(2, 2, 64), cache, cache.clone(), torch.tensor([3, -1]), "reference"),
    )
    torch.library.opcheck(
        torch.ops.decodekit.kv_copy_blocks.default,
        (cache, cache.clone(), torch.tensor([0], dtype=torch.int32), torch.tensor([1], dtype=torch.int32),
         "reference"),
    )


def test_compiled_decode_step_fullgraph():
    """Append one token per request, then attend: the decode step of a model layer."""
    requests = [(1, 9), (1, 20)]
    batch = make_batch(requests, seed=12)
    new_k = torch.randn(2, 2, 64)
    new_v = torch.randn(2, 2, 64)
    table = batch["block_table"]
    positions = batch["seq_lens"].long() - 1
    slots = table[torch.arange(2), positions // 16].long() * 16 + positions % 16

    def step(q, k, v, k_cache, v_cache):
        ops.kv_append(k, v, k_cache, v_cache, slots)
        return ops.paged_attention(q, k_cache, v_cache, table, batch["seq_lens"], batch["cu_seqlens_q"])

    eager_k, eager_v = batch["k_cache"].clone(), batch["v_cache"].clone()
    want = step(batch["q"], new_k, new_v, eager_k, eager_v)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(batch["q"], new_k, new_v, batch["k_cache"], batch["v_cache"])
    torch.testing.assert_close(got, want)
    assert torch.equal(batch["k_cache"], eager_k) and torch.equal(batch["v_cache"], eager_v)
