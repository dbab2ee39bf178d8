"""``decodekit demo``: every generation family on the model zoo, side by side.

Runs the zoo's KJV models (no download) through every decoder on the same prompts, prints a sample
of each output and one table — tokens per second, model forward calls, tokens per forward,
acceptance rate, and quality as the generative perplexity of the output under the AR target
(per byte, as MDLM / SEDD report it) with the outputs' byte entropy beside it, next to the held-out bits per byte recorded when the model
was trained — and writes the table as markdown and CSV plus a speed-versus-quality PNG. A last row,
``auto``, runs :class:`~decodekit.decoders.AutoDecoder` over the same methods with the shipped zoo
profile (``decodekit/zoo/profile_cpu.json``) and names the method it chose.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

# The first verse of three held-out books, as the corpus prints it (newline included): every model
# then continues with the next verse, and the planned model starts its plan right away.
DEFAULT_PROMPTS = (
    "Ruth1:1 Now it came to pass in the days when the judges ruled, that there was a famine in the land. "
    "And a certain man of Bethlehemjudah went to sojourn in the country of Moab, he, and his wife, and his two sons.\n",
    "Jonah1:1 Now the word of the LORD came unto Jonah the son of Amittai, saying,\n",
    "Jas1:1 James, a servant of God and of the Lord Jesus Christ, to the twelve tribes which are scattered abroad, "
    "greeting.\n",
)


# What the demo's "auto" row asks for: the fastest method whose profiled generative perplexity per
# byte is at most 10 (a user's request, not part of AutoDecoder's rule; --auto-max-perplexity).
AUTO_PREFERENCE = {"objective": "fastest", "max_perplexity": 10.0}


@dataclass
class Method:
    """One row of the demo: a decoder on a zoo model."""

    name: str
    family: str
    model: str  # zoo model whose held-out bits per byte is reported
    build: Callable[[dict], object]
    sampling: object
    quick: bool = True  # also run in --quick


def methods(tok) -> list[Method]:
    """Every demo method (also the candidates of ``decodekit profile`` and ``decodekit generate``)."""
    from decodekit.decoders import (
        AutoregressiveDecoder,
        BlockDiffusionDecoder,
        DiffusionDrafter,
        DiscreteDiffusionDecoder,
        MaskedDiffusionDecoder,
        MaskPredictDecoder,
        ModelDrafter,
        NgramDrafter,
        PlannedDiffusionDecoder,
        SamplingParams,
        SpeculativeDecoder,
        TreeDrafter,
    )

    mask = tok.mask_token_id
    sampled = SamplingParams(temperature=0.7, top_p=0.95)
    greedy = SamplingParams.greedy()
    return [
        Method("ar", "autoregressive", "kjv-ar", lambda m: AutoregressiveDecoder(m["kjv-ar"]), sampled),
        Method("spec chain", "speculative", "kjv-ar",
               lambda m: SpeculativeDecoder(m["kjv-ar"], ModelDrafter(m["kjv-ar-draft"], num_draft=4)), sampled),
        Method("spec tree", "speculative", "kjv-ar",
               lambda m: SpeculativeDecoder(m["kjv-ar"], TreeDrafter(m["kjv-ar-draft"], top_k=3, depth=4, num_nodes=12)),
               sampled, quick=False),
        Method("spec n-gram", "speculative", "kjv-ar",
               lambda m: SpeculativeDecoder(m["kjv-ar"], NgramDrafter(n=3, num_draft=4)), sampled, quick=False),
        Method("spec diffusion drafter", "speculative", "kjv-ar",
               lambda m: SpeculativeDecoder(m["kjv-ar"], DiffusionDrafter(m["kjv-mdm"], mask, num_draft=4)), sampled,
               quick=False),
        Method("mask-predict", "non-autoregressive", "kjv-mdm",
               lambda m: MaskPredictDecoder(m["kjv-mdm"], mask, iterations=10), greedy),
        Method("llada", "diffusion", "kjv-mdm",
               lambda m: MaskedDiffusionDecoder(m["kjv-mdm"], mask_token_id=mask, preset="llada", block_length=16),
               greedy),
        Method("dream-style", "diffusion", "kjv-mdm",
               lambda m: MaskedDiffusionDecoder(m["kjv-mdm"], mask_token_id=mask, preset="dream", alg="entropy",
                                                shift_logits=False), greedy, quick=False),
        Method("fast-dllm dual cache", "diffusion", "kjv-mdm",
               lambda m: MaskedDiffusionDecoder(m["kjv-mdm"], mask_token_id=mask, preset="fast_dllm", block_length=16,
                                                threshold=0.9, cache="dual"), greedy),
        Method("block diffusion", "diffusion", "kjv-mdm",
               lambda m: BlockDiffusionDecoder(m["kjv-mdm"], mask_token_id=mask, block_length=16), greedy, quick=False),
        Method("sedd absorbing", "diffusion: score-based", "kjv-mdm",
               lambda m: DiscreteDiffusionDecoder(m["kjv-mdm"], graph="absorbing", sampler="analytic", steps=64),
               SamplingParams(), quick=False),
        Method("sedd uniform", "diffusion: score-based", "kjv-udm",
               lambda m: DiscreteDiffusionDecoder(m["kjv-udm"], graph="uniform", sampler="analytic", steps=32),
               SamplingParams()),
        Method("planned diffusion", "hybrid: planned", "kjv-planned",
               lambda m: PlannedDiffusionDecoder(m["kjv-planned"], mask, control=tok.control_tokens(),
                                                 on_bad_plan="autoregressive"), greedy),
    ]


_methods = methods  # the name tests/zoo imports


def load_zoo(weights_dir=None) -> tuple[dict, object]:
    """``({name: model}, tokenizer)`` for every zoo model, float32 (CPU speed)."""
    from decodekit import zoo

    models, tok = {}, None
    for name in zoo.NAMES:
        models[name], tok = zoo.load(name, dtype=torch.float32, weights_dir=weights_dir)
    return models, tok


def generative_bits_per_byte(ar_model, prompts: list[list[int]], outputs: list[list[int]]) -> float:
    """Mean negative log2-likelihood per output token (byte) under the AR model, prompt given;
    ``2 ** bits`` is the generative perplexity per byte."""
    from decodekit.decoders import forward_step

    total, count = 0.0, 0
    seqs = [("score", i) for i in range(len(prompts))]
    need = sum(-(-(len(p) + len(o)) // 16) + 1 for p, o in zip(prompts, outputs))
    cache = ar_model.make_cache(need, 16)
    for seq in seqs:
        cache.allocator.allocate(seq)
    rows = [p + o for p, o in zip(prompts, outputs)]
    logits = forward_step(ar_model, cache, seqs, rows, logits="all").float()
    logprobs = torch.log_softmax(logits, -1)
    start = 0
    for prompt, output in zip(prompts, outputs):
        if output:
            targets = torch.tensor(output, dtype=torch.int64)
            rows_of_output = torch.arange(start + len(prompt) - 1, start + len(prompt) - 1 + len(output))
            total -= float(logprobs[rows_of_output, targets].sum())
            count += len(output)
        start += len(prompt) + len(output)
    return total / max(count, 1) / math.log(2)


def unigram_entropy_bits(outputs: list[list[int]]) -> float:
    """Entropy (bits) of the byte frequencies of all outputs: generative perplexity rewards
    degenerate text (a run of spaces scores well), so MDLM reports the samples' entropy next to
    it; a low value flags repetition."""
    flat = torch.tensor([t for o in outputs for t in o], dtype=torch.int64)
    if flat.numel() == 0:
        return 0.0
    p = torch.bincount(flat).double() / flat.numel()
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


def run_demo(prompts=DEFAULT_PROMPTS, *, max_new_tokens: int = 96, quick: bool = False, seed: int = 0,
             out_dir: str | Path = "demo_results", weights_dir=None, progress: bool = True,
             auto_preference=AUTO_PREFERENCE, profile=None) -> list[dict]:
    """Run every method, then ``auto`` (an AutoDecoder over the methods run, choosing with
    ``profile``, default the shipped zoo profile, for ``auto_preference``); returns the table rows
    (and writes them, see the module docstring)."""
    from tqdm import tqdm

    from decodekit import zoo
    from decodekit.decoders import AutoDecoder, Profile
    from decodekit.profile import ZOO_PROFILE_PATH

    models, tok = load_zoo(weights_dir)
    held_out = {name: zoo.info(name, weights_dir=weights_dir).get("held_out_bits_per_byte") for name in zoo.NAMES}
    prompt_ids = [tok.encode(p) for p in prompts]
    chosen = [m for m in methods(tok) if m.quick or not quick]
    rows, samples, decoders = [], [], {}

    def run(name, family, decoder, sampling, held_out_model):
        start = time.perf_counter()
        result = decoder.generate(prompt_ids, max_new_tokens=max_new_tokens, sampling=sampling,
                                  stop_token_ids=[tok.eos_token_id], seed=seed)
        wall = time.perf_counter() - start
        outputs = [[t for t in seq if t < 256] for seq in result.sequences]  # text bytes only
        bits = generative_bits_per_byte(models["kjv-ar"], prompt_ids, outputs)
        acceptance = result.acceptance_rate
        bpb = held_out.get(held_out_model)
        rows.append({
            "method": name,
            "family": family,
            "tokens/s": round(result.generated_tokens / wall, 1),
            "forward calls": result.forward_calls,
            "tokens/forward": round(result.tokens_per_forward, 2),
            "acceptance": "" if acceptance is None else round(acceptance, 3),
            "gen. perplexity/byte": round(2 ** bits, 2),
            "output entropy (bits)": round(unigram_entropy_bits(outputs), 2),
            "held-out bits/byte": "" if bpb is None else round(bpb, 3),
        })
        samples.append((name, tok.decode(result.sequences[0])))
        return result

    for method in tqdm(chosen, desc="decodekit demo", disable=not progress):
        decoders[method.name] = method.build(models)
        run(method.name, method.family, decoders[method.name], method.sampling, method.model)
    profile = Profile.load(profile or ZOO_PROFILE_PATH)
    in_profile = [m for m in chosen if m.name in profile.candidates]
    if in_profile:
        auto = AutoDecoder({m.name: decoders[m.name] for m in in_profile}, profile, preference=auto_preference,
                           sampling={m.name: m.sampling for m in in_profile})
        first = auto.choose(len(prompt_ids), max_new_tokens)["method"]
        model = next(m.model for m in in_profile if m.name == first)
        result = run("auto", "auto", auto, None, model)
        picked = list(dict.fromkeys(s.choice["method"] for s in result.stats))
        rows[-1]["family"] = "auto: " + " + ".join(picked)
        print(f"\nauto: {result.stats[0].choice['reason']}")
    _write(rows, samples, prompts[0], Path(out_dir))
    return rows


def _markdown(rows: list[dict]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines)


def _write(rows: list[dict], samples, first_prompt: str, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"\nPrompt: {first_prompt!r}\n")
    for name, text in samples:
        print(f"[{name}] {text[:160]!r}")
    table = _markdown(rows)
    print("\n" + table)
    (out_dir / "demo.md").write_text(f"# decodekit demo\n\nPrompt 1: {first_prompt!r}\n\n{table}\n")
    with (out_dir / "demo.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install decodekit[bench])")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        ax.scatter(row["tokens/s"], row["gen. perplexity/byte"])
        ax.annotate(row["method"], (row["tokens/s"], row["gen. perplexity/byte"]), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("tokens per second (log)")
    ax.set_ylabel("generative perplexity per byte under kjv-ar (lower is better)")
    ax.set_title("decodekit demo: speed vs quality on the KJV zoo")
    fig.tight_layout()
    fig.savefig(out_dir / "demo.png", dpi=120)
    plt.close(fig)
    print(f"\nwrote {out_dir / 'demo.md'}, {out_dir / 'demo.csv'}, {out_dir / 'demo.png'}")


def add_parser(commands) -> None:
    parser = commands.add_parser("demo", help="every generation family on the model zoo, with a comparison table")
    parser.add_argument("prompts", nargs="*", help="prompts (default: the first verse of three held-out books)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--quick", action="store_true", help="fewer methods and tokens (for CI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--auto-max-perplexity", type=float, default=AUTO_PREFERENCE["max_perplexity"],
                        help="the auto row's quality floor: the fastest method under this perplexity per byte")
    parser.add_argument("--out", default="demo_results", help="folder for demo.md / demo.csv / demo.png")
    parser.set_defaults(run=_run)


def _run(args) -> int:
    tokens = min(args.max_new_tokens, 32) if args.quick else args.max_new_tokens
    run_demo(tuple(args.prompts) or DEFAULT_PROMPTS, max_new_tokens=tokens, quick=args.quick, seed=args.seed,
             out_dir=args.out, auto_preference={"objective": "fastest", "max_perplexity": args.auto_max_perplexity})
    return 0
