"""Any Hugging Face causal LM behind decodekit's model protocol, as-is.

:class:`HFModel` lets every causal decoder (autoregressive, speculative, ...) run on the
architectures the built-in :class:`~decodekit.models.Transformer` does not cover (GPT-2, Phi,
Gemma, ...). The Hugging Face model keeps its own K/V: one ``DynamicCache`` per decoder sequence
id. The decoder's :class:`~decodekit.kv.PagedKVCache` (a minimal one made by
:meth:`HFModel.make_cache`) still does the bookkeeping of lengths and block tables, and the model
reads each sequence's length from it: before a step, a sequence's ``DynamicCache`` is cropped to
the position of its first new row, so a decoder that rolled a sequence back (speculative
truncation, a diffusion block rewrite) needs nothing else.

``transformers`` is an optional extra (``pip install decodekit[hf]``); this module imports it only
when a model is loaded by path, and nothing imports this module at ``import decodekit`` time.
"""

from __future__ import annotations

import inspect
from typing import Hashable, Sequence

import torch

from decodekit.kv import PagedKVCache
from decodekit.models.protocol import ForwardBatch

# The paged cache an HFModel makes is bookkeeping only (its K/V tensors are never read), so its
# K/V are one float per slot on the host: block tables and lengths never travel to a GPU.
_BOOKKEEPING_SHAPE = dict(num_layers=1, num_kv_heads=1, head_dim=1, dtype=torch.float32, device="cpu")


