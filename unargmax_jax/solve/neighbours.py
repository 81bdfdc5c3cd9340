"""What one solved row tells about others: shared certificates, near-identical groups,
and the solved rows near an open one (whose optimal bases start its LP).

Real heads hold groups of rows that training barely moved apart (rare classes, within a
few float32 ulps of each other: thousands in an OCR head). First-order iterations cannot
tell their margins apart; one LP often decides the whole group (its certificate beats
every row of it), and the optimal basis of one row is an almost optimal start for the
rows a little further away.
"""

from __future__ import annotations

import numpy as np

from ..twins import probe_columns, sharing_a_key
from .context import Context
from .evidence import Evidence, pending
from .rational import float_certificate_bound, keep_float_certificate, rows64


NEAR = 0.02  # relative distance of [w; b / extent] under which a solved row's vertex starts another's simplex


def scaled_rows(ctx: Context, b64, ids) -> np.ndarray:
    """(n, d + 1) rows ``[w; b / extent]``: one unit of distance moves a margin on X by about one unit."""
    ids = np.asarray(ids, np.int64)
    return np.c_[rows64(ctx.W, ids), b64[ids] / max(float(np.max(ctx.extent)), 1e-300)]


def nearest(ctx: Context, b64, rows, targets):
    """For each of ``rows``: (distance to its nearest row among ``targets``, the position of
    that target, its own norm), all as :func:`scaled_rows`."""
    A, B = scaled_rows(ctx, b64, rows), scaled_rows(ctx, b64, targets)
    dist = np.sqrt(np.maximum((A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2 * A @ B.T, 0.0))
    best = np.argmin(dist, axis=1)
    return dist[np.arange(len(rows)), best], best, np.linalg.norm(A, axis=1)


class Vertices:
    """Optimal bases of the rows solved so far, and which open rows lie within relative
    distance ``NEAR`` of one (each row's nearest solved row is updated incrementally:
    a row is measured only against the rows solved since it was last measured)."""

    def __init__(self, ctx: Context, b64):
        self.ctx, self.b64 = ctx, b64
        self.solved: list[int] = []
        self.bases: dict = {}  # row -> its optimal basis.Basis
        self.seen: dict[int, int] = {}
        self.nearest: dict[int, tuple[float, int, float]] = {}

    def add(self, token: int, found) -> None:
        self.solved.append(token)
        self.bases[token] = found

    def _measure(self, rows: list) -> None:
        start = min((self.seen.get(i, 0) for i in rows), default=len(self.solved))
        if start >= len(self.solved):
            return
        targets = self.solved[start:]
        dist, best, norm = nearest(self.ctx, self.b64, rows, targets)
        for r, i in enumerate(rows):
            if dist[r] < self.nearest.get(i, (np.inf,))[0]:
                self.nearest[i] = (float(dist[r]), targets[best[r]], float(norm[r]))
            self.seen[i] = len(self.solved)

    def near(self, rows: list) -> dict:
        """{row: its nearest solved row's optimal basis} for the rows within ``NEAR`` of one."""
        if rows:
            self._measure(rows)
        return {i: self.bases[self.nearest[i][1]] for i in rows
                if i in self.nearest and self.nearest[i][0] <= NEAR * self.nearest[i][2]}

    def nearest_basis(self, row: int):
        return self.near([row]).get(row)


def near_duplicate_groups(W, b64: np.ndarray, ids: np.ndarray, *, relative: float = 1e-6,
                          block: int = 4096) -> list:
    """Groups (of at least two) of rows among ``ids`` whose weights and bias agree to
    ``relative`` times the head's largest entry, largest group first: rows snapped to that
    grid and compared exactly (rows near a grid line may fall into two groups). Only rows
    whose snapped bias and 8 snapped columns match another's are compared whole (sorting
    every whole float64 row took 14 s for 61485 rows at d = 2048)."""
    if ids.size < 2:
        return []
    largest = max([float(np.max(np.abs(b64[ids])))] + [float(np.max(np.abs(W[ids[s:s + block]])))
                                                       for s in range(0, ids.size, block)])
    step = relative * max(largest, 1e-300)
    # + 0.0: a snapped -0.0 and 0.0 are the same grid value (the keys are compared as bytes).
    probe = np.round(np.c_[np.asarray(W[np.ix_(ids, probe_columns(W.shape[1]))], np.float64), b64[ids]] / step) + 0.0
    ids = ids[sharing_a_key(probe)]
    if ids.size < 2:
        return []
    rows = np.c_[np.asarray(W[ids], np.float64), b64[ids]]
    _, group, counts = np.unique(np.round(rows / step), axis=0, return_inverse=True, return_counts=True)
    group = group.ravel()
    order = np.argsort(-counts, kind="stable")
    return [ids[group == g] for g in order if counts[g] > 1]


def share_certificate(ctx: Context, evidence: Evidence, token: int, b64, lo, hi) -> int:
    """Try token's certificate on every other undecided row; returns how many it decides.

    A certificate lam proves :math:`z_j \\le \\lambda^T z` on X for any row j whose
    :math:`U_j(\\lambda) = b_j - \\lambda^T b + \\sigma(w_j - W^T \\lambda) \\le 0`, not only for
    the row it was found for. Heads often hold large groups of almost identical rows (rare
    classes that training barely moved: thousands in an OCR head), all dominated by one
    combination of trained rows: one LP then decides the whole group. One float64 pass
    over the undecided rows screens them; each row that passes is re-bounded rigorously
    (:func:`float_certificate_bound`) without itself in the support."""
    support = np.asarray(evidence.cert_support.get(token, []), np.int64)
    weights = np.asarray(evidence.cert_weights.get(token, []), np.float64)
    others = pending(evidence)
    if ctx.exact_certificates_only or not support.size or not others.size:
        return 0
    s = float(weights.sum())
    combination = (weights @ rows64(ctx.W, support)) / s
    g = rows64(ctx.W, others) - combination
    estimate = b64[others] - float(weights @ b64[support]) / s + np.maximum(g * lo, g * hi).sum(axis=1)
    decided = 0
    for j in others[estimate < 0]:
        keep = support != j
        if not np.any(keep & (weights > 0)):
            continue
        upper = float_certificate_bound(ctx.W, b64, lo, hi, int(j), support[keep], weights[keep])
        if upper <= 0:
            keep_float_certificate(evidence, int(j), "basis", support[keep], weights[keep], upper)
            decided += 1
    return decided
