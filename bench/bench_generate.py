"""End-to-end generation benchmark: decodekit's decoders against Hugging Face ``generate``.

Same weights, same prompts, measured in one run. The model is a randomly initialised Llama
(about 29M parameters: hidden 512, 4 layers, 8 heads / 4 KV heads, SwiGLU 1408, vocab 16384;
no download) built with ``transformers``; the built-in :class:`~decodekit.models.Transformer` is
loaded from that very object. Every request gets prompts of 32 random tokens and generates exactly
``--new-tokens`` tokens (no stop ids; Hugging Face's ``eos_token_id`` is cleared so it runs as long).

The benchmark is a list of named :class:`Case` objects: a case is a name, a callable that runs one
``generate`` and returns a :class:`~decodekit.decoders.GenerationResult`, and the name of the
case it is compared with. Speculative and diffusion decoders add their cases to
:func:`build_cases`; the table reports tokens/s, forward calls, tokens per forward, acceptance rate
and the speedup over the case's baseline (median wall time of ``--reps`` runs after a warm-up).

Families (``--family``): ``ar`` (built-in AR vs Hugging Face), ``speculative`` (chain, tree and
n-gram drafters vs AR) and ``diffusion`` (LLaDA, Fast-dLLM with and without caches, Dream, MDLM,
Mask-Predict, BD3-LM; plain LLaDA is their baseline); see ``bench/generate_cases.py`` for what the
random-weight numbers of the last two mean.

Run: ``decodekit bench generate [--quick] [--family all|ar|speculative|diffusion] [--device cpu|cuda]
[--out DIR] [--reps N] [--threads N] [--new-tokens N]``
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from typing import Callable

import torch

from decodekit.bench import generate_cases, harness
from decodekit.decoders import AutoregressiveDecoder, GenerationResult, RequestStats, SamplingParams
from decodekit.models import Transformer

PROMPT_TOKENS = 32
MODEL_SHAPE = dict(vocab_size=16384, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024)
QUICK_SHAPE = dict(MODEL_SHAPE, hidden_size=256, intermediate_size=704)
MODES = {
    "greedy": SamplingParams.greedy(),
    "sampled": SamplingParams(temperature=0.8, top_k=50, top_p=0.95),
}


@dataclasses.dataclass
class Case:
    """One measured configuration.

    Attributes:
        name: the implementation (``"decodekit ar"``, ``"hf generate"``, ...).
        workload: what is generated (``"greedy B=8"``): cases of one workload share prompts.
        run: runs one ``generate`` and returns its :class:`GenerationResult`.
        baseline: name of the case of the same workload this one is compared with (None: itself).
    """

    name: str
    workload: str
    run: Callable[[], GenerationResult]
    baseline: str | None = None


@dataclasses.dataclass
class GenerateRow:
    """A result row; ``op``/``backend``/``shape``/``dtype``/``median_us`` let the harness write and
    plot it like every other family's rows."""

    op: str
    backend: str
    shape: str
    dtype: str
    device: str
    median_us: float
    result: GenerationResult
    baseline_us: float | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.result.generated_tokens / (self.median_us * 1e-6)

    def as_dict(self) -> dict:
        acceptance = self.result.acceptance_rate
        return {
            "workload": self.op,
            "case": self.backend,
            "shape": self.shape,
            "dtype": self.dtype,
            "device": self.device,
            "median_s": round(self.median_us * 1e-6, 3),
            "tokens/s": round(self.tokens_per_second, 1),
            "forward calls": self.result.forward_calls,
            "tokens/forward": round(self.result.tokens_per_forward, 2),
            "acceptance": "" if acceptance is None else round(acceptance, 3),
            "speedup vs baseline": "" if self.baseline_us is None else round(self.baseline_us / self.median_us, 2),
        }


# ---------------------------------------------------------------------------------- the models


