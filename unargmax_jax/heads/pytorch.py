"""PyTorch checkpoints (``pytorch_model.bin``, ``.pt``, ``.pth``; the zip format of torch >= 1.6), without torch.

A zip checkpoint holds ``<root>/data.pkl`` (the pickled state dict) and one ``<root>/data/<key>``
entry per storage. The pickle is walked by a restricted unpickler whose ``find_class`` knows only
what a state dict uses (``torch._utils._rebuild_tensor_v2`` and friends, ``torch.*Storage`` types,
``collections.OrderedDict``, torch dtypes) and maps each to a stand-in of this module: nothing
from torch, and no other global, is ever looked up or called. Any other global is refused with
its name. Storages are read from the zip's ``data/`` entries (memory-mapped when stored
uncompressed, as torch writes them). Nested dicts are flattened with ``.``-joined keys
(``{"decoder": {"out.weight": ...}}`` -> ``decoder.out.weight``).

Legacy (non-zip) torch files are refused with the conversion advice.
"""

from __future__ import annotations

import collections
import io
import lzma
import math
import pickle
import struct
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import ml_dtypes
import numpy as np

from .formats import _Entry, _Format
from .names import (PYTORCH_HEAD_NAMES, PYTORCH_WRAPPERS, SAFETENSORS_BIAS_NAMES, SAFETENSORS_OTHER_BIAS_NAMES,
                    SAFETENSORS_WEIGHT_NAMES)
from .validate import HeadError

# torch storage type -> element dtype (little-endian unless the archive's byteorder says big).
_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?",
}
_TORCH_DTYPES = {"float32": "<f4", "float": "<f4", "float64": "<f8", "double": "<f8", "float16": "<f2",
                 "half": "<f2", "bfloat16": ml_dtypes.bfloat16, "int64": "<i8", "long": "<i8", "int32": "<i4",
                 "int": "<i4", "int16": "<i2", "short": "<i2", "int8": "i1", "uint8": "u1", "bool": "?"}
_MAX_DEPTH = 16  # nesting of dicts in a state dict; deeper is not a checkpoint
_MAX_PICKLE_BYTES = 1 << 28  # a state dict's pickle is a few MB; a larger one (a zip bomb) is not read
_LEGACY_ADVICE = ("re-save it in the zip format (torch >= 1.6: torch.save(torch.load(path), new_path)) "
                  "or as safetensors (safetensors.torch.save_file(torch.load(path), 'model.safetensors'))")
# What a damaged pickle or zip makes the standard library raise.
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                  MemoryError, RecursionError, OverflowError, struct.error, UnicodeDecodeError, ImportError)
# What a damaged zip member makes zipfile (and its decompressors) raise.
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, ValueError, zlib.error,
               lzma.LZMAError)


class _StorageType(NamedTuple):
    """Stands in for ``torch.FloatStorage`` and the like: only its element dtype matters."""

    dtype: np.dtype


class _TorchDtype(NamedTuple):
    """Stands in for ``torch.float32`` and the like."""

    dtype: np.dtype


class _Storage(NamedTuple):
    """A storage named by the pickle's persistent id: ``data/<key>``, ``numel`` elements of ``dtype``."""

    key: str
    dtype: np.dtype
    numel: int


class _TensorRef(NamedTuple):
    """A tensor: ``shape`` elements of ``storage`` from ``offset`` with ``stride`` (in elements)."""

    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple


class _Refused(Exception):
    """A global outside the allow-list, or a persistent id that is not a storage."""


def _ints(values, what: str) -> tuple:
    if not isinstance(values, (tuple, list)) or not all(type(v) is int and v >= 0 for v in values):
        raise _Refused(f"expected the tensor's {what} as non-negative integers, got {str(values)[:60]}")
    return tuple(values)


def _rebuild_tensor(storage, offset, size, stride, *_ignored) -> _TensorRef:
    """``torch._utils._rebuild_tensor[_v2](storage, offset, size, stride, ...)``: record, read later."""
    if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0:
        raise _Refused(f"expected a storage and an offset in a tensor, got {type(storage).__name__}, {offset!r}")
    shape, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(stride):
        raise _Refused(f"expected as many strides as dimensions, got size {shape} and stride {stride}")
    return _TensorRef(storage, offset, shape, stride)


def _rebuild_parameter(data, *_ignored):
    """``torch._utils._rebuild_parameter[_with_state](data, requires_grad, hooks[, state])``: the data."""
    return data


