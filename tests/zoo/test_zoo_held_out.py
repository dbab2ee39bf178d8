"""Every zoo model reproduces the held-out bits per byte recorded when it was trained (within 1%),
on the held-out books shipped in the package."""

import pytest
import torch

from decodekit import zoo
from decodekit.zoo.corpus import HELD_OUT_BOOKS
from decodekit.zoo.held_out import held_out_bits_per_byte, held_out_verses

HAVE_WEIGHTS = all((zoo.WEIGHTS_DIR / n / "model.safetensors").is_file() for n in zoo.NAMES)


def test_held_out_text_is_the_held_out_books():
    verses = held_out_verses()
    assert {v.book for v in verses} == set(HELD_OUT_BOOKS)
    assert verses[0].line.startswith("Ruth1:1 Now it came to pass in the days when the judges ruled")
    assert len(verses) == 345  # Ruth 85 + Jonah 48 + Philippians 104 + James 108


@pytest.mark.skipif(not HAVE_WEIGHTS, reason="the zoo's weights are not in this checkout (decodekit zoo train)")
@pytest.mark.parametrize("name", zoo.NAMES)
def test_recorded_held_out_bits_per_byte_reproduce(name):
    torch.set_num_threads(1)
    recorded = zoo.info(name)["held_out_bits_per_byte"]
    assert held_out_bits_per_byte(name) == pytest.approx(recorded, rel=0.01)
