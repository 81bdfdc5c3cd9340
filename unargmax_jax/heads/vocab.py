"""Token strings for a head's rows, from the tokenizer files found next to the weights.

``tokenizer.json`` (Hugging Face tokenizers: ``model.vocab`` maps piece -> id for
BPE/WordPiece/WordLevel, or lists ``[piece, score]`` pairs in id order for Unigram; the
``added_tokens`` list overrides by id) is preferred, else ``vocab.txt`` (line i is token
i). GGUF files carry theirs in the ``tokenizer.ggml.tokens`` metadata. Strings are kept
as stored (``Ġ``, ``▁`` and ``##`` markers included). Token strings are a convenience for
reports: a damaged or odd tokenizer file yields no strings, never a failed check.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


_MAX_ID = 1 << 24  # no real vocabulary is larger; a damaged file's absurd id must not allocate gigabytes


def _dense(pieces: dict[int, str]) -> list[str | None]:
    """Id -> string map as a list; ids the map does not cover are None."""
    pieces = {i: piece for i, piece in pieces.items() if i < _MAX_ID}
    if not pieces:
        return []
    out: list[str | None] = [None] * (max(pieces) + 1)
    for i, piece in pieces.items():
        out[i] = piece
    return out


def _from_tokenizer_json(path: Path) -> list[str | None] | None:
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = data.get("model", {}).get("vocab") if isinstance(data, dict) else None
    pieces: dict[int, str] = {}
    if isinstance(vocab, dict):
        pieces = {int(i): str(piece) for piece, i in vocab.items() if isinstance(i, int) and i >= 0}
    elif isinstance(vocab, list):
        pieces = {n: str(entry[0] if isinstance(entry, list) else entry) for n, entry in enumerate(vocab)}
    for added in data.get("added_tokens", []) or []:
        if isinstance(added, dict) and isinstance(added.get("id"), int) and added["id"] >= 0:
            pieces[added["id"]] = str(added.get("content", ""))
    return _dense(pieces) if pieces else None


def _from_vocab_txt(path: Path) -> list[str | None] | None:
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline
    return [line.rstrip("\r") for line in lines] or None


def read_vocabulary(directory: Path) -> tuple[list[str | None] | None, str | None]:
    """``(tokens, source file)`` from the tokenizer files in ``directory``, or ``(None, None)``."""
    readers = {"tokenizer.json": _from_tokenizer_json, "vocab.txt": _from_vocab_txt}
    for name in TOKENIZER_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            tokens = readers[name](path)
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError, AttributeError):
            tokens = None  # damaged: try the next file
        if tokens:
            return tokens, str(path)
    return None, None


def gguf_tokens(fields: dict) -> list[str] | None:
    """The ``tokenizer.ggml.tokens`` strings of a GGUF file's metadata (key -> value), or None."""
    tokens = fields.get("tokenizer.ggml.tokens")
    return tokens if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens) else None


def fit(tokens: list[str | None] | None, classes: int) -> tuple[str | None, ...] | None:
    """One entry per row: a shorter vocabulary leaves None for the missing ids (padding rows)."""
    if not tokens:
        return None
    tokens = list(tokens[:classes]) + [None] * max(0, classes - len(tokens))
    return tuple(tokens)


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[position]  # IndexError past the end: a damaged file
        value |= (byte & 0x7F) << shift
        position, shift = position + 1, shift + 7
        if byte < 0x80 or shift > 63:
            return value, position


def _protobuf_fields(data: bytes):
    """``(field number, wire type, value)`` of a protobuf message; length-delimited values as bytes."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 1:
            value, position = data[position:position + 8], position + 8
        elif wire == 2:
            length, position = _varint(data, position)
            value, position = data[position:position + length], position + length
        elif wire == 5:
            value, position = data[position:position + 4], position + 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
        yield field, wire, value


def _from_spm(path: Path) -> list[str | None] | None:
    """A SentencePiece model: ``ModelProto.pieces`` (field 1), each ``SentencePiece.piece`` (field 1)."""
    tokens = []
    for field, wire, value in _protobuf_fields(path.read_bytes()):
        if field == 1 and wire == 2:
            piece = next((v for f, w, v in _protobuf_fields(value) if f == 1 and w == 2), b"")
            tokens.append(piece.decode("utf-8", errors="replace"))
    return tokens or None


_YAML_ENTRY = re.compile(r"^(?P<key>.+?)\s*:\s*(?P<id>\d+)\s*$")


def _yaml_key(key: str) -> str:
    if len(key) >= 2 and key[0] == key[-1] == '"':
        return json.loads(key)
    if len(key) >= 2 and key[0] == key[-1] == "'":
        return key[1:-1].replace("''", "'")
    return key


def _from_marian_yml(path: Path) -> list[str | None] | None:
    """A Marian vocabulary ``.yml``: one ``token: id`` per line (tokens quoted when YAML needs it)."""
    pieces = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _YAML_ENTRY.match(line)
        if match:
            pieces[int(match["id"])] = _yaml_key(match["key"])
    return _dense(pieces) or None


def _from_token_map_json(path: Path) -> list[str | None] | None:
    """A ``{"token": id}`` JSON vocabulary (Marian, OpenNMT), or a JSON list of tokens in id order."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, list):
        return [t if isinstance(t, str) else None for t in data] or None
    if isinstance(data, dict):
        return _dense({i: str(t) for t, i in data.items() if isinstance(i, int) and i >= 0}) or None
    return None


def read_vocabulary_file(path: Path) -> list[str | None] | None:
    """Token strings from one vocabulary file (``.spm``, Marian ``.yml``, ``.json``, ``.txt``), or None."""
    readers = {".spm": _from_spm, ".yml": _from_marian_yml, ".yaml": _from_marian_yml, ".json": _from_token_map_json,
               ".txt": _from_vocab_txt}
    reader = readers.get(path.suffix.lower())
    if reader is None or not path.is_file():
        return None
    try:
        return reader(path)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
        return None  # damaged: no strings, never a failed check
