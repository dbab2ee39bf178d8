import pytest
import torch

from decodekit.decoders.plan import build_scaffold, parse_plan, round_attention_mask
from decodekit.zoo import planned as pl
from decodekit.zoo.corpus import HELD_OUT_BOOKS, chapters, fetch_kjv, parse_verses, split_by_books, token_stream
from decodekit.zoo.tokenizer import ByteTokenizer

TEXT = """Ge1:1 In the beginning God created the heaven and the earth.
Ge1:2 And the earth was without form, and void; and darkness was upon the face of the deep.

Ge1:3 And God said, Let there be light: and there was light.
Ge2:1 Thus the heavens and the earth were finished, and all the host of them.
Ruth1:1 Now it came to pass in the days when the judges ruled, that there was a famine in the land.
1Sm1:1 Now there was a certain man of Ramathaimzophim, of mount Ephraim.
Jas1:1 James, a servant of God and of the Lord Jesus Christ, to the twelve tribes, greeting.
"""


def test_parse_lines_into_book_chapter_verse_text():
    verses = parse_verses(TEXT)
    assert len(verses) == 7
    assert (verses[0].book, verses[0].chapter, verses[0].verse) == ("Ge", 1, 1)
    assert verses[5].book == "1Sm" and verses[5].text.startswith("Now there was")
    assert verses[2].line == "Ge1:3 And God said, Let there be light: and there was light.\n"
    assert [len(c) for c in chapters(verses)] == [3, 1, 1, 1, 1]


def test_split_holds_out_whole_books():
    verses = parse_verses(TEXT)
    train, held = split_by_books(verses)
    assert {v.book for v in held} == {"Ruth", "Jas"} and {"Ruth", "Jas"} <= set(HELD_OUT_BOOKS)
    assert not {v.book for v in train} & set(HELD_OUT_BOOKS) and len(train) + len(held) == len(verses)


def test_token_stream_ends_each_book_with_eos():
    tok = ByteTokenizer()
    ids = token_stream(parse_verses(TEXT)[:5], tok)
    assert ids.count(tok.eos_token_id) == 2  # after Ge2:1 and after Ruth1:1
    assert tok.decode(ids, skip_special_tokens=True) == "".join(v.line for v in parse_verses(TEXT)[:5])


def test_bad_lines_and_missing_corpus_are_explained(tmp_path):
    with pytest.raises(ValueError, match="corpus line 2"):
        parse_verses("Ge1:1 ok\nnot a verse\n")
    with pytest.raises(FileNotFoundError, match="not a file"):
        fetch_kjv(tmp_path / "missing.txt")
    (tmp_path / "kjv.txt").write_text(TEXT)
    assert parse_verses(fetch_kjv(tmp_path / "kjv.txt"))[0].book == "Ge"


def test_fetch_without_the_bible_command_says_what_to_install(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install bible-kjv"):
        fetch_kjv()


def _doc(final_eos=False):
    tok = ByteTokenizer()
    v = parse_verses(TEXT)
    return tok, pl.annotate(v[0].line, [[v[1].line], [v[2].line, v[3].line]], tok, final_eos=final_eos)


def test_each_plan_parses_with_the_planned_decoders_parser_and_matches_its_scaffold():
    tok, doc = _doc()
    control = tok.control_tokens()
    plan_from = len(tok.encode(parse_verses(TEXT)[0].line))
    for round_start, blocks, terminal in doc.rounds:
        lengths = parse_plan(doc.tokens[plan_from:round_start], control, tok.mask_token_id,
                             length_scale=pl.LENGTH_SCALE, max_digits=pl.MAX_LENGTH_DIGITS)
        assert lengths == [end - start - 2 for start, end in blocks]
        scaffold = build_scaffold(lengths, control, tok.mask_token_id, 10_000, sync=terminal == tok.sync_id)
        rows = doc.tokens[round_start:round_start + len(scaffold.tokens)]
        # the decoder's scaffold with its masks replaced by the verse slots is the document
        assert [s if s != tok.mask_token_id else r for s, r in zip(scaffold.tokens, rows)] == rows
        assert [(a + round_start, b + round_start) for a, b in scaffold.blocks] == blocks
        plan_from = round_start + len(scaffold.tokens)
    text = tok.decode(doc.tokens, skip_special_tokens=True)
    assert text.replace("15", "").replace("9", "").replace("6", "").startswith("Ge1:1")
    assert tok.decode(doc.tokens).count("<sync>") == 2


def test_a_span_is_the_verse_padded_to_ten_times_its_bucket():
    tok, doc = _doc(final_eos=True)
    (start, end), = doc.rounds[0][1]
    line = parse_verses(TEXT)[1].line.encode()
    assert end - start - 2 == 10 * -(-len(line) // 10)
    assert doc.tokens[start + 1:start + 1 + len(line)] == list(line)
    assert set(doc.tokens[start + 1 + len(line):end - 1]) == {tok.pad_token_id}
    assert doc.tokens[-1] == tok.eos_token_id and doc.rounds[-1][2] == tok.eos_token_id
    with pytest.raises(ValueError, match="outside"):
        pl.length_bucket(1000)


def test_training_mask_is_the_decoders_round_mask_over_a_causal_prefix():
    _, doc = _doc()
    mask = pl.attention_mask(doc, len(doc.tokens) + 3)
    for round_start, blocks, _ in doc.rounds:
        rows = blocks[-1][1] - round_start + 1  # spans + the sync row
        expected = round_attention_mask([(a - round_start, b - round_start) for a, b in blocks], rows)
        assert torch.equal(mask[round_start:round_start + rows, round_start:round_start + rows], expected)
        assert mask[round_start:round_start + rows, :round_start].all()  # the cached prefix
    assert torch.equal(mask[: doc.rounds[0][0], : doc.rounds[0][0]], torch.tril(mask.new_ones(doc.rounds[0][0],
                                                                                               doc.rounds[0][0])))


def test_targets_train_plans_next_token_and_only_the_last_rounds_spans():
    tok, doc = _doc()
    x, y, w = pl.targets(doc, tok.mask_token_id, 0.5, torch.Generator().manual_seed(0))
    for round_start, _, terminal in doc.rounds:
        assert y[round_start - 1] == terminal and w[round_start - 1] == 1
    first_start, first_blocks, _ = doc.rounds[0]
    assert not (x[first_start:first_blocks[-1][1]] == tok.mask_token_id).any()  # clean earlier round
    masked = (x == tok.mask_token_id).nonzero().flatten()
    assert len(masked) > 10 and (w[masked - 1] == 2.0).all()
    assert torch.equal(y[masked - 1], torch.tensor(doc.tokens)[masked])
    assert all(doc.kinds[i] == pl.SPAN for i in masked.tolist())
