"""Discrete diffusion microbenchmark: decodekit's fused `discrete_diffusion_step` against SEDD's
torch sampler step.

Cases: GPT-2's vocabulary V=50257 (SEDD's; on the absorbing graph the last id is the mask, where
SEDD's absorbing graph puts it), canvas L=1024, B=1 and 8 (--quick: B=8, L=128); float32 log
scores; modes absorbing analytic, absorbing euler and uniform analytic (SEDD's predictors), at
sigma = 1, dsigma = 0.05. Half of the absorbing canvas is masked (a mid-sampling step).
Scores are ``randn * 3 - 4.5`` (plus ``- log V`` on the absorbing graph), so a row's concrete
scores sum to ~1 (absorbing) or average ~1 (uniform) as a trained score network's do, and 0 at
the current token (SEDD's network scatters it there).

Baseline, measured in the same run: SEDD's step as its sampling loop runs it (louaaron/Score-
Entropy-Discrete-Diffusion, graph_lib.py and sampling.py), written out below: the exp of the
scores, then Euler's reverse rate (transp_rate from one_hot, the diagonal by scatter) plus one_hot,
or the analytic staggered_score times transp_transition, then sample_categorical (argmax of
probs / (1e-10 - log(rand_like + 1e-10))), every [B, L, V] temporary materialised. Bytes moved =
the scores read once.

Run: ``decodekit bench discrete_diffusion [--quick] [--device cpu|cuda] [--out DIR] [--reps N]
[--threads N]``
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F

from decodekit import ops
from decodekit.bench import harness
from decodekit.ops import _backend

VOCAB = 50257
SIGMA = 1.0
DSIGMA = 0.05
MODES = {
    "absorbing analytic": dict(graph="absorbing", sampler="analytic"),
    "absorbing euler": dict(graph="absorbing", sampler="euler"),
    "uniform analytic": dict(graph="uniform", sampler="analytic"),
}


# ---------------------------------------------------------------- SEDD's step in torch (baseline)


def sedd_sample_categorical(probs):
    gumbel_norm = 1e-10 - (torch.rand_like(probs) + 1e-10).log()
    return (probs / gumbel_norm).argmax(dim=-1)


def sedd_absorbing_transp_rate(x, vocab):
    edge = -F.one_hot(x, num_classes=vocab)
    edge[x == vocab - 1] += 1
    return edge


def sedd_reverse_rate(x, score, transp_rate):
    rate = transp_rate * score
    rate.scatter_(-1, x[..., None], torch.zeros_like(rate[..., :1]))
    rate.scatter_(-1, x[..., None], -rate.sum(dim=-1, keepdim=True))
    return rate


def sedd_staggered_score(graph, score, dsigma):
    """dsigma [B, 1]."""
    vocab = score.shape[-1]
    if graph == "absorbing":
        score = score.clone()
        extra = (1 - dsigma.exp()) * score.sum(dim=-1)
        score *= dsigma.exp()[:, None]
        score[..., -1] += extra
        return score
    epow = (-dsigma).exp()[..., None]
    return ((epow - 1) / (vocab * epow)) * score.sum(dim=-1, keepdim=True) + score / epow


def sedd_transp_transition(graph, x, sigma, vocab):
    """sigma [B, 1]."""
    if graph == "absorbing":
        sigma = sigma[..., None]
        edge = (-sigma).exp() * F.one_hot(x, num_classes=vocab)
        edge += torch.where(x == vocab - 1, 1 - (-sigma).squeeze(-1).exp(), 0)[..., None]
        return edge
    trans = torch.ones(*x.shape, vocab, device=x.device) * (1 - (-sigma[..., None]).exp()) / vocab
    trans = trans.scatter(-1, x[..., None], torch.zeros_like(trans))
    return trans.scatter(-1, x[..., None], 1 - trans.sum(dim=-1, keepdim=True))


def sedd_step(log_scores, x, dsigma, graph, sampler):
    """One SEDD predictor step (EulerPredictor / AnalyticPredictor) from the network's log scores."""
    vocab = log_scores.shape[-1]
    score = log_scores.exp()  # the score function's `sampling=True` path
    if sampler == "euler":  # absorbing graph
        rev_rate = dsigma[..., None] * sedd_reverse_rate(x, score, sedd_absorbing_transp_rate(x, vocab))
        return sedd_sample_categorical(F.one_hot(x, num_classes=vocab).to(rev_rate) + rev_rate)
    stag_score = sedd_staggered_score(graph, score, dsigma)
    return sedd_sample_categorical(stag_score * sedd_transp_transition(graph, x, dsigma, vocab))


