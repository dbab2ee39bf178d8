"""Shared microbenchmark harness (DESIGN.md): timing, bandwidth ceiling, result rows, outputs.

* CPU: ``time.perf_counter`` around each call, warm-up, median of N. Inputs are reused, so they
  sit in cache as a decode step's logits do right after the LM head wrote them (the copy ceiling
  is measured the same way, and cache-resident ops can exceed 100% of it).
* GPU: ``triton.testing.do_bench`` (median) over inputs rotated through enough copies to exceed
  the L2 cache, so every call reads cold data as in a real decode step.
* Every row names op, backend, shape, dtype, device, median time, achieved GB/s against the bytes
  the op must move, the fraction of a bandwidth ceiling measured in the same run (a large copy),
  and the speedup over the baseline measured in the same run.
* Output: a markdown table on stdout, CSV and PNG under ``bench/results/`` (or ``--out``).
"""

from __future__ import annotations

import argparse

import csv
import dataclasses
import itertools
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
L2_BYTES_TO_DEFEAT = 256 * 2**20  # larger than any current GPU's L2 (H100: 50 MB, B200: 126 MB)


@dataclasses.dataclass
class Row:
    op: str
    backend: str
    shape: str
    dtype: str
    device: str
    median_us: float
    bytes_moved: int
    ceiling_gbps: float
    baseline_us: float | None = None

    @property
    def gbps(self) -> float:
        return self.bytes_moved / (self.median_us * 1e-6) / 1e9

    @property
    def pct_of_ceiling(self) -> float | None:
        return 100.0 * self.gbps / self.ceiling_gbps if self.ceiling_gbps > 0 else None

    @property
    def speedup(self) -> float | None:
        return None if self.baseline_us is None else self.baseline_us / self.median_us

    def as_dict(self) -> dict:
        return {
            "op": self.op,
            "backend": self.backend,
            "shape": self.shape,
            "dtype": self.dtype,
            "device": self.device,
            "median_us": round(self.median_us, 2),
            "GB/s": round(self.gbps, 2),
            "% of copy": "" if self.pct_of_ceiling is None else round(self.pct_of_ceiling, 1),
            "speedup vs baseline": "" if self.speedup is None else round(self.speedup, 2),
        }


def bench_parser(family: str, doc: str | None, quick_help: str) -> argparse.ArgumentParser:
    """The options every ``decodekit bench <family>`` takes: --quick, --device, --out, --reps."""
    parser = argparse.ArgumentParser(prog=f"decodekit bench {family}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per CPU case")
    return parser


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def time_cpu(fn: Callable[[], object], *, warmup: int = 2, reps: int = 10) -> float:
    """Median wall time of ``fn()`` in microseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def time_gpu(fn: Callable[[], object], *, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median time of ``fn()`` in microseconds by ``triton.testing.do_bench``."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median") * 1e3


def rotating(make_inputs: Callable[[], tuple], bytes_per_copy: int, device: torch.device):
    """Cycle through enough copies of the inputs that successive calls miss the L2 cache (GPU)."""
    copies = 1 if device.type == "cpu" else max(1, min(64, L2_BYTES_TO_DEFEAT // max(bytes_per_copy, 1)))
    return itertools.cycle([make_inputs() for _ in range(copies)])


def time_op(
    op: Callable[..., object],
    make_inputs: Callable[[], tuple],
    bytes_per_call: int,
    device: torch.device,
    *,
    reps: int = 10,
) -> float:
    """Median microseconds of ``op(*inputs)`` with inputs rotated as ``rotating`` describes."""
    inputs = rotating(make_inputs, bytes_per_call, device)
    call = lambda: op(*next(inputs))  # noqa: E731
    if device.type == "cuda":
        return time_gpu(call)
    return time_cpu(call, reps=reps)


def copy_ceiling_gbps(device: torch.device, nbytes: int | None = None) -> float:
    """Achieved bandwidth of a large device-to-device copy: the roofline every op is compared to."""
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 1 << 27)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    micros = time_op(lambda a, b: b.copy_(a), lambda: (src, dst), 2 * nbytes, device, reps=5)
    return 2 * nbytes / (micros * 1e-6) / 1e9


def markdown_table(rows: Sequence[Row]) -> str:
    if not rows:
        return "(no rows)"
    dicts = [r.as_dict() for r in rows]
    header = list(dicts[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(d[h]) for h in header) + " |" for d in dicts]
    return "\n".join(lines)


def write_results(rows: Sequence[Row], name: str, out_dir: Path | None = None, title: str = "") -> list[Path]:
    """CSV, PNG (median time per case and implementation, log scale) and markdown under out_dir."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"{name}.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].as_dict()))
        writer.writeheader()
        writer.writerows(r.as_dict() for r in rows)
    md_path = out_dir / f"{name}.md"
    md_path.write_text(f"# {title or name}\n\n{markdown_table(rows)}\n")
    written = [csv_path, md_path]
    png_path = _plot(rows, out_dir / f"{name}.png", title or name)
    if png_path is not None:
        written.append(png_path)
    return written


def _plot(rows: Sequence[Row], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cases = list(dict.fromkeys(f"{r.op}\n{r.shape} {r.dtype}" for r in rows))
    impls = list(dict.fromkeys(r.backend for r in rows))
    width = 0.8 / max(len(impls), 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(cases)), 5))
    for i, impl in enumerate(impls):
        xs, ys = [], []
        for j, case in enumerate(cases):
            for r in rows:
                if r.backend == impl and f"{r.op}\n{r.shape} {r.dtype}" == case:
                    xs.append(j + i * width)
                    ys.append(r.median_us)
        ax.bar(xs, ys, width=width, label=impl)
    ax.set_yscale("log")
    ax.set_ylabel("median time (us, log scale)")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
    ax.set_xticklabels(cases, fontsize=7, rotation=45, ha="right")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
