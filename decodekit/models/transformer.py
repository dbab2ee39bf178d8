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

    def forward_train(self, input_ids: torch.Tensor, attention_mask=None,
                      positions: torch.Tensor | None = None) -> torch.Tensor:
        """Plain batched forward for training (no cache, autograd on): ``[B, L, V]`` logits.

        The same modules and weights as :meth:`forward`, with SDPA instead of the paged ops, so a
        model trained with it decodes identically through the paged path.

        Args:
            input_ids: ``[B, L]`` int64 token ids.
            attention_mask: None (the model's default: ``"causal"`` or ``"full"`` by
                ``config.attention``), ``"causal"``, ``"full"``, or a bool tensor ``[L, L]`` /
                ``[B, L, L]``, True where row i may attend to key j (every row must see at least
                one key).
            positions: ``[L]`` or ``[B, L]`` int64 RoPE positions; default ``0 .. L-1``
                (a sequence that repeats positions, e.g. clean + noisy copies, passes its own).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        batch, length = input_ids.shape
        device = input_ids.device
        mask = attention_mask if attention_mask is not None else (
            "causal" if self.config.attention == "causal" else "full")
        if isinstance(mask, str):
            if mask not in ("causal", "full"):
                raise ValueError(f"attention_mask must be None, 'causal', 'full' or a bool tensor, got {mask!r}")
            causal, bool_mask = mask == "causal", None
        else:
            if mask.dtype != torch.bool or mask.shape[-2:] != (length, length) or mask.dim() not in (2, 3):
                raise ValueError(f"attention_mask must be a bool [L, L] or [B, L, L] tensor with L={length}, "
                                 f"got {mask.dtype} {tuple(mask.shape)}")
            causal, bool_mask = False, (mask if mask.dim() == 3 else mask.unsqueeze(0)).unsqueeze(1)
        if positions is None:
            positions = torch.arange(length, device=device)
        positions = positions.expand(batch, length)
        x = self.embed_tokens(input_ids)
        cos, sin = cos_sin(positions.reshape(-1), self.inv_freq, x.dtype)
        cos, sin = cos.view(batch, length, 1, -1), sin.view(batch, length, 1, -1)
        for layer in self.layers:
            h = layer.input_layernorm(x)
            x = x + _train_attention(layer.self_attn, h, cos, sin, bool_mask, causal)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
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


def _train_attention(attn: Attention, x, cos, sin, bool_mask, causal: bool) -> torch.Tensor:
    """``x [B, L, hidden]`` through ``attn``'s weights with SDPA (the training forward)."""
    batch, length, _ = x.shape
    q, k, v = attn.qkv_proj(x).split(attn.split, dim=-1)
    q = apply_rope(q.view(batch, length, attn.num_heads, attn.head_dim), cos, sin)
    k = apply_rope(k.view(batch, length, attn.num_kv_heads, attn.head_dim), cos, sin)
    v = v.reshape(batch, length, attn.num_kv_heads, attn.head_dim)
    groups = attn.num_heads // attn.num_kv_heads
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask, is_causal=causal)
    return attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1))
