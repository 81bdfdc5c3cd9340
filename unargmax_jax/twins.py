"""Exact duplicates: tokens whose row and bias are bit-identical to another token's.

An exact twin ties its group everywhere, so no float bound can decide it; the engine
settles every member of a group by the tie rule instead of solving it (see
``Settings.ties``), and the report names each token's twins.
"""

from __future__ import annotations

import hashlib

import numpy as np


PROBES = 8  # columns whose values pre-group the rows (twins and near-twins agree in every column)


def find_twins(W: np.ndarray, b: np.ndarray | None, *, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Group bit-identical (row, bias) pairs.

    Returns ``(representative, inverse)``: ``representative[u]`` is the lowest token id
    of unique row u, and ``inverse[i]`` the unique row of token i. The rows are first
    keyed by the bits of a few columns and the bias (one sort): only rows sharing their
    key with another can be twins, and only those are hashed whole (in blocks, in W's own
    dtype), every hash match confirmed exactly. (Hashing every row of a 128256 x 4096
    head took 7 s; a trained head has almost no key collisions.)
    """
    C, d = W.shape
    parts = [_canonical(np.asarray(W[:, probe_columns(d)])).view(np.uint8).reshape(C, -1)]
    if b is not None:
        parts.append(_canonical(np.asarray(b).reshape(C, 1)).view(np.uint8).reshape(C, -1))
    root = np.arange(C)  # each row's lowest bit-identical row
    candidates = np.flatnonzero(sharing_a_key(np.concatenate(parts, axis=1)))
    root[candidates] = _lowest_identical(W, b, candidates, block)
    representative = np.flatnonzero(root == np.arange(C))
    return representative.astype(np.int64), np.searchsorted(representative, root).astype(np.int64)


def probe_columns(d: int) -> np.ndarray:
    """The (at most) ``PROBES`` evenly spaced columns whose values pre-group rows."""
    return np.unique(np.linspace(0, d - 1, min(d, PROBES)).astype(np.int64))


def sharing_a_key(keys: np.ndarray) -> np.ndarray:
    """(n,) whether each row of ``keys`` (n, m) has the bytes of another row: only such rows
    can be in a group. One sort of the rows as opaque byte strings."""
    keys = np.ascontiguousarray(keys)
    _, group, counts = np.unique(keys.view(np.dtype((np.void, keys.shape[1] * keys.itemsize))).ravel(),
                                 return_inverse=True, return_counts=True)
    return counts[group.ravel()] > 1


def _canonical(values: np.ndarray) -> np.ndarray:
    """+0 folds -0.0 into 0.0 (they give equal logits); C order."""
    return np.ascontiguousarray(values + values.dtype.type(0))


def _lowest_identical(W: np.ndarray, b: np.ndarray | None, rows: np.ndarray, block: int) -> np.ndarray:
    """For each of ``rows`` (ascending ids), the lowest of them bit-identical to it (row
    and bias): hashed whole, every hash match confirmed exactly."""
    lowest = np.empty(rows.size, np.int64)
    seen: dict[bytes, list[int]] = {}  # digest -> the distinct rows (ids) with that digest
    for start in range(0, rows.size, block):
        ids = rows[start:start + block]
        values = _canonical(np.asarray(W[ids]))
        bias = None if b is None else _canonical(np.asarray(b[ids]))
        for r, row in enumerate(values):
            key = row.tobytes() + (bias[r].tobytes() if bias is not None else b"")
            digest = hashlib.blake2b(key, digest_size=16).digest()
            match = next((u for u in seen.get(digest, ())
                          if np.array_equal(_canonical(np.asarray(W[u])), row)
                          and (b is None or _canonical(np.asarray(b[u])) == bias[r])), None)
            if match is None:
                match = int(ids[r])
                seen.setdefault(digest, []).append(match)
            lowest[start + r] = match
    return lowest
