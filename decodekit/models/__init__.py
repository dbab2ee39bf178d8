"""Models behind decodekit's decoders: the protocol (:mod:`decodekit.models.protocol`), the
built-in Llama-family :class:`Transformer` on paged ops, and :class:`HFModel` for any Hugging Face
causal LM."""

from decodekit.models.config import TransformerConfig
from decodekit.models.protocol import ForwardBatch, Model, check_model
from decodekit.models.transformer import Transformer

__all__ = ["ForwardBatch", "HFModel", "Model", "Transformer", "TransformerConfig", "check_model"]


def __getattr__(name):
    # HFModel imports transformers (an optional extra) only when it is asked for.
    if name == "HFModel":
        from decodekit.models.hf import HFModel

        return HFModel
    raise AttributeError(name)
