"""Token selection: id specs against set arithmetic, scripts against unicodedata, every error."""

import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unargmax_jax.selection import (decode_byte_level, describe, format_ids, is_byte_level, parse_ids,
                                    script_of, select, strip_markers, token_script, token_scripts)

C = 500
ranges = st.lists(st.tuples(st.integers(0, C - 1), st.integers(0, 30)), min_size=1, max_size=8)
spaces = st.sampled_from(["", " ", "  ", "\t"])


def _reference(pairs) -> list[int]:
    """The naive union of the inclusive ranges, as a sorted list."""
    return sorted({i for a, n in pairs for i in range(a, min(a + n, C - 1) + 1)})


@given(ranges, st.data())
@settings(max_examples=200, deadline=None, derandomize=True)
def test_parse_ids_equals_the_union_of_ranges(pairs, data):
    items = []
    for a, n in pairs:
        pad = [data.draw(spaces) for _ in range(4)]
        b = min(a + n, C - 1)
        items.append(f"{pad[0]}{a}{pad[1]}-{pad[2]}{b}{pad[3]}" if n else f"{pad[0]}{a}{pad[3]}")
    got = parse_ids(",".join(items), C)
    assert got.dtype == np.int64
    assert got.tolist() == _reference(pairs)


@given(st.sets(st.integers(0, C - 1), min_size=1, max_size=60))
@settings(max_examples=200, deadline=None, derandomize=True)
def test_formatting_ids_and_reparsing_is_identity(ids):
    spec = format_ids(sorted(ids))
    assert parse_ids(spec, C).tolist() == sorted(ids)
    assert parse_ids(",".join(map(str, ids)), C).tolist() == sorted(ids)


def test_parse_ids_examples():
    assert parse_ids(" 3 - 5 ,4, 0", 10).tolist() == [0, 3, 4, 5]
    assert parse_ids("0-9,2-4", 10).tolist() == list(range(10))
    assert parse_ids("7", 8).tolist() == [7]
    assert format_ids([5, 0, 1, 2, 2, 9, 8]) == "0-2,5,8-9"
    assert format_ids([]) == ""


@pytest.mark.parametrize("spec, message", [
    ("", r"--tokens '': expected ids and ranges like 0-99,1234, got an empty item"),
    ("1,,2", "got an empty item"),
    ("1,2,", "got an empty item"),
    ("a-3", r"expected ids and ranges like 0-99,1234, got 'a-3'"),
    ("1.5", "got '1.5'"),
    ("1;2", "got '1;2'"),
    ("1-2-3", "got '1-2-3'"),
    ("٣", "got '٣'"),  # Arabic-Indic digit: ASCII digits only
    ("-3", r"got '-3'; ids are >= 0"),
    ("-3-5", r"got '-3-5'; ids are >= 0"),
    ("5-2", "range 5-2 ends before it starts; expected a-b with a <= b"),
    ("3-10", r"--tokens '3-10': id 10 is out of range; the head has ids 0..9"),
    ("10", r"id 10 is out of range; the head has ids 0..9"),
])
def test_parse_ids_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_ids(spec, 10)


@pytest.mark.parametrize("classes", [0, -1, True, 2.0])
def test_parse_ids_and_select_reject_bad_class_counts(classes):
    with pytest.raises(ValueError, match="classes: expected a positive number of tokens"):
        parse_ids("0", classes)
    with pytest.raises(ValueError, match="classes: expected a positive number of tokens"):
        select(classes, None)


@given(st.characters(categories=["Lu", "Ll", "Lt", "Lo", "Lm"]))
@settings(max_examples=500, deadline=None, derandomize=True)
def test_script_of_follows_unicode_names(char):
    words = unicodedata.name(char, "").split()
    if words[:1] in (["FULLWIDTH"], ["HALFWIDTH"]):
        words = words[1:]
    script = script_of(char)
    if not words:
        assert script is None
    elif words[0] in ("CJK", "IDEOGRAPHIC"):
        assert script == "HAN"
    else:
        # The first word of the name, or (aliases, styled letters) None or a word of the name.
        assert script is None or script == words[0] or script in words or script in ("LATIN", "GREEK", "KATAKANA")


