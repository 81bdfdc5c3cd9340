"""Token selection: id specs, regexes and scripts, against set arithmetic and unicodedata."""

import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unargmax_jax.selection import parse_ids, script_of, select, strip_markers, token_script

C = 500
ranges = st.lists(st.tuples(st.integers(0, C - 1), st.integers(0, 30)), min_size=1, max_size=8)


def _spec(pairs) -> str:
    return ",".join(f"{a}-{min(a + n, C - 1)}" if n else f"{a}" for a, n in pairs)


@given(ranges)
@settings(max_examples=200, deadline=None)
def test_parse_ids_equals_the_union_of_ranges(pairs):
    expected = sorted({i for a, n in pairs for i in range(a, min(a + n, C - 1) + 1)})
    got = parse_ids(_spec(pairs), C)
    assert got.tolist() == expected
    assert parse_ids(",".join(str(i) for i in got), C).tolist() == expected  # ids written back re-parse


def test_parse_ids_accepts_spaces_and_overlaps():
    assert parse_ids(" 3 - 5 ,4, 0", 10).tolist() == [0, 3, 4, 5]


@pytest.mark.parametrize("spec, message", [
    ("", "expected ids and ranges like 0-99,1234, got ''"),
    ("1,,2", "got ''"),
    ("a-3", "got 'a-3'"),
    ("-3", "got '-3'"),
    ("1.5", "got '1.5'"),
    ("5-2", "range 5-2 ends before it starts"),
    ("3-10", r"id 10 is out of range; the head has ids 0..9"),
])
def test_parse_ids_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_ids(spec, 10)


@given(st.characters(categories=["Lu", "Ll", "Lo"]))
@settings(max_examples=300, deadline=None)
def test_script_of_follows_unicode_names(char):
    name = unicodedata.name(char, "")
    script = script_of(char)
    if not name:
        assert script is None
    elif name.startswith("CJK"):
        assert script == "HAN"
    else:
        assert script in name.split()


@pytest.mark.parametrize("token, script", [
    ("Ġhello", "LATIN"), ("▁привет", "CYRILLIC"), ("##ing", "LATIN"), ("中文", "HAN"), ("Ċ", None),
    ("<0x0A>", None), ("[CLS]", None), ("<|endoftext|>", None), ("abcд", "MIXED"), ("123", None),
    ("ｈｉ", "LATIN"), ("Ġλόγος", "GREEK"), ("مرحبا", "ARABIC"), ("ひらがな", "HIRAGANA"), (None, None),
])
def test_token_script_examples(token, script):
    assert token_script(token) == script


def test_strip_markers():
    assert [strip_markers(t) for t in ("Ġa", "▁b", "##c", "Ċ", "d")] == ["a", "b", "c", "", "d"]


VOCAB = ["<s>", "Ġthe", "Ġдом", "##ing", "42", "中", "Ġthem", "ёж", None]


def test_select_intersects_filters():
    assert select(9, VOCAB).all()
    np.testing.assert_array_equal(np.flatnonzero(select(9, VOCAB, script="latin")), [1, 3, 6])
    np.testing.assert_array_equal(np.flatnonzero(select(9, VOCAB, script="Cyrillic")), [2, 7])
    np.testing.assert_array_equal(np.flatnonzero(select(9, VOCAB, script="latin", keep_unscripted=True)),
                                  [0, 1, 3, 4, 6, 8])
    np.testing.assert_array_equal(np.flatnonzero(select(9, VOCAB, regex="^Ġthe")), [1, 6])
    np.testing.assert_array_equal(np.flatnonzero(select(9, VOCAB, regex="^Ġ", ids="2-8", script="latin")), [6])
    np.testing.assert_array_equal(np.flatnonzero(select(9, None, ids="0,8")), [0, 8])


def test_select_errors_name_the_flag():
    with pytest.raises(ValueError, match="--script needs token strings"):
        select(9, None, script="latin")
    with pytest.raises(ValueError, match="--tokens-regex needs token strings"):
        select(9, None, regex="a")
    with pytest.raises(ValueError, match=r"--tokens-regex '\(': not a valid regular expression"):
        select(9, VOCAB, regex="(")
    with pytest.raises(ValueError, match=r"--script 'klingon': .* scripts present: latin \(3\), cyrillic \(2\), han \(1\)"):
        select(9, VOCAB, script="klingon")
    with pytest.raises(ValueError, match="the token selection is empty"):
        select(9, VOCAB, ids="0", script="latin")
