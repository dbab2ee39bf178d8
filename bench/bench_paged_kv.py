"""Paged-attention decode microbenchmark: decodekit's paged_attention against contiguous SDPA.

Cases (the issue's targets): decode, one query per request, B=32 at context 4096 and B=1 at
context 32768, Hq=32, Hkv=8 (GQA 4), D=128; fp16 on GPU, fp32 on CPU. The paged cache uses
16-token blocks handed out in a random order (a long-running server's fragmented pool).

Bytes: the K and V the call must read, ``2 * B * context * Hkv * D * itemsize`` (queries and
outputs are < 0.1% of it). "% of copy" compares with a large copy measured in the same run. On a
GPU each case's K/V (128 MiB and more) exceeds the L2 cache, so every call reads cold memory.

Baselines (same run, same K/V values): ``torch.nn.functional.scaled_dot_product_attention`` over
the K/V stored contiguously as ``[B, Hkv, context, D]`` (what an unpaged cache costs: the price of
paging is the ratio), once with ``enable_gqa=True`` and once after expanding K/V heads to Hq as
Hugging Face's ``repeat_kv`` does; the faster of the two is the baseline of the speedup column.
FlashInfer's ``BatchDecodeWithPagedKVCacheWrapper`` is timed too when it is importable (GPU).

Run: ``decodekit bench paged_kv [--quick] [--device cpu|cuda] [--out DIR]``
"""

from __future__ import annotations

import sys

import torch

from decodekit import ops
from decodekit.bench import harness
from decodekit.ops import _backend

CASES = [(32, 4096), (1, 32768)]  # (batch, context)
NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16


