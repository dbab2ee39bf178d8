"""Small randomly initialised models for tests, examples and benchmarks (no download)."""

from __future__ import annotations

import torch

from decodekit.models.config import TransformerConfig
from decodekit.models.transformer import Transformer


def tiny_transformer(
    vocab_size: int = 64,
    *,
    attention: str = "causal",
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_positions: int = 256,
    seed: int = 0,
    init_std: float = 0.02,
    dtype: torch.dtype = torch.float32,
    **config,
) -> Transformer:
    """A random :class:`Transformer` (deterministic given ``seed``).

    ``init_std`` scales the initial weights; larger values (e.g. 0.5) give peaked, varied next-token
    distributions, which speculative-decoding and diffusion tests need to accept and reject
    drafts non-trivially.
    """
    cfg = TransformerConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
        max_positions=max_positions, attention=attention, **config,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Transformer(cfg)
        if init_std != 0.02:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if p.dim() == 2:
                        p.normal_(0.0, init_std)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.to(dtype).eval()
