"""Finding and validating a head (W, b) in the files users have.

A loader turns a file into a :class:`Head`: the weights ``W`` (C x d, one row per
token), an optional bias ``b`` (C,), the array names they came from and the file.

Supported formats (dispatch on the file suffix, see ``_FORMATS``):

* ``.npz`` (NumPy archives, as written by ``np.savez``; the published tool's format).
  Read with ``allow_pickle=False`` only: an object array is refused, never unpickled.
  Array names and shapes are read from the ``.npy`` headers, so only W and b are loaded.

Adding a format (safetensors, GGUF, Flax params) means writing one class with the
``_ArrayFile`` interface (``entries`` and ``read``) and registering its suffix; the name
resolution (:func:`_select`) and validation (:func:`validate_head`) are shared.

Name resolution: the weight is ``W`` (C x d), else the published tool's ``decoder_Wemb``,
which its README documents as stored d x C and is transposed (unless a bias shows the
file is already C x d). The bias is ``b``, or Marian's ``decoder_ff_logit_out_b`` next to
``decoder_Wemb``; biases stored as (1, C) or (C, 1), as the published tool and Marian
write them, are flattened. An explicit name that is not in the file is an error.

Values: float16 and bfloat16 are upcast to float32 (exactly); float32 and float64 are kept;
integers are converted to float64 (exactly: magnitudes above 2^53 are refused). Verdicts
are about these values.
"""

from __future__ import annotations

import os
import zipfile
from importlib import resources
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

DEFAULT_WEIGHT_NAMES = ("W", "decoder_Wemb")
DEFAULT_BIAS_NAMES = {"W": ("b",), "decoder_Wemb": ("b", "decoder_ff_logit_out_b")}
TRANSPOSED_WEIGHT_NAMES = ("decoder_Wemb",)
_EXACT_INT_LIMIT = 2**53  # integers up to this magnitude are exact in float64


class HeadError(ValueError):
    """A head file or array is unusable; the message names what and why."""


class HeadTypeError(HeadError, TypeError):
    """An array has a dtype that cannot be a head (strings, objects, complex, bool)."""


class Head(NamedTuple):
    """A softmax head read from a file.

    Attributes:
        W: (C, d) float32 or float64 weights, one row per token, C-contiguous.
        b: (C,) bias of the same dtype family, or None.
        weight_name: the array W came from.
        bias_name: the array b came from, or None.
        source: the file, or None for heads not read from a file.
    """

    W: np.ndarray
    b: np.ndarray | None
    weight_name: str
    bias_name: str | None
    source: str | None


# --------------------------------------------------------------------- validation
def _as_float(arr: np.ndarray, what: str, prefix: str) -> np.ndarray:
    """Exact conversion to float32 (half precision, float32) or float64 (float64, ints)."""
    dtype = arr.dtype
    if dtype.name == "bfloat16" or (dtype.kind == "f" and dtype.itemsize <= 4):
        return np.ascontiguousarray(arr, dtype=np.float32)
    if dtype.kind == "f" and dtype.itemsize == 8:
        return np.ascontiguousarray(arr, dtype=np.float64)
    if dtype.kind in "iu":
        if arr.size and (int(arr.max()) > _EXACT_INT_LIMIT or int(arr.min()) < -_EXACT_INT_LIMIT):
            raise HeadError(f"{prefix}expected integer {what} of magnitude at most 2^53 (exact in float64), "
                            f"got values beyond it; convert to float first")
        return np.ascontiguousarray(arr, dtype=np.float64)
    if dtype.kind == "f":
        raise HeadTypeError(f"{prefix}expected {what} as float16/bfloat16/float32/float64, got {dtype} "
                            f"(not exactly representable in float64)")
    hint = ""
    if dtype.kind == "V" and dtype.itemsize == 2:
        hint = " (numpy stores bfloat16 as opaque 2-byte values: save float32 instead)"
    raise HeadTypeError(f"{prefix}expected real floating-point or integer {what}, got dtype {dtype}{hint}")


