r"""GPT-2 byte-level BPE from the GGUF metadata (``tokenizer.ggml.tokens`` and ``.merges``), stdlib only.

SmolLM2's Hugging Face tokenizer pre-tokenizes with ``Digits(individual_digits=True)``
then GPT-2's ``ByteLevel`` regex (llama.cpp calls it the ``smollm`` pre-tokenizer), maps
every byte to a printable character (GPT-2's ``bytes_to_unicode``) and applies the merges
in rank order inside each piece. Control tokens (``tokenizer.ggml.token_type == 3``, e.g.
``<|im_start|>``) are matched literally before pre-tokenizing.

GPT-2's regex uses ``\p{L}`` and ``\p{N}``, which the stdlib ``re`` lacks; here letters are
``[^\W\d_]`` and numbers ``\d`` (the same classes for ordinary text; digits are isolated
first anyway). Decoding never depends on this: ``decode(encode(s)) == s`` for any text.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .gguf_weights import Vocabulary

CONTROL = 3  # tokenizer.ggml.token_type of special (control) tokens

# GPT-2's pre-tokenizer pattern with stdlib classes; digits never reach it (split first).
_PIECE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")
_DIGIT = re.compile(r"(\d)")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (printable Latin-1 bytes map to themselves)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return chars


class Tokenizer:
    """Byte-level BPE encoder/decoder over a GGUF vocabulary."""

    def __init__(self, vocabulary: Vocabulary):
        self.tokens = vocabulary.tokens
        self.ids = {token: i for i, token in enumerate(self.tokens)}
        self.ranks = {}
        for rank, merge in enumerate(vocabulary.merges):
            left, sep, right = merge.partition(" ")
            if not sep:
                raise ValueError(f"tokenizer.ggml.merges[{rank}]: expected 'left right', got {merge!r}")
            self.ranks[(left, right)] = rank
        self.byte_chars = bytes_to_unicode()
        self.char_bytes = {c: b for b, c in self.byte_chars.items()}
        self.special = {self.tokens[i]: i for i in range(len(self.tokens)) if vocabulary.token_types[i] == CONTROL}
        # Longest first, so a special token that contains another is matched whole.
        names = sorted(self.special, key=len, reverse=True)
        self._special = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None
        self.bos, self.eos = vocabulary.bos, vocabulary.eos
        self._bpe = lru_cache(maxsize=65536)(self._merge)

    def _merge(self, piece: str) -> tuple[int, ...]:
        """BPE on one pre-tokenized piece (already mapped to byte characters): lowest rank first."""
        parts = list(piece)
        while len(parts) > 1:
            ranked = [(self.ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            ranked = [(r, i) for r, i in ranked if r is not None]
            if not ranked:
                break
            _, i = min(ranked)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        try:
            return tuple(self.ids[p] for p in parts)
        except KeyError as err:
            raise ValueError(f"BPE piece {err.args[0]!r} is not in tokenizer.ggml.tokens") from None

    def _encode_text(self, text: str) -> list[int]:
        out = []
        for chunk in _DIGIT.split(text):
            for piece in _PIECE.findall(chunk):
                out.extend(self._bpe("".join(self.byte_chars[b] for b in piece.encode("utf-8"))))
        return out

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of ``text``; with ``special``, control-token strings become their ids."""
        if not special or self._special is None:
            return self._encode_text(text)
        out = []
        for i, part in enumerate(self._special.split(text)):
            out.extend([self.special[part]] if i % 2 else self._encode_text(part))
        return out

    def decode(self, ids) -> str:
        """Text of ``ids`` (bytes that are not valid UTF-8 become U+FFFD)."""
        chars = "".join(self.tokens[int(i)] for i in ids)
        return bytes(self.char_bytes[c] for c in chars).decode("utf-8", errors="replace")

    def chat(self, user: str) -> list[int]:
        """SmolLM2-Instruct's prompt for one user turn, ready for the assistant's first token."""
        return self.encode(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
