"""Denoising microbenchmark: decodekit's fused `denoise_step` against the LLaDA reference step.

Cases (issue 4): LLaDA's vocabulary V=126464; B=1 and 8; W=32 (one Fast-dLLM block: logits of the
block only, window at canvas position 128 of 256) and W=256 (the whole canvas); confidence=prob
(untempered, LLaDA) with greedy proposals and with temperature 0.5; select=topk (k=4) and
threshold (tau=0.9). Half of the window is masked. Logits are bf16 (what the LM head emits),
``randn * 3``, one fresh tensor per rotation copy.

Baseline, measured in the same run: LLaDA's published step in torch (``add_gumbel_noise`` in
float64, ``softmax`` in float64, ``torch.topk`` in a Python loop over the batch; Fast-dLLM's
threshold loop over candidates for ``threshold``). Bytes moved = the logits read once.

Run: ``decodekit bench denoise [--quick] [--device cpu|cuda] [--out DIR]``
"""

from __future__ import annotations

import sys

import torch

from decodekit import ops
from decodekit.bench import harness
from decodekit.ops import _backend

VOCAB = 126464
CANVAS = 256
MASK_ID = 126336  # LLaDA's mask token
MODES = {
    "greedy topk": dict(temperature=0.0, select="topk"),
    "greedy threshold": dict(temperature=0.0, select="threshold"),
    "t0.5 topk": dict(temperature=0.5, select="topk"),
    "t0.5 threshold": dict(temperature=0.5, select="threshold"),
}
K = 4
TAU = 0.9


def llada_step(logits, x, window_start, temperature, select):
    """One LLaDA `generate` step (Fast-dLLM `get_transfer_index` for threshold) on a logits window."""
    width = logits.shape[1]
    if temperature > 0:  # add_gumbel_noise: float64, exp(l) / (-log u)^T
        noisy = logits.to(torch.float64)
        noise = torch.rand_like(noisy).log_().neg_().pow_(temperature)
        x0 = torch.argmax(noisy.exp_().div_(noise), dim=-1)
        del noisy, noise
    else:
        x0 = torch.argmax(logits, dim=-1)
    p = torch.softmax(logits.to(torch.float64), dim=-1)
    x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
    del p
    window = x[:, window_start : window_start + width]
    mask_index = window == MASK_ID
    x0 = torch.where(mask_index, x0, window)
    confidence = torch.where(mask_index, x0_p, float("-inf"))
    transfer = torch.zeros_like(x0, dtype=torch.bool)
    for j in range(confidence.shape[0]):
        if select == "topk":
            _, chosen = torch.topk(confidence[j], k=K)
            transfer[j, chosen] = True
        else:
            n = int(mask_index[j].sum())
            _, chosen = torch.topk(confidence[j], k=n)
            transfer[j, chosen] = True
            for i in range(1, n):
                if confidence[j, chosen[i]] < TAU:
                    transfer[j, chosen[i]] = False
    window[transfer] = x0[transfer]
    return x


def _inputs(batch, width, device, dtype):
    logits = torch.randn(batch, width, VOCAB, device=device).mul_(3).to(dtype)
    canvas = torch.randint(0, 1000, (batch, CANVAS), device=device)
    canvas[:, CANVAS // 2 :] = MASK_ID  # a half-generated canvas
    window_start = CANVAS - width if width < CANVAS else 0
    canvas[:, window_start : window_start + width : 2] = MASK_ID
    return logits, canvas, window_start


def run(device, batches, widths, modes, reps) -> list[harness.Row]:
    ceiling = harness.copy_ceiling_gbps(device)
    backends = [b for b in _backend.available(device) if b != "reference"]
    label = harness.device_name(device)
    dtype = torch.bfloat16
    rows: list[harness.Row] = []
    for width in widths:
        for batch in batches:
            nbytes = batch * width * VOCAB * dtype.itemsize
            shape = f"{batch}x{width}x{VOCAB}"
            copies = harness.rotating(lambda: _inputs(batch, width, device, dtype), nbytes, device)
            first = len(rows)
            for mode in modes:
                params = MODES[mode]
                temperature, select = params["temperature"], params["select"]

                def baseline():
                    logits, canvas, start = next(copies)
                    return llada_step(logits, canvas.clone(), start, temperature, select)

                base_us = _time(baseline, device, reps, warmup=1)
                rows.append(harness.Row(mode, "llada-torch", shape, "bfloat16", label, base_us, nbytes, ceiling, base_us))
                kwargs = dict(proposal="sample", temperature=temperature) if temperature > 0 else {}
                kwargs.update(select=select, k=K, tau=TAU, mask_id=MASK_ID, seed=torch.arange(batch, device=device))
                for backend in backends:
                    def fused():
                        logits, canvas, start = next(copies)
                        return ops.denoise_step(logits, canvas.clone(), window_start=start, backend=backend, **kwargs)

                    us = _time(fused, device, reps, warmup=2)
                    rows.append(harness.Row(mode, backend, shape, "bfloat16", label, us, nbytes, ceiling, base_us))
            print(harness.markdown_table(rows[first:]), flush=True)
    return rows


def _time(fn, device, reps, warmup):
    if device.type == "cuda":
        return harness.time_gpu(fn)
    return harness.time_cpu(fn, warmup=warmup, reps=reps)


def main(argv: list[str] | None = None) -> int:
    parser = harness.bench_parser("denoise", __doc__, "B=8, W=256 only, fewer repetitions")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    batches = [8] if args.quick else [1, 8]
    widths = [256] if args.quick else [32, 256]
    reps = args.reps or (3 if args.quick else 5)
    rows = run(device, batches, widths, list(MODES), reps)
    title = f"denoise_step on {harness.device_name(device)}"
    print(f"\n## {title}\n\n{harness.markdown_table(rows)}")
    name = f"denoise_{device.type}" + ("_quick" if args.quick else "")
    for path in harness.write_results(rows, name, args.out, title):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
