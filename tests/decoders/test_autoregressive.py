"""AutoregressiveDecoder on the built-in Transformer: equal to Hugging Face greedy generation,
reproducible, batch invariant, distributed as the model says, and strict about its inputs."""

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from decodekit.decoders import AutoregressiveDecoder, SamplingParams, forward_step  # noqa: E402
from decodekit.kv import OutOfBlocksError  # noqa: E402
from decodekit.models import Transformer  # noqa: E402
from decodekit.models.tiny import tiny_transformer  # noqa: E402

VOCAB = 48
CONTEXT = 64
PROMPTS = [[1, 5, 9, 2, 7, 3, 11, 4, 4], [6], [8, 8, 2, 30, 41]]
GREEDY = SamplingParams.greedy()


def hf_model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    shape = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                 initializer_range=0.3, eos_token_id=None, bos_token_id=None)
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**shape, tie_word_embeddings=False))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, 0.3)
    model.generation_config.eos_token_id = None
    return model.eval()


@pytest.fixture(scope="module")
def llama():
    hf = hf_model("llama")
    return hf, Transformer.from_hf(hf)


def hf_generate(hf, prompt, new_tokens, **kwargs):
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **kwargs)
    return out[0, len(prompt):].tolist()


# ---------------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_greedy_equals_hugging_face_generate(kind):
    hf = hf_model(kind, seed=1)
    decoder = AutoregressiveDecoder(Transformer.from_hf(hf), block_size=4)
    result = decoder.generate(PROMPTS, max_new_tokens=16, sampling=GREEDY, stop_token_ids=[])
    assert result.sequences == [hf_generate(hf, p, 16) for p in PROMPTS]
    assert [s.finish_reason for s in result.stats] == ["length"] * 3
    assert result.forward_calls == 16 and all(s.forward_calls == 16 for s in result.stats)
    assert result.tokens_per_forward == 1.0 and result.acceptance_rate is None


def test_same_seed_same_output_and_other_seed_other_output(llama):
    decoder = AutoregressiveDecoder(llama[1])
    run = lambda seed: decoder.generate(PROMPTS, max_new_tokens=12, seed=seed, stop_token_ids=[]).sequences  # noqa: E731
    assert run(7) == run(7)
    assert run(7) != run(8)
    torch.manual_seed(3)
    first = decoder.generate(PROMPTS, max_new_tokens=12, stop_token_ids=[]).sequences
    torch.manual_seed(3)
    assert decoder.generate(PROMPTS, max_new_tokens=12, stop_token_ids=[]).sequences == first


def test_a_request_is_the_same_alone_and_in_a_batch(llama):
    decoder = AutoregressiveDecoder(llama[1], block_size=4)
    params = [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=10),
              SamplingParams(temperature=1.2, top_p=0.9, min_p=0.05)]
    batch = decoder.generate(PROMPTS, max_new_tokens=10, sampling=params, seed=[11, 22, 33], stop_token_ids=[])
    for i, prompt in enumerate(PROMPTS):
        alone = decoder.generate([prompt], max_new_tokens=10, sampling=params[i], seed=[[11, 22, 33][i]],
                                 stop_token_ids=[])
        assert alone.sequences[0] == batch.sequences[i]
    # An int seed gives request i the seed seed + i.
    assert decoder.generate(PROMPTS, max_new_tokens=10, sampling=params, seed=11, stop_token_ids=[]).sequences == \
        decoder.generate(PROMPTS, max_new_tokens=10, sampling=params, seed=[11, 12, 13], stop_token_ids=[]).sequences


def test_per_request_sampling_params(llama):
    hf, model = llama
    decoder = AutoregressiveDecoder(model)
    sampled = SamplingParams(temperature=1.0)
    mixed = decoder.generate(PROMPTS, max_new_tokens=8, sampling=[GREEDY, sampled, GREEDY], seed=[0, 5, 0],
                             stop_token_ids=[])
    assert mixed.sequences[0] == hf_generate(hf, PROMPTS[0], 8)
    assert mixed.sequences[2] == hf_generate(hf, PROMPTS[2], 8)
    alone = decoder.generate([PROMPTS[1]], max_new_tokens=8, sampling=sampled, seed=[5], stop_token_ids=[])
    assert mixed.sequences[1] == alone.sequences[0]