def _as_array(value, what: str, prefix: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as err:  # ragged nested lists and the like
        raise HeadError(f"{prefix}expected {what} as an array, got {type(value).__name__} ({err})") from None


def validate_head(W, b=None, *, where: str = "") -> tuple[np.ndarray, np.ndarray | None]:
    """Check the shapes and values of a head; return it as float arrays.

    ``W`` must be 2-D (C x d, C >= 1, d >= 1), real (float16, bfloat16, float32, float64
    or integer) and finite; ``b`` None or 1-D of length C, real and finite. float16 and
    bfloat16 become float32, integers float64 (both exact); float32/float64 are kept.

    Args:
        W: weights, array-like of shape (C, d).
        b: optional bias, array-like of shape (C,).
        where: prefix for messages, e.g. the file and array names.

    Returns:
        ``(W, b)`` as C-contiguous float32/float64 arrays (``b`` None if not given).

    Raises:
        HeadTypeError: a dtype that is not real numbers (also a ``TypeError``).
        HeadError: wrong rank or length, an empty head, non-finite values (a ``ValueError``).
    """
    prefix = f"{where}: " if where else ""
    W = _as_array(W, "weights", prefix)
    if W.ndim != 2:
        raise HeadError(f"{prefix}expected 2-D weights (classes x features), got shape {W.shape}")
    if W.shape[0] == 0 or W.shape[1] == 0:
        raise HeadError(f"{prefix}expected at least one class and one feature, got shape {W.shape}")
    W = _as_float(W, "weights", prefix)
    bad = np.argwhere(~np.isfinite(W))
    if bad.size:
        r, c = (int(v) for v in bad[0])
        raise HeadError(f"{prefix}expected finite weights, got {W[r, c]} at (row {r}, column {c})"
                        f"{f' and {len(bad) - 1} more non-finite entries' if len(bad) > 1 else ''}")
    if b is None:
        return W, None
    b = _as_array(b, "bias", prefix)
    if b.ndim != 1 or b.shape[0] != W.shape[0]:
        raise HeadError(f"{prefix}expected a bias of shape ({W.shape[0]},) to match the weights {W.shape}, got shape {b.shape}")
    b = _as_float(b, "bias", prefix)
    bad = np.flatnonzero(~np.isfinite(b))
    if bad.size:
        i = int(bad[0])
        raise HeadError(f"{prefix}expected a finite bias, got {b[i]} at index {i}"
                        f"{f' and {bad.size - 1} more non-finite entries' if bad.size > 1 else ''}")
    return W, b


# ------------------------------------------------------------------ file formats
class _Entry(NamedTuple):
    shape: tuple | None  # None: unknown until read
    dtype: np.dtype | None


class _ArrayFile(Protocol):
    """What a format provides: the arrays' names, shapes and dtypes, and reading one."""

    path: Path
    entries: dict[str, _Entry]

    def read(self, name: str) -> np.ndarray: ...

    def close(self) -> None: ...


class _NpzFile:
    """An ``.npz`` archive, opened without pickle; shapes come from the ``.npy`` headers."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise HeadError(f"{path}: not a readable .npz file ({err})") from None
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
        except (KeyError, OSError, ValueError, zipfile.BadZipFile, EOFError):
            return _Entry(None, None)  # not an .npy member or a damaged header: read() reports it

    def read(self, name: str) -> np.ndarray:
        dtype = self.entries[name].dtype
        if dtype is not None and dtype.hasobject:
            raise HeadError(f"{self.path}: array {name!r} contains pickled object arrays; refusing to unpickle")
        try:
            value = self._archive[name]
        except ValueError as err:
            if "pickle" in str(err).lower():
                raise HeadError(f"{self.path}: array {name!r} contains pickled object arrays; refusing to unpickle") from None
            raise HeadError(f"{self.path}: array {name!r} is unreadable ({err})") from None
        except (OSError, zipfile.BadZipFile, EOFError) as err:
            raise HeadError(f"{self.path}: array {name!r} is unreadable ({err})") from None
        if not isinstance(value, np.ndarray):
            raise HeadError(f"{self.path}: member {name!r} is not a NumPy array")
        return value

    def close(self) -> None:
        self._archive.close()


_FORMATS: dict[str, type] = {".npz": _NpzFile}


# --------------------------------------------------------------- name resolution
def _is_matrix(shape: tuple) -> bool:
    return len(shape) == 2


def _is_vector(shape: tuple) -> bool:
    return len(shape) == 1 or (len(shape) == 2 and 1 in shape)


def _describe(entries: dict[str, _Entry], keep) -> str:
    """``['a', 'b'] (shapes (3, 2), (4, 2))`` for the readable arrays whose shape passes ``keep``."""
    found = [(name, e.shape) for name, e in entries.items()
             if e.shape is not None and keep(e.shape) and not (e.dtype is not None and e.dtype.hasobject)]
    if not found:
        return "none"
    return f"{[name for name, _ in found]} (shapes {', '.join(str(shape) for _, shape in found)})"


def _flatten_bias(b: np.ndarray, C: int) -> np.ndarray:
    """Accept the (1, C) and (C, 1) layouts of the published tool and Marian."""
    if b.ndim == 2 and C in b.shape and 1 in b.shape:
        return b.reshape(-1)
    return b


def _select(source: _ArrayFile, weight: str | None, bias: str | None, no_bias: bool) -> Head:
    """Resolve the weight and bias names, read them, fix their layout, validate."""
    path, entries = source.path, source.entries
    if weight is None:
        weight = next((n for n in DEFAULT_WEIGHT_NAMES if n in entries), None)
        if weight is None:
            raise HeadError(f"{path}: no weight array named {' or '.join(DEFAULT_WEIGHT_NAMES)}; "
                            f"2-D arrays in the file: {_describe(entries, _is_matrix)} (choose one with --weight NAME)")
    elif weight not in entries:
        raise HeadError(f"{path}: no array named {weight!r}; 2-D arrays in the file: {_describe(entries, _is_matrix)}")
    if no_bias:
        if bias is not None:
            raise HeadError(f"{path}: give a bias name or no bias, not both")
    elif bias is None:
        bias = next((n for n in DEFAULT_BIAS_NAMES.get(weight, ("b",)) if n in entries), None)
    elif bias not in entries:
        raise HeadError(f"{path}: no bias array named {bias!r}; vectors in the file: {_describe(entries, _is_vector)}")

    W = source.read(weight)
    b = source.read(bias) if bias is not None else None
    if weight in TRANSPOSED_WEIGHT_NAMES and W.ndim == 2:
        # Published layout: d x C. Only a bias as long as the rows (and not the columns)
        # shows that this file stores C x d instead.
        bias_length = b.size if b is not None and _is_vector(b.shape) else None
        stored_c_by_d = bias_length == W.shape[0] != W.shape[1]
        if not stored_c_by_d:
            W = W.T
    if b is not None and W.ndim == 2:
        b = _flatten_bias(b, W.shape[0])
    where = f"{path} [{weight}{', ' + bias if bias else ''}]"
    W, b = validate_head(W, b, where=where)
    return Head(W, b, weight, bias, str(path))


def load_head(path: str | os.PathLike, *, weight: str | None = None, bias: str | None = None,
              no_bias: bool = False) -> Head:
    """Load a head from a file, finding the weight and bias arrays by name.

    Args:
        path: a head file; supported: ``.npz``.
        weight: array name of W (default: ``W``, else ``decoder_Wemb``, stored d x C).
        bias: array name of b (default: ``b`` if present, or ``decoder_ff_logit_out_b``
            next to ``decoder_Wemb``; an explicit name must exist). (1, C) and (C, 1)
            arrays are flattened.
        no_bias: ignore any bias in the file (the head is ``z = W x``).

    Returns:
        A :class:`Head` with validated float arrays.

    Raises:
        HeadError: a missing or unreadable file, an unsupported suffix, a missing array
            name, a pickled array, or a head that :func:`validate_head` rejects; the
            message names the file.
    """
    path = Path(path)
    if path.is_dir():
        raise HeadError(f"{path}: is a directory, expected a head file ({', '.join(_FORMATS)})")
    if not path.exists():
        raise HeadError(f"{path}: no such file")
    opener = _FORMATS.get(path.suffix.lower())
    if opener is None:
        raise HeadError(f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; supported: {', '.join(_FORMATS)}")
    source = opener(path)
    try:
        return _select(source, weight, bias, no_bias)
    finally:
        source.close()


def example_head_path() -> Path:
    """The bundled example head ``unargmax_jax/data/example_head.npz`` (``unargmax check --example``).

    60 tokens, 3 features, a bias; see ``scripts/make_example_head.py`` for what is planted.
    """
    path = Path(str(resources.files("unargmax_jax") / "data" / "example_head.npz"))
    if not path.is_file():
        raise HeadError(f"the bundled example head is missing ({path}); reinstall unargmax_jax")
    return path
