"""Choosing which tokens to check: id ranges, a regular expression, a writing script.

Translation models carry vocabulary of languages they never output, so, like the
published tool of Grivas et al. (2022), a check can be limited to tokens written in one
Unicode script. A token's script is that of its letters after tokenizer markers are
removed (``Ġ``, ``▁``, ``##``, ``Ċ``); the script of a letter is the first word of its
Unicode name (LATIN, CYRILLIC, GREEK, ARABIC, ...; CJK ideographs are HAN). Tokens
without letters (digits, punctuation, byte tokens ``<0x0A>``, special tokens
``<s>``/``[CLS]``) have no script; tokens mixing scripts (``abcд``, Japanese kanji with
kana) are ``MIXED``.

Byte-level BPE vocabularies (GPT-2, Llama 3, SmolLM2) store each UTF-8 byte as one
printable character, so ``дом`` is stored as ``Ð´Ð¾Ð¼``, which reads as Latin.
:func:`select` recognises such a vocabulary (:func:`is_byte_level`) and classifies the
decoded text instead; a token holding only part of a character's bytes has no script.

All functions are pure; malformed input raises ``ValueError`` naming the command-line
flag it came from and what was expected, which the CLI prints as one line.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

# Leading space / continuation / newline markers of common tokenizers: GPT-2 byte-level
# space and newline, SentencePiece space, WordPiece continuation.
_MARKERS = ("Ġ", "▁", "##", "Ċ")
_SPECIAL = re.compile(r"^(<[^<>]*>|\[[^\[\]]*\])$")  # <s>, <|endoftext|>, <0x0A>, [CLS], [unused0]
_ID = re.compile(r"[0-9]+", re.ASCII)
_RANGE = re.compile(r"([0-9]+)\s*-\s*([0-9]+)", re.ASCII)
_EXPECTED_IDS = "expected ids and ranges like 0-99,1234"

# First words of Unicode letter names that are not script names, mapped to the script
# the letter belongs to (None: no script): letterlike symbols and CJK/kana helpers.
_ALIASES = {
    "CJK": "HAN", "IDEOGRAPHIC": "HAN", "KATAKANA-HIRAGANA": "KATAKANA",
    "FEMININE": "LATIN", "MASCULINE": "LATIN", "ANGSTROM": "LATIN", "KELVIN": "LATIN",
    "OHM": "GREEK",
    # Unicode puts these in no script (Common): µ in "µm" is a unit, not Greek text.
    "MICRO": None, "ALEF": None, "BET": None, "GIMEL": None, "DALET": None,
}
# Prefixes of styled letters (ⁿ SUPERSCRIPT LATIN SMALL LETTER N, 𝐀 MATHEMATICAL BOLD
# CAPITAL A, ʰ MODIFIER LETTER SMALL H): the script is a later word of the name when
# one is there, else the letter is neutral (None) so it cannot make a token MIXED.
_STYLES = frozenset({"MODIFIER", "SUPERSCRIPT", "MATHEMATICAL", "DOUBLE-STRUCK", "BLACK-LETTER",
                     "SCRIPT", "TURNED", "ROMAN", "PLANCK", "EULER", "INFORMATION", "CARON",
                     "VERTICAL"})
_COMMON_SCRIPTS = frozenset({"LATIN", "GREEK", "CYRILLIC", "HEBREW", "ARABIC", "ARMENIAN", "GEORGIAN"})
# First words of marks that are shared by many scripts (Unicode's "Inherited" script):
# they take the script of the letter they attach to, so they are neutral here.
_INHERITED_MARKS = frozenset({"COMBINING", "VARIATION", "VEDIC", "MUSICAL", "VIETNAMESE", "ZNAMENNY",
                              "PHAISTOS", "SIGNWRITING"})


def parse_ids(spec: str, classes: int) -> np.ndarray:
    """Ids from ``"0-99,1234"``: comma-separated ids and inclusive ranges.

    Whitespace around items and dashes is allowed and ranges may overlap.

    Args:
        spec: the ``--tokens`` value.
        classes: the head's number of tokens C; ids must lie in ``0..C-1``.

    Returns:
        The chosen ids, sorted and unique, as int64.

    Raises:
        ValueError: an empty item, an item that is not an id or a range, a negative id,
            a range that ends before it starts, or an id >= C.
    """
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 1:
        raise ValueError(f"classes: expected a positive number of tokens, got {classes!r}")
    keep = np.zeros(int(classes), bool)
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            raise ValueError(f"--tokens {spec!r}: {_EXPECTED_IDS}, got an empty item "
                             f"(a leading, trailing or doubled comma?)")
        if _ID.fullmatch(item):
            start = stop = int(item)
        elif match := _RANGE.fullmatch(item):
            start, stop = int(match.group(1)), int(match.group(2))
        elif re.fullmatch(r"-\s*[0-9]+(\s*-\s*-?\s*[0-9]+)?", item, re.ASCII):
            raise ValueError(f"--tokens {spec!r}: {_EXPECTED_IDS}, got {item!r}; ids are >= 0")
        else:
            raise ValueError(f"--tokens {spec!r}: {_EXPECTED_IDS}, got {item!r}")
        if stop < start:
            raise ValueError(f"--tokens {spec!r}: range {start}-{stop} ends before it starts; "
                             f"expected a-b with a <= b")
        if stop >= classes:
            raise ValueError(f"--tokens {spec!r}: id {stop} is out of range; the head has ids 0..{classes - 1}")
        keep[start:stop + 1] = True  # a mask, so overlapping and huge ranges cost O(C) in total
    return np.flatnonzero(keep).astype(np.int64)


def format_ids(ids: Iterable[int] | np.ndarray) -> str:
    """The shortest ``--tokens`` spec of a set of ids (``[0, 1, 2, 5]`` -> ``"0-2,5"``).

    :func:`parse_ids` of the result gives the sorted unique ids back.
    """
    ids = np.unique(np.fromiter(ids, np.int64))
    if ids.size == 0:
        return ""
    breaks = np.flatnonzero(np.diff(ids) != 1)
    starts = ids[np.r_[0, breaks + 1]]
    stops = ids[np.r_[breaks, ids.size - 1]]
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in zip(starts.tolist(), stops.tolist()))


def strip_markers(token: str) -> str:
    """The token's text without the leading markers tokenizers add (``Ġ``, ``▁``, ``##``, ``Ċ``).

    Markers are removed repeatedly, so ``ĠĠ`` (two spaces in GPT-2) and ``▁▁`` leave "".
    """
    stripped = True
    while stripped:
        stripped = False
        for marker in _MARKERS:
            if token.startswith(marker):
                token = token[len(marker):]
                stripped = True
    return token


@functools.lru_cache(maxsize=1 << 16)  # a vocabulary repeats the same few thousand characters
def script_of(char: str) -> str | None:
    """The Unicode script of a letter, from the first word of its Unicode name.

    ``"д"`` -> ``"CYRILLIC"``; CJK ideographs -> ``"HAN"``; fullwidth and halfwidth forms
    take the script of the letter they widen (``"ｈ"`` -> ``"LATIN"``). Marks (category
    M) named after a script count for it (Devanagari vowel signs); generic combining
    marks and styled letters without a script word (𝐀, ʰ) are neutral.

    Returns:
        The script name in capitals, or None for non-letters and neutral characters.
    """
    if len(char) != 1:
        raise ValueError(f"script_of: expected one character, got {char!r}")
    category = unicodedata.category(char)
    if category[0] not in "LM":
        return None
    words = unicodedata.name(char, "").split()
    if words[:1] in (["FULLWIDTH"], ["HALFWIDTH"]):
        words = words[1:]
    if not words:
        return None
    first = words[0]
    if category[0] == "M" and first in _INHERITED_MARKS:
        return None
    if first in _STYLES:
        return next((word for word in words[1:] if word in _COMMON_SCRIPTS), None)
    return _ALIASES.get(first, first)


def _gpt2_byte_alphabet() -> dict[str, int]:
    """Character -> byte of GPT-2's ``bytes_to_unicode`` (printable bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {byte: chr(byte) for byte in printable}
    for n, byte in enumerate(b for b in range(256) if b not in chars):
        chars[byte] = chr(256 + n)
    return {char: byte for byte, char in chars.items()}