class _Call:
    """What ``find_class`` hands the pickle for an allowed function: a fresh, read-only wrapper.

    The pickle's BUILD opcode sets attributes on whatever it names; a wrapper that refuses them
    keeps a hostile file from changing ``collections.OrderedDict`` or this module's functions.
    """

    __slots__ = ("_function",)

    def __init__(self, function):
        object.__setattr__(self, "_function", function)

    def __setattr__(self, name, value):
        raise AttributeError(f"a state dict does not set attributes on {self._function.__name__}")

    def __call__(self, *args):
        return self._function(*args)


def _rebuild_from_type(func, _new_type, args, _state=None):
    """``torch._tensor._rebuild_from_type_v2(func, type, args, state)``: ``func(*args)``, func one of ours."""
    if not (isinstance(func, _Call) and func._function in (_rebuild_tensor, _rebuild_parameter)
            and isinstance(args, tuple)):
        raise _Refused("expected _rebuild_from_type_v2 to rebuild a tensor")
    return func(*args)


def _marker(name: str):
    return name  # a class such as torch.nn.parameter.Parameter, named but never used


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch.nn.parameter", "Parameter"): _marker("Parameter"),
    ("torch", "Tensor"): _marker("Tensor"),
    **{("torch", name): _StorageType(np.dtype(dtype)) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): _TorchDtype(np.dtype(dtype)) for name, dtype in _TORCH_DTYPES.items()},
}


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals, to this module's stand-ins; storages by persistent id."""

    def find_class(self, module: str, name: str):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise _Refused(f"the pickled global {module}.{name} is not part of a state dict "
                           f"(allowed: torch tensors, storages, dtypes and collections.OrderedDict)")
        return _Call(found) if callable(found) else found  # markers are immutable tuples and strings

    def persistent_load(self, pid):
        # torch writes ('storage', storage_type, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused(f"expected a storage as persistent id, got {str(pid)[:60]}")
        kind, key, numel = pid[1], pid[2], pid[4]
        if not (isinstance(kind, (_StorageType, _TorchDtype)) and isinstance(key, str) and type(numel) is int
                and numel >= 0):
            raise _Refused(f"expected a storage as persistent id, got {str(pid)[:60]}")
        return _Storage(key, kind.dtype, numel)


def _flatten(tree, prefix: str = "", depth: int = 0) -> dict[str, _TensorRef]:
    """Tensors of nested dicts, named by their ``.``-joined keys; other values are skipped."""
    if depth > _MAX_DEPTH:
        return {}
    out: dict[str, _TensorRef] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, _TensorRef):
            out[name] = value
        elif isinstance(value, dict):
            out.update(_flatten(value, f"{name}.", depth + 1))
    return out


