"""Writers of PyTorch zip checkpoints, CTranslate2 ``model.bin`` and Marian binary models, for the tests.

Written from the formats' descriptions with the standard library only (no torch, ctranslate2
or marian): the pickle is assembled opcode by opcode (protocol 2, as ``torch.save`` writes it),
so the tests can also build hostile pickles that no pickler would emit.
"""

from __future__ import annotations

import io
import math
import struct
import zipfile
from typing import NamedTuple

import ml_dtypes
import numpy as np

# --- pickle opcodes (protocol 2) ---------------------------------------------------------

PROTO, STOP, MARK, TUPLE, REDUCE, SETITEMS, EMPTY_DICT, EMPTY_TUPLE = b"\x80\x02", b".", b"(", b"t", b"R", b"u", b"}", b")"
NEWFALSE, BINPERSID = b"\x89", b"Q"

_STORAGE_NAMES = {"float32": "FloatStorage", "float16": "HalfStorage", "float64": "DoubleStorage",
                  "bfloat16": "BFloat16Storage", "int64": "LongStorage", "int32": "IntStorage", "int8": "CharStorage"}


def p_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def p_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def p_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def p_tuple(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


class Tensor(NamedTuple):
    """A tensor over storage ``key``: ``shape`` elements from ``offset`` with ``stride``."""

    key: str
    shape: tuple
    stride: tuple
    offset: int = 0
    parameter: bool = False  # wrap in torch._utils._rebuild_parameter


def p_tensor(tensor: Tensor, storages: dict[str, np.ndarray]) -> bytes:
    data = storages[tensor.key]
    pid = p_tuple(p_str("storage"), p_global("torch", _STORAGE_NAMES[data.dtype.name]), p_str(tensor.key),
                  p_str("cpu"), p_int(data.size))
    args = p_tuple(pid + BINPERSID, p_int(tensor.offset), p_tuple(*map(p_int, tensor.shape)),
                   p_tuple(*map(p_int, tensor.stride)), NEWFALSE,
                   p_global("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE)
    out = p_global("torch._utils", "_rebuild_tensor_v2") + args + REDUCE
    if tensor.parameter:
        out = p_global("torch._utils", "_rebuild_parameter") + p_tuple(out, NEWFALSE,
                                                                         p_global("collections", "OrderedDict")
                                                                         + EMPTY_TUPLE + REDUCE) + REDUCE
    return out


def p_dict(tree: dict, storages: dict[str, np.ndarray], ordered: bool = True) -> bytes:
    """A (nested) dict of Tensors, other dicts, str, int and float values."""
    items = []
    for key, value in tree.items():
        if isinstance(value, Tensor):
            encoded = p_tensor(value, storages)
        elif isinstance(value, dict):
            encoded = p_dict(value, storages, ordered)
        elif isinstance(value, str):
            encoded = p_str(value)
        elif isinstance(value, int):
            encoded = p_int(value)
        else:
            encoded = b"G" + struct.pack(">d", float(value))
        items.append(p_str(key) + encoded)
    start = p_global("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE if ordered else EMPTY_DICT
    return start + MARK + b"".join(items) + SETITEMS


def contiguous(key: str, array: np.ndarray) -> Tensor:
    shape = array.shape
    stride = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))
    return Tensor(key, shape, stride)


def torch_zip(pickled: bytes, storages: dict[str, np.ndarray], *, root: str = "archive",
              compress: int = zipfile.ZIP_STORED) -> bytes:
    """The zip ``torch.save`` writes: ``root/data.pkl``, ``root/data/<key>``, ``root/version``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compress) as archive:
        archive.writestr(f"{root}/data.pkl", pickled)
        archive.writestr(f"{root}/byteorder", "little")
        for key, data in storages.items():
            archive.writestr(f"{root}/data/{key}", np.ascontiguousarray(data).tobytes())
        archive.writestr(f"{root}/version", "3\n")
    return buffer.getvalue()


def state_dict_file(tree: dict, storages: dict[str, np.ndarray], **kwargs) -> bytes:
    return torch_zip(PROTO + p_dict(tree, storages) + STOP, storages, **kwargs)


# --- CTranslate2 -------------------------------------------------------------------------

_CT2_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4, "bfloat16": 5}


def _ct2_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<H", len(raw) + 1) + raw + b"\x00"


def ct2_model(variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None, *, version: int = 6,
              spec: str = "TransformerDecoderSpec", size_lie: int = 0) -> bytes:
    """A ``model.bin`` of ``version``; ``size_lie`` is added to the first variable's byte count."""
    out = [struct.pack("<I", version)]
    if version >= 2:
        out += [_ct2_string(spec), struct.pack("<I", 1)]
    out.append(struct.pack("<I", len(variables)))
    for n, (name, value) in enumerate(sorted(variables.items())):
        value = np.asarray(value)
        out += [_ct2_string(name), struct.pack("<B", value.ndim), struct.pack(f"<{value.ndim}I", *value.shape)]
        lie = size_lie if n == 0 else 0
        if version >= 4:
            out.append(struct.pack("<BI", _CT2_IDS[value.dtype.name], value.nbytes + lie))
        else:
            out.append(struct.pack("<BI", value.dtype.itemsize, value.size + lie))
        out.append(value.astype(value.dtype.newbyteorder("<")).tobytes())
    if version >= 3:
        out.append(struct.pack("<I", len(aliases or {})))
        for alias, target in (aliases or {}).items():
            out += [_ct2_string(alias), _ct2_string(target)]
    return b"".join(out)


# --- Marian ------------------------------------------------------------------------------

FLOAT32, INT8, INTGEMM8 = 0x404, 0x101, 0x4101


class Item(NamedTuple):
    type: int
    shape: tuple
    data: bytes  # unpadded


def marian_float(array: np.ndarray) -> Item:
    return Item(FLOAT32, array.shape, np.asarray(array, "<f4").tobytes())


def marian_intgemm8(q: np.ndarray, multiplier: float, header_shape: tuple | None = None) -> Item:
    """int8 values ``q`` (as stored, row-major) then the float32 multiplier; ``header_shape`` defaults to q's."""
    return Item(INTGEMM8, header_shape or q.shape, q.astype(np.int8).tobytes() + struct.pack("<f", multiplier))


def marian_model(items: dict[str, Item]) -> bytes:
    """Marian's binary layout: version, count, headers, names, shapes, padding to 256, padded data."""
    padded = [item.data + b"\x00" * (-len(item.data) % 256) for item in items.values()]
    out = [struct.pack("<QQ", 1, len(items))]
    for (name, item), data in zip(items.items(), padded):
        out.append(struct.pack("<QQQQ", len(name.encode()) + 1, item.type, len(item.shape), len(data)))
    out += [name.encode() + b"\x00" for name in items]
    out += [struct.pack(f"<{len(item.shape)}i", *item.shape) for item in items.values()]
    position = sum(map(len, out))
    padding = ((position + 8) // 256 + 1) * 256 - position - 8
    out += [struct.pack("<Q", padding), b"\x00" * padding] + padded
    return b"".join(out)


def spm_model(pieces: list[str]) -> bytes:
    """A SentencePiece ModelProto holding only ``pieces`` (field 1: piece, field 2: score)."""

    def field(number: int, payload: bytes) -> bytes:
        length, encoded = len(payload), b""
        while True:
            encoded += bytes([(length & 0x7F) | (0x80 if length > 0x7F else 0)])
            length >>= 7
            if not length:
                break
        return bytes([number << 3 | 2]) + encoded + payload

    return b"".join(field(1, field(1, p.encode()) + b"\x15" + struct.pack("<f", -float(i)))
                    for i, p in enumerate(pieces))


BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