@given(st.characters(categories=["Nd", "P", "S", "Z", "Cc"]))
@settings(max_examples=200, deadline=None, derandomize=True)
def test_non_letters_have_no_script(char):
    assert script_of(char) is None


@pytest.mark.parametrize("char, script", [
    ("a", "LATIN"), ("ж", "CYRILLIC"), ("λ", "GREEK"), ("ب", "ARABIC"), ("ש", "HEBREW"), ("क", "DEVANAGARI"),
    ("한", "HANGUL"), ("ひ", "HIRAGANA"), ("カ", "KATAKANA"), ("ｶ", "KATAKANA"), ("ก", "THAI"), ("中", "HAN"),
    ("\U00020000", "HAN"), ("ｈ", "LATIN"), ("ー", "KATAKANA"), ("々", "HAN"), ("ª", "LATIN"), ("Ω", "GREEK"),
    ("ⁿ", "LATIN"), ("ʰ", None), ("𝐀", None), ("µ", None), ("ℵ", None),
    ("ा", "DEVANAGARI"), ("\u0301", None), ("\ufe0f", None),  # a vowel sign; combining acute, variation selector
    ("1", None), ("!", None), (" ", None), ("€", None),
])
def test_script_of_examples(char, script):
    assert script_of(char) == script


def test_script_of_wants_one_character():
    with pytest.raises(ValueError, match="script_of: expected one character, got 'ab'"):
        script_of("ab")


@pytest.mark.parametrize("token, script", [
    ("Ġhello", "LATIN"), ("▁привет", "CYRILLIC"), ("##ing", "LATIN"), ("中文", "HAN"), ("Ċ", None),
    ("<0x0A>", None), ("[CLS]", None), ("<s>", None), ("<|endoftext|>", None), ("abcд", "MIXED"),
    ("123", None), (".,", None), ("ｈｉ", "LATIN"), ("Ġλόγος", "GREEK"), ("مرحبا", "ARABIC"),
    ("ひらがな", "HIRAGANA"), ("नमस्ते", "DEVANAGARI"), ("café", "LATIN"), ("cafe\u0301", "LATIN"),
    ("日本です", "MIXED"), ("ĠĠ", None), ("▁▁the", "LATIN"), (None, None), ("", None),
])
def test_token_script_examples(token, script):
    assert token_script(token) == script


def test_strip_markers():
    assert [strip_markers(t) for t in ("Ġa", "▁b", "##c", "Ċ", "d", "ĠĠe", "Ċ##f", "a▁b")] == \
        ["a", "b", "c", "", "d", "e", "f", "a▁b"]


# A byte-level BPE vocabulary as GPT-2 stores it: "Ġдом" is " дом", "Ð" alone is half of "д".
BYTE_LEVEL = ["<|endoftext|>", "Ġthe", "ĠÐ´Ð¾Ð¼", "ing", "Ð", "ĠÎ»", "Ġä¸Ń", "Ċ", "ĠĠ", "Ġcat"]


def test_byte_level_vocabularies_are_decoded():
    assert is_byte_level(BYTE_LEVEL)
    assert decode_byte_level("ĠÐ´Ð¾Ð¼") == " дом"
    assert decode_byte_level("<|endoftext|>") == "<|endoftext|>"
    assert decode_byte_level("▁x") == "▁x"  # outside the byte alphabet: unchanged
    assert decode_byte_level("Ð") == "\ufffd"
    assert token_scripts(BYTE_LEVEL) == [None, "LATIN", "CYRILLIC", "LATIN", None, "GREEK", "HAN",
                                         None, None, "LATIN"]
    assert token_script("ĠÐ´Ð¾Ð¼") == "LATIN"  # read raw, the bytes look Latin
    np.testing.assert_array_equal(np.flatnonzero(select(10, BYTE_LEVEL, script="cyrillic")), [2])