def _pickle_name(path: Path, archive: zipfile.ZipFile) -> str:
    names = [n for n in archive.namelist() if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
    if not names:
        what = "a TorchScript archive" if any(n.endswith("constants.pkl") for n in archive.namelist()) else "a zip"
        raise HeadError(f"{path}: expected a PyTorch checkpoint (a zip with <name>/data.pkl), got {what} without one")
    return min(names, key=len)


def _not_zip_message(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            start = handle.read(2)
    except OSError as err:
        return f"{path}: unreadable ({err})"
    if start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return f"{path}: a legacy (non-zip) torch file, which cannot be read without executing pickle; {_LEGACY_ADVICE}"
    return f"{path}: expected a PyTorch zip checkpoint, got neither a zip archive nor a legacy torch file"


def _member_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a stored (uncompressed) member's bytes start: after its local header (30 bytes + name + extra)."""
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise HeadError(f"{path}: member {info.filename!r}: damaged zip (no local header at {info.header_offset})")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_length + extra_length


class _TorchFile(_Format):
    """A PyTorch zip checkpoint: the state dict through the restricted unpickler, storages from the zip."""

    other_bias_names = SAFETENSORS_OTHER_BIAS_NAMES

    def __init__(self, path: Path):
        self.path = path
        try:
            self._archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise HeadError(_not_zip_message(path)) from None
        except _ZIP_ERRORS + (struct.error,) as err:
            raise HeadError(f"{path}: not a readable zip archive ({err})") from None
        try:
            self._root = _pickle_name(path, self._archive)
            if self._archive.getinfo(self._root).file_size > _MAX_PICKLE_BYTES:
                raise HeadError(f"{path}: expected a state dict pickle of at most {_MAX_PICKLE_BYTES} bytes, "
                                f"got {self._archive.getinfo(self._root).file_size}")
            tree = self._unpickle(self._archive.read(self._root))
            self._byteorder = self._read_byteorder()
        except _ZIP_ERRORS as err:
            self._archive.close()
            if isinstance(err, HeadError):
                raise
            raise HeadError(f"{path}: damaged zip archive ({err})") from None
        self._root = self._root[: -len("data.pkl")]
        self._tensors = _flatten(tree) if isinstance(tree, dict) else {}
        self.entries = {name: _Entry(ref.shape, ref.storage.dtype) for name, ref in self._tensors.items()}
        self.weight_names, self.bias_names = _torch_names()

    def _unpickle(self, data: bytes):
        try:
            return _StateDictUnpickler(io.BytesIO(data)).load()
        except _Refused as err:
            raise HeadError(f"{self.path}: refusing to unpickle: {err}; nothing was executed") from None
        except _PICKLE_ERRORS as err:
            raise HeadError(f"{self.path}: damaged pickle in {self._root} ({type(err).__name__}: {err})") from None

    def _read_byteorder(self) -> str:
        name = self._root[: -len("data.pkl")] + "byteorder"
        if name not in self._archive.namelist():
            return "<"
        order = self._archive.read(name).strip()
        if order not in (b"little", b"big"):
            raise HeadError(f"{self.path}: expected byteorder 'little' or 'big', got {order[:20]!r}")
        return "<" if order == b"little" else ">"

    def read(self, name: str) -> np.ndarray:
        ref = self._tensors[name]
        dtype = ref.storage.dtype if ref.storage.dtype.itemsize == 1 or ref.storage.dtype.name == "bfloat16" \
            else ref.storage.dtype.newbyteorder(self._byteorder)
        storage = self._storage(name, ref.storage, dtype)
        count = math.prod(ref.shape)
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride)) if count else ref.offset - 1
        if last >= storage.size:
            raise HeadError(f"{self.path}: tensor {name!r}: expected its elements within its storage of "
                            f"{storage.size} values, got offset {ref.offset}, size {ref.shape}, stride {ref.stride}")
        strides = tuple(s * dtype.itemsize for s in ref.stride)
        view = np.lib.stride_tricks.as_strided(storage[ref.offset:], shape=ref.shape, strides=strides, writeable=False)
        if dtype.name == "bfloat16" and self._byteorder == ">":
            view = view.view(np.uint16).byteswap().view(dtype)
        return np.array(view, dtype=dtype.newbyteorder("=") if dtype.itemsize > 1 and dtype.kind != "V" else dtype)

    def _storage(self, name: str, storage: _Storage, dtype: np.dtype) -> np.ndarray:
        member = f"{self._root}data/{storage.key}"
        try:
            info = self._archive.getinfo(member)
        except KeyError:
            raise HeadError(f"{self.path}: tensor {name!r}: expected its storage {member!r} in the archive, "
                            f"which has no such entry") from None
        needed = storage.numel * dtype.itemsize
        if info.file_size < needed:
            raise HeadError(f"{self.path}: tensor {name!r}: expected {needed} bytes in {member!r} "
                            f"({storage.numel} x {dtype}), got {info.file_size} (truncated?)")
        try:
            if info.compress_type == zipfile.ZIP_STORED and self.path.stat().st_size >= \
                    _member_data_offset(self.path, info) + needed and needed:
                return np.memmap(self.path, dtype=dtype, mode="r", offset=_member_data_offset(self.path, info),
                                 shape=(storage.numel,))
            raw = self._archive.read(member)
        except _ZIP_ERRORS as err:
            raise HeadError(f"{self.path}: tensor {name!r}: storage {member!r} is unreadable ({err})") from None
        return np.frombuffer(raw, dtype=dtype, count=storage.numel)

    def close(self) -> None:
        self._archive.close()


def _torch_names() -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """Weight names (each base name under each wrapper) and each weight's bias names."""
    weights, biases = [], {}
    for base in SAFETENSORS_WEIGHT_NAMES + PYTORCH_HEAD_NAMES:
        own = (base[: -len("weight")] + "bias",) if base in PYTORCH_HEAD_NAMES else ()
        for wrapper in PYTORCH_WRAPPERS:
            weights.append(wrapper + base)
            named = own + SAFETENSORS_BIAS_NAMES.get(base, SAFETENSORS_OTHER_BIAS_NAMES)
            biases[wrapper + base] = tuple(wrapper + n for n in named)
    return tuple(weights), biases