def build_models(device: torch.device, dtype: torch.dtype, shape: dict):
    """(Hugging Face LlamaForCausalLM, built-in Transformer) with identical weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**shape, rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=None,
                         eos_token_id=None, pad_token_id=0)
    hf = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    ours = Transformer.from_hf(hf, device=device, dtype=dtype)
    return hf, ours


def make_prompts(batch: int, vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(batch)
    return torch.randint(1, vocab, (batch, PROMPT_TOKENS), generator=generator).tolist()


def hf_generate(hf, prompts: list[list[int]], new_tokens: int, params: SamplingParams) -> GenerationResult:
    """Hugging Face ``generate`` on equal-length prompts, packaged as a GenerationResult (one
    forward call per generated token, the prefill included)."""
    ids = torch.tensor(prompts, device=hf.device)
    kwargs = dict(do_sample=False) if params.is_greedy else dict(
        do_sample=True, temperature=params.temperature, top_k=params.top_k or None, top_p=params.top_p)
    start = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, **kwargs)
    wall = time.perf_counter() - start
    sequences = out[:, ids.shape[1]:].tolist()
    stats = [RequestStats(prompt_tokens=len(p), generated_tokens=len(s), forward_calls=len(s), wall_time=wall)
             for p, s in zip(prompts, sequences)]
    return GenerationResult(sequences, stats, wall, new_tokens)


def build_cases(hf, ours, batches, modes, new_tokens: int) -> list[Case]:
    """Every workload (mode x batch) with its cases; the first case of a workload is its baseline."""
    cases = []
    for mode in modes:
        params = MODES[mode]
        for batch in batches:
            prompts = make_prompts(batch, ours.vocab_size)
            workload = f"{mode} B={batch}"
            decoder = AutoregressiveDecoder(ours)
            cases.append(Case("hf generate", workload, lambda p=prompts, s=params: hf_generate(hf, p, new_tokens, s)))
            cases.append(Case("decodekit ar", workload, lambda d=decoder, p=prompts, s=params: d.generate(
                p, max_new_tokens=new_tokens, sampling=s, stop_token_ids=[], seed=0), baseline="hf generate"))
    return cases


# ---------------------------------------------------------------------------------- measuring


def timed(case: Case, device: torch.device) -> tuple[float, GenerationResult]:
    """Wall seconds of one ``case.run()`` (device work included) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = case.run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def run(cases: list[Case], device: torch.device, dtype: torch.dtype, shape: str, reps: int) -> list[GenerateRow]:
    """Median wall time of every case over ``reps`` runs after one warm-up run. The cases of one
    workload run in turn within each repetition, so a shared machine's load hits them alike."""
    label = harness.device_name(device)
    dtype_name = str(dtype).replace("torch.", "")
    rows: list[GenerateRow] = []
    for workload in dict.fromkeys(c.workload for c in cases):
        group = [c for c in cases if c.workload == workload]
        for case in group:
            case.run()
        samples = {case.name: [] for case in group}
        results = {}
        for _ in range(reps):
            for case in group:
                seconds, results[case.name] = timed(case, device)
                samples[case.name].append(seconds)
        medians = {name: statistics.median(times) * 1e6 for name, times in samples.items()}
        for case in group:
            baseline = None if case.baseline is None else medians[case.baseline]
            rows.append(GenerateRow(workload, case.name, shape, dtype_name, label, medians[case.name],
                                    results[case.name], baseline))
        print(harness.markdown_table(rows[-len(group):]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = harness.bench_parser("generate", __doc__, "smaller model (hidden 256), B=8 greedy only, 32 new tokens")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens generated per request (default 128)")
    parser.add_argument("--family", choices=("all", "ar", "speculative", "diffusion"), default="all",
                        help="which decoders to measure (default all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for both implementations (default: torch's); 1 keeps a shared "
                             "machine's load from stalling OpenMP barriers")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = QUICK_SHAPE if args.quick else MODEL_SHAPE
    new_tokens = args.new_tokens or (32 if args.quick else 128)
    batches = [8] if args.quick else [1, 8]
    modes = ["greedy"] if args.quick else list(MODES)
    reps = args.reps or (1 if args.quick else 3)
    hf, ours = build_models(device, dtype, shape)
    params = sum(p.numel() for p in ours.parameters())
    shape_label = f"{params / 1e6:.0f}M params, prompt {PROMPT_TOKENS}, new {new_tokens}"
    cases = []
    if args.family in ("all", "ar"):
        cases += build_cases(hf, ours, batches, modes, new_tokens)
    prompts_for = lambda batch: make_prompts(batch, ours.vocab_size)  # noqa: E731
    if args.family in ("all", "speculative"):
        cases += generate_cases.speculative_cases(Case, ours, prompts_for, modes, MODES.__getitem__, max(batches),
                                                  new_tokens)
    if args.family in ("all", "diffusion"):
        cases += generate_cases.diffusion_cases(Case, ours, prompts_for, 1, new_tokens)
    rows = run(cases, device, dtype, shape_label, reps)
    title = f"generate on {harness.device_name(device)} ({shape_label})"
    print(f"\n## {title}\n\n{harness.markdown_table(rows)}")
    name = f"generate_{device.type}" + ("" if args.family == "all" else f"_{args.family}") + ("_quick" if args.quick else "")
    for path in harness.write_results(rows, name, args.out, title):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