class HFModel:
    """A Hugging Face causal LM (``AutoModelForCausalLM`` and friends) implementing
    :class:`decodekit.models.Model`.

    Args:
        model: a ``transformers`` causal LM object (e.g. ``LlamaForCausalLM``,
            ``GPT2LMHeadModel``); it is put in eval mode and used as-is (its weights, dtype,
            device and attention implementation).
        max_positions: the longest sequence to allow; default: the config's
            ``max_position_embeddings`` (or ``n_positions``), else 2048.

    Calls: one Hugging Face forward per sequence of the batch (correct for any architecture and
    any mix of prompt lengths, without padding); the per-sequence ``DynamicCache`` grows with the
    rows it has seen. Only ``mask="causal"`` (or None) is accepted: custom masks (token trees,
    planned-diffusion spans) and bidirectional attention are not expressible through a Hugging
    Face causal LM's cache, so they raise ValueError. Decoders that need them take the built-in
    Transformer.
    """

    attention = "causal"
    supports_custom_mask = False

    def __init__(self, model, *, max_positions: int | None = None):
        if not (hasattr(model, "config") and callable(model)):
            raise TypeError(f"model must be a transformers causal LM object, got {type(model).__name__}")
        if max_positions is not None and (isinstance(max_positions, bool) or not isinstance(max_positions, int)
                                          or max_positions < 1):
            raise ValueError(f"max_positions must be None or an int >= 1, got {max_positions!r}")
        self.model = model.eval()
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.vocab_size = int(head.weight.shape[0]) if head is not None else int(config.vocab_size)
        self.max_positions = max_positions or int(
            getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
        )
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        accepted = inspect.signature(model.forward).parameters
        self._takes_logits_to_keep = "logits_to_keep" in accepted
        # transformers >= 5.2x names the cache argument `cache`; earlier versions `past_key_values`.
        self._cache_argument = "cache" if "cache" in accepted else "past_key_values"
        self._caches: dict[Hashable, object] = {}

    @classmethod
    def from_pretrained(cls, path, *, dtype: torch.dtype | None = None, device=None, **kwargs) -> "HFModel":
        """Load a local Hugging Face directory with ``AutoModelForCausalLM`` (never downloads).

        Args:
            path: a local directory (``config.json`` + weights).
            dtype: torch dtype of the weights; default the checkpoint's.
            device: where to put the model; default CPU.
            kwargs: passed on to :class:`HFModel` (``max_positions``).
        """
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or "auto", local_files_only=True)
        return cls(model.to(device or "cpu"), **kwargs)

    # ------------------------------------------------------------------ the model protocol

    def make_cache(self, num_blocks: int, block_size: int) -> PagedKVCache:
        """A bookkeeping-only paged cache (lengths and block tables; the K/V live in the Hugging
        Face caches)."""
        return PagedKVCache(num_blocks=num_blocks, block_size=block_size, **_BOOKKEEPING_SHAPE)

    def release(self, seq_ids: Sequence[Hashable]) -> None:
        """Drop the Hugging Face caches of ``seq_ids`` (unknown ids are ignored)."""
        for seq in seq_ids:
            self._caches.pop(seq, None)

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """``[R, V]`` logits of ``batch.logits_rows`` (all rows when None).

        Sequence b's rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` are its newest positions, ending at
        ``seq_lens[b]``; its Hugging Face cache is cropped to the first of them, then extended by
        one forward call with ``batch.positions`` as ``position_ids``.
        """
        if batch.mask == "custom":
            raise ValueError(
                "HFModel does not support mask='custom' (token trees, planned-diffusion spans): a Hugging "
                "Face causal LM's cache cannot express it; use decodekit.models.Transformer"
            )
        if batch.mask == "full":
            raise ValueError("HFModel wraps a causal LM: mask='full' (bidirectional attention) is not supported")
        cu = batch.cu_seqlens_q.tolist()
        seq_lens = batch.seq_lens.tolist()
        if len(batch.seq_ids) != len(seq_lens):
            raise ValueError(f"batch.seq_ids has {len(batch.seq_ids)} ids for {len(seq_lens)} sequences")
        total = cu[-1]
        wanted = list(range(total)) if batch.logits_rows is None else batch.logits_rows.tolist()
        needed_from = {}  # sequence -> first of its rows whose logits are wanted
        owner = _row_owners(cu)
        for row in wanted:
            b = owner[row]
            needed_from[b] = min(needed_from.get(b, row), row)
        logits_of_row: dict[int, torch.Tensor] = {}
        for b, seq in enumerate(batch.seq_ids):
            lo, hi = cu[b], cu[b + 1]
            if hi == lo:
                continue
            first = needed_from.get(b, hi - 1)
            logits = self._extend(seq, seq_lens[b] - (hi - lo), batch.input_ids[lo:hi], batch.positions[lo:hi], hi - first)
            for row in range(first, hi):
                logits_of_row[row] = logits[row - first]
        if not wanted:
            return torch.empty(0, self.vocab_size, dtype=self.dtype, device=self.device)
        return torch.stack([logits_of_row[row] for row in wanted])

    # ------------------------------------------------------------------ internals

    def _extend(self, seq: Hashable, start: int, input_ids: torch.Tensor, positions: torch.Tensor,
                keep: int) -> torch.Tensor:
        """Crop ``seq``'s cache to ``start`` positions, run its new rows, return the logits of the
        last ``keep`` rows as ``[keep, V]``."""
        from transformers import DynamicCache

        cache = self._caches.get(seq)
        seen = 0 if cache is None else cache.get_seq_length()
        if start > seen:
            raise ValueError(
                f"sequence {seq!r}: the step starts at position {start} but HFModel has computed only {seen} "
                "positions of it (every position must pass through forward once)"
            )
        if cache is None or start == 0:
            cache = DynamicCache(config=self.model.config)
        elif start < seen:
            # Negative: "remove this many tokens", the one meaning every transformers version shares.
            cache.crop(start - seen)
        self._caches[seq] = cache
        kwargs = {self._cache_argument: cache}
        if self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = keep
        out = self.model(
            input_ids=input_ids.to(self.device)[None],
            position_ids=positions.to(self.device)[None],
            use_cache=True,
            **kwargs,
        )
        return out.logits[0, -keep:]


def _row_owners(cu: list[int]) -> list[int]:
    """``owner[row]`` = the sequence a flattened row belongs to."""
    owner = []
    for b in range(len(cu) - 1):
        owner.extend([b] * (cu[b + 1] - cu[b]))
    return owner