def test_stop_tokens_end_requests_and_max_length(llama):
    hf, model = llama
    decoder = AutoregressiveDecoder(model)
    free = decoder.generate(PROMPTS, max_new_tokens=12, sampling=GREEDY, stop_token_ids=[]).sequences
    stop = free[0][4]
    result = decoder.generate(PROMPTS, max_new_tokens=12, sampling=GREEDY, stop_token_ids=[stop])
    for full, got, stats in zip(free, result.sequences, result.stats):
        if stop in full:
            assert got == full[: full.index(stop) + 1] and stats.finish_reason == "stop"
        else:
            assert got == full and stats.finish_reason == "length"
        assert stats.generated_tokens == len(got)
    assert result.stats[0].finish_reason == "stop"
    # The model's context caps max_new_tokens: finish reason "length".
    long_prompt = [i % VOCAB for i in range(CONTEXT - 4)]
    capped = decoder.generate([long_prompt], max_new_tokens=50, sampling=GREEDY, stop_token_ids=[])
    assert len(capped.sequences[0]) == 4 and capped.stats[0].finish_reason == "length"


def reference_penalised_greedy(hf, prompt, new_tokens, repetition, frequency, presence):
    """Straightforward loop: full forward, penalise logits by counts over prompt + output, argmax."""
    tokens = list(prompt)
    for _ in range(new_tokens):
        with torch.no_grad():
            logits = hf(torch.tensor([tokens])).logits[0, -1].float()
        counts = torch.bincount(torch.tensor(tokens), minlength=VOCAB).float()
        penalised = torch.where(logits > 0, logits / repetition, logits * repetition) - frequency * counts - presence
        logits = torch.where(counts > 0, penalised, logits)
        tokens.append(int(logits.argmax()))
    return tokens[len(prompt):]


def test_penalties_change_greedy_output_as_the_reference_says(llama):
    hf, model = llama
    decoder = AutoregressiveDecoder(model)
    plain = decoder.generate(PROMPTS, max_new_tokens=14, sampling=GREEDY, stop_token_ids=[]).sequences
    params = SamplingParams(temperature=0.0, repetition_penalty=1.6, frequency_penalty=0.4, presence_penalty=0.3)
    penalised = decoder.generate(PROMPTS, max_new_tokens=14, sampling=params, stop_token_ids=[]).sequences
    assert penalised != plain
    assert penalised == [reference_penalised_greedy(hf, p, 14, 1.6, 0.4, 0.3) for p in PROMPTS]
    # Repetition alone is Hugging Face's repetition_penalty (over prompt and output).
    rep = decoder.generate(PROMPTS, max_new_tokens=14, sampling=SamplingParams(temperature=0.0, repetition_penalty=1.6),
                           stop_token_ids=[]).sequences
    assert rep == [hf_generate(hf, p, 14, repetition_penalty=1.6) for p in PROMPTS]


class ByteTokenizer:
    """UTF-8 bytes as token ids (vocab 256); id 0 is the end of text."""

    eos_token_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i != 0).decode("utf-8", errors="replace")


def test_tokenizer_turns_strings_in_and_texts_out():
    model = tiny_transformer(256, init_std=0.5, seed=4)
    decoder = AutoregressiveDecoder(model, tokenizer=ByteTokenizer())
    result = decoder.generate(["hello", "ab"], max_new_tokens=6, sampling=GREEDY)
    tokens = decoder.generate([list(b"hello"), list(b"ab")], max_new_tokens=6, sampling=GREEDY)
    assert result.sequences == tokens.sequences
    assert result.texts == [ByteTokenizer().decode(s) for s in result.sequences]
    # The tokenizer's eos is the default stop id.
    assert all(0 not in s[:-1] for s in result.sequences)


# ---------------------------------------------------------------------------------- the distribution


def chi_square_threshold(df: int, z: float = 4.0) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df) at z standard deviations (z=4: p ~ 3e-5)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi_square(counts: torch.Tensor, probs: torch.Tensor, draws: int) -> tuple[float, int]:
    expected = probs * draws
    big = expected >= 5  # pool the rare tokens into one bin
    obs = torch.cat([counts[big], counts[~big].sum(0, keepdim=True)])
    exp = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)])
    return float(((obs - exp) ** 2 / exp).sum()), int(obs.numel() - 1)


