"""The zoo's held-out text, shipped with the package, and each model's bits per byte on it.

``data/kjv_held_out.txt`` holds every verse of the held-out books (:data:`HELD_OUT_BOOKS`, about
46 KB of public-domain text) exactly as ``bible -f`` prints them, so a model's recorded held-out
bits per byte (``zoo.json``, measured at the end of training) can be re-measured offline on any
machine, without the Debian ``bible`` package.
"""

from __future__ import annotations

from pathlib import Path

import torch

from decodekit.zoo.corpus import HELD_OUT_BOOKS, Verse, parse_verses

HELD_OUT_PATH = Path(__file__).parent / "data" / "kjv_held_out.txt"


def held_out_verses() -> list[Verse]:
    """Every verse of the held-out books, in corpus order."""
    verses = parse_verses(HELD_OUT_PATH.read_text(encoding="utf-8"))
    books = {v.book for v in verses}
    if books != set(HELD_OUT_BOOKS):  # the file and the split rule must describe the same books
        raise RuntimeError(f"{HELD_OUT_PATH} holds books {sorted(books)}, expected {sorted(HELD_OUT_BOOKS)}")
    return verses


def held_out_bits_per_byte(name: str, *, device="cpu", weights_dir: str | Path | None = None) -> float:
    """Re-measure zoo model ``name``'s held-out bits per byte with the evaluation and settings
    recorded in its ``zoo.json`` (fixed-seed noise, float32 weights, so it is repeatable)."""
    from decodekit.zoo import info, load
    from decodekit.zoo.train import TrainSettings, evaluate

    record = info(name, weights_dir=weights_dir)
    model, _ = load(name, device=device, dtype=torch.float32, weights_dir=weights_dir)
    return evaluate(record["kind"], model, held_out_verses(), TrainSettings(**record["settings"]), device)
