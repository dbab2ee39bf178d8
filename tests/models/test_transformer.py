"""The built-in Transformer against Hugging Face models with the same (random) weights.

Hugging Face models are built from small configs (no download) with a large init std so logits
are far from uniform, and every bias Hugging Face zero-initialises is randomised, so a wrong
layout, RoPE variant or bias would show up as a logit difference.
"""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from decodekit.decoders import forward_step  # noqa: E402
from decodekit.models import Transformer, TransformerConfig  # noqa: E402

VOCAB = 48
BASE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            initializer_range=0.3, rms_norm_eps=1e-6)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
ARCHS = {
    "llama-gqa": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama-mha-tied": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "llama3-rope": ("LlamaConfig", "LlamaForCausalLM", dict(rope_parameters=LLAMA3_ROPE)),
    "llama-linear-rope": ("LlamaConfig", "LlamaForCausalLM",
                          dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0})),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=4096)),
    "qwen2-bias": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=False)),
}
PROMPTS = [[1, 5, 9, 2, 7, 3, 11], [4], [8, 8, 2, 30, 41]]


def hf_model(arch: str, seed: int = 0):
    config_cls, model_cls, extra = ARCHS[arch]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**{**BASE, **extra})
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # Hugging Face zero-initialises biases: randomise them so they count
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(1.0 if "norm" in name else 0.0, 0.3)
    return model


def hf_logits(model, tokens) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float()


def paged_logits(model, prompts, *, block_size=4, logits="all"):
    cache = model.make_cache(32, block_size)
    ids = [("p", i) for i in range(len(prompts))]
    for s in ids:
        cache.allocator.allocate(s)
    return forward_step(model, cache, ids, prompts, logits=logits), cache, ids


@pytest.mark.parametrize("arch", list(ARCHS))
def test_batched_prefill_and_decode_step_match_hugging_face(arch):
    hf = hf_model(arch)
    ours = Transformer.from_hf(hf)
    logits, cache, ids = paged_logits(ours, PROMPTS)
    expected = torch.cat([hf_logits(hf, p) for p in PROMPTS])
    assert logits.shape == (sum(map(len, PROMPTS)), VOCAB)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    # One decode token per sequence after the prefill: each sequence's last row.
    nxt = [[3], [17], [44]]
    step = forward_step(ours, cache, ids, nxt)
    expected = torch.stack([hf_logits(hf, p + n)[-1] for p, n in zip(PROMPTS, nxt)])
    torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-4)


def test_config_of_each_architecture_is_read():
    assert TransformerConfig.from_hf(hf_model("qwen2-bias").config).qkv_bias
    llama3 = TransformerConfig.from_hf(hf_model("llama3-rope").config)
    assert llama3.rope_scaling["rope_type"] == "llama3" and llama3.rope_theta == 500000.0
    tied = Transformer.from_hf(hf_model("llama-mha-tied"))
    assert tied.lm_head.weight is tied.embed_tokens.weight and tied.config.num_kv_heads == 4


def test_load_from_hugging_face_directory(tmp_path):
    hf = hf_model("qwen2-bias", seed=1)
    hf.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    ours = Transformer.from_hf(tmp_path)
    logits, _, _ = paged_logits(ours, PROMPTS)
    torch.testing.assert_close(logits, torch.cat([hf_logits(hf, p) for p in PROMPTS]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama-gqa", "qwen2-bias", "llama-mha-tied", "llama3-rope"])
def test_save_pretrained_round_trips_through_transformers(tmp_path, arch):
    ours = Transformer.from_hf(hf_model(arch, seed=2))
    ours.save_pretrained(tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    reloaded = Transformer.from_pretrained(tmp_path)
    expected = torch.cat([hf_logits(back, p) for p in PROMPTS])
    for model in (ours, reloaded):
        logits, _, _ = paged_logits(model, PROMPTS)
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    for (name, a), (_, b) in zip(ours.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_unsupported_models_and_bad_directories_raise_clear_errors(tmp_path):
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="gpt2.*HFModel"):
        Transformer.from_hf(gpt2)
    with pytest.raises(ValueError, match="not a local directory"):
        Transformer.from_hf(tmp_path / "missing")
    with pytest.raises(ValueError, match="no config.json"):
        Transformer.from_hf(tmp_path)
    hf_model("llama-gqa").config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="safetensors"):
        Transformer.from_hf(tmp_path)
    with pytest.raises(TypeError, match="model_or_path"):
        Transformer.from_hf(42)
    config = json.loads((tmp_path / "config.json").read_text())
    with pytest.raises(ValueError, match="hidden_act"):
        TransformerConfig.from_hf({**config, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="num_key_value_heads|num_kv_heads"):
        TransformerConfig.from_hf({**config, "num_key_value_heads": 3})
    with pytest.raises(ValueError, match="rope_scaling"):
        TransformerConfig.from_hf({**config, "rope_parameters": {"rope_type": "yarn", "factor": 2.0}})


def test_missing_tensor_in_checkpoint_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    hf = hf_model("llama-gqa")
    hf.save_pretrained(tmp_path)
    file = next(tmp_path.glob("*.safetensors"))
    state = load_file(str(file))
    del state["model.layers.1.self_attn.k_proj.weight"]
    save_file(state, str(file), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="layers.1.self_attn.k_proj.weight"):
        Transformer.from_hf(tmp_path)


def test_bidirectional_attention_sees_the_whole_sequence():
    hf = hf_model("llama-gqa", seed=3)
    causal = Transformer.from_hf(hf)
    bidirectional = Transformer.from_hf(hf, attention="bidirectional")
    prompt = [PROMPTS[0]]
    c, _, _ = paged_logits(causal, prompt)
    b, _, _ = paged_logits(bidirectional, prompt)
    # Every row differs: early rows see later keys, and (2 layers) the last row attends to
    # rows whose first-layer outputs changed.
    assert (b - c).abs().amax(dim=-1).min() > 1e-3
    # mask="full" on the causal model is the bidirectional model; changing a later token moves
    # the first row's logits only under full attention.
    cache = causal.make_cache(8, 4)
    cache.allocator.allocate("s")
    full = forward_step(causal, cache, ["s"], prompt, mask="full", logits="all")
    torch.testing.assert_close(full, b, rtol=1e-5, atol=1e-5)
    changed = [prompt[0][:-1] + [(prompt[0][-1] + 1) % VOCAB]]
    b2, _, _ = paged_logits(bidirectional, changed)
    c2, _, _ = paged_logits(causal, changed)
    torch.testing.assert_close(c2[0], c[0], rtol=1e-6, atol=1e-6)
    assert (b2[0] - b[0]).abs().max() > 1e-3
