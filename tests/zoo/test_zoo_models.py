"""The trained zoo shipped in the package: it loads offline, and the draft model makes speculative
decoding accept more than one token per target forward on real text."""

import pytest
import torch

from decodekit import zoo
from decodekit.decoders import AutoregressiveDecoder, ModelDrafter, SamplingParams, SpeculativeDecoder

pytestmark = pytest.mark.skipif(
    not all((zoo.WEIGHTS_DIR / n / "model.safetensors").is_file() for n in zoo.NAMES),
    reason="the zoo's weights are not in this checkout (decodekit zoo train)",
)
PROMPTS = ["Ru1:1 Now it came to pass in the days when the judges ruled,", "Jon1:1 Now the word of the LORD"]


def test_every_model_loads_with_its_record():
    for name in zoo.NAMES:
        model, tok = zoo.load(name, dtype=torch.float32)
        assert model.vocab_size == tok.vocab_size
        assert model.attention == ("bidirectional" if zoo.ZOO[name].kind in ("mdm", "udm") else "causal")
        record = zoo.info(name)
        assert 0.5 < record["held_out_bits_per_byte"] < 8.0


def test_speculative_accepts_more_than_one_token_per_target_forward():
    torch.set_num_threads(1)
    target, tok = zoo.load("kjv-ar", dtype=torch.float32)
    draft, _ = zoo.load("kjv-ar-draft", dtype=torch.float32)
    prompts = [tok.encode(p) for p in PROMPTS]
    sampling = SamplingParams(temperature=0.7)
    result = SpeculativeDecoder(target, ModelDrafter(draft, num_draft=4)).generate(
        prompts, max_new_tokens=48, sampling=sampling, stop_token_ids=[], seed=0)
    assert result.tokens_per_forward > 1.5
    greedy = SamplingParams.greedy()
    spec = SpeculativeDecoder(target, ModelDrafter(draft, num_draft=4)).generate(prompts, max_new_tokens=48,
                                                                                 sampling=greedy)
    assert spec.sequences == AutoregressiveDecoder(target).generate(prompts, max_new_tokens=48, sampling=greedy).sequences
