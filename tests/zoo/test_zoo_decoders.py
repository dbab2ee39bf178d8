"""Every decoder of the demo runs on the zoo models and writes text the AR model finds plausible.

Random lowercase letters score ~11.7 bits per byte under kjv-ar after this prompt, and the
decoders score 0.7-1.2 (AR family), 2.7-5.3 (masked-diffusion family, planned tags included) and
5.4-8 (SEDD samplers; kjv-udm is the weakest model), so the bounds below fail on a decoder that
emits garbage, masks or the wrong positions.
"""

import pytest
import torch

from decodekit import zoo
from decodekit.demo import _methods, generative_bits_per_byte

HAVE_WEIGHTS = all((zoo.WEIGHTS_DIR / n / "model.safetensors").is_file() for n in zoo.NAMES)
PROMPT = "Ruth1:1 Now it came to pass in the days when the judges ruled, that there was a famine in the land.\n"
NEW_TOKENS = 32
TOK = zoo.ByteTokenizer()
AR_FAMILY_MAX_BITS = 2.0
PARALLEL_MAX_BITS = 7.0
SCORE_BASED_MAX_BITS = 9.5


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return {name: zoo.load(name, dtype=torch.float32)[0] for name in zoo.NAMES}


@pytest.mark.skipif(not HAVE_WEIGHTS, reason="the zoo's weights are not in this checkout (decodekit zoo train)")
@pytest.mark.parametrize("method", _methods(TOK), ids=lambda m: m.name)
def test_decoder_writes_plausible_text_on_the_zoo(models, method):
    prompts = [TOK.encode(PROMPT)]
    result = method.build(models).generate(prompts, max_new_tokens=NEW_TOKENS, sampling=method.sampling, seed=0)
    out = result.sequences[0]
    assert 1 <= len(out) <= NEW_TOKENS
    assert TOK.mask_token_id not in out and TOK.pad_token_id not in out
    assert result.stats[0].forward_calls >= 1
    bits = generative_bits_per_byte(models["kjv-ar"], prompts, [out])
    if method.family in ("autoregressive", "speculative"):
        limit = AR_FAMILY_MAX_BITS
    elif method.family.startswith("diffusion: score-based"):
        limit = SCORE_BASED_MAX_BITS
    else:
        limit = PARALLEL_MAX_BITS
    assert bits < limit, (method.name, bits, TOK.decode(out))
