"""The README's per-family examples run as written on the bundled zoo models."""

import re
from pathlib import Path

import pytest
import torch

from decodekit import zoo

README = Path(__file__).resolve().parents[1] / "README.md"
HAVE_WEIGHTS = all((zoo.WEIGHTS_DIR / n / "model.safetensors").is_file() for n in zoo.NAMES)


def zoo_examples() -> list[tuple[str, str]]:
    """(heading, code) of every python block under '## Generation families' that loads a zoo model."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Generation families\n")
    end = text.index("\n## ", start + 1)
    examples, heading = [], ""
    for match in re.finditer(r"^### ([^\n]+)$|^```python\n(.*?)^```$", text[start:end], re.S | re.M):
        if match.group(1):
            heading = match.group(1)
        elif "zoo.load" in match.group(2):
            examples.append((heading, match.group(2)))
    return examples


def test_every_family_has_an_example():
    headings = {h for h, _ in zoo_examples()}
    assert len(headings) >= 6, headings


@pytest.mark.skipif(not HAVE_WEIGHTS, reason="the zoo's weights are not in this checkout (decodekit zoo train)")
@pytest.mark.parametrize("heading,code", zoo_examples(), ids=[h for h, _ in zoo_examples()])
def test_readme_example_runs(heading, code, capsys):
    torch.set_num_threads(1)
    exec(compile(code, f"README.md: {heading}", "exec"), {})
    printed = capsys.readouterr().out
    assert len(printed.strip()) > 8, printed  # every example prints generated text
