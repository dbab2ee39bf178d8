"""A tiny model zoo trained on the King James Bible: byte-level models for every decoder family.

=================  ========  ===============================================================
name               kind      used by
=================  ========  ===============================================================
kjv-ar             ar        AutoregressiveDecoder; the target of SpeculativeDecoder
kjv-ar-draft       ar        ModelDrafter / TreeDrafter (same vocabulary, ~8x fewer weights)
kjv-mdm            mdm       MaskedDiffusionDecoder (all presets), MaskPredictDecoder,
                             BlockDiffusionDecoder, DiffusionDrafter
kjv-planned        planned   PlannedDiffusionDecoder (``tokenizer.control_tokens()``)
kjv-udm            udm       DiscreteDiffusionDecoder (``graph="uniform"``; SEDD's uniform noise
                             over bytes and eos, read from its config's ``diffusion_states``)
=================  ========  ===============================================================

``load(name)`` returns ``(Transformer, ByteTokenizer)`` from the weights shipped under
``decodekit/zoo/weights/<name>/`` (written by ``decodekit zoo train``); ``zoo.json`` next to
them records the training settings and the held-out bits per byte.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from decodekit.zoo.tokenizer import ByteTokenizer
from decodekit.zoo.train import UDM_STATES, TrainSettings

WEIGHTS_DIR = Path(__file__).parent / "weights"


def _config(hidden: int, layers: int, heads: int, kv_heads: int, attention: str, max_positions: int,
            **extra) -> dict:
    tok = ByteTokenizer()
    config = dict(vocab_size=tok.vocab_size, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 32 * 32,
                  num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, max_positions=max_positions,
                  attention=attention, eos_token_id=tok.eos_token_id, mask_token_id=tok.mask_token_id)
    if extra:  # saved under config.json's "decodekit" entry, read back by the decoders
        config["extra"] = extra
    return config


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry: ``kind`` (see :mod:`decodekit.zoo.train`), the Transformer config kwargs and
    the default training settings."""

    name: str
    kind: str
    config: dict
    settings: TrainSettings = field(default_factory=TrainSettings)


# Steps sized for the 90-minute CPU budget: 1-thread seconds per step measured on a loaded 2-core
# machine: kjv-ar 0.85, kjv-ar-draft 0.17, kjv-mdm 1.36 (half full, half block steps), kjv-planned
# 0.99, so the whole zoo is ~88 min on one thread and less on two. kjv-udm: 0.85-0.91 s/step on
# the idle machine (1200 steps ~18 min); its recorded run took 1.80 s/step with other jobs running.
ZOO = {
    m.name: m
    for m in (
        ZooModel("kjv-ar", "ar", _config(256, 4, 4, 2, "causal", 1024), TrainSettings(steps=1500, seq_len=256)),
        ZooModel("kjv-ar-draft", "ar", _config(128, 2, 2, 1, "causal", 1024),
                 TrainSettings(steps=3000, seq_len=256, lr=3e-3)),
        ZooModel("kjv-mdm", "mdm", _config(256, 4, 4, 2, "bidirectional", 1024), TrainSettings(steps=1500, seq_len=256)),
        ZooModel("kjv-planned", "planned", _config(256, 4, 4, 2, "causal", 1024),
                 TrainSettings(steps=1500, seq_len=512, batch_size=8)),
        ZooModel("kjv-udm", "udm", _config(256, 4, 4, 2, "bidirectional", 1024, diffusion_graph="uniform",
                                           diffusion_states=UDM_STATES), TrainSettings(steps=1200, seq_len=256)),
    )
}
NAMES = tuple(ZOO)


def load(name: str, *, device=None, dtype: torch.dtype | None = None,
         weights_dir: str | Path | None = None) -> tuple["Transformer", ByteTokenizer]:  # noqa: F821
    """``(model, tokenizer)`` of the zoo model ``name`` (one of :data:`NAMES`), offline.

    Args:
        device: default CPU. dtype: default the stored fp16; pass ``torch.float32`` for CPU speed.
        weights_dir: where the ``<name>/`` directories are (default: inside the package).
    """
    from decodekit.models import Transformer

    if name not in ZOO:
        raise ValueError(f"name must be one of {NAMES}, got {name!r}")
    path = Path(weights_dir or WEIGHTS_DIR) / name
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no weights for {name!r} at {path}: train them with `decodekit zoo train --models {name}`")
    model = Transformer.from_pretrained(path, dtype=dtype, device=device)
    return model, ByteTokenizer()


def info(name: str, *, weights_dir: str | Path | None = None) -> dict:
    """The ``zoo.json`` training record of ``name`` (settings, held-out bits per byte, timings)."""
    if name not in ZOO:
        raise ValueError(f"name must be one of {NAMES}, got {name!r}")
    return json.loads((Path(weights_dir or WEIGHTS_DIR) / name / "zoo.json").read_text())


__all__ = ["ByteTokenizer", "NAMES", "TrainSettings", "WEIGHTS_DIR", "ZOO", "ZooModel", "info", "load"]
