"""HFModel: any Hugging Face causal LM behind the model protocol."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from decodekit.decoders import AutoregressiveDecoder, SamplingParams, forward_step  # noqa: E402
from decodekit.models import HFModel, check_model  # noqa: E402

VOCAB = 40
PROMPTS = [[1, 5, 9, 2, 7, 3, 11], [4], [8, 8, 2, 30]]


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      initializer_range=0.3)
    return transformers.LlamaForCausalLM(config).eval()


def tiny_gpt2(seed=0):
    # GPT-2 (learned positions, LayerNorm, GELU, fused c_attn): outside the built-in Transformer.
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     initializer_range=0.3, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def hf_greedy(model, prompt, new_tokens):
    # No eos: Hugging Face then generates exactly new_tokens, like the decoder with no stop ids.
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_autoregressive_greedy_equals_hugging_face_generate(build):
    hf = build()
    model = HFModel(hf)
    check_model(model, attention="causal")
    assert model.vocab_size == VOCAB and model.max_positions == 64 and not model.supports_custom_mask
    result = AutoregressiveDecoder(model, block_size=4).generate(
        PROMPTS, max_new_tokens=12, sampling=SamplingParams.greedy(), stop_token_ids=[])
    assert result.sequences == [hf_greedy(hf, p, 12) for p in PROMPTS]
    assert model._caches == {}  # every sequence released at the end


def test_rolled_back_sequence_is_recomputed_from_the_crop_point():
    # A decoder that truncates a sequence (rejected draft tokens) then appends other tokens must
    # get the logits of the new continuation, not of the dropped one.
    hf = tiny_llama(1)
    model = HFModel(hf)
    cache = model.make_cache(16, 4)
    cache.allocator.allocate("s")
    forward_step(model, cache, ["s"], [[1, 2, 3, 4, 5]])
    forward_step(model, cache, ["s"], [[6, 7, 8]], logits="all")
    cache.allocator.truncate("s", 6)
    logits = forward_step(model, cache, ["s"], [[9, 10]], logits="all")
    with torch.no_grad():
        expected = hf(torch.tensor([[1, 2, 3, 4, 5, 6, 9, 10]])).logits[0, -2:]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_logits_rows_select_any_rows_across_sequences():
    hf = tiny_gpt2(2)
    model = HFModel(hf)
    cache = model.make_cache(16, 4)
    for s in ("a", "b"):
        cache.allocator.allocate(s)
    rows = torch.tensor([5, 0, 2], dtype=torch.int64)  # a's row 0 and 2, b's row 1 (flattened row 5)
    logits = forward_step(model, cache, ["a", "b"], [[3, 4, 5, 6], [7, 8]], logits=rows)
    with torch.no_grad():
        a = hf(torch.tensor([[3, 4, 5, 6]])).logits[0]
        b = hf(torch.tensor([[7, 8]])).logits[0]
    torch.testing.assert_close(logits, torch.stack([b[1], a[0], a[2]]), rtol=1e-5, atol=1e-5)
    model.release(["a", "b", "unknown"])
    assert model._caches == {}


def test_custom_and_full_masks_are_rejected():
    model = HFModel(tiny_llama())
    cache = model.make_cache(8, 4)
    cache.allocator.allocate("s")
    with pytest.raises(ValueError, match="custom"):
        forward_step(model, cache, ["s"], [[1, 2]], mask="custom", custom_mask=torch.ones(2, 2, dtype=torch.bool))
    cache.allocator.truncate("s", 0)
    with pytest.raises(ValueError, match="full"):
        forward_step(model, cache, ["s"], [[1, 2]], mask="full")


def test_a_step_past_the_computed_positions_is_an_error():
    model = HFModel(tiny_llama())
    cache = model.make_cache(8, 4)
    cache.allocator.allocate("s")
    cache.append(["s"], [3])  # positions the model never saw
    with pytest.raises(ValueError, match="computed only 0 positions"):
        forward_step(model, cache, ["s"], [[1]])


def test_bad_arguments():
    with pytest.raises(TypeError, match="transformers causal LM"):
        HFModel(object())
    with pytest.raises(ValueError, match="max_positions"):
        HFModel(tiny_llama(), max_positions=0)
    assert HFModel(tiny_llama(), max_positions=16).max_positions == 16


def test_from_pretrained_reads_a_local_directory(tmp_path):
    hf = tiny_gpt2(3)
    hf.save_pretrained(tmp_path)
    model = HFModel.from_pretrained(tmp_path)
    result = AutoregressiveDecoder(model).generate([PROMPTS[0]], max_new_tokens=6,
                                                   sampling=SamplingParams.greedy(), stop_token_ids=[])
    assert result.sequences[0] == hf_greedy(hf, PROMPTS[0], 6)
