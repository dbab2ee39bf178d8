"""The built-in Llama-family decoder on decodekit's paged KV ops.

Plain PyTorch that reads like the papers (RMSNorm, RoPE, grouped-query attention, SwiGLU); the
only non-PyTorch calls are ``kv_append`` and ``paged_attention``. The q/k/v and gate/up
projections are stored fused (one matmul each) and split when loading or saving Hugging Face
weights.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from decodekit import ops
from decodekit.kv import PagedKVCache
from decodekit.models.config import TransformerConfig
from decodekit.models.protocol import ForwardBatch
from decodekit.models.rope import apply_rope, cos_sin, inverse_frequencies


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 statistics, like Hugging Face Llama, so fp16/bf16 models match it.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.split = (q_size, kv_size, kv_size)
        self.qkv_proj = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=False)

    def forward(self, x, cos, sin, k_cache, v_cache, batch: ForwardBatch, mask: str) -> torch.Tensor:
        rows = x.shape[0]
        q, k, v = self.qkv_proj(x).split(self.split, dim=-1)
        q = apply_rope(q.view(rows, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(k.view(rows, self.num_kv_heads, self.head_dim), cos, sin)
        v = v.reshape(rows, self.num_kv_heads, self.head_dim)
        # The decoder built the metadata from its own allocator, so value checks (a host read,
        # a sync on GPUs) are skipped on this hot path.
        ops.kv_append(k, v, k_cache, v_cache, batch.slot_mapping, validate=False)
        out = ops.paged_attention(
            q, k_cache, v_cache, batch.block_table, batch.seq_lens, batch.cu_seqlens_q,
            mask=mask, custom_mask=batch.custom_mask, validate=False,
        )
        return self.o_proj(out.reshape(rows, -1))


class MLP(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, k_cache, v_cache, batch, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, k_cache, v_cache, batch, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """A Llama / Mistral / Qwen2-style decoder implementing :class:`decodekit.models.Model`.

    Args:
        config: :class:`TransformerConfig`; ``config.attention`` picks causal (AR) or
            bidirectional (masked diffusion) attention.

    Build one from a config (random init, ``std=0.02``), or load weights with
    :meth:`from_hf` (a ``transformers`` model object or a local Hugging Face directory) or
    :meth:`from_pretrained` (a directory written by :meth:`save_pretrained`).
    """

    supports_custom_mask = True

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer(
            "inv_freq", inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling), persistent=False
        )
        self.apply(_init_weights)

    # ------------------------------------------------------------------ the model protocol

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_positions(self) -> int:
        return self.config.max_positions

    @property
    def attention(self) -> str:
        return self.config.attention

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def make_cache(self, num_blocks: int, block_size: int) -> PagedKVCache:
        cfg = self.config
        return PagedKVCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, self.dtype, self.device, num_blocks, block_size)

    def release(self, seq_ids: Sequence[Hashable]) -> None:
        """Nothing to forget: all per-sequence state lives in the decoder's paged cache."""

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """``[R, V]`` logits of ``batch.logits_rows`` (all rows when None); writes every row's
        K/V into ``batch.cache``."""
        cache = batch.cache
        if cache is None:
            raise ValueError("batch.cache is None: the Transformer reads and writes a PagedKVCache")
        mask = batch.mask or ("causal" if self.config.attention == "causal" else "full")
        x = self.embed_tokens(batch.input_ids)
        cos, sin = cos_sin(batch.positions, self.inv_freq, x.dtype)
        for index, layer in enumerate(self.layers):
            k_cache, v_cache = cache.layer(index)
            x = layer(x, cos, sin, k_cache, v_cache, batch, mask)
        if batch.logits_rows is not None:
            x = x.index_select(0, batch.logits_rows)
        return self.lm_head(self.norm(x))

    # ------------------------------------------------------------------ weights

    @classmethod
    def from_hf(cls, model_or_path, *, dtype: torch.dtype | None = None, device=None,
                attention: str = "causal") -> "Transformer":
        """Load a Llama, Mistral or Qwen2 checkpoint without network access.

        Args:
            model_or_path: a ``transformers`` model object (``LlamaForCausalLM`` ...) or a local
                directory with ``config.json`` and ``*.safetensors`` (sharded or not).
            dtype: default: the checkpoint's dtype (float32 for model objects built in fp32).
            device: default CPU.
            attention: ``"causal"`` or ``"bidirectional"`` (diffusion models such as LLaDA).
        """
        from decodekit.models.loading import load_hf

        return load_hf(cls, model_or_path, dtype=dtype, device=device, attention=attention)

    @classmethod
    def from_pretrained(cls, path, *, dtype: torch.dtype | None = None, device=None) -> "Transformer":
        """Load a directory written by :meth:`save_pretrained` (or any supported HF directory)."""
        from decodekit.models.loading import load_hf

        return load_hf(cls, path, dtype=dtype, device=device, attention=None)

    def save_pretrained(self, path, *, dtype: torch.dtype | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` in Hugging Face's Llama/Qwen2 layout
        (readable by ``transformers`` and by :meth:`from_pretrained`)."""
        from decodekit.models.loading import save_hf

        save_hf(self, path, dtype=dtype)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