def test_sampled_first_token_follows_the_model_distribution():
    model = tiny_transformer(VOCAB, init_std=0.3, seed=5)
    prompt = [3, 14, 15, 9]
    draws = 3000
    decoder = AutoregressiveDecoder(model)
    result = decoder.generate([prompt] * draws, max_new_tokens=1, sampling=SamplingParams(temperature=1.0),
                              seed=list(range(1000, 1000 + draws)))
    first = torch.tensor([s[0] for s in result.sequences])
    counts = torch.bincount(first, minlength=VOCAB).float()
    cache = model.make_cache(4, 16)
    cache.allocator.allocate("p")
    logits = forward_step(model, cache, ["p"], [prompt])[0].double()
    probs = torch.softmax(logits, -1).float()
    assert probs.max() < 0.6 and (probs > 0.02).sum() >= 5  # a varied distribution, not a spike
    stat, df = chi_square(counts, probs, draws)
    assert stat < chi_square_threshold(df), (stat, df)
    # Power: the same draws are far from a slightly sharper distribution (a temperature bug).
    sharper = torch.softmax(logits / 0.85, -1).float()
    stat_wrong, df_wrong = chi_square(counts, sharper, draws)
    assert stat_wrong > chi_square_threshold(df_wrong), (stat_wrong, df_wrong)


# ---------------------------------------------------------------------------------- bad input


class CountingModel:
    """Wraps a model and counts forward calls (to show bad input is refused before any work)."""

    def __init__(self, model):
        self.inner, self.calls = model, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward(self, batch):
        self.calls += 1
        return self.inner.forward(batch)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(prompts=[]), ValueError, "non-empty list"),
        (dict(prompts=[[1, 2], []]), ValueError, r"prompts\[1\] is empty"),
        (dict(prompts=[[1] * CONTEXT]), ValueError, "context"),
        (dict(prompts=[[1, VOCAB]]), ValueError, "outside"),
        (dict(prompts=[[1, 2.0]]), TypeError, "ints only"),
        (dict(prompts=torch.tensor([[1, 2]])), TypeError, "tensor"),
        (dict(prompts=["text"]), TypeError, "no tokenizer"),
        (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
        (dict(max_new_tokens=2.5), ValueError, "max_new_tokens"),
        (dict(stop_token_ids=[VOCAB]), ValueError, "stop_token_ids"),
        (dict(stop_token_ids=[-1]), ValueError, "stop_token_ids"),
        (dict(sampling="greedy"), TypeError, "sampling"),
        (dict(sampling=[GREEDY]), ValueError, "one per prompt"),
        (dict(seed="1"), TypeError, "seed"),
        (dict(seed=[1]), ValueError, "seed"),
        (dict(seed=True), TypeError, "seed"),
    ],
)
def test_bad_input_is_refused_before_any_work(llama, kwargs, error, match):
    model = CountingModel(llama[1])
    decoder = AutoregressiveDecoder(model, num_blocks=16, block_size=4)
    args = dict(prompts=[[1, 2, 3], [4, 5]], max_new_tokens=4)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        decoder.generate(args.pop("prompts"), **args)
    assert model.calls == 0
    assert all(c.allocator.num_free_blocks == 16 and not c.allocator.sequences() for c in decoder._pools.values())


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=2.0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(min_p=-0.5), "min_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(frequency_penalty=float("inf")), "frequency_penalty"),
        (dict(presence_penalty="1"), "presence_penalty"),
    ],
)
def test_sampling_parameters_out_of_range(params, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**params)


def test_bad_decoder_arguments(llama):
    with pytest.raises(ValueError, match="block_size"):
        AutoregressiveDecoder(llama[1], block_size=0)
    with pytest.raises(ValueError, match="num_blocks"):
        AutoregressiveDecoder(llama[1], num_blocks=0)
    with pytest.raises(TypeError, match="model protocol"):
        AutoregressiveDecoder(object())
    with pytest.raises(ValueError, match="causal"):
        AutoregressiveDecoder(tiny_transformer(VOCAB, attention="bidirectional"))


def test_out_of_blocks_is_clear_and_the_pool_stays_usable(llama):
    hf, model = llama
    decoder = AutoregressiveDecoder(model, num_blocks=4, block_size=4)
    with pytest.raises(OutOfBlocksError, match="out of KV cache blocks: need .*num_blocks=.*pool stays usable"):
        decoder.generate(PROMPTS, max_new_tokens=20, sampling=GREEDY, stop_token_ids=[])
    (pool,) = decoder._pools.values()
    assert pool.allocator.num_free_blocks == 4 and not pool.allocator.sequences()
    pool.allocator.check_invariants()
    result = decoder.generate([PROMPTS[1]], max_new_tokens=10, sampling=GREEDY, stop_token_ids=[])
    assert result.sequences[0] == hf_generate(hf, PROMPTS[1], 10)
    assert pool.allocator.num_free_blocks == 4
