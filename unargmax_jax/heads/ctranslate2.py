"""CTranslate2 ``model.bin`` files (faster-whisper, converted translation and language models).

The spec format, read directly: a uint32 binary version; from version 2 the spec name and
revision; a uint32 count of variables, each a name, a uint8 rank, rank uint32 dimensions and
(from version 4) a uint8 dtype id (float32, int8, int16, int32, float16, bfloat16) with a
uint32 byte count (before: an item size and an element count), then the bytes; from version 3
a count of aliases (``decoder/projection/weight`` -> ``decoder/embeddings/weight``). Strings are
a uint16 length (counting a final NUL) and the bytes. Every size is checked against the file.

An int8 weight ``w`` comes with ``w_scale`` (one per row): the value is ``q / scale``
(CTranslate2 quantises as ``q = round(w * 127 / max|w_row|)``); an int16 weight has a single
scale. Token strings come from ``vocabulary.json`` / ``vocabulary.txt`` (or the target or
shared vocabulary of a translation model) next to the file.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import NamedTuple

import ml_dtypes
import numpy as np

from .formats import _Entry, _Format
from .names import CT2_BIAS_NAMES, CT2_VOCABULARY_FILES, CT2_WEIGHT_NAMES
from .validate import HeadError

# The DataType enum of CTranslate2's include/ctranslate2/types.h, in order.
_CT2_DTYPES = (np.dtype("<f4"), np.dtype("i1"), np.dtype("<i2"), np.dtype("<i4"), np.dtype("<f2"),
               np.dtype(ml_dtypes.bfloat16))
_CT2_VERSIONS = range(1, 7)  # the binary versions this reader knows (CTranslate2 4.x writes 6)
_MAX_ALIAS_DEPTH = 8


class _Variable(NamedTuple):
    shape: tuple
    dtype: np.dtype
    offset: int  # where its bytes start in the file


class _Cursor:
    """Reads little-endian fields from an open file, failing with a HeadError past its end."""

    def __init__(self, path: Path, handle, size: int):
        self.path, self.handle, self.size = path, handle, size

    def take(self, count: int, what: str) -> bytes:
        position = self.handle.tell()
        if count < 0 or position + count > self.size:
            raise HeadError(f"{self.path}: expected {count} bytes of {what} at offset {position}, "
                            f"got a file of {self.size} bytes (truncated, or a size field lies)")
        return self.handle.read(count)

    def unpack(self, fmt: str, what: str):
        values = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))
        return values[0] if len(values) == 1 else values

    def string(self, what: str) -> str:
        raw = self.take(self.unpack("H", f"the length of {what}"), what)
        return raw.rstrip(b"\x00").decode("utf-8", errors="replace")

    def skip(self, count: int, what: str) -> None:
        position = self.handle.tell()
        if position + count > self.size:
            raise HeadError(f"{self.path}: {what}: expected {count} bytes of data at offset {position}, "
                            f"got a file of {self.size} bytes (truncated, or a size field lies)")
        self.handle.seek(position + count)


def _variable(cursor: _Cursor, version: int) -> tuple[str, _Variable]:
    name = cursor.string("a variable name")
    rank = cursor.unpack("B", f"the rank of {name!r}")
    shape = tuple(int(v) for v in struct.unpack(f"<{rank}I", cursor.take(4 * rank, f"the shape of {name!r}")))
    if version >= 4:
        type_id, num_bytes = cursor.unpack("BI", f"the dtype of {name!r}")
        if type_id >= len(_CT2_DTYPES):
            raise HeadError(f"{cursor.path}: variable {name!r}: expected a dtype id below {len(_CT2_DTYPES)} "
                            f"(float32, int8, int16, int32, float16, bfloat16), got {type_id}")
        dtype = _CT2_DTYPES[type_id]
    else:  # an item size and an element count
        item_size, count = cursor.unpack("BI", f"the dtype of {name!r}")
        by_size = {4: _CT2_DTYPES[0], 1: _CT2_DTYPES[1], 2: _CT2_DTYPES[2]}
        if item_size not in by_size:
            raise HeadError(f"{cursor.path}: variable {name!r}: expected an item size of 1, 2 or 4, got {item_size}")
        dtype, num_bytes = by_size[item_size], count * item_size
    needed = math.prod(shape) * dtype.itemsize
    if num_bytes != needed:
        raise HeadError(f"{cursor.path}: variable {name!r}: expected {needed} bytes for shape {shape} of {dtype}, "
                        f"got a size field of {num_bytes}")
    offset = cursor.handle.tell()
    cursor.skip(num_bytes, f"variable {name!r}")
    return name, _Variable(shape, dtype, offset)


def _read_spec(path: Path) -> tuple[str, dict[str, _Variable], dict[str, str]]:
    """The spec name, the variables and the aliases of a ``model.bin``; the file must end after them."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            cursor = _Cursor(path, handle, size)
            version = cursor.unpack("I", "the binary version")
            if version not in _CT2_VERSIONS:
                raise HeadError(f"{path}: expected a CTranslate2 model.bin (binary version 1 to 6), "
                                f"got version {version}")
            spec = "(unnamed)"
            if version >= 2:
                spec = cursor.string("the spec name")
                cursor.unpack("I", "the spec revision")
            count = cursor.unpack("I", "the number of variables")
            variables = dict(_variable(cursor, version) for _ in range(count))
            aliases = {}
            if version >= 3:
                for _ in range(cursor.unpack("I", "the number of aliases")):
                    alias = cursor.string("an alias")
                    aliases[alias] = cursor.string(f"the target of alias {alias!r}")
            if handle.tell() != size:
                raise HeadError(f"{path}: expected the file to end after the aliases at offset {handle.tell()}, "
                                f"got {size - handle.tell()} more bytes (a size field lies)")
    except OSError as err:
        raise HeadError(f"{path}: unreadable ({err})") from None
    return spec, variables, aliases


