"""``.npz`` archives (``np.savez``; the published tool's format), opened without pickle.

An object array is refused, never unpickled. Array names and shapes are read from the
``.npy`` headers, so only W and b are loaded.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .formats import _Entry, _Format
from .names import DEFAULT_BIAS_NAMES, DEFAULT_WEIGHT_NAMES, TRANSPOSED_WEIGHT_NAMES
from .validate import HeadError, aligned_empty


class _NpzFile(_Format):
    """An ``.npz`` archive, opened without pickle; shapes come from the ``.npy`` headers."""

    noun = "array"
    weight_names = DEFAULT_WEIGHT_NAMES
    bias_names = DEFAULT_BIAS_NAMES
    other_bias_names = ("b",)
    transposed_names = TRANSPOSED_WEIGHT_NAMES

    def __init__(self, path: Path):
        self.path = path
        try:
            self._archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, NotImplementedError) as err:
            # NumPy reads a file that is neither a zip nor an .npy header as a pickle and,
            # refused, suggests allow_pickle=True: never repeat that advice.
            why = "neither a zip archive of .npy arrays nor an .npy array" if "allow_pickle" in str(err) else err
            raise HeadError(f"{path}: not a readable .npz file ({why})") from None
        if not isinstance(self._archive, np.lib.npyio.NpzFile):  # a bare .npy renamed .npz
            raise HeadError(f"{path}: not a readable .npz file (a single .npy array, not an archive)")
        self.entries = {name: self._header(name) for name in self._archive.files}

    def _header(self, name: str) -> _Entry:
        try:
            with self._archive.zip.open(f"{name}.npy") as handle:
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
                else:  # version 3.0 has no public header reader; read() will tell
                    return _Entry(None, None)
            return _Entry(tuple(shape), dtype)
        except (KeyError, OSError, ValueError, zipfile.BadZipFile, EOFError, NotImplementedError):
            return _Entry(None, None)  # not an .npy member or a damaged header: read() reports it

    def read(self, name: str) -> np.ndarray:
        dtype = self.entries[name].dtype
        if dtype is not None and dtype.hasobject:
            raise HeadError(f"{self.path}: array {name!r} contains pickled object arrays; refusing to unpickle")
        try:
            value = self._read_aligned(name)
            if value is None:
                value = self._archive[name]
        except ValueError as err:
            if "pickle" in str(err).lower():
                raise HeadError(f"{self.path}: array {name!r} contains pickled object arrays; refusing to unpickle") from None
            raise HeadError(f"{self.path}: array {name!r} is unreadable ({err})") from None
        except (OSError, zipfile.BadZipFile, EOFError, NotImplementedError) as err:
            raise HeadError(f"{self.path}: array {name!r} is unreadable ({err})") from None
        if not isinstance(value, np.ndarray):
            raise HeadError(f"{self.path}: member {name!r} is not a NumPy array")
        return value

    def _read_aligned(self, name: str) -> np.ndarray | None:
        """A plain (C-order, no objects) ``.npy`` member read straight into 64-byte aligned
        memory, so the engine needs no second, aligned copy of a head-sized array (NumPy's
        own reader returns an array at malloc's 16-byte alignment). None: leave it to NumPy."""
        member = f"{name}.npy" if f"{name}.npy" in self._archive.zip.namelist() else name
        with self._archive.zip.open(member) as handle:
            version = np.lib.format.read_magic(handle)
            if version not in ((1, 0), (2, 0)):
                return None
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran_order, dtype = read_header(handle)
            if fortran_order or dtype.hasobject or dtype.itemsize == 0:
                return None
            out = aligned_empty(shape, dtype)
            buffer, filled = memoryview(out.reshape(-1).view(np.uint8)), 0
            while filled < out.nbytes:
                got = handle.readinto(buffer[filled:filled + (64 << 20)])
                if not got:
                    raise ValueError(f"the data ends after {filled} of {out.nbytes} bytes")
                filled += got
            return out

    def close(self) -> None:
        self._archive.close()
