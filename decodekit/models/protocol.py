"""The model protocol: the one contract between decodekit's decoders and any model.

Every decoder (autoregressive, speculative, mask-predict, diffusion, planned) drives its model
through exactly this interface, so a user's own model works with every decoder once it
implements it. Two implementations ship: :class:`decodekit.models.Transformer` (Llama-family, on
decodekit's paged KV ops) and :class:`decodekit.models.HFModel` (any Hugging Face causal LM, its
own cache).

A step flattens the new tokens of ``B`` sequences into ``T`` rows (:class:`ForwardBatch`). The
decoder owns a :class:`decodekit.kv.PagedKVCache` made by ``model.make_cache``; before the call it
grows each sequence by its new tokens (``cache.append``) or marks the last positions for
rewriting (``cache.rewrite``, diffusion), which yields the block table, sequence lengths, query
offsets and slot mapping in the batch. The model writes the new K/V to those slots and attends
over each sequence's cached keys plus its new ones, under the batch's mask mode:

- ``"causal"``: row i sees every cached key and its own sequence's new rows up to itself;
- ``"full"``: row i sees all keys of its sequence (bidirectional models, diffusion canvases);
- ``"custom"``: the cached prefix plus the new rows ``custom_mask`` allows (token trees, planned
  diffusion spans); see :func:`decodekit.ops.paged_attention` for the mask layouts.

Positions are explicit (a tree node's position is its parent's plus one, not its row index).
The model returns logits only for ``logits_rows`` (e.g. the last row of every prefill), as
``[R, V]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Protocol, Sequence, runtime_checkable

import torch

from decodekit.kv import BatchMetadata, PagedKVCache

MASK_MODES = ("causal", "full", "custom")
ATTENTION_KINDS = ("causal", "bidirectional")


@dataclass
class ForwardBatch:
    """One model call over the new tokens of ``B`` sequences (``T`` rows in all).

    Attributes:
        input_ids: ``[T]`` int64 token ids.
        positions: ``[T]`` int64 position of each row (RoPE); usually the row's index in its
            sequence, a tree node's depth plus the prefix length for draft trees.
        cu_seqlens_q: ``[B+1]`` int32, sequence b owns rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]``.
        block_table: ``[B, MB]`` int32 block ids of each sequence, ``-1`` padded.
        seq_lens: ``[B]`` int32 keys of each sequence, including this step's rows.
        slot_mapping: ``[T]`` int64 cache slot of each row's K/V.
        cache: the :class:`~decodekit.kv.PagedKVCache` (made by ``model.make_cache``) whose
            K/V tensors the model reads and writes.
        seq_ids: the ``B`` decoder sequence ids (models with their own cache key on them).
        mask: ``"causal" | "full" | "custom"``; None = the model's default (causal for causal
            models, full for bidirectional ones).
        custom_mask: with ``mask="custom"``, any layout :func:`decodekit.ops.paged_attention`
            accepts.
        logits_rows: ``[R]`` int64 row indices whose logits are returned; None = all ``T`` rows.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    cu_seqlens_q: torch.Tensor
    block_table: torch.Tensor
    seq_lens: torch.Tensor
    slot_mapping: torch.Tensor
    cache: PagedKVCache | None = None
    seq_ids: tuple = field(default_factory=tuple)
    mask: str | None = None
    custom_mask: object = None
    logits_rows: torch.Tensor | None = None

    @classmethod
    def from_metadata(
        cls,
        cache: PagedKVCache,
        meta: BatchMetadata,
        seq_ids: Sequence[Hashable],
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        *,
        mask: str | None = None,
        custom_mask=None,
        logits_rows: torch.Tensor | None = None,
    ) -> "ForwardBatch":
        if mask is not None and mask not in MASK_MODES:
            raise ValueError(f"mask must be one of {MASK_MODES} or None, got {mask!r}")
        return cls(
            input_ids=input_ids,
            positions=positions,
            cu_seqlens_q=meta.cu_seqlens_q,
            block_table=meta.block_table,
            seq_lens=meta.seq_lens,
            slot_mapping=meta.slot_mapping,
            cache=cache,
            seq_ids=tuple(seq_ids),
            mask=mask,
            custom_mask=custom_mask,
            logits_rows=logits_rows,
        )


@runtime_checkable
class Model(Protocol):
    """What a decoder needs from a model.

    Attributes:
        vocab_size: V, the width of the returned logits.
        max_positions: the longest sequence (prompt + generated) the model supports.
        attention: ``"causal"`` (AR models, drafters) or ``"bidirectional"`` (diffusion models).
        supports_custom_mask: whether ``forward`` accepts ``mask="custom"`` (tree drafts,
            planned-diffusion spans).
        device, dtype: where and in which dtype the model computes.
    """

    vocab_size: int
    max_positions: int
    attention: str
    supports_custom_mask: bool
    device: torch.device
    dtype: torch.dtype

    def make_cache(self, num_blocks: int, block_size: int) -> PagedKVCache:
        """A paged cache sized for this model (``num_blocks * block_size`` token slots)."""

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Write the batch's K/V into the cache and return ``[R, V]`` logits of ``logits_rows``."""

    def release(self, seq_ids: Sequence[Hashable]) -> None:
        """Forget any model-side state of finished sequences (a no-op for paged models)."""


def check_model(model, name: str = "model", *, attention: str | None = None) -> None:
    """Raise TypeError/ValueError if ``model`` does not follow :class:`Model` (or has the wrong
    attention kind for the decoder)."""
    missing = [a for a in ("vocab_size", "max_positions", "attention", "make_cache", "forward", "release")
               if not hasattr(model, a)]
    if missing:
        raise TypeError(f"{name} does not implement decodekit's model protocol: missing {missing}")
    if model.attention not in ATTENTION_KINDS:
        raise ValueError(f"{name}.attention must be one of {ATTENTION_KINDS}, got {model.attention!r}")
    if attention is not None and model.attention != attention:
        raise ValueError(f"{name} has {model.attention} attention; this decoder needs a {attention} model")
