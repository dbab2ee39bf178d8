"""The zoo's corpus: the King James Bible (public domain) as Debian's ``bible-kjv`` package
prints it, one verse per line with its reference (``Ge1:1 In the beginning God created ...``).

The text is not shipped: :func:`fetch_kjv` runs ``bible -f "Gen1:1-Rev22:21"`` (31,102 lines,
about 4.4 MB) or reads a file given by the user. Whole books are held out for evaluation
(:data:`HELD_OUT_BOOKS`: one historical, one prophetic and two epistles, about 1% of the verses).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

KJV_RANGE = "Gen1:1-Rev22:21"
# Book abbreviations as `bible` prints them: Ruth, Jonah, Philippians, James.
HELD_OUT_BOOKS = ("Ruth", "Jonah", "Phi", "Jas")
_LINE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


@dataclass(frozen=True)
class Verse:
    """One verse: ``book`` (the abbreviation as printed), ``chapter``, ``verse``, ``text``."""

    book: str
    chapter: int
    verse: int
    text: str

    @property
    def line(self) -> str:
        """The verse as the corpus prints it, newline included: ``"Ge1:1 In the beginning ...\\n"``."""
        return f"{self.book}{self.chapter}:{self.verse} {self.text}\n"


def fetch_kjv(path: str | Path | None = None) -> str:
    """The whole KJV text: the file at ``path`` if given, else the output of Debian's ``bible``
    command. RuntimeError (with what to do) when neither is available."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"corpus path {str(path)!r} is not a file")
        return path.read_text(encoding="utf-8")
    exe = shutil.which("bible")
    if exe is None:
        raise RuntimeError(
            "the KJV corpus needs Debian's `bible` command: run `apt-get install bible-kjv`, or pass a "
            f"text file with one verse per line (`bible -f \"{KJV_RANGE}\" > kjv.txt`) as the corpus path"
        )
    out = subprocess.run([exe, "-f", KJV_RANGE], capture_output=True, text=True, check=True)
    return out.stdout


def parse_verses(text: str) -> list[Verse]:
    """Parse ``Book<chapter>:<verse> <text>`` lines (blank lines skipped); ValueError naming the
    first line that does not match."""
    verses = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _LINE.match(line.rstrip())
        if match is None:
            raise ValueError(f"corpus line {number} is not 'Book<chapter>:<verse> <text>': {line[:60]!r}")
        book, chapter, verse, body = match.groups()
        verses.append(Verse(book, int(chapter), int(verse), body))
    if not verses:
        raise ValueError("the corpus has no verses")
    return verses


def split_by_books(verses: Sequence[Verse], held_out: Sequence[str] = HELD_OUT_BOOKS) -> tuple[list[Verse], list[Verse]]:
    """``(train, held_out)`` verses in corpus order: every verse of a book in ``held_out`` goes to
    the second list."""
    held = set(held_out)
    return [v for v in verses if v.book not in held], [v for v in verses if v.book in held]


def chapters(verses: Sequence[Verse]) -> list[list[Verse]]:
    """Consecutive verses grouped by (book, chapter), in corpus order."""
    groups: list[list[Verse]] = []
    for v in verses:
        if groups and (groups[-1][0].book, groups[-1][0].chapter) == (v.book, v.chapter):
            groups[-1].append(v)
        else:
            groups.append([v])
    return groups


def token_stream(verses: Sequence[Verse], tokenizer) -> list[int]:
    """The verse lines as byte ids, with ``eos`` after the last verse of each book (the text the
    autoregressive and masked-diffusion models learn)."""
    ids: list[int] = []
    for i, v in enumerate(verses):
        ids += tokenizer.encode(v.line)
        if i + 1 == len(verses) or verses[i + 1].book != v.book:
            ids.append(tokenizer.eos_token_id)
    return ids
