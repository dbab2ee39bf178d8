"""Speculative and diffusion cases of ``bench_generate`` (same weights, same prompts).

The benchmark's models are randomly initialised, so the numbers measure what each decoder
COSTS (model calls, rows per call, wall time), not what a trained model would accept or commit:
- the speculative draft model is the target's first layer (layer-skip self-drafting); on random
  weights it rarely predicts the target, so acceptance is near zero and the cases show the
  drafting overhead; the n-gram drafter accepts on the repetitive greedy text random models emit;
- the diffusion decoders run the target's weights with bidirectional attention; confidences are
  low, so Fast-dLLM's threshold rule commits about one token per step and its speedup over LLaDA
  comes from the prefix / dual caches alone (Fast-dLLM reports 3-27x with trained models, where
  both effects multiply).
The trained zoo models make acceptance and parallel commits meaningful.
"""

from __future__ import annotations

import copy

from decodekit.decoders import (
    AutoregressiveDecoder,
    BlockDiffusionDecoder,
    MaskedDiffusionDecoder,
    MaskPredictDecoder,
    ModelDrafter,
    NgramDrafter,
    SamplingParams,
    SpeculativeDecoder,
    TreeDrafter,
)
from decodekit.models import Transformer


def layer_skip_draft(model: Transformer, num_layers: int = 1) -> Transformer:
    """The target's embedding, first ``num_layers`` layers, norm and LM head as a draft model."""
    config = copy.deepcopy(model.config)
    config.num_layers = num_layers
    draft = Transformer(config).to(device=model.device, dtype=model.dtype)
    kept = {k: v for k, v in model.state_dict().items()
            if not k.startswith("layers.") or int(k.split(".")[1]) < num_layers}
    draft.load_state_dict(kept, strict=True)
    return draft.eval()


def bidirectional_copy(model: Transformer) -> Transformer:
    """The same weights under full attention (a stand-in masked-diffusion model)."""
    twin = copy.deepcopy(model)
    twin.config.attention = "bidirectional"
    return twin


def speculative_cases(case_type, ours, prompts_for, modes, params_of, batch: int, new_tokens: int):
    """AR baseline plus chain (layer-skip draft), tree and n-gram speculative decoding."""
    draft = layer_skip_draft(ours)
    decoders = {
        "ar": AutoregressiveDecoder(ours),
        "spec chain (draft 4)": SpeculativeDecoder(ours, ModelDrafter(draft, num_draft=4)),
        "spec tree (k2 d3 n6)": SpeculativeDecoder(ours, TreeDrafter(draft, top_k=2, depth=3, num_nodes=6)),
        "spec ngram (n3 draft 4)": SpeculativeDecoder(ours, NgramDrafter(n=3, num_draft=4)),
    }
    cases = []
    for mode in modes:
        prompts, params = prompts_for(batch), params_of(mode)
        workload = f"speculative {mode} B={batch}"
        for name, decoder in decoders.items():
            cases.append(case_type(name, workload, lambda d=decoder, p=prompts, s=params: d.generate(
                p, max_new_tokens=new_tokens, sampling=s, stop_token_ids=[], seed=0),
                baseline=None if name == "ar" else "ar"))
    return cases


def diffusion_cases(case_type, ours, prompts_for, batch: int, gen_length: int):
    """Every diffusion / non-autoregressive decoder on one canvas length; the plain LLaDA preset
    (steps = gen_length, blocks of 32) is the baseline, as in Fast-dLLM's tables."""
    model = bidirectional_copy(ours)
    mask = ours.vocab_size - 1
    block = min(32, gen_length)
    fast = dict(mask_token_id=mask, preset="fast_dllm", block_length=block)
    decoders = {
        "llada": (MaskedDiffusionDecoder(model, mask_token_id=mask, preset="llada", steps=gen_length,
                                         block_length=block), SamplingParams.greedy()),
        "fast_dllm threshold": (MaskedDiffusionDecoder(model, **fast), SamplingParams.greedy()),
        "fast_dllm threshold+prefix": (MaskedDiffusionDecoder(model, cache="prefix", **fast), SamplingParams.greedy()),
        "fast_dllm threshold+dual": (MaskedDiffusionDecoder(model, cache="dual", **fast), SamplingParams.greedy()),
        "dream entropy": (MaskedDiffusionDecoder(model, mask_token_id=mask, preset="dream", steps=gen_length,
                                                 alg="entropy"), SamplingParams.greedy()),
        "mdlm ddpm_cache": (MaskedDiffusionDecoder(model, mask_token_id=mask, preset="mdlm", steps=gen_length),
                            SamplingParams()),
        "mask_predict (10 it)": (MaskPredictDecoder(model, mask_token_id=mask, iterations=10), SamplingParams.greedy()),
        "bd3 (block 16)": (BlockDiffusionDecoder(model, mask_token_id=mask, block_length=16), SamplingParams.greedy()),
    }
    prompts = prompts_for(batch)
    workload = f"diffusion gen={gen_length} B={batch}"
    return [case_type(name, workload, lambda d=decoder, s=params: d.generate(
        prompts, max_new_tokens=gen_length, sampling=s, stop_token_ids=[], seed=0),
        baseline=None if name == "llada" else "llada") for name, (decoder, params) in decoders.items()]
