"""``decodekit profile``: measure every decoder on this machine and write the profile
:class:`~decodekit.decoders.AutoDecoder` chooses from.

For each of ``decodekit demo``'s methods on the zoo models it measures generated tokens per second
at every (batch size, output length) point of a small grid (after one warm-up call, best of
``repeats`` timed calls, stop tokens off so every request writes the full length), and the quality
of what the method wrote at each length on held-out prompts: generative perplexity per byte under
``kjv-ar`` (the outputs of the largest batch, as ``decodekit demo`` scores them) and, for
speculative decoding, the draft acceptance rate. The result is a JSON
:class:`~decodekit.decoders.Profile` with the machine and model metadata.

``decodekit/zoo/profile_cpu.json`` is such a profile measured on the 2-core development machine
(``ZOO_PROFILE_PATH``), shipped so the tests, the demo and ``decodekit generate`` can choose
without measuring first.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path

import torch

DEFAULT_PROFILE_PATH = Path("~/.cache/decodekit/profile.json")
ZOO_PROFILE_PATH = Path(__file__).parent / "zoo" / "profile_cpu.json"
DEFAULT_GRID = {"batch_sizes": [1, 4], "lengths": [32, 128]}
QUICK_GRID = {"batch_sizes": [1, 2], "lengths": [16, 64]}
# decodekit demo's families whose decoders write several positions per model call by design
PARALLEL_FAMILIES = ("non-autoregressive", "diffusion", "hybrid: planned")


def held_out_prompts(count: int) -> list[str]:
    """``count`` held-out prompts: first verses of held-out chapters, spread over the books (the
    corpus layout, newline included, so every model continues with the next verse)."""
    from decodekit.zoo.held_out import held_out_verses

    firsts = [v for v in held_out_verses() if v.verse == 1]
    step = max(len(firsts) // count, 1)
    return [firsts[(i * step) % len(firsts)].line for i in range(count)]


def default_profile_path() -> Path:
    """The user's profile if ``decodekit profile`` wrote one, else the shipped zoo profile."""
    user = DEFAULT_PROFILE_PATH.expanduser()
    return user if user.is_file() else ZOO_PROFILE_PATH


def measure(methods, models: dict, tokenizer, *, batch_sizes, lengths, seed: int = 0, repeats: int = 1,
            progress: bool = True):
    """Measure ``methods`` (``decodekit.demo.Method`` rows) on ``models``; returns a Profile."""
    from tqdm import tqdm

    from decodekit.decoders import Profile
    from decodekit.decoders.auto import CandidateProfile, _increasing_ints
    from decodekit.demo import generative_bits_per_byte

    # checked before minutes of measuring; sorted, so the largest batch runs last at each length
    batch_sizes, lengths = _increasing_ints(batch_sizes, "batch_sizes"), _increasing_ints(lengths, "lengths")
    prompts = [tokenizer.encode(p) for p in held_out_prompts(max(batch_sizes))]
    candidates = {}
    for method in tqdm(methods, desc="decodekit profile", disable=not progress):
        if progress:
            tqdm.write(f"{method.name} ...")
        decoder = method.build(models)
        run = lambda b, n: decoder.generate(prompts[:b], max_new_tokens=n, sampling=method.sampling,  # noqa: E731
                                            stop_token_ids=[], seed=seed)
        run(1, min(lengths))  # warm-up: first-call allocations and kernel set-up are not the method's speed
        speed = [[0.0] * len(lengths) for _ in batch_sizes]
        perplexity, acceptance = [], []
        for j, length in enumerate(lengths):
            for i, batch in enumerate(batch_sizes):
                for _ in range(repeats):
                    result = run(batch, length)
                    speed[i][j] = max(speed[i][j], result.generated_tokens / result.wall_time)
            # quality from the largest batch's last run: the most prompts
            outputs = [[t for t in seq if t < 256] for seq in result.sequences]  # text bytes only
            perplexity.append(2 ** generative_bits_per_byte(models["kjv-ar"], prompts[:batch], outputs))
            acceptance.append(result.acceptance_rate)
        has_acceptance = all(a is not None for a in acceptance)
        candidates[method.name] = CandidateProfile(
            family=method.family, parallel=method.family in PARALLEL_FAMILIES,
            tokens_per_second=[[round(v, 2) for v in row] for row in speed],
            perplexity=[round(max(p, 1.0), 4) for p in perplexity],
            acceptance_rate=[round(a, 4) for a in acceptance] if has_acceptance else None)
    metadata = {"machine": machine_metadata(), "models": model_metadata(models),
                "settings": {"seed": seed, "repeats": repeats, "speed": "best of repeats after one warm-up",
                             "quality": "generative perplexity per byte under kjv-ar, largest batch",
                             "prompts": [p.split(" ", 1)[0] for p in held_out_prompts(max(batch_sizes))]}}
    return Profile(list(batch_sizes), list(lengths), candidates, metadata)


