"""The independent checker's witness pass: one product per block of witnesses, padded.

Part of :mod:`unargmax_jax.verify` and, like it, sharing no code with the solver.

For witness x of token i, :math:`z_j(x) = w_j^T x + b_j`. A block of witnesses is one
product :math:`Z = X W^T + b` in the head's own precision p (float32 when the head, the
bias and the witnesses are float32 numbers, else float64): whatever the summation order
(BLAS blocks, FMA), :math:`|\\hat z_j - z_j| \\le \\gamma_{d+1}(|x|^T|w_j| + |b_j|)`
(Higham, Thm 3.5), and :math:`|x|^T|w_j| \\le \\|x\\|\\|w_j\\|` (Cauchy-Schwarz). With
:math:`e_j = \\gamma(\\|x\\|\\|w_j\\| + |b_j|) + \\tau` and :math:`E = \\max_j e_j` (bounded
from the largest row norm and bias), the rival maximum :math:`H = \\max_{j \\ne i} \\hat z_j`
gives

.. math:: \\hat z_i - H - e_i - E \\;\\le\\; m_i(x) \\;\\le\\; \\hat z_i - H + e_i + E.

A positive left side proves the witness; H above :math:`\\hat z_i + e_i + E` refutes it.
Only the rest (and witnesses whose stored lower bound is above the left side) go on to
float64 on the few rows within :math:`2E` of H, with per-row pads, and from there to
exact arithmetic on the rows float64 cannot settle. Rows further below H cannot be the
rival maximum nor come within the float64 pad of :math:`z_i`. The absolute term
:math:`\\tau` covers subnormals, flushed to zero or not.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction

import numpy as np

from . import domains as dom

_CHUNK = 4096  # rows per pass when a pass over W would otherwise copy all of it


def gamma(n: int, unit: float) -> float:
    """:math:`\\gamma_n` for unit roundoff ``unit``, doubled (covers the pad's own rounding)."""
    return 2.0 * n * unit / (1.0 - n * unit)


def row_norms(W: np.ndarray) -> np.ndarray:
    """:math:`\\|w_j\\|_2` in float64, a chunk of rows at a time (no float64 copy of W)."""
    return np.concatenate([np.linalg.norm(np.asarray(W[s:s + _CHUNK], np.float64), axis=1)
                           for s in range(0, W.shape[0], _CHUNK)] or [np.zeros(0)])


def twin_groups(W: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Group id per row: equal ids for exactly equal (row, bias) pairs (-0.0 == 0.0).

    Rows are grouped by a 128-bit digest of their float64 values, then every group is
    checked value by value; a collision (never seen) falls back to sorting the rows.
    """
    C = W.shape[0]
    digests = np.empty((C, 2), np.uint64)
    for s in range(0, C, _CHUNK):
        rows = np.asarray(W[s:s + _CHUNK], np.float64) + 0.0
        if b is not None:
            rows = np.concatenate([rows, np.asarray(b[s:s + _CHUNK], np.float64)[:, None] + 0.0], axis=1)
        rows = np.ascontiguousarray(rows)
        for r in range(rows.shape[0]):
            digests[s + r] = np.frombuffer(hashlib.blake2b(rows[r].tobytes(), digest_size=16).digest(), np.uint64)
    _, groups = np.unique(digests, axis=0, return_inverse=True)
    groups = groups.reshape(-1)
    order = np.argsort(groups, kind="stable")
    split = np.flatnonzero(np.diff(groups[order])) + 1
    for members in np.split(order, split):
        if members.size > 1 and not _all_equal(W, b, members):
            rows = np.asarray(W, np.float64) + 0.0
            if b is not None:
                rows = np.concatenate([rows, np.asarray(b, np.float64)[:, None] + 0.0], axis=1)
            return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)
    return groups


def _all_equal(W, b, members) -> bool:
    rows = np.asarray(W[members], np.float64)
    same = bool(np.all(rows == rows[0]))
    return same and (b is None or bool(np.all(np.asarray(b)[members] == np.asarray(b)[members[0]])))


class Head:
    """The head as verify needs it: W (as given), float64 bias, norms, twins, precision."""

    def __init__(self, W, bias, groups):
        self.W, self.bias = W, bias
        self.C, self.d = W.shape
        self.norms = row_norms(W)
        self.abs_bias = np.abs(bias)
        self.max_norm = float(self.norms.max(initial=0.0))
        self.max_bias = float(self.abs_bias.max(initial=0.0))
        self.groups = groups  # None unless ties="first"
        if groups is not None:
            first = np.full(int(groups.max(initial=-1)) + 1, W.shape[0])
            np.minimum.at(first, groups, np.arange(W.shape[0]))
            self.lower_twin = first[groups] < np.arange(W.shape[0])
            self.group_size = np.bincount(groups)
        # float32 products when every input is a float32 number (the usual head)
        self.single = W.dtype == np.float32 and bool(np.all(bias.astype(np.float32) == bias))
        self.bias32 = bias.astype(np.float32) if self.single else None
        self._W64 = None

    def W64(self) -> np.ndarray:
        """W in float64 (a copy, made once, only for a float32 head whose bias or points
        are not float32 numbers)."""
        if self.W.dtype != np.float64 and self._W64 is None:
            self._W64 = np.asarray(self.W, np.float64)
        return self.W if self.W.dtype == np.float64 else self._W64

    def twins(self, i: int) -> np.ndarray:
        return np.flatnonzero(self.groups == self.groups[i])


def in_domain(domain, x: np.ndarray) -> bool:
    """x in X, exactly (a ball's boundary in rationals)."""
    if not np.all(np.isfinite(x)):
        return False
    if isinstance(domain, dom.Free):
        return True
    if isinstance(domain, dom.Box):
        lo, hi = box_bounds(domain, x.shape[0])
        return bool(np.all(lo <= x) and np.all(x <= hi))
    centre = np.broadcast_to(np.asarray(domain.center, np.float64), x.shape)
    radius = float(domain.radius)
    if float(np.linalg.norm(x - centre)) <= radius * (1 - 1e-12):
        return True
    exact = sum((Fraction(float(a)) - Fraction(float(c))) ** 2 for a, c in zip(x, centre))
    return exact <= Fraction(radius) ** 2


def box_bounds(domain, d):
    lo = np.broadcast_to(np.asarray(domain.lo, np.float64), (d,))
    hi = np.broadcast_to(np.asarray(domain.hi, np.float64), (d,))
    return lo, hi


def _inside_block(domain, X: np.ndarray) -> np.ndarray:
    """Per row of X: in the domain (a vectorised test, exact on a ball's edge)."""
    inside = np.all(np.isfinite(X), axis=1)
    if isinstance(domain, dom.Box):
        lo, hi = box_bounds(domain, X.shape[1])
        inside &= np.all((lo <= X) & (X <= hi), axis=1)
    elif isinstance(domain, dom.Ball):
        centre = np.asarray(domain.center, np.float64)
        clear = np.linalg.norm(X - centre, axis=1) <= float(domain.radius) * (1 - 1e-12)
        for r in np.flatnonzero(inside & ~clear):
            inside[r] = in_domain(domain, X[r])
    return inside


def _block_product(head: Head, X: np.ndarray):
    """:math:`\\hat Z = X W^T + b` in float32 when X, W and b are float32 numbers, else
    float64; with its unit roundoff."""
    X32 = X.astype(np.float32)
    if head.single and np.all(X32 == X):
        Z = X32 @ head.W.T
        Z += head.bias32
        return Z, 2.0 ** -24
    Z = X @ head.W64().T
    Z += head.bias
    return Z, 2.0 ** -53


def block_rows(d: int) -> int:
    """Witnesses per product: at d / 2 rows the (block x C) logits in the head's dtype are
    half the head's bytes (at least 64 rows, at most 1024: BLAS runs near its peak there)."""
    return int(np.clip(d // 2, 64, 1024))


def check_witnesses(report, head: Head, domain, argmaxable: np.ndarray, fail, *, block=None) -> int:
    """Re-prove every argmaxable token's witness; ``fail(i, why)`` for each that fails.

    Returns:
        How many witnesses hold.
    """
    C, d = head.C, head.d
    ids = np.asarray(report.witness_ids, np.int64)
    X = np.asarray(report.witnesses).reshape(-1, d)  # float16, float32 or float64; upcast block by block
    if ids.size != X.shape[0] or np.unique(ids).size != ids.size:
        for i in np.flatnonzero(argmaxable):
            fail(i, "witness table is malformed")
        return 0
    has = np.zeros(C, bool)
    has[ids[(ids >= 0) & (ids < C)]] = True
    for i in np.flatnonzero(argmaxable & ~has):
        fail(i, "argmaxable but no witness")
    block = block or block_rows(d)
    checked = 0
    for start in range(0, ids.size, block):
        part = ids[start:start + block]
        if np.any((part < 0) | (part >= C)):
            for i in part:
                fail(i, "witness for a token id out of range")
            continue
        keep = argmaxable[part]
        if keep.any():
            checked += _check_block(report, head, domain, part[keep], np.asarray(X[start:start + block][keep], np.float64),
                                    fail)
    return checked


def _check_block(report, head: Head, domain, part, Xp, fail) -> int:
    """The witnesses Xp of tokens ``part`` against every row, in one padded product."""
    n, d = part.size, head.d
    rows = np.arange(n)
    Z, unit = _block_product(head, Xp)
    own = Z[rows, part].astype(np.float64)
    Z[rows, part] = -np.inf  # not competitors: the token itself and, with ties="first", its twins
    if head.groups is not None:
        for r in np.flatnonzero(head.group_size[head.groups[part]] > 1):
            Z[r, head.twins(int(part[r]))] = -np.inf
    H = Z.max(axis=1).astype(np.float64) if head.C > 1 else np.full(n, -np.inf)
    nx = np.linalg.norm(Xp, axis=1)
    g = gamma(d + 4, unit)
    tiny = (2.0 ** -100 if unit > 2.0 ** -30 else 2.0 ** -1000) * (d + 2) * (1 + nx) * (1 + head.max_norm + head.max_bias)
    E = g * (nx * head.max_norm + head.max_bias) + tiny
    spread = (g * (nx * head.norms[part] + head.abs_bias[part]) + tiny + E) * (1 + 1e-12)
    finite = np.isfinite(own) & (np.isfinite(H) | (H == -np.inf))
    with np.errstate(invalid="ignore"):
        gap = own - H
        lower = np.asarray(report.lower, np.float64)[part]
        easy = finite & (gap > spread) & (lower <= gap - spread) & _inside_block(domain, Xp)
    if head.groups is not None:
        easy &= ~head.lower_twin[part]
    checked = int(easy.sum())
    for r in np.flatnonzero(~easy):
        i = int(part[r])
        why = _row_failure(report, head, domain, i, Xp[r], Z[r], own[r] - H[r], H[r], E[r], spread[r], finite[r])
        if why:
            fail(i, why)
        else:
            checked += 1
    return checked


def _row_failure(report, head: Head, domain, i, x, z, gap, H, E, spread, finite) -> str | None:
    """Why token i's witness x does not prove it argmaxable, or None when it does: the
    block's bounds first, then float64 on the rows within 2E of H, then exact arithmetic."""
    if not in_domain(domain, x):
        return "witness lies outside the domain"
    if head.groups is not None and head.lower_twin[i]:
        return "a lower-index twin wins the tie, so this token cannot be the argmax"
    if finite and -gap > spread:
        return "witness does not make the token the argmax"
    if finite and H == -np.inf:  # no rival at all
        rows = np.zeros(0, np.int64)
    elif finite:
        # Every other row is below the block's rival maximum for sure (module docstring).
        threshold = H - 2 * E * (1 + 1e-9) - 1e-15 * abs(H)
        rows = np.flatnonzero(np.asarray(z, np.float64) >= threshold)
    else:  # a float32 logit overflowed: every row in float64
        rows = np.flatnonzero(np.asarray(z, np.float64) != -np.inf) if np.isfinite(H) else _all_rivals(head, i)
    bias, norms, nx = head.bias, head.norms, float(np.linalg.norm(x))
    rivals = np.asarray(head.W[rows], np.float64) @ x + bias[rows]
    gaps = (float(np.asarray(head.W[i], np.float64) @ x) + bias[i]) - rivals
    pad = (nx * norms[rows] + nx * norms[i] + head.abs_bias[i] + head.abs_bias[rows]) * gamma(head.d + 4, 2.0 ** -53) + 1e-300
    if np.any(gaps + pad < 0):
        return "witness does not make the token the argmax"
    close = rows[gaps - pad <= 0]
    if close.size and not exact_margin_positive(head.W, bias, i, x, close):
        return "witness does not make the token the strict argmax (exact check)"
    bound = float(np.min(gaps + pad)) if rows.size else np.inf
    if report.lower[i] > bound * (1 + 1e-9) + 1e-12 * (1 + abs(bound)):
        return f"stored lower bound {report.lower[i]} exceeds the margin {bound} at the witness"
    return None


def _all_rivals(head: Head, i: int) -> np.ndarray:
    out = np.ones(head.C, bool)
    out[head.twins(i) if head.groups is not None else i] = False
    out[i] = False
    return np.flatnonzero(out)


def exact_margin_positive(W, bias, i, x, rows) -> bool:
    """:math:`z_i(x) > z_j(x)` for every j in ``rows``, in exact rationals."""
    xs = [Fraction(float(v)) for v in x]
    own = sum((Fraction(float(W[i, k])) * xs[k] for k in range(len(xs))), Fraction(float(bias[i])))
    for j in rows:
        other = sum((Fraction(float(W[j, k])) * xs[k] for k in range(len(xs))), Fraction(float(bias[j])))
        if own - other <= 0:
            return False
    return True
