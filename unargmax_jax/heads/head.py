"""What a loader returns: the head (W, b) with its names and tokens, and the final norm."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Head(NamedTuple):
    """A softmax head read from a file.

    Attributes:
        W: (C, d) float32 or float64 weights, one row per token, C-contiguous.
        b: (C,) bias of the same dtype family, or None.
        weight_name: the array W came from.
        bias_name: the array b came from, or None.
        source: the file, or None for heads not read from a file.
        tokens: one string per row (None where the vocabulary has no entry), or None.
        tokens_source: the file or metadata key the strings came from.
        norm: the final LayerNorm/RMSNorm parameters, when the checkpoint has them.
    """

    W: np.ndarray
    b: np.ndarray | None
    weight_name: str
    bias_name: str | None
    source: str | None
    tokens: tuple | None = None
    tokens_source: str | None = None
    norm: "FinalNorm | None" = None


class FinalNorm(NamedTuple):
    """The network's last normalisation before the head: ``gamma * n + beta``.

    Attributes:
        kind: ``"layernorm"`` (n centred, ``||n||_2 < sqrt(d)``) or ``"rmsnorm"``.
        gamma: (d,) scale. beta: (d,) shift, or None.
        eps: the epsilon from the checkpoint's config or metadata, when found.
        names: the tensors read.
    """

    kind: str
    gamma: np.ndarray
    beta: np.ndarray | None
    eps: float | None
    names: tuple