def machine_metadata() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": "cpu",
            "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine skews the speeds
            "python": platform.python_version(), "torch": torch.__version__,
            "measured_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def model_metadata(models: dict) -> dict:
    from decodekit import zoo

    out = {}
    for name, model in models.items():
        record = zoo.info(name) if name in zoo.NAMES else {}
        out[name] = {"parameters": sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else None,
                     "held_out_bits_per_byte": record.get("held_out_bits_per_byte")}
    return out


def add_parser(commands) -> None:
    parser = commands.add_parser("profile", help="measure every decoder's speed and quality here (for --method auto)")
    parser.add_argument("--quick", action="store_true", help=f"the demo's quick methods on grid {QUICK_GRID}")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help=f"default {DEFAULT_GRID['batch_sizes']}")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help=f"default {DEFAULT_GRID['lengths']}")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="demo method names (default: all, or the quick ones)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per grid point (the best counts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=str(DEFAULT_PROFILE_PATH), help="profile JSON path")
    parser.set_defaults(run=_run)


def _run(args) -> int:
    from decodekit.demo import load_zoo, methods

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    grid = QUICK_GRID if args.quick else DEFAULT_GRID
    models, tok = load_zoo()
    available = methods(tok)
    if args.methods:
        unknown = set(args.methods) - {m.name for m in available}
        if unknown:
            raise SystemExit(f"--methods: unknown {sorted(unknown)}; choose from {[m.name for m in available]}")
        chosen = [m for m in available if m.name in args.methods]
    else:
        chosen = [m for m in available if m.quick or not args.quick]
    start = time.perf_counter()
    batch_sizes = sorted(set(args.batch_sizes or grid["batch_sizes"]))
    lengths = sorted(set(args.lengths or grid["lengths"]))
    if min(batch_sizes) < 1 or min(lengths) < 1:
        raise SystemExit(f"--batch-sizes and --lengths must be >= 1, got {batch_sizes} and {lengths}")
    profile = measure(chosen, models, tok, batch_sizes=batch_sizes, lengths=lengths, seed=args.seed,
                      repeats=args.repeats)
    path = profile.save(args.out)
    print(format_profile(profile))
    print(f"\nwrote {path} ({time.perf_counter() - start:.0f} s)")
    return 0


def format_profile(profile) -> str:
    """The profile as a markdown table: tokens/s per grid point, perplexity and acceptance per length."""
    points = [(b, n) for b in profile.batch_sizes for n in profile.lengths]
    header = ["method", "family"] + [f"tok/s B={b} L={n}" for b, n in points]
    header += [f"ppl L={n}" for n in profile.lengths] + [f"accept L={n}" for n in profile.lengths]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, c in profile.candidates.items():
        cells = [name, c.family] + [f"{c.tokens_per_second[i][j]:.0f}" for i in range(len(profile.batch_sizes))
                                    for j in range(len(profile.lengths))]
        cells += [f"{p:.2f}" for p in c.perplexity]
        cells += [f"{a:.2f}" for a in c.acceptance_rate] if c.acceptance_rate else [""] * len(profile.lengths)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