# ---------------------------------------------------------------- cases


def _inputs(batch, length, graph, device):
    scores = torch.randn(batch, length, VOCAB, device=device).mul_(3).sub_(4.5)
    if graph == "absorbing":
        scores -= math.log(VOCAB)
        canvas = torch.randint(0, VOCAB - 1, (batch, length), device=device)
        canvas[:, ::2] = VOCAB - 1
    else:
        canvas = torch.randint(0, VOCAB, (batch, length), device=device)
    # SEDD's network writes log score 0 at the current token (S_x = 1), which its staggered score
    # relies on; the fused op takes S_x = 1 by definition and ignores that entry.
    scores.scatter_(-1, canvas[..., None], 0.0)
    return scores, canvas


def run(device, batches, length, modes, reps) -> list[harness.Row]:
    ceiling = harness.copy_ceiling_gbps(device)
    backends = [b for b in _backend.available(device) if b != "reference" and _has_kernel(b)]
    label = harness.device_name(device)
    rows: list[harness.Row] = []
    for batch in batches:
        nbytes = batch * length * VOCAB * 4
        shape = f"{batch}x{length}x{VOCAB}"
        first = len(rows)
        seeds = torch.arange(batch, device=device)
        dsigma_column = torch.full((batch, 1), DSIGMA, device=device)
        for mode in modes:
            graph, sampler = MODES[mode]["graph"], MODES[mode]["sampler"]
            copies = harness.rotating(lambda: _inputs(batch, length, graph, device), nbytes, device)

            def baseline():
                scores, canvas = next(copies)
                return sedd_step(scores, canvas, dsigma_column, graph, sampler)

            base_us = _time(baseline, device, reps, warmup=1)
            rows.append(harness.Row(mode, "sedd-torch", shape, "float32", label, base_us, nbytes, ceiling, base_us))
            kwargs = dict(sigma=SIGMA, dsigma=DSIGMA, graph=graph, sampler=sampler, seed=seeds,
                          mask_id=VOCAB - 1 if graph == "absorbing" else None)
            for backend in backends:
                def fused():
                    scores, canvas = next(copies)
                    return ops.discrete_diffusion_step(scores, canvas, backend=backend, **kwargs)

                us = _time(fused, device, reps, warmup=2)
                rows.append(harness.Row(mode, backend, shape, "float32", label, us, nbytes, ceiling, base_us))
            del copies
        print(harness.markdown_table(rows[first:]), flush=True)
    return rows


def _has_kernel(backend: str) -> bool:
    """Whether ``backend`` implements this family yet (its kernels are written one backend at a time)."""
    try:
        _backend.kernel(backend, "discrete_diffusion", "discrete_diffusion_step")
    except (AttributeError, ImportError) as error:
        print(f"skipping backend {backend!r}: {type(error).__name__}: {error}", flush=True)
        return False
    return True


def _time(fn, device, reps, warmup):
    if device.type == "cuda":
        return harness.time_gpu(fn)
    return harness.time_cpu(fn, warmup=warmup, reps=reps)


def main(argv: list[str] | None = None) -> int:
    parser = harness.bench_parser("discrete_diffusion", __doc__, "B=8, L=128 only, fewer repetitions")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for both implementations (default: torch's); 1 keeps a shared "
                             "machine's numbers steady")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    batches = [8] if args.quick else [1, 8]
    length = 128 if args.quick else 1024
    reps = args.reps or (3 if args.quick else 5)
    rows = run(device, batches, length, list(MODES), reps)
    title = f"discrete_diffusion_step on {harness.device_name(device)}"
    print(f"\n## {title}\n\n{harness.markdown_table(rows)}")
    name = f"discrete_diffusion_{device.type}" + ("_quick" if args.quick else "")
    for path in harness.write_results(rows, name, args.out, title):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
