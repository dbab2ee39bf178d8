"""Sampling microbenchmark: decodekit's fused `sample` against what users otherwise run.

Baseline (measured in the same run): Hugging Face-style warpers (temperature, TopK, TopP with a
full sort) + softmax + ``torch.multinomial``. Floor: one ``torch.softmax`` over the same logits
(the least work any sampler from logits must do). Logits are ``randn * 3`` (a spread of about
+-10 nats, like a language model's), one fresh tensor per rotation copy.

Run: ``decodekit bench sampling [--quick] [--device cpu|cuda] [--out DIR]``
"""

from __future__ import annotations

import sys

import torch

from decodekit import ops
from decodekit.bench import harness
from decodekit.ops import _backend

MODES = {
    "greedy": dict(temperature=0.0),
    "sample": dict(temperature=1.0),
    "topk50_topp0.9_t0.8": dict(temperature=0.8, top_k=50, top_p=0.9),
}


def hf_baseline(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0) -> torch.Tensor:
    """What a Hugging Face `generate` step does: warpers with a full sort, softmax, multinomial."""
    if temperature == 0.0:
        return logits.argmax(-1)
    scores = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(scores, top_k).values[..., -1, None]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove_sorted = cumulative <= (1 - top_p)
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)
        scores = scores.masked_fill(remove, float("-inf"))
    return torch.multinomial(scores.softmax(-1), 1).squeeze(-1)


def run(device: torch.device, batches, vocabs, dtypes, modes, reps: int) -> list[harness.Row]:
    ceiling = harness.copy_ceiling_gbps(device)
    backends = [b for b in _backend.available(device) if b != "reference"]
    rows: list[harness.Row] = []
    for vocab in vocabs:
        for batch in batches:
            for dtype in dtypes:
                nbytes = batch * vocab * torch.tensor([], dtype=dtype).element_size()
                make = lambda: (torch.randn(batch, vocab, device=device).mul_(3).to(dtype),)  # noqa: E731
                shape = f"{batch}x{vocab}"
                name = str(dtype).replace("torch.", "")
                label = harness.device_name(device)
                softmax_us = harness.time_op(lambda x: torch.softmax(x, -1), make, nbytes, device, reps=reps)
                rows.append(harness.Row("softmax (floor)", "torch", shape, name, label, softmax_us, nbytes, ceiling))
                for mode in modes:
                    params = MODES[mode]
                    base_us = harness.time_op(lambda x: hf_baseline(x, **params), make, nbytes, device, reps=reps)
                    rows.append(harness.Row(mode, "hf-baseline", shape, name, label, base_us, nbytes, ceiling, base_us))
                    for backend in backends:
                        seed = torch.arange(batch, device=device)
                        op = lambda x: ops.sample(x, seed=seed, backend=backend, **params)  # noqa: E731
                        us = harness.time_op(op, make, nbytes, device, reps=reps)
                        rows.append(harness.Row(mode, backend, shape, name, label, us, nbytes, ceiling, base_us))
                print(harness.markdown_table(rows[-(1 + len(modes) * (1 + len(backends))):]), flush=True)
    return rows


def dispatch_overhead(device: torch.device) -> list[harness.Row]:
    """Cost of the Python layers on a tiny call (B=1, V=4096, greedy), where overhead dominates:
    the raw kernel, ``ops.sample`` (eager fast path) and the ``torch.ops.decodekit.sample`` custom
    op that ``torch.compile`` graphs call."""
    from decodekit.ops._backend import default_backend, kernel
    from decodekit.ops.sampling import _sample_impl

    backend = default_backend(device)
    x = torch.randn(1, 4096, device=device)
    args = [torch.zeros(1, device=device), torch.zeros(1, dtype=torch.int32, device=device),
            torch.ones(1, device=device), torch.zeros(1, device=device),
            torch.zeros(1, dtype=torch.int64, device=device), torch.zeros(1, dtype=torch.int64, device=device)]
    outs = [torch.empty(1, dtype=torch.int64, device=device), torch.empty(1, device=device),
            torch.empty(1, dtype=torch.bool, device=device)]
    raw = kernel(backend, "sampling", "sample")
    calls = {
        "raw kernel": lambda: raw(x, *args, *outs),
        "ops.sample": lambda: ops.sample(x, temperature=0.0, seed=0, backend=backend),
        "torch.ops.decodekit.sample": lambda: torch.ops.decodekit.sample(x, *args, backend),
        "_sample_impl (alloc + kernel)": lambda: _sample_impl(x, *args, backend),
    }
    label = harness.device_name(device)
    no_ceiling = 0.0  # bandwidth means nothing for an overhead row: only the time is reported
    rows = []
    for name, call in calls.items():
        timer = harness.time_gpu if device.type == "cuda" else (lambda f: harness.time_cpu(f, reps=200))
        rows.append(harness.Row(f"dispatch: {name}", backend, "1x4096", "float32", label, timer(call), 4096 * 4, no_ceiling))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = harness.bench_parser("sampling", __doc__, "B=32 only, fewer repetitions")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    batches = [32] if args.quick else [1, 32, 128]
    vocabs = [32000, 128256]
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    reps = args.reps or (5 if args.quick else 10)
    rows = run(device, batches, vocabs, dtypes, list(MODES), reps)
    overhead = dispatch_overhead(device)
    print("\n## dispatch overhead\n\n" + harness.markdown_table(overhead))
    rows += overhead
    title = f"sampling on {harness.device_name(device)}"
    print(f"\n## {title}\n\n{harness.markdown_table(rows)}")
    name = f"sampling_{device.type}" + ("_quick" if args.quick else "")
    for path in harness.write_results(rows, name, args.out, title):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
