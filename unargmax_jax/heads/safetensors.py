"""``.safetensors`` files and sharded checkpoints (``*.safetensors.index.json``).

Every header is checked against the file (sizes, offsets, dtypes) before anything is
read; tensors are memory-mapped through ``safetensors.safe_open(..., framework="numpy")``,
except bfloat16 and float8, read from the mapped bytes and upcast (exactly) to float32 a
block of rows at a time. An index's ``weight_map`` names a shard file per tensor.

(``from safetensors import ...`` below is the third-party library: imports are absolute.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import ml_dtypes
import numpy as np

from .formats import _Entry, _Format, _row_blocks
from .names import SAFETENSORS_BIAS_NAMES, SAFETENSORS_OTHER_BIAS_NAMES, SAFETENSORS_WEIGHT_NAMES
from .validate import HeadError

_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit

# safetensors dtype tag -> how the bytes are stored. BF16 and F8 are read from the mapped
# bytes (numpy has no such dtypes; older safetensors cannot hand them to numpy).
_SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_RAW_DTYPES = ("BF16", "F8_E4M3", "F8_E5M2")


class _TensorInfo(NamedTuple):
    dtype: str  # the safetensors tag
    shape: tuple
    begin: int  # byte offsets in the data region
    end: int


def _safetensors_entry(path: Path, name: str, info, data_size: int) -> _TensorInfo:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise HeadError(f"{where}: expected a header entry with dtype, shape and data_offsets, got {str(info)[:80]}")
    tag, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if tag not in _SAFETENSORS_DTYPES:
        raise HeadError(f"{where}: expected a dtype among {', '.join(_SAFETENSORS_DTYPES)}, got {tag!r}")
    if not (isinstance(shape, list) and all(type(v) is int and v >= 0 for v in shape)):
        raise HeadError(f"{where}: expected a shape of non-negative integers, got {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(v) is int for v in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise HeadError(f"{where}: expected data_offsets [begin, end] with 0 <= begin <= end, got {offsets!r}")
    begin, end = offsets
    needed = math.prod(shape) * _SAFETENSORS_DTYPES[tag].itemsize
    if end - begin != needed:
        raise HeadError(f"{where}: expected {needed} bytes for shape {tuple(shape)} of {tag}, "
                        f"got data_offsets {offsets} ({end - begin} bytes)")
    if end > data_size:
        raise HeadError(f"{where}: expected its bytes [{begin}, {end}) in the data region, "
                        f"got a file with only {data_size} bytes of data (truncated?)")
    return _TensorInfo(tag, tuple(shape), begin, end)


def _safetensors_header(path: Path) -> tuple[dict[str, _TensorInfo], int]:
    """Parse and check a safetensors header; return the tensors and where the data starts.

    Layout: an 8-byte little-endian length n, n bytes of JSON (name -> dtype, shape,
    data_offsets; plus an optional ``__metadata__``), then the data region, which the
    tensors cover exactly, without gaps or overlaps (as the safetensors library demands).
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise HeadError(f"{path}: expected a safetensors file (an 8-byte header length, then a JSON header), "
                                f"got {size} bytes")
            n = int.from_bytes(prefix, "little")
            if n > min(size - 8, _SAFETENSORS_MAX_HEADER):
                raise HeadError(f"{path}: expected a header length of at most {min(size - 8, _SAFETENSORS_MAX_HEADER)} "
                                f"bytes (file size {size}), got {n}: truncated, or not a safetensors file")
            raw = handle.read(n)
    except OSError as err:
        raise HeadError(f"{path}: unreadable ({err})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HeadError(f"{path}: expected a JSON header of {n} bytes, got unparseable text ({err})") from None
    if not isinstance(header, dict):
        raise HeadError(f"{path}: expected a JSON object as header, got {type(header).__name__}")
    data_size = size - 8 - n
    tensors = {name: _safetensors_entry(path, name, info, data_size)
               for name, info in header.items() if name != "__metadata__"}
    position, previous = 0, None
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin != position:
            after = f"right after tensor {previous!r}" if previous else "at the start of the data"
            raise HeadError(f"{path}: tensor {name!r}: expected its bytes to start at {position} ({after}), "
                            f"got {info.begin}: the header's offsets overlap or leave a gap")
        position, previous = info.end, name
    if position != data_size:
        raise HeadError(f"{path}: expected the tensors to cover all {data_size} bytes of data, "
                        f"got {position} covered (bytes after the last tensor)")
    return tensors, 8 + n


class _SafetensorsFile(_Format):
    """One ``.safetensors`` file: header checked here, tensors memory-mapped."""

    weight_names = SAFETENSORS_WEIGHT_NAMES
    bias_names = SAFETENSORS_BIAS_NAMES
    other_bias_names = SAFETENSORS_OTHER_BIAS_NAMES

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        self.path = path
        self._tensors, self._data_start = _safetensors_header(path)
        self.entries = {name: _Entry(info.shape, _SAFETENSORS_DTYPES[info.dtype]) for name, info in self._tensors.items()}
        self._errors = (SafetensorError, OSError, ValueError, TypeError)
        try:  # the library checks the header too, and maps the file
            self._handle = safe_open(str(path), framework="numpy")
        except self._errors as err:
            raise HeadError(f"{path}: rejected by the safetensors library ({err})") from None

    def read(self, name: str) -> np.ndarray:
        info = self._tensors[name]
        try:
            if info.dtype in _RAW_DTYPES:
                return self._read_raw(info)
            if info.dtype == "F16" and info.shape:  # upcast a block of rows at a time
                part = self._handle.get_slice(name)
                out = np.empty(info.shape, np.float32)
                for start, stop in _row_blocks(info.shape):
                    out[start:stop] = part[start:stop]
                return out
            return self._handle.get_tensor(name)
        except self._errors as err:
            raise HeadError(f"{self.path}: tensor {name!r} ({info.dtype}, shape {info.shape}) is unreadable ({err})") from None

    def _read_raw(self, info: _TensorInfo) -> np.ndarray:
        """bfloat16 -> float32 is exact: its 16 bits are the top half of the float32."""
        out = np.empty(info.shape, np.float32)
        count = out.size
        if count == 0:
            return out
        stored = np.memmap(self.path, dtype=np.uint16 if info.dtype == "BF16" else np.uint8, mode="r",
                           offset=self._data_start + info.begin, shape=(count,))
        flat = out.reshape(-1)
        for start, stop in _row_blocks((count,)):
            block = stored[start:stop]
            if info.dtype == "BF16":
                flat[start:stop] = (block.astype("<u4") << 16).view("<f4")
            else:
                flat[start:stop] = block.view(_SAFETENSORS_DTYPES[info.dtype])
        del stored
        return out

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None and hasattr(handle, "__exit__"):
            handle.__exit__(None, None, None)


class _SafetensorsIndex(_Format):
    """A sharded checkpoint: ``*.safetensors.index.json`` maps each tensor to a shard file."""

    weight_names = SAFETENSORS_WEIGHT_NAMES
    bias_names = SAFETENSORS_BIAS_NAMES
    other_bias_names = SAFETENSORS_OTHER_BIAS_NAMES

    def __init__(self, path: Path):
        self.path = path
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise HeadError(f"{path}: expected a JSON index of shards, got unparseable text ({err})") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not (isinstance(weight_map, dict)
                and all(isinstance(shard, str) for shard in weight_map.values())):
            raise HeadError(f'{path}: expected a JSON object with a "weight_map" from tensor names to shard files, '
                            f"got {str(index)[:80]}")
        self._shards: dict[str, _SafetensorsFile] = {}
        self._holder: dict[str, _SafetensorsFile] = {}
        try:
            for name, shard in weight_map.items():
                if shard not in self._shards:
                    self._shards[shard] = _SafetensorsFile(self._shard_path(name, shard))
                if name not in self._shards[shard].entries:
                    raise HeadError(f"{path}: tensor {name!r}: expected it in shard {shard!r}, "
                                    f"which holds no tensor of that name")
                self._holder[name] = self._shards[shard]
        except HeadError:
            self.close()
            raise
        self.entries = {name: holder.entries[name] for name, holder in self._holder.items()}

    def _shard_path(self, name: str, shard: str) -> Path:
        relative = Path(shard)
        if not relative.parts or relative.is_absolute() or ".." in relative.parts:
            raise HeadError(f"{self.path}: tensor {name!r}: expected a shard file next to the index, got {shard!r}")
        full = self.path.parent / relative
        if not full.is_file():
            raise HeadError(f"{self.path}: tensor {name!r}: expected its shard at {full}, which does not exist")
        return full

    def read(self, name: str) -> np.ndarray:
        return self._holder[name].read(name)

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()