@pytest.mark.parametrize("tokens", [
    ["▁the", "▁дом", "ing"],  # SentencePiece
    ["the", "##ing", "дом", "中"],  # WordPiece
    ["the", "cat", "a"],  # plain ASCII, no space markers
    ["<s>", "[CLS]", None],  # nothing but special tokens
    [],
])
def test_other_vocabularies_are_not_byte_level(tokens):
    assert not is_byte_level(tokens)


VOCAB = ["<s>", "Ġthe", "Ġдом", "##ing", "42", "中", "Ġthem", "ёж", None]


def test_select_intersects_filters():
    assert select(9, VOCAB).all() and select(9, None).all()
    assert select(9, VOCAB).dtype == bool
    np.testing.assert_array_equal(np.flatnonzero(select(9, VOCAB, script="latin")), [1, 3, 6])
    np.testing.assert_array_equal(np.flatnonzero(select(9, VOCAB, script=" Cyrillic ")), [2, 7])
    np.testing.assert_array_equal(np.flatnonzero(select(9, VOCAB, script="LATIN", keep_unscripted=True)),
                                  [0, 1, 3, 4, 6, 8])
    np.testing.assert_array_equal(np.flatnonzero(select(9, VOCAB, regex="^Ġthe")), [1, 6])
    np.testing.assert_array_equal(np.flatnonzero(select(9, VOCAB, regex="^Ġ", ids="2-8", script="latin")), [6])
    np.testing.assert_array_equal(np.flatnonzero(select(9, None, ids="0,8")), [0, 8])


@given(st.lists(st.sampled_from(["Ġa", "Ġб", "1", "##c", None, "<s>"]), min_size=1, max_size=12), st.data())
@settings(max_examples=100, deadline=None, derandomize=True)
def test_select_is_the_intersection_of_single_filters(tokens, data):
    classes = len(tokens)
    chosen = data.draw(st.sets(st.integers(0, classes - 1), min_size=1))
    expected = np.array([i in chosen and t is not None and t.startswith("Ġ") for i, t in enumerate(tokens)])
    if expected.any():
        np.testing.assert_array_equal(select(classes, tokens, ids=format_ids(chosen), regex="^Ġ"), expected)
    else:
        with pytest.raises(ValueError, match="the token selection is empty"):
            select(classes, tokens, ids=format_ids(chosen), regex="^Ġ")


def test_select_errors_name_the_flag():
    with pytest.raises(ValueError, match="--script needs token strings, and none were found with the head"):
        select(9, None, script="latin")
    with pytest.raises(ValueError, match="--tokens-regex needs token strings"):
        select(9, None, regex="a")
    with pytest.raises(ValueError, match=r"--tokens-regex: expected one token string per row \(9\), got 3"):
        select(9, ["a", "b", "c"], regex="a")
    with pytest.raises(ValueError, match=r"--tokens-regex '\(': expected a valid Python regular expression"):
        select(9, VOCAB, regex="(")
    with pytest.raises(ValueError, match=r"--script 'klingon': no token of the vocabulary is written in it; "
                                         r"expected one of the scripts present: latin \(3\), cyrillic \(2\), han \(1\)"):
        select(9, VOCAB, script="klingon")
    with pytest.raises(ValueError, match=r"--script 'mixed': .*scripts present"):
        select(9, VOCAB, script="mixed")
    with pytest.raises(ValueError, match="scripts present: none"):
        select(2, ["<s>", "42"], script="latin")
    with pytest.raises(ValueError, match=r"--tokens '9': id 9 is out of range; the head has ids 0..8"):
        select(9, VOCAB, ids="9")
    with pytest.raises(ValueError, match=r"the token selection is empty: no token passes all of "
                                         r"--tokens '0', --script 'latin'; expected at least one token to check"):
        select(9, VOCAB, ids="0", script="latin")


def test_describe():
    mask = np.zeros(49152, bool)
    mask[:1234] = True
    assert describe(mask) == "checking 1234 of 49152 tokens"
    assert describe(mask, script="latin") == "checking 1234 of 49152 tokens (script LATIN)"
    assert describe(mask, ids="0-1233", regex="^Ġ") == "checking 1234 of 49152 tokens (ids 0-1233, regex ^Ġ)"
