import pytest

from decodekit.decoders.plan import ControlTokens
from decodekit.zoo.tokenizer import ByteTokenizer


def test_round_trip_of_ascii_and_multibyte_text():
    tok = ByteTokenizer()
    for text in ("Ge1:1 In the beginning God created the heaven and the earth.\n", "naïve — ünïcode ✓", ""):
        ids = tok.encode(text)
        assert all(0 <= i < 256 for i in ids)
        assert tok.decode(ids) == text
    assert tok.encode("A0") == [65, 48]


def test_special_ids_are_distinct_after_the_bytes_and_render_as_tags():
    tok = ByteTokenizer()
    special = [tok.eos_token_id, tok.mask_token_id, tok.pad_token_id, tok.span_start_id, tok.span_end_id,
               tok.async_start_id, tok.async_end_id, tok.sync_id]
    assert special == list(range(256, 264)) and tok.vocab_size == 264 == len(tok)
    ids = [tok.span_start_id, *tok.encode("12"), tok.span_end_id, tok.async_start_id, *tok.encode("hi"),
           tok.pad_token_id, tok.async_end_id, tok.sync_id, tok.mask_token_id, tok.eos_token_id]
    assert tok.decode(ids) == "<promise>12</promise><async>hi<pad></async><sync><mask><eos>"
    assert tok.decode(ids, skip_special_tokens=True) == "12hi"


def test_a_multibyte_character_split_by_a_special_token_is_replaced_not_raised():
    tok = ByteTokenizer()
    e = tok.encode("é")
    assert tok.decode([e[0], tok.eos_token_id, e[1]]) == "\ufffd<eos>\ufffd"


def test_control_tokens_are_valid_for_the_planned_decoder():
    tok = ByteTokenizer()
    control = tok.control_tokens()
    assert isinstance(control, ControlTokens)
    assert tuple(control.digits) == tuple(tok.encode("0123456789"))
    control.check(tok.vocab_size, tok.mask_token_id)  # raises on a collision


def test_bad_input():
    tok = ByteTokenizer()
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="token id 264 is outside"):
        tok.decode([1, 264])
