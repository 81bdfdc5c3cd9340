"""Checking a head's shapes, dtypes and values, and the errors every loader raises."""

from __future__ import annotations

import numpy as np

_EXACT_INT_LIMIT = 2**53  # integers up to this magnitude are exact in float64
_ALIGNMENT = 64  # XLA:CPU uses a host buffer in place (no device copy) only at this alignment


class HeadError(ValueError):
    """A head file or array is unusable; the message names what and why."""


class HeadTypeError(HeadError, TypeError):
    """An array has a dtype that cannot be a head (strings, objects, complex, bool)."""


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


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGNMENT, np.uint8)
    start = (-raw.ctypes.data) % _ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def aligned(arr: np.ndarray) -> np.ndarray:
    """``arr`` as a C-contiguous array whose data starts on a 64-byte boundary (a copy only if needed)."""
    if arr.flags.c_contiguous and arr.ctypes.data % _ALIGNMENT == 0:
        return arr
    out = aligned_empty(arr.shape, arr.dtype)
    out[...] = arr
    return out


def _as_array(value, what: str, prefix: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as err:  # ragged nested lists and the like
        raise HeadError(f"{prefix}expected {what} as an array, got {type(value).__name__} ({err})") from None


def _check_finite_rows(W: np.ndarray, prefix: str, *, block: int = 4096) -> None:
    """Raise on the first non-finite weight; row blocks, so no (C, d) mask of a large head."""
    first, count = None, 0
    for start in range(0, W.shape[0], block):
        bad = ~np.isfinite(W[start:start + block])
        if first is None and bad.any():
            r, c = (int(v) for v in np.argwhere(bad)[0])
            first = (start + r, c)
        if first is not None:
            count += int(np.count_nonzero(bad))
    if first is not None:
        r, c = first
        raise HeadError(f"{prefix}expected finite weights, got {W[r, c]} at (row {r}, column {c})"
                        f"{f' and {count - 1} more non-finite entries' if count > 1 else ''}")


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
        ``(W, b)`` as C-contiguous float32/float64 arrays (``b`` None if not given); W
        starts on a 64-byte boundary (copied there if it did not).

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
    _check_finite_rows(W, prefix)
    W = aligned(W)  # so the engine can hand it to XLA without a copy
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