_BYTE_OF = _gpt2_byte_alphabet()


def decode_byte_level(token: str) -> str:
    """The text of a byte-level BPE token (``"Ġд"`` stored as ``"ĠÐ´"`` -> ``" д"``).

    Incomplete UTF-8 sequences become U+FFFD (not a letter); a token with characters
    outside the byte alphabet (an added special token) is returned unchanged.
    """
    if not all(char in _BYTE_OF for char in token):
        return token
    return bytes(_BYTE_OF[char] for char in token).decode("utf-8", errors="replace")


def is_byte_level(tokens: Sequence[str | None]) -> bool:
    """Whether a vocabulary is byte-level BPE: its pieces use only the 256-character byte
    alphabet (99% of them, special tokens aside) and many start with the space byte ``Ġ``.

    SentencePiece (``▁``) and WordPiece vocabularies fail the first test; a plain ASCII
    vocabulary fails the second, and decoding it would change nothing anyway.
    """
    pieces = [t for t in tokens if t and not _SPECIAL.match(t)]
    if not pieces:
        return False
    in_alphabet = sum(all(char in _BYTE_OF for char in t) for t in pieces)
    spaced = sum(t.startswith("Ġ") for t in pieces)
    return in_alphabet >= 0.99 * len(pieces) and spaced >= 0.1 * len(pieces)


