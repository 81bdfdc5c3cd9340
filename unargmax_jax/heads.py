"""Finding and validating a head (W, b) in the files users have.

Supported now: ``.npz`` (never unpickled). The array named ``W`` (C x d) is the head;
the published tool's ``decoder_Wemb`` (stored d x C) is accepted and transposed. The
bias is ``b`` when present.
"""

from __future__ import annotations

import os
import zipfile
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np

DEFAULT_WEIGHT_NAMES = ("W", "decoder_Wemb")
DEFAULT_BIAS_NAMES = ("b",)
TRANSPOSED_WEIGHT_NAMES = ("decoder_Wemb",)


class HeadError(ValueError):
    """A head file or array is unusable; the message names what and why."""


class Head(NamedTuple):
    W: np.ndarray  # (C, d) float
    b: np.ndarray | None  # (C,) or None
    weight_name: str
    bias_name: str | None
    source: str | None


def validate_head(W, b=None, *, where: str = "") -> tuple[np.ndarray, np.ndarray | None]:
    """Check shapes and values of a head; return float arrays (float16/bfloat16 -> float32).

    Raises:
        HeadError: wrong rank, empty, non-numeric, non-finite, or a bias of the wrong length.
    """
    prefix = f"{where}: " if where else ""
    try:
        W = np.asarray(W)
    except Exception as err:  # noqa: BLE001 (anything numpy cannot convert)
        raise HeadError(f"{prefix}weights are not an array: {err}") from None
    if W.dtype.kind not in "fiu" and W.dtype.name != "bfloat16":
        raise HeadError(f"{prefix}expected real numeric weights, got dtype {W.dtype}")
    if W.ndim != 2:
        raise HeadError(f"{prefix}expected 2-D weights (classes x features), got shape {W.shape}")
    if W.shape[0] == 0 or W.shape[1] == 0:
        raise HeadError(f"{prefix}expected at least one class and one feature, got shape {W.shape}")
    W = W.astype(np.float64 if W.dtype == np.float64 or W.dtype.kind in "iu" else np.float32)
    bad = np.argwhere(~np.isfinite(W))
    if bad.size:
        r, c = bad[0]
        raise HeadError(f"{prefix}weights must be finite; found {W[r, c]} at (row {r}, column {c})")
    if b is not None:
        b = np.asarray(b)
        if b.dtype.kind not in "fiu" and b.dtype.name != "bfloat16":
            raise HeadError(f"{prefix}expected a real numeric bias, got dtype {b.dtype}")
        if b.ndim != 1 or b.shape[0] != W.shape[0]:
            raise HeadError(f"{prefix}expected a bias of shape ({W.shape[0]},) to match the weights, got shape {b.shape}")
        b = b.astype(np.float64 if b.dtype == np.float64 or b.dtype.kind in "iu" else np.float32)
        bad = np.flatnonzero(~np.isfinite(b))
        if bad.size:
            raise HeadError(f"{prefix}bias must be finite; found {b[bad[0]]} at index {bad[0]}")
    return W, b


def load_head(path: str | os.PathLike, *, weight: str | None = None, bias: str | None = None) -> Head:
    """Load a head from a file, finding the weight and bias arrays by name.

    Args:
        path: an ``.npz`` file.
        weight: array name of W (default: ``W``, else ``decoder_Wemb``, stored d x C).
        bias: array name of b (default: ``b`` if present; an explicit name must exist).
    """
    path = Path(path)
    if not path.exists():
        raise HeadError(f"{path}: no such file")
    if path.is_dir():
        raise HeadError(f"{path}: is a directory, expected a head file (.npz)")
    if path.suffix.lower() != ".npz":
        raise HeadError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; supported: .npz")
    return _load_npz(path, weight, bias)


def _load_npz(path: Path, weight: str | None, bias: str | None) -> Head:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise HeadError(f"{path}: not a readable .npz file ({err})") from None
    with archive:
        names = list(archive.files)

        def read(name: str) -> np.ndarray:
            try:
                return archive[name]
            except ValueError as err:
                if "pickle" in str(err).lower():
                    raise HeadError(f"{path}: array {name!r} contains pickled object arrays; refusing to unpickle") from None
                raise HeadError(f"{path}: array {name!r} is unreadable ({err})") from None
            except (OSError, zipfile.BadZipFile, EOFError) as err:
                raise HeadError(f"{path}: array {name!r} is unreadable ({err})") from None

        def two_dimensional() -> list[str]:
            found = []
            for name in names:
                try:
                    if read(name).ndim == 2:
                        found.append(name)
                except HeadError:
                    continue
            return found

        if weight is None:
            weight = next((n for n in DEFAULT_WEIGHT_NAMES if n in names), None)
            if weight is None:
                raise HeadError(f"{path}: no weight array named {' or '.join(DEFAULT_WEIGHT_NAMES)}; "
                                f"2-D arrays in the file: {two_dimensional() or 'none'} (choose one with --weight)")
        elif weight not in names:
            raise HeadError(f"{path}: no array named {weight!r}; 2-D arrays in the file: {two_dimensional() or 'none'}")
        W = read(weight)
        if weight in TRANSPOSED_WEIGHT_NAMES and W.ndim == 2:
            W = W.T
        if bias is None:
            bias = next((n for n in DEFAULT_BIAS_NAMES if n in names), None)
        elif bias not in names:
            raise HeadError(f"{path}: no bias array named {bias!r}; arrays in the file: {names}")
        b = read(bias) if bias is not None else None
    W, b = validate_head(W, b, where=f"{path} [{weight}{', ' + bias if bias else ''}]")
    return Head(W, b, weight, bias, str(path))


def example_head_path() -> Path:
    """The bundled example head (``unargmax check --example``)."""
    return Path(str(resources.files("unargmax_jax") / "data" / "example_head.npz"))
