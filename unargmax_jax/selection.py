"""Choosing which tokens to check: id ranges, a regular expression, a writing script.

Translation models carry vocabulary of languages they never output, so, like the
published tool, a check can be limited to tokens written in one Unicode script. A
token's script is that of its letters after tokenizer markers are removed (``Ġ``, ``▁``,
``##``, ``Ċ``); the script of a letter is the first word of its Unicode name (LATIN,
CYRILLIC, GREEK, ARABIC, ...; CJK ideographs are HAN). Tokens without letters (digits,
punctuation, byte tokens ``<0x0A>``, special tokens ``<s>``/``[CLS]``) have no script.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

import numpy as np

_MARKERS = ("Ġ", "▁", "##", "Ċ")  # leading space / continuation / newline markers of common tokenizers
_SPECIAL = re.compile(r"^(<[^<>]*>|\[[^\[\]]*\])$")  # <s>, <|endoftext|>, <0x0A>, [CLS]
_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_ids(spec: str, classes: int) -> np.ndarray:
    """Ids from ``"0-99,1234"``: comma-separated ids and inclusive ranges, sorted and unique."""
    parts = spec.split(",")
    chosen: list[np.ndarray] = []
    for part in parts:
        match = _RANGE.match(part)
        if not match:
            raise ValueError(f"--tokens {spec!r}: expected ids and ranges like 0-99,1234, got {part.strip()!r}")
        start = int(match.group(1))
        stop = int(match.group(2)) if match.group(2) is not None else start
        if stop < start:
            raise ValueError(f"--tokens {spec!r}: range {start}-{stop} ends before it starts")
        if stop >= classes:
            raise ValueError(f"--tokens {spec!r}: id {stop} is out of range; the head has ids 0..{classes - 1}")
        chosen.append(np.arange(start, stop + 1, dtype=np.int64))
    return np.unique(np.concatenate(chosen))


def strip_markers(token: str) -> str:
    """The token's text without the leading markers tokenizers add."""
    for marker in _MARKERS:
        if token.startswith(marker):
            return token[len(marker):]
    return token


def script_of(char: str) -> str | None:
    """The script of a letter (first word of its Unicode name; CJK -> HAN), None for non-letters."""
    if not unicodedata.category(char).startswith("L"):
        return None
    name = unicodedata.name(char, "")
    if not name:
        return None
    words = name.split()
    if words[0] in ("FULLWIDTH", "HALFWIDTH") and len(words) > 1:
        words = words[1:]
    if words[0] == "CJK":
        return "HAN"
    return words[0]


def token_script(token: str | None) -> str | None:
    """The script shared by the token's letters; ``"MIXED"`` if they differ; None without letters."""
    if token is None or _SPECIAL.match(token.strip()):
        return None
    scripts = {script for script in map(script_of, strip_markers(token)) if script is not None}
    if not scripts:
        return None
    return scripts.pop() if len(scripts) == 1 else "MIXED"


def select(classes: int, tokens: Sequence[str | None] | None, *, ids: str | None = None,
           regex: str | None = None, script: str | None = None, keep_unscripted: bool = False) -> np.ndarray:
    """A (classes,) bool mask: the tokens passing every given filter (all when none is given).

    Args:
        classes: the head's number of tokens C.
        tokens: the token strings (needed for ``regex`` and ``script``).
        ids: ``"0-99,1234"`` (see :func:`parse_ids`).
        regex: keep tokens whose string matches (``re.search``).
        script: keep tokens written in this script (case-insensitive, e.g. ``latin``).
        keep_unscripted: with ``script``, also keep tokens without letters.

    Raises:
        ValueError: a malformed filter, a filter that needs token strings the head lacks,
            an unknown script (the message lists the vocabulary's scripts), or an empty
            selection.
    """
    mask = np.ones(classes, bool)
    if ids is not None:
        keep = np.zeros(classes, bool)
        keep[parse_ids(ids, classes)] = True
        mask &= keep
    if (regex is not None or script is not None) and tokens is None:
        flag = "--tokens-regex" if regex is not None else "--script"
        raise ValueError(f"{flag} needs token strings, and none were found with the head "
                         f"(expected tokenizer.json or vocab.txt next to the weights, or GGUF metadata)")
    if regex is not None:
        try:
            pattern = re.compile(regex)
        except re.error as err:
            raise ValueError(f"--tokens-regex {regex!r}: not a valid regular expression ({err})") from None
        mask &= np.array([t is not None and pattern.search(t) is not None for t in tokens[:classes]], bool)
    if script is not None:
        scripts = [token_script(t) for t in tokens[:classes]]
        wanted = script.strip().upper()
        present = Counter(s for s in scripts if s is not None and s != "MIXED")
        if wanted not in present:
            common = ", ".join(f"{name.lower()} ({n})" for name, n in present.most_common(12))
            raise ValueError(f"--script {script!r}: no token of the vocabulary is written in it; "
                             f"scripts present: {common or 'none'}")
        mask &= np.array([s == wanted or (keep_unscripted and s is None) for s in scripts], bool)
    if not mask.any():
        raise ValueError("the token selection is empty: no token passes all of --tokens, --tokens-regex and --script")
    return mask


def describe(mask: np.ndarray) -> str:
    """``"checking 1234 of 49152 tokens"``."""
    return f"checking {int(mask.sum())} of {mask.size} tokens"