def token_script(token: str | None, *, byte_level: bool = False) -> str | None:
    """The script shared by the token's letters.

    Args:
        token: the token string as stored in the vocabulary (None for a missing entry).
        byte_level: decode the token as byte-level BPE first (see :func:`is_byte_level`).

    Returns:
        The script name (``"LATIN"``), ``"MIXED"`` if the letters' scripts differ, or None
        when the token has no letters or is a special token (``<s>``, ``<0x0A>``, ``[CLS]``).
    """
    if token is None or _SPECIAL.match(token.strip()):
        return None
    text = decode_byte_level(token) if byte_level else strip_markers(token)
    scripts = {script for script in map(script_of, text) if script is not None}
    if not scripts:
        return None
    return scripts.pop() if len(scripts) == 1 else "MIXED"


def token_scripts(tokens: Sequence[str | None]) -> list[str | None]:
    """:func:`token_script` of every token, decoding byte-level vocabularies."""
    byte_level = is_byte_level(tokens)
    return [token_script(t, byte_level=byte_level) for t in tokens]


def select(classes: int, tokens: Sequence[str | None] | None, *, ids: str | None = None,
           regex: str | None = None, script: str | None = None, keep_unscripted: bool = False) -> np.ndarray:
    """A (classes,) bool mask: the tokens passing every given filter (all when none is given).

    Args:
        classes: the head's number of tokens C.
        tokens: one token string per row, None where the vocabulary has no entry, or
            None when the head came without a vocabulary (only ``ids`` then works).
        ids: ``--tokens``, e.g. ``"0-99,1234"`` (see :func:`parse_ids`).
        regex: ``--tokens-regex``: keep tokens whose raw string matches (``re.search``).
        script: ``--script``: keep tokens written in this script (case-insensitive,
            ``latin``, ``Cyrillic``, ``han``); tokens mixing scripts are dropped.
        keep_unscripted: with ``script``, also keep tokens without letters (digits,
            punctuation, special tokens).

    Returns:
        The mask as a numpy bool array of shape (C,).

    Raises:
        ValueError: a malformed filter, a filter that needs token strings the head lacks,
            a script no token is written in (the message lists the vocabulary's scripts),
            or an empty selection.
    """
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 1:
        raise ValueError(f"classes: expected a positive number of tokens, got {classes!r}")
    mask = np.ones(int(classes), bool)
    if ids is not None:
        keep = np.zeros(int(classes), bool)
        keep[parse_ids(ids, classes)] = True
        mask &= keep
    if regex is not None or script is not None:
        flag = "--tokens-regex" if regex is not None else "--script"
        if tokens is None:
            raise ValueError(f"{flag} needs token strings, and none were found with the head "
                             f"(expected tokenizer.json or vocab.txt next to the weights, or GGUF metadata)")
        if len(tokens) != classes:
            raise ValueError(f"{flag}: expected one token string per row ({classes}), got {len(tokens)}")
    if regex is not None:
        try:
            pattern = re.compile(regex)
        except re.error as err:
            raise ValueError(f"--tokens-regex {regex!r}: expected a valid Python regular expression ({err})") from None
        mask &= np.array([t is not None and pattern.search(t) is not None for t in tokens], bool)
    if script is not None:
        scripts = token_scripts(tokens)
        wanted = script.strip().upper()
        present = Counter(s for s in scripts if s is not None and s != "MIXED")
        if wanted not in present:
            common = ", ".join(f"{name.lower()} ({n})" for name, n in present.most_common(12))
            raise ValueError(f"--script {script!r}: no token of the vocabulary is written in it; "
                             f"expected one of the scripts present: {common or 'none'}")
        mask &= np.array([s == wanted or (keep_unscripted and s is None) for s in scripts], bool)
    if not mask.any():
        given = [f"{flag} {value!r}" for flag, value in (("--tokens", ids), ("--tokens-regex", regex),
                                                          ("--script", script)) if value is not None]
        raise ValueError(f"the token selection is empty: no token passes all of {', '.join(given)}; "
                         f"expected at least one token to check")
    return mask


def describe(mask: np.ndarray, *, ids: str | None = None, regex: str | None = None,
             script: str | None = None) -> str:
    """One line for the console: ``"checking 1234 of 49152 tokens (script LATIN)"``."""
    mask = np.asarray(mask, bool)
    filters = [f"{name} {value}" for name, value in (("ids", ids), ("regex", regex),
                                                      ("script", script and script.strip().upper()))
               if value is not None]
    suffix = f" ({', '.join(filters)})" if filters else ""
    return f"checking {int(mask.sum())} of {mask.size} tokens{suffix}"