class _Ctranslate2File(_Format):
    """A CTranslate2 ``model.bin``: variables memory-mapped, aliases resolved, int8/int16 dequantised."""

    noun = "variable"
    weight_names = CT2_WEIGHT_NAMES
    bias_names = CT2_BIAS_NAMES

    def __init__(self, path: Path):
        self.path = path
        self.spec, self._variables, aliases = _read_spec(path)
        self._aliases = {alias: self._target(alias, aliases) for alias in aliases}
        self.entries = {name: _Entry(v.shape, v.dtype) for name, v in self._variables.items()}
        self.entries.update({alias: self.entries[target] for alias, target in self._aliases.items()})

    def _target(self, alias: str, aliases: dict[str, str]) -> str:
        name = alias
        for _ in range(_MAX_ALIAS_DEPTH):
            name = aliases.get(name, name)
            if name in self._variables:
                return name
        raise HeadError(f"{self.path}: alias {alias!r}: expected it to name a variable, got {aliases[alias]!r}, "
                        f"which the file does not hold")

    def _raw(self, name: str) -> np.ndarray:
        variable = self._variables[self._aliases.get(name, name)]
        if not math.prod(variable.shape):
            return np.zeros(variable.shape, variable.dtype)
        return np.memmap(self.path, dtype=variable.dtype, mode="r", offset=variable.offset, shape=variable.shape)

    def read(self, name: str) -> np.ndarray:
        target = self._aliases.get(name, name)
        stored = self._raw(target)
        scale_name = f"{target}_scale"
        if stored.dtype.kind != "i" or stored.dtype.itemsize > 2 or scale_name not in self._variables:
            return np.array(stored)
        scale = np.asarray(self._raw(scale_name), np.float32)
        rows = stored.shape[0] if stored.ndim else 1
        if scale.size not in (1, rows) or not np.all(np.isfinite(scale)) or np.any(scale == 0):
            raise HeadError(f"{self.path}: variable {scale_name!r}: expected 1 or {rows} finite non-zero scales "
                            f"for {target!r} {stored.shape}, got {scale.size} values")
        scale = scale.reshape(-1, *([1] * (stored.ndim - 1))) if scale.size == rows and stored.ndim else scale.reshape(())
        return stored.astype(np.float32) / scale  # CTranslate2 stores q = round(w * scale)

    def vocabulary(self) -> tuple[list | None, str | None]:
        for name in CT2_VOCABULARY_FILES:
            path = self.path.parent / name
            if not path.is_file():
                continue
            try:
                text = path.read_text(encoding="utf-8")
                tokens = json.loads(text) if name.endswith(".json") else text.split("\n")
            except (OSError, UnicodeDecodeError, ValueError, RecursionError):
                continue
            if name.endswith(".txt") and tokens and tokens[-1] == "":
                tokens.pop()  # the final newline
            if isinstance(tokens, list) and tokens:
                return [t if isinstance(t, str) else None for t in tokens], str(path)
        return super().vocabulary()
