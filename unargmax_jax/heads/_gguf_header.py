"""A GGUF file's metadata and tensor table, read in one pass without a view per value.

``gguf.GGUFReader`` builds a NumPy view for every metadata value, every token and merge
string included: 2.4 s of a SmolLM2 load that itself needs only the tensor table, a few
scalars and the token strings. This reads the same layout (GGUF v2/v3: magic, version,
tensor and key counts, the key/value pairs, the tensor infos, then the aligned data) with
``struct`` and hands the tensors out as the same memory-mapped arrays ``GGUFReader``
does: typed for F16/F32/F64 and the integer types, raw bytes per row otherwise (what
``gguf.quants.dequantize`` takes). Anything malformed raises ``ValueError``.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# GGUF value types: code -> struct format of one item (8 = string, 9 = array).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# Tensor types whose data GGUFReader hands out typed (ggml type code -> NumPy type).
_TYPED = {0: np.float32, 1: np.float16, 28: np.float64, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64}


class GgufTensor(NamedTuple):
    """One tensor: ``shape`` as the file lists it (fastest dimension first), its ggml type
    (a ``gguf.GGMLQuantizationType``) and its memory-mapped data."""

    name: str
    shape: tuple[int, ...]
    tensor_type: object
    data: np.ndarray


class GgufHeader(NamedTuple):
    """``fields``: key -> value (int/float/bool/str, or a list/array of them); ``tensors`` in file order."""

    fields: dict
    tensors: list[GgufTensor]


class _Cursor:
    """Reads little- or big-endian values from a buffer, refusing to run past its end."""

    def __init__(self, buffer, order: str):
        self.buffer, self.order, self.offset = buffer, order, 0

    def take(self, fmt: str):
        layout = struct.Struct(self.order + fmt)
        if self.offset + layout.size > len(self.buffer):
            raise ValueError(f"truncated at byte {self.offset}")
        values = layout.unpack_from(self.buffer, self.offset)
        self.offset += layout.size
        return values[0] if len(values) == 1 else values

    def count(self, item_bytes: int) -> int:
        """A u64 element count, refused when that many items cannot fit in what is left."""
        n = self.take("Q")
        if n * item_bytes > len(self.buffer) - self.offset:
            raise ValueError(f"a count of {n} at byte {self.offset - 8} runs past the end of the file")
        return n

    def string(self) -> str:
        size = self.count(1)
        start, self.offset = self.offset, self.offset + size
        return bytes(self.buffer[start:self.offset]).decode("utf-8", errors="replace")

    def value(self, kind: int):
        if kind == _STRING:
            return self.string()
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind != _ARRAY:
            raise ValueError(f"unknown GGUF value type {kind}")
        item = self.take("I")
        if item in _SCALARS:  # a typed array: one view, not one read per item
            dtype = np.dtype(_SCALARS[item]).newbyteorder(self.order)
            n = self.count(dtype.itemsize)
            start, self.offset = self.offset, self.offset + n * dtype.itemsize
            return np.frombuffer(self.buffer, dtype, n, start)
        if item == _STRING:
            return [self.string() for _ in range(self.count(8))]
        return [self.value(item) for _ in range(self.count(12))]


def read_header(path: str | Path) -> GgufHeader:
    """The metadata and tensors of a GGUF file (memory-mapped; nothing is copied)."""
    import gguf  # the ggml type table and byte shapes of quantised rows

    data = np.memmap(path, mode="r")
    buffer = memoryview(data)
    if bytes(buffer[:4]) != MAGIC:
        raise ValueError("GGUF magic invalid")
    order = "<"
    cursor = _Cursor(buffer, order)
    cursor.offset = 4
    version = cursor.take("I")
    if version & 0xFFFF == 0:  # written on a machine of the other byte order
        cursor.order = order = ">"
        version = struct.unpack(">I", struct.pack("<I", version))[0]
    if version not in VERSIONS:
        raise ValueError(f"GGUF version {version} (expected one of {VERSIONS})")
    tensor_count, kv_count = cursor.take("QQ")
    fields = {}
    for _ in range(kv_count):
        key = cursor.string()
        fields[key] = cursor.value(cursor.take("I"))
    infos = []
    for _ in range(tensor_count):
        name = cursor.string()
        rank = cursor.take("I")
        if rank > 8:
            raise ValueError(f"tensor {name!r} has {rank} dimensions")
        shape = cursor.take("Q" * rank) if rank else ()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        infos.append((name, shape, cursor.take("I"), cursor.take("Q")))
    alignment = fields.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"invalid general.alignment {alignment!r} (expected a power of two)")
    start = -(-cursor.offset // alignment) * alignment
    tensors, seen = [], set()
    for name, shape, code, offset in infos:
        if name in seen:
            raise ValueError(f"duplicated tensor {name!r}")
        seen.add(name)
        kind = gguf.GGMLQuantizationType(code)
        rows_first = tuple(reversed(shape))
        elements = int(np.prod(shape, dtype=np.int64)) if shape else 1
        block, size = gguf.GGML_QUANT_SIZES[kind]
        if code in _TYPED:
            dtype, count, byte_shape = np.dtype(_TYPED[code]).newbyteorder(order), elements, rows_first
        else:
            dtype, count = np.dtype(np.uint8), elements * size // block
            byte_shape = gguf.quants.quant_shape_to_byte_shape(rows_first or (1,), kind)
        where = start + offset
        if where + count * dtype.itemsize > len(data):
            raise ValueError(f"tensor {name!r} runs past the end of the file")
        tensors.append(GgufTensor(name, shape, kind, np.ndarray(byte_shape, dtype, data, where)))
    return GgufHeader(fields, tensors)