class DecodeCase:
    """One decode step's inputs, paged and contiguous, holding the same K/V values."""

    def __init__(self, batch: int, context: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
        gen = torch.Generator(device=device).manual_seed(seed)
        blocks_per_seq = context // BLOCK_SIZE
        num_blocks = batch * blocks_per_seq
        shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
        self.k_cache = torch.randn(shape, generator=gen, device=device).to(dtype)
        self.v_cache = torch.randn(shape, generator=gen, device=device).to(dtype)
        order = torch.randperm(num_blocks, generator=gen, device=device)
        self.block_table = order.view(batch, blocks_per_seq).to(torch.int32).contiguous()
        self.seq_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
        self.cu_seqlens_q = torch.arange(batch + 1, dtype=torch.int32, device=device)
        self.q = torch.randn(batch, NUM_Q_HEADS, HEAD_DIM, generator=gen, device=device).to(dtype)
        # [B, blocks, BS, Hkv, D] -> [B, Hkv, context, D]: the layout of an unpaged cache
        self.k = self._contiguous(self.k_cache, batch, context)
        self.v = self._contiguous(self.v_cache, batch, context)
        self.kv_bytes = 2 * batch * context * NUM_KV_HEADS * HEAD_DIM * self.q.element_size()

    def _contiguous(self, cache, batch, context):
        gathered = cache[self.block_table.long()]  # [B, blocks, BS, Hkv, D]
        return gathered.reshape(batch, context, NUM_KV_HEADS, HEAD_DIM).transpose(1, 2).contiguous()

    def paged(self, backend):
        return ops.paged_attention(self.q, self.k_cache, self.v_cache, self.block_table, self.seq_lens,
                                   self.cu_seqlens_q, backend=backend, validate=False)

    def sdpa_gqa(self):
        return torch.nn.functional.scaled_dot_product_attention(self.q.unsqueeze(2), self.k, self.v, enable_gqa=True)

    def sdpa_repeat_kv(self):
        group = NUM_Q_HEADS // NUM_KV_HEADS
        batch, _, context, _ = self.k.shape
        expanded = (batch, NUM_KV_HEADS, group, context, HEAD_DIM)
        k = self.k[:, :, None].expand(expanded).reshape(batch, -1, context, HEAD_DIM)
        v = self.v[:, :, None].expand(expanded).reshape(batch, -1, context, HEAD_DIM)
        return torch.nn.functional.scaled_dot_product_attention(self.q.unsqueeze(2), k, v)

    def release_contiguous(self):
        del self.k, self.v


def flashinfer_decode(case: DecodeCase):
    """A ready-to-run FlashInfer paged decode over the same cache, or None when unavailable."""
    if case.q.device.type != "cuda":
        return None
    try:
        import flashinfer
    except ImportError:
        return None
    batch, blocks = case.block_table.shape
    device = case.q.device
    workspace = torch.zeros(128 * 2**20, dtype=torch.uint8, device=device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=True)
    indptr = torch.arange(0, (batch + 1) * blocks, blocks, dtype=torch.int32, device=device)
    last_page_len = torch.full((batch,), BLOCK_SIZE, dtype=torch.int32, device=device)
    wrapper.plan(indptr, case.block_table.reshape(-1), last_page_len, NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM,
                 BLOCK_SIZE, data_type=case.q.dtype)
    return lambda: wrapper.run(case.q, (case.k_cache, case.v_cache))


def _time(fn, device, reps):
    return harness.time_gpu(fn) if device.type == "cuda" else harness.time_cpu(fn, warmup=1, reps=reps)


def run(device: torch.device, cases, dtype: torch.dtype, reps: int) -> list[harness.Row]:
    ceiling = harness.copy_ceiling_gbps(device)
    label = harness.device_name(device)
    name = str(dtype).replace("torch.", "")
    backends = [b for b in _backend.available(device) if b != "reference"]
    rows: list[harness.Row] = []
    for batch, context in cases:
        case = DecodeCase(batch, context, dtype, device)
        shape = f"B={batch} ctx={context} Hq={NUM_Q_HEADS} Hkv={NUM_KV_HEADS} D={HEAD_DIM}"
        want = case.sdpa_gqa()
        baselines = {"sdpa-contiguous (enable_gqa)": case.sdpa_gqa, "sdpa-contiguous (repeat_kv)": case.sdpa_repeat_kv}
        times = {impl: _time(fn, device, reps) for impl, fn in baselines.items()}
        base_us = min(times.values())
        case_rows = [harness.Row("decode", impl, shape, name, label, us, case.kv_bytes, ceiling, base_us)
                     for impl, us in times.items()]
        case.release_contiguous()
        for backend in backends:
            got = case.paged(backend)
            error = (got.float() - want.squeeze(2).float()).abs().max().item()
            if error > 2e-2:
                raise AssertionError(f"{backend} paged_attention differs from SDPA by {error} on {shape}")
            us = _time(lambda backend=backend: case.paged(backend), device, reps)
            case_rows.append(harness.Row("decode", f"{backend} (paged)", shape, name, label, us, case.kv_bytes,
                                         ceiling, base_us))
        try:
            decode = flashinfer_decode(case)
            if decode is not None:
                us = _time(decode, device, reps)
                case_rows.append(harness.Row("decode", "flashinfer (paged)", shape, name, label, us, case.kv_bytes,
                                             ceiling, base_us))
        except Exception as error:  # an installed FlashInfer that cannot run this case is reported, not fatal
            print(f"flashinfer skipped on {shape}: {type(error).__name__}: {error}")
        print(harness.markdown_table(case_rows), flush=True)
        rows += case_rows
        del case
    return rows


def dispatch_overhead(device: torch.device, dtype: torch.dtype) -> list[harness.Row]:
    """Python-layer cost on a tiny decode (B=1, 16 keys), where overhead dominates: the raw kernel,
    ``ops.paged_attention`` without and with value checks, and the custom op torch.compile calls."""
    from decodekit.ops._backend import default_backend, kernel
    from decodekit.ops.paged_kv import _no_mask

    backend = default_backend(device)
    case = DecodeCase(1, BLOCK_SIZE, dtype, device)
    scale = HEAD_DIM**-0.5
    mask, indptr = _no_mask(device)
    out = torch.empty_like(case.q)
    meta = (case.block_table, case.seq_lens, case.cu_seqlens_q)
    raw = kernel(backend, "paged_kv", "paged_attention")
    calls = {
        "raw kernel": lambda: raw(case.q, case.k_cache, case.v_cache, *meta, 0, scale, mask, indptr, out),
        "ops.paged_attention(validate=False)": lambda: case.paged(backend),
        "ops.paged_attention(validate=True)": lambda: ops.paged_attention(case.q, case.k_cache, case.v_cache, *meta),
        "torch.ops.decodekit.paged_attention": lambda: torch.ops.decodekit.paged_attention(
            case.q, case.k_cache, case.v_cache, *meta, 0, scale, mask, indptr, backend),
    }
    label = harness.device_name(device)
    rows = []
    for name, call in calls.items():
        us = harness.time_gpu(call) if device.type == "cuda" else harness.time_cpu(call, reps=200)
        rows.append(harness.Row(f"dispatch: {name}", backend, f"B=1 ctx={BLOCK_SIZE}", str(dtype).replace("torch.", ""),
                                label, us, case.kv_bytes, 0.0))  # a time-only row: no bandwidth ceiling
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = harness.bench_parser("paged_kv", __doc__, "fewer repetitions, no dispatch-overhead rows")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    reps = args.reps or (3 if args.quick else 10)
    rows = run(device, CASES, dtype, reps)
    if not args.quick:
        overhead = dispatch_overhead(device, dtype)
        print("\n## dispatch overhead\n\n" + harness.markdown_table(overhead))
        rows += overhead
    title = f"paged_kv decode on {harness.device_name(device)}"
    print(f"\n## {title}\n\n{harness.markdown_table(rows)}")
    name = f"paged_kv_{device.type}" + ("_quick" if args.quick else "")
    for path in harness.write_results(rows, name, args.out, title):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
