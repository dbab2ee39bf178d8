"""Configuration of the built-in Llama-family :class:`~decodekit.models.Transformer`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from decodekit.models.protocol import ATTENTION_KINDS

# Hugging Face model types whose weights map one-to-one onto the built-in Transformer.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass
class TransformerConfig:
    """Shape and numerics of a Llama-family decoder (Llama 2/3, Mistral, Qwen2).

    Attributes:
        vocab_size, hidden_size, intermediate_size, num_layers, num_heads: the usual.
        num_kv_heads: grouped-query attention (``num_heads % num_kv_heads == 0``).
        head_dim: default ``hidden_size // num_heads``.
        max_positions: the longest sequence (HF ``max_position_embeddings``).
        rms_norm_eps: RMSNorm epsilon.
        rope_theta: RoPE base.
        rope_scaling: None, or a dict with ``rope_type`` ``"linear"`` (``factor``) or
            ``"llama3"`` (``factor``, ``low_freq_factor``, ``high_freq_factor``,
            ``original_max_position_embeddings``), as in Hugging Face configs.
        qkv_bias: biases on the q/k/v projections (Qwen2).
        tie_word_embeddings: the LM head reuses the embedding matrix.
        attention: ``"causal"`` (AR) or ``"bidirectional"`` (masked diffusion).
        bos_token_id, eos_token_id, mask_token_id: special ids (informational; decoders take
            their own arguments).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    max_positions: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    qkv_bias: bool = False
    tie_word_embeddings: bool = False
    attention: str = "causal"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    mask_token_id: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_heads
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_positions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TransformerConfig.{name} must be an int >= 1, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if rope_type not in ROPE_TYPES:
                raise ValueError(f"rope_scaling type {rope_type!r} is not supported; supported: {ROPE_TYPES}")

    # ------------------------------------------------------------------ Hugging Face configs

    @classmethod
    def from_hf(cls, hf_config, *, attention: str = "causal") -> "TransformerConfig":
        """From a ``transformers`` config object or its dict (``config.json``)."""
        cfg = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {model_type!r} is not supported by the built-in Transformer "
                f"(supported: {SUPPORTED_MODEL_TYPES}); wrap the model with decodekit.models.HFModel instead"
            )
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act must be 'silu' (SwiGLU), got {cfg.get('hidden_act')!r}")
        if cfg.get("mlp_bias"):
            raise ValueError("mlp_bias=True is not supported by the built-in Transformer")
        # transformers >= 5 keeps rope_theta and the scaling in `rope_parameters`; older
        # versions have `rope_theta` and `rope_scaling` at the top level.
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", cfg.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        scaling = None if rope_type == "default" else rope
        max_positions = cfg.get("max_position_embeddings", 2048)
        window = cfg.get("sliding_window") if cfg.get("use_sliding_window", model_type == "mistral") else None
        if window:
            # Full attention equals sliding-window attention as long as sequences fit the window.
            max_positions = min(max_positions, int(window))
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"],
            num_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
            max_positions=max_positions,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=scaling,
            qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention=attention,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=cfg.get("eos_token_id"),
            mask_token_id=cfg.get("mask_token_id"),
        )

    def to_hf_dict(self) -> dict:
        """A Llama ``config.json`` dict (Qwen2 when it has q/k/v biases) that ``from_hf`` and
        ``transformers`` both read back."""
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope = {**self.rope_scaling, "rope_theta": self.rope_theta}
        cfg = {
            "model_type": "qwen2" if self.qkv_bias else "llama",
            "architectures": ["Qwen2ForCausalLM" if self.qkv_bias else "LlamaForCausalLM"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_positions,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "decodekit": {"attention": self.attention, "mask_token_id": self.mask_token_id, **self.extra},
        }
        if self.rope_scaling:
            cfg["rope_scaling"] = dict(self.rope_scaling)
        return cfg

    @classmethod
    def from_json(cls, path: str | Path, *, attention: str | None = None) -> "TransformerConfig":
        cfg = json.loads(Path(path).read_text())
        ours = cfg.get("decodekit", {})
        config = cls.from_hf(cfg, attention=attention or ours.get("attention", "causal"))
        config.mask_token_id = ours.get("mask_token_id", config.mask_token_id)
        config.extra = {k: v for k, v in ours.items() if k not in ("attention", "mask_token_id")}
        return config

    def as_dict(self) -> dict:
        return asdict(self)
