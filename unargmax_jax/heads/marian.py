"""Marian binary models (``model.*.bin``, as Bergamot ships them; ``.npz`` Marian files are in :mod:`.npz`).

Layout (marian ``src/common/binary.cpp``): a uint64 file version (1), a uint64 count n, n
headers of four uint64 (name length with its NUL, type, shape rank, data bytes), the names,
the shapes (int32), a uint64 padding length and the padding, then each item's bytes (padded
to 256). Types: ``0x1xx`` signed, ``0x2xx`` unsigned, ``0x4xx`` float (``xx`` the byte size),
and ``0x4101`` intgemm8 / ``0x4102`` intgemm16: the integers ``q`` followed by a float32
``m``, the value being ``q * (1/m)`` (marian's ``unquantizeWemb``). An intgemm matrix other
than an embedding is stored transposed: header shape ``[d, C]``, bytes ``C`` rows of ``d``.
Processor-specific packed types (FBGEMM, intgemm prepared for SSSE3/AVX2/AVX512) are refused.

The head: ``decoder_ff_logit_out_W`` ([d, C], an untied output layer), else the tied
``decoder_Wemb`` or ``Wemb`` ([C, d]); the bias ``decoder_ff_logit_out_b`` (1, C). Token
strings: the target vocabulary of a Marian config next to the model (``vocabs:``, the last
entry), else a single ``.spm`` / ``vocab*.yml`` / ``vocab*.json`` next to it, else
``tokenizer.json`` / ``vocab.txt``.
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import vocab
from .formats import _Entry, _Format
from .names import MARIAN_BIAS_NAME, MARIAN_WEIGHT_NAMES
from .validate import HeadError

_MARIAN_VERSION = 1
_INTGEMM = {0x4101: np.dtype("i1"), 0x4102: np.dtype("<i2")}
_PLAIN_KINDS = {0x100: "i", 0x200: "u", 0x400: "f"}
_MAX_ITEMS = 1 << 20


class _Item(NamedTuple):
    shape: tuple  # as the header says (an intgemm non-embedding matrix: the transposed shape)
    type: int
    dtype: np.dtype
    offset: int
    length: int


def _item_dtype(path: Path, name: str, kind: int) -> np.dtype:
    if kind in _INTGEMM:
        return _INTGEMM[kind]
    size, family = kind & 0xFF, _PLAIN_KINDS.get(kind & 0xFF00)
    if family is None or size not in ((2, 4, 8) if family == "f" else (1, 2, 4, 8)):
        raise HeadError(f"{path}: item {name!r}: type {kind:#x} is not a plain int/float or intgemm8/16 matrix "
                        f"(processor-specific packed layouts are not read; re-save the model with marian-conv "
                        f"--gemm-type float32 or intgemm8)")
    return np.dtype(f"<{family}{size}" if size > 1 else f"{family}1")


def _read_items(path: Path, data: bytes) -> dict[str, _Item]:
    """Parse and check the header of a Marian binary model held in ``data`` (its first bytes)."""
    size = path.stat().st_size

    def fail(what: str):
        raise HeadError(f"{path}: expected {what} (a Marian binary model), got a file of {size} bytes "
                        f"(truncated, or a size field lies)")

    if len(data) < 16:
        fail("a 16-byte header")
    version, count = struct.unpack_from("<QQ", data, 0)
    if version != _MARIAN_VERSION:
        raise HeadError(f"{path}: expected a Marian binary model (file version 1), got version {version}")
    if count > _MAX_ITEMS or 16 + 32 * count > len(data):
        fail(f"{count} item headers")
    headers = [struct.unpack_from("<QQQQ", data, 16 + 32 * i) for i in range(count)]
    position = 16 + 32 * count
    names = []
    for name_length, *_ in headers:
        if position + name_length > len(data):
            fail("the item names")
        names.append(data[position:position + name_length].rstrip(b"\x00").decode("utf-8", errors="replace"))
        position += name_length
    shapes = []
    for _, _, rank, _ in headers:
        if rank > 8 or position + 4 * rank > len(data):
            fail("the item shapes")
        shapes.append(struct.unpack_from(f"<{rank}i", data, position))
        position += 4 * rank
    if position + 8 > len(data):
        fail("the padding length")
    position += 8 + struct.unpack_from("<Q", data, position)[0]
    items = {}
    for name, (_, kind, _, length), shape in zip(names, headers, shapes):
        if position + length > size or any(v < 0 for v in shape):
            fail(f"the bytes of item {name!r} at offset {position}")
        items[name] = _checked_item(path, name, _Item(tuple(shape), kind, _item_dtype(path, name, kind), position,
                                                      length))
        position += length
    return items


def _checked_item(path: Path, name: str, item: _Item) -> _Item:
    needed = math.prod(item.shape) * item.dtype.itemsize + (4 if item.type in _INTGEMM else 0)
    if item.length < needed:
        raise HeadError(f"{path}: item {name!r}: expected at least {needed} bytes for shape {item.shape} "
                        f"({'intgemm ' if item.type in _INTGEMM else ''}{item.dtype}), got {item.length}")
    return item


class _MarianBinFile(_Format):
    """A Marian binary model: items memory-mapped, intgemm matrices dequantised as marian does."""

    noun = "item"
    weight_names = MARIAN_WEIGHT_NAMES
    bias_names = {name: (MARIAN_BIAS_NAME,) for name in MARIAN_WEIGHT_NAMES}
    transposed_names = ("decoder_ff_logit_out_W",)  # [d, C]; a bias of length C tells the way round

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as handle:
                head = handle.read(1 << 24)  # the header of a model with thousands of items fits
            self._items = _read_items(path, head)
        except OSError as err:
            raise HeadError(f"{path}: unreadable ({err})") from None
        self.entries = {name: _Entry(item.shape, np.dtype("<f4") if item.type in _INTGEMM else item.dtype)
                        for name, item in self._items.items() if not name.startswith("special:")}

    def read(self, name: str) -> np.ndarray:
        item = self._items[name]
        count = math.prod(item.shape)
        if not count:
            return np.zeros(item.shape, item.dtype)
        stored = np.memmap(self.path, dtype=item.dtype, mode="r", offset=item.offset, shape=(count,))
        if item.type not in _INTGEMM:
            return np.array(stored).reshape(item.shape)
        (multiplier,) = struct.unpack("<f", np.memmap(self.path, np.uint8, "r", item.offset + count
                                                      * item.dtype.itemsize, (4,)).tobytes())
        if not math.isfinite(multiplier) or multiplier == 0:
            raise HeadError(f"{self.path}: item {name!r}: expected a finite non-zero intgemm quantisation "
                            f"multiplier after its {count} values, got {multiplier}")
        values = stored.astype(np.float32) * np.float32(1 / np.float32(multiplier))
        if "Wemb" in name or len(item.shape) != 2:
            return values.reshape(item.shape)
        return values.reshape(item.shape[1], item.shape[0]).T  # stored transposed: back to the header's [d, C]

    def vocabulary(self) -> tuple[list | None, str | None]:
        for candidate in _vocabulary_files(self.path):
            tokens = vocab.read_vocabulary_file(candidate)
            if tokens:
                return tokens, str(candidate)
        return super().vocabulary()


_VOCABS_LIST = re.compile(r"^vocabs:\s*\n((?:[ \t]*-[ \t]*.+\n?)+)", re.MULTILINE)


def _vocabulary_files(model: Path) -> list[Path]:
    """The target vocabulary a Marian config next to ``model`` names, else the single vocabulary file there."""
    directory = model.parent
    try:
        configs = sorted(p for p in directory.iterdir() if p.suffix in (".yml", ".yaml") and "vocab" not in p.name)
        for config in configs:
            text = config.read_text(encoding="utf-8", errors="replace")
            found = _VOCABS_LIST.search(text)
            if found and model.name in text:
                last = found.group(1).strip().splitlines()[-1].strip().lstrip("-").strip().strip("'\"")
                return [directory / last]
        found = sorted(p for p in directory.iterdir() if p.suffix == ".spm"
                       or (p.name.startswith("vocab") and p.suffix in (".yml", ".yaml", ".json")))
    except OSError:
        return []
    return found if len(found) == 1 else []
