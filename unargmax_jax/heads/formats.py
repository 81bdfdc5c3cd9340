"""What every format provides: the ``_ArrayFile`` interface and the ``_Format`` defaults.

A format is one module with one ``_Format`` subclass (its ``__init__`` opens the file and
fills ``entries``; ``read`` returns one array), registered by its file name ending in
:data:`unargmax_jax.heads.load._FORMATS`. Name resolution (:func:`~.select._select`) and
validation (:func:`~.validate.validate_head`) are shared by all formats.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from . import vocab
from .names import _EPS_KEYS

_CHUNK_ELEMENTS = 1 << 22  # upcast/dequantise 4M values (16 MB of float32) at a time


class _Entry(NamedTuple):
    shape: tuple | None  # None: unknown until read
    dtype: np.dtype | None


class _ArrayFile(Protocol):
    """What a format provides: the arrays' names, shapes and dtypes, reading one, and the
    names to look for (``weight_names`` in order; ``bias_names[weight]``, else
    ``other_bias_names``; ``transposed_names``: weights stored d x C)."""

    path: Path
    entries: dict[str, _Entry]
    noun: str
    weight_names: tuple[str, ...]
    bias_names: dict[str, tuple[str, ...]]
    other_bias_names: tuple[str, ...]
    transposed_names: tuple[str, ...]

    def read(self, name: str) -> np.ndarray: ...

    def check_rows(self, name: str, W: np.ndarray) -> np.ndarray: ...

    def resolve_names(self, weight: str | None, bias: str | None) -> tuple[str | None, str | None]: ...

    def vocabulary(self) -> tuple[list | None, str | None]: ...

    def norm_eps(self) -> float | None: ...

    def close(self) -> None: ...


class _Format:
    """Defaults shared by the formats: no transposed names, rows taken as they come."""

    noun = "tensor"
    choose = "choose one with --weight NAME"
    bias_names: dict[str, tuple[str, ...]] = {}
    other_bias_names: tuple[str, ...] = ()
    transposed_names: tuple[str, ...] = ()

    def check_rows(self, name: str, W: np.ndarray) -> np.ndarray:
        return W

    def resolve_names(self, weight: str | None, bias: str | None) -> tuple[str | None, str | None]:
        """The entries that the user's ``--weight``/``--bias`` names mean (here: the names as given)."""
        return weight, bias

    def vocabulary(self) -> tuple[list | None, str | None]:
        """Token strings from the tokenizer files next to the weights."""
        try:
            return vocab.read_vocabulary(self.path.parent)
        except (MemoryError, RecursionError):  # absurd ids or nesting in a damaged tokenizer.json
            return None, None

    def norm_eps(self) -> float | None:
        """The norm's epsilon from a ``config.json`` next to the weights."""
        try:
            config = json.loads((self.path.parent / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        value = next((config[k] for k in _EPS_KEYS if isinstance(config, dict) and k in config), None)
        return float(value) if isinstance(value, (int, float)) else None

    def close(self) -> None:
        pass


def _row_blocks(shape: tuple):
    """``(start, stop)`` blocks of rows of about ``_CHUNK_ELEMENTS`` values."""
    step = max(1, _CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
    return ((start, min(start + step, shape[0])) for start in range(0, shape[0], step))
