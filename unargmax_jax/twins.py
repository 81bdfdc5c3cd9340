"""Exact duplicates: tokens whose row and bias are bit-identical to another token's.

An exact twin ties its group everywhere, so no float bound can decide it; the engine
settles every member of a group by the tie rule instead of solving it (see
``Settings.ties``), and the report names each token's twins.
"""

from __future__ import annotations

import hashlib

import numpy as np


def find_twins(W: np.ndarray, b: np.ndarray | None, *, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Group bit-identical (row, bias) pairs.

    Returns ``(representative, inverse)``: ``representative[u]`` is the lowest token id
    of unique row u, and ``inverse[i]`` the unique row of token i. Rows are hashed block
    by block in their own dtype (no copy of W is made) and every hash match is confirmed
    exactly.
    """
    C = W.shape[0]
    inverse = np.empty(C, np.int64)
    representative: list[int] = []
    seen: dict[bytes, list[int]] = {}  # digest -> unique rows with that digest

    def canonical(start, stop):
        # +0 folds -0.0 into 0.0, which gives equal logits.
        rows = np.asarray(W[start:stop]) + W.dtype.type(0)
        bias = None if b is None else np.asarray(b[start:stop]) + b.dtype.type(0)
        return rows, bias

    for start in range(0, C, block):
        rows, bias = canonical(start, min(C, start + block))
        for r, row in enumerate(rows):
            key = row.tobytes() + (bias[r].tobytes() if b is not None else b"")
            digest = hashlib.blake2b(key, digest_size=16).digest()
            match = None
            for u in seen.get(digest, ()):
                other, other_bias = canonical(representative[u], representative[u] + 1)
                if np.array_equal(other[0], row) and (b is None or other_bias[0] == bias[r]):
                    match = u
                    break
            if match is None:
                match = len(representative)
                representative.append(start + r)
                seen.setdefault(digest, []).append(match)
            inverse[start + r] = match
    return np.asarray(representative, np.int64), inverse
