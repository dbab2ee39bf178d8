"""Hugging Face weights <-> the built-in Transformer (no network access, ever).

Hugging Face stores q/k/v and gate/up as separate matrices; the built-in model keeps them fused
(one matmul each), so loading concatenates them and saving splits them again.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from decodekit.models.config import TransformerConfig

_PREFIX = "model."


def _fused_state_dict(hf_state: dict, config: TransformerConfig) -> dict:
    def get(name):
        key = name if name in hf_state else _PREFIX + name
        if key not in hf_state:
            raise ValueError(f"checkpoint has no tensor {name!r} (nor {_PREFIX + name!r})")
        return hf_state[key]

    state = {"embed_tokens.weight": get("embed_tokens.weight"), "norm.weight": get("norm.weight")}
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    else:
        state["lm_head.weight"] = hf_state.get("lm_head.weight", get("embed_tokens.weight"))
    for i in range(config.num_layers):
        p = f"layers.{i}."
        attn = p + "self_attn."
        state[attn + "qkv_proj.weight"] = torch.cat([get(attn + f"{n}_proj.weight") for n in "qkv"])
        if config.qkv_bias:
            state[attn + "qkv_proj.bias"] = torch.cat([get(attn + f"{n}_proj.bias") for n in "qkv"])
        state[attn + "o_proj.weight"] = get(attn + "o_proj.weight")
        mlp = p + "mlp."
        state[mlp + "gate_up_proj.weight"] = torch.cat([get(mlp + "gate_proj.weight"), get(mlp + "up_proj.weight")])
        state[mlp + "down_proj.weight"] = get(mlp + "down_proj.weight")
        state[p + "input_layernorm.weight"] = get(p + "input_layernorm.weight")
        state[p + "post_attention_layernorm.weight"] = get(p + "post_attention_layernorm.weight")
    return state


def _hf_state_dict(model) -> dict:
    cfg = model.config
    q_size = cfg.num_heads * cfg.head_dim
    kv_size = cfg.num_kv_heads * cfg.head_dim
    state = {"model.embed_tokens.weight": model.embed_tokens.weight, "model.norm.weight": model.norm.weight}
    if not cfg.tie_word_embeddings:
        state["lm_head.weight"] = model.lm_head.weight
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        for kind in ("weight", "bias"):
            tensor = getattr(layer.self_attn.qkv_proj, kind)
            if tensor is not None:
                for n, part in zip("qkv", tensor.split((q_size, kv_size, kv_size))):
                    state[p + f"self_attn.{n}_proj.{kind}"] = part
        state[p + "self_attn.o_proj.weight"] = layer.self_attn.o_proj.weight
        gate, up = layer.mlp.gate_up_proj.weight.chunk(2)
        state[p + "mlp.gate_proj.weight"], state[p + "mlp.up_proj.weight"] = gate, up
        state[p + "mlp.down_proj.weight"] = layer.mlp.down_proj.weight
        state[p + "input_layernorm.weight"] = layer.input_layernorm.weight
        state[p + "post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight
    return state


def _read_directory(path: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path} has no config.json: not a Hugging Face model directory")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path} has no *.safetensors weights (.bin checkpoints are not read: convert them)")
    state = {}
    for file in files:
        state.update(load_file(str(file)))
    return json.loads(config_file.read_text()), state


def load_hf(cls, model_or_path, *, dtype, device, attention):
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if not path.is_dir():
            raise ValueError(f"model_or_path {str(path)!r} is not a local directory (decodekit never downloads)")
        raw_config, hf_state = _read_directory(path)
        config = TransformerConfig.from_json(path / "config.json", attention=attention)
        checkpoint_dtype = next(iter(hf_state.values())).dtype
    elif hasattr(model_or_path, "config") and hasattr(model_or_path, "state_dict"):
        config = TransformerConfig.from_hf(model_or_path.config, attention=attention or "causal")
        hf_state = model_or_path.state_dict()
        checkpoint_dtype = next(iter(hf_state.values())).dtype
    else:
        raise TypeError(
            f"model_or_path must be a transformers model or a local directory, got {type(model_or_path).__name__}"
        )
    with torch.device("meta"):
        model = cls(config)
    state = _fused_state_dict(hf_state, config)
    target_dtype = dtype or checkpoint_dtype
    state = {k: v.detach().to(device=device or "cpu", dtype=target_dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    # Buffers are not in the checkpoint: rebuild the RoPE frequencies on the real device.
    from decodekit.models.rope import inverse_frequencies

    model.inv_freq = inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling).to(device or "cpu")
    return model.eval()


def save_hf(model, path, *, dtype=None) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in _hf_state_dict(model).items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2) + "\n")
