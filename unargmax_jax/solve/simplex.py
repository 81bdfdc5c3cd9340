"""Optimal bases for many tokens at once: a batched revised simplex on the certificate LP.

On a box [lo, hi], token i's margin is the value of the LP over certificates

.. math:: \\min_{\\lambda, p, q \\ge 0}\\; c^T\\lambda + hi^T p - lo^T q \\;\\text{s.t.}\\;
          A^T\\lambda - p + q = 0,\\; 1^T\\lambda = 1

(rows :math:`a_j = w_i - w_j`, :math:`c_j = b_i - b_j`; at the optimum p - q = g = A^T lam
and :math:`hi^T p - lo^T q = \\sigma_X(g)`). It has d + 1 equality rows whatever C is, and
its simplex multipliers y = (-x, t) are the margin LP's point and margin: the reduced
cost of row j is :math:`z_i(x) - z_j(x) - t`, so pricing the rows is one product W x and
row generation is built in (columns enter from a fixed-capacity set of candidate rows,
refilled from all C rows every few pivots).

Every lam the iteration visits is feasible, so its objective is an upper bound on the
margin all along: an unargmaxable token is certified as soon as the bound is negative,
long before optimality. The batch keeps B explicit inverses of the (d + 1) x (d + 1)
basis matrices (product-form updates, refactorised every few dozen pivots) in NumPy
float64: each pivot of the whole batch is a handful of batched matrix-vector products.
A pivoting rule of Dantzig on normalised columns with Harris's two-pass ratio test; a
token that stalls or runs out of pivots is left to the per-token HiGHS path.

This module only finds bases; :mod:`.basis` proves the verdicts from them.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np

OPTIMAL, RUNNING, FAILED, DECIDED = 0, 1, 2, 3


class Batch(NamedTuple):
    """The simplex state of B tokens (m = d + 1 rows, K candidate slots per token).

    Columns 0..K-1 are the slots' lam (column :math:`[a_j; 1]`, cost :math:`c_j`), K..K+d-1
    are p (column :math:`-e_k`, cost :math:`hi_k`), K+d..K+2d-1 are q (:math:`e_k`,
    cost :math:`-lo_k`).

    Attributes:
        tokens: (B,) token ids.
        rows: (B, K) the candidate row in each slot.
        cols: (B, K, d) :math:`a_j = w_i - w_j` per slot; ``cost``: (B, K) :math:`c_j`.
        norms: (B, K) :math:`\\|[a_j; 1]\\|`, for the normalised pricing rule.
        basis: (B, m) the column basic in each row of the basis.
        inverse: (B, m, m) the basis matrices' inverses; the basic solution is its last column.
        pivots: (B,) pivots made; ``status``: (B,) OPTIMAL, RUNNING or FAILED.
    """

    tokens: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    cost: np.ndarray
    norms: np.ndarray
    basis: np.ndarray
    inverse: np.ndarray
    pivots: np.ndarray
    status: np.ndarray


def _slot_columns(W, b64, tokens, rows):
    """(a_j, c_j, ||[a_j; 1]||) for each token's slot rows, float64 (B, K, d)."""
    own = np.asarray(W[tokens], np.float64)
    cols = own[:, None, :] - np.asarray(W[rows.ravel()], np.float64).reshape(rows.shape + (W.shape[1],))
    cost = b64[tokens][:, None] - b64[rows]
    return cols, cost, np.sqrt(np.einsum("bkd,bkd->bk", cols, cols) + 1.0)


def _basis_matrix(batch: Batch) -> np.ndarray:
    """(B, m, m): column r is the column of the variable basic in row r."""
    B, K, d = batch.cols.shape
    m = d + 1
    is_lam = batch.basis < K
    slot = np.where(is_lam, batch.basis, 0)
    lam_cols = np.take_along_axis(batch.cols, slot[:, :, None], axis=1)  # (B, m, d)
    M = np.zeros((B, m, m))
    M[:, :d, :] = np.swapaxes(lam_cols, 1, 2) * is_lam[:, None, :]
    M[:, d, :] = is_lam
    b, r = np.nonzero(~is_lam)
    k = (batch.basis[b, r] - K) % d
    M[b, k, r] = np.where(batch.basis[b, r] < K + d, -1.0, 1.0)
    return M


def _column(batch: Batch, entering: np.ndarray) -> np.ndarray:
    """(B, m): the column of each token's entering variable."""
    B, K, d = batch.cols.shape
    slot = np.minimum(entering, K - 1)
    col = np.zeros((B, d + 1))
    col[:, :d] = batch.cols[np.arange(B), slot]
    col[:, d] = 1.0
    unit = entering >= K
    col[unit] = 0.0
    k = (entering[unit] - K) % d
    col[np.flatnonzero(unit), k] = np.where(entering[unit] < K + d, -1.0, 1.0)
    return col


def _basic_costs(batch: Batch, lo, hi) -> np.ndarray:
    K, d = batch.cols.shape[1:]
    slot = np.minimum(batch.basis, K - 1)
    k = (batch.basis - K) % d
    lam_cost = np.take_along_axis(batch.cost, slot, axis=1)
    return np.where(batch.basis < K, lam_cost, np.where(batch.basis < K + d, hi[k], -lo[k]))


def duals(batch: Batch, lo, hi) -> np.ndarray:
    """(B, m) simplex multipliers y (B^T y = c_B): the margin LP's (-x, t)."""
    return np.einsum("bij,bi->bj", batch.inverse, _basic_costs(batch, lo, hi))


def objective(batch: Batch, lo, hi) -> np.ndarray:
    """(B,) c_B^T x_B: an upper bound on each token's margin (up to rounding)."""
    return np.einsum("bi,bi->b", _basic_costs(batch, lo, hi), batch.inverse[:, :, -1])


def _reduced_costs(batch: Batch, y, lo, hi) -> np.ndarray:
    """(B, K + 2d) reduced costs over column norms; +inf on basic columns."""
    B, K, d = batch.cols.shape
    lam = (batch.cost - np.einsum("bkd,bd->bk", batch.cols, y[:, :d]) - y[:, d:]) / batch.norms
    rc = np.concatenate([lam, hi + y[:, :d], -lo - y[:, :d]], axis=1)
    np.put_along_axis(rc, batch.basis, np.inf, axis=1)
    return rc


def _pivot(batch: Batch, moving: np.ndarray, entering: np.ndarray, *, feasibility: float) -> None:
    """One pivot for the tokens ``moving`` (B,) bool, in place: Harris's two-pass ratio test
    (largest pivot among the near-minimal ratios), then a product-form update of the inverse.
    A token with no positive pivot entry (the LP would be unbounded: impossible here, so a
    numerical failure) is marked FAILED."""
    u = np.einsum("bij,bj->bi", batch.inverse, _column(batch, entering))
    x_B = np.maximum(batch.inverse[:, :, -1], 0.0)
    usable = u > 1e-9 * np.max(np.abs(u), axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.min(np.where(usable, (x_B + feasibility) / u, np.inf), axis=1)
        near = usable & (x_B / u <= bound[:, None])
    failed = moving & ~np.any(usable, axis=1)
    batch.status[failed] = FAILED
    moving = moving & ~failed
    r = np.argmax(np.where(near, u, -np.inf), axis=1)
    B = u.shape[0]
    pivot = np.where(moving, u[np.arange(B), r], 1.0)
    u = np.where(moving[:, None], u, 0.0)
    row = batch.inverse[np.arange(B), r, :] / pivot[:, None]
    np.subtract(batch.inverse, u[:, :, None] * row[:, None, :], out=batch.inverse)
    batch.inverse[np.arange(B), r, :] = row
    batch.basis[moving, r[moving]] = entering[moving]
    batch.pivots[moving] += 1


def refactor(batch: Batch) -> None:
    """Recompute the inverses from the basis columns (rounding in the updates grows);
    a token whose basis matrix is singular is marked FAILED."""
    M = _basis_matrix(batch)
    try:
        batch.inverse[...] = np.linalg.inv(M)
    except np.linalg.LinAlgError:
        for n in range(M.shape[0]):
            try:
                batch.inverse[n] = np.linalg.inv(M[n])
            except np.linalg.LinAlgError:
                batch.status[n] = FAILED


def start(W, b64, tokens, candidates, lo, hi) -> Batch:
    """A feasible starting basis per token: lam = 1 on its first candidate row j, and p_k or
    q_k (by the sign of :math:`a_{jk}`) absorbing g = a_j. ``candidates``: (B, slots) rows."""
    tokens = np.asarray(tokens, np.int64)
    rows = np.asarray(candidates, np.int64)
    cols, cost, norms = _slot_columns(W, b64, tokens, rows)
    (B, slots), d = rows.shape, W.shape[1]
    k = np.arange(d)
    basis = np.empty((B, d + 1), np.int64)
    basis[:, :d] = np.where(cols[:, 0, :] >= 0, slots + k, slots + d + k)
    basis[:, d] = 0
    batch = Batch(tokens, rows, cols, cost, norms, basis, np.zeros((B, d + 1, d + 1)), np.zeros(B, np.int64),
                  np.full(B, RUNNING, np.int8))
    refactor(batch)
    return batch


def concatenate(a: Batch, b: Batch) -> Batch:
    return Batch(*(np.concatenate([x, y]) for x, y in zip(a, b)))


def take(batch: Batch, keep: np.ndarray) -> Batch:
    return Batch(*(x[keep] for x in batch))


def all_margins(W, b64, tokens, x, *, block: int = 1 << 14) -> np.ndarray:
    """(B, C) float64 :math:`z_i(x_b) - z_j(x_b)` for each token i = tokens[b] at its point."""
    X = np.asarray(x, np.float64).T
    z = np.empty((x.shape[0], W.shape[0]))
    for s in range(0, W.shape[0], block):
        z[:, s:s + block] = (np.asarray(W[s:s + block], np.float64) @ X).T + b64[s:s + block]
    own = z[np.arange(x.shape[0]), tokens]
    return own[:, None] - z


def primal_point(batch: Batch, y, lo, hi):
    """(x, t) of the margin LP read off the multipliers, x clipped into the box."""
    d = batch.cols.shape[2]
    return np.clip(-y[:, :d], lo, hi), y[:, d]


def refill(W, b64, batch: Batch, margins: np.ndarray, t: np.ndarray, *, tolerance: float, grow: int) -> np.ndarray:
    """Put the rows most violated at each token's point (margin below t) into nonbasic
    slots (their rows leave the candidate set), in place; returns (B,) how many rows each
    token took in."""
    B, K, d = batch.cols.shape
    margins = margins.copy()
    margins[np.arange(B), batch.tokens] = np.inf
    np.put_along_axis(margins, batch.rows, np.inf, axis=1)
    violated = margins < (t - tolerance)[:, None]
    count = np.minimum(violated.sum(axis=1), grow)
    if not count.any():
        return count
    g = int(count.max())
    new_rows = np.argpartition(np.where(violated, margins, np.inf), g - 1, axis=1)[:, :g] if g < margins.shape[1] \
        else np.argsort(margins, axis=1)[:, :g]
    basic = np.zeros((B, K), bool)
    lam_basic = batch.basis < K
    basic[np.nonzero(lam_basic)[0], batch.basis[lam_basic]] = True
    for n in np.flatnonzero(count):
        free_slots = np.flatnonzero(~basic[n])[: int(count[n])]
        rows = new_rows[n][np.argsort(margins[n, new_rows[n]])][: free_slots.size]
        batch.rows[n, free_slots] = rows
        cols, cost, norms = _slot_columns(W, b64, batch.tokens[n:n + 1], rows[None, :])
        batch.cols[n, free_slots], batch.cost[n, free_slots], batch.norms[n, free_slots] = cols[0], cost[0], norms[0]
    return count


class Outcome(NamedTuple):
    """One token's final basis: ``rows`` the candidate rows, ``lam`` their weights, ``x``
    and ``t`` the margin LP's point and value, ``active`` the rows basic in lam (the
    support J), ``free`` the coordinates with neither p nor q basic (F), and ``status``."""

    token: int
    rows: np.ndarray
    lam: np.ndarray
    x: np.ndarray
    t: float
    active: np.ndarray
    free: np.ndarray
    status: int
    pivots: int


def outcome(batch: Batch, n: int, y, lo, hi) -> Outcome:
    """Token n's current basis as an :class:`Outcome`."""
    K, d = batch.cols.shape[1:]
    basis, x_B = batch.basis[n], batch.inverse[n, :, -1]
    lam = np.zeros(K)
    is_lam = basis < K
    lam[basis[is_lam]] = np.maximum(x_B[is_lam], 0.0)
    active = np.zeros(K, bool)
    active[basis[is_lam]] = True
    bound = np.zeros(d, bool)
    bound[(basis[~is_lam] - K) % d] = True
    return Outcome(int(batch.tokens[n]), batch.rows[n].copy(), lam, np.clip(-y[n, :d], lo, hi), float(y[n, d]),
                   active, ~bound, int(batch.status[n]), int(batch.pivots[n]))


def solve(W, b64, queue: deque, candidates, lo, hi, *, batch_size: int, max_pivots: int, price_every: int = 8,
          refactor_every: int = 32, decide=None, expired=lambda: False):
    """Run the simplex on every token of ``queue`` (consumed), ``batch_size`` at a time
    (finished tokens' places are refilled); yields an :class:`Outcome` per token that ends
    OPTIMAL or FAILED. ``candidates(token) -> rows`` gives a token's starting rows (its
    first one enters the starting basis). Every ``price_every`` pivots all C rows are
    priced at each token's point; there ``decide(outcome, margins) -> bool`` (margins: the
    float64 margins of all rows at the point) may end a token early: it found a proof."""
    d = W.shape[1]
    m = d + 1
    slots = min(2 * m + 16, W.shape[0] - 1)
    extent = float(np.max(np.maximum(np.abs(lo), np.abs(hi))))
    optimality = 1e-11 * max(extent, 1e-300)
    norms = np.linalg.norm(np.asarray(W[:4096], np.float64), axis=1)
    violation = 1e-12 * (float(np.max(np.abs(b64), initial=0.0)) + extent * float(np.max(norms)))
    batch, since_refactor = None, 0
    while True:
        if batch is not None:
            if expired():
                batch.status[batch.status == RUNNING] = FAILED
            ended = (batch.status == OPTIMAL) | (batch.status == FAILED)
            if ended.any():
                y = duals(batch, lo, hi)
                yield from (outcome(batch, n, y, lo, hi) for n in np.flatnonzero(ended))
            batch = take(batch, batch.status == RUNNING)
        running = 0 if batch is None else batch.tokens.size
        if running < batch_size and queue and not expired():
            new = [queue.popleft() for _ in range(min(batch_size - running, len(queue)))]
            rows = np.stack([_fill(candidates(i), i, slots, W.shape[0]) for i in new])
            fresh = start(W, b64, np.array(new), rows, lo, hi)
            batch = fresh if batch is None else concatenate(batch, fresh)
        if batch is None or not batch.tokens.size:
            return
        y = duals(batch, lo, hi)
        # Price all C rows at each point: proofs end tokens early, rows that beat the point join.
        x, t = primal_point(batch, y, lo, hi)
        margins = all_margins(W, b64, batch.tokens, x)
        if decide is not None:
            for n in range(batch.tokens.size):
                if decide(outcome(batch, n, y, lo, hi), margins[n]):
                    batch.status[n] = DECIDED
        added = refill(W, b64, batch, margins, t, tolerance=violation, grow=max(8, m // 4))
        for step in range(price_every):
            run = batch.status == RUNNING
            if step:
                y = duals(batch, lo, hi)
            rc = _reduced_costs(batch, y, lo, hi)
            entering = np.argmin(rc, axis=1)
            improving = rc[np.arange(rc.shape[0]), entering] < -optimality
            if step == 0:
                done = run & ~improving & (added == 0)
                batch.status[done] = OPTIMAL
                run &= ~done
            moving = run & improving
            if not moving.any():
                break
            _pivot(batch, moving, entering, feasibility=1e-11)
            since_refactor += 1
        batch.status[(batch.status == RUNNING) & (batch.pivots >= max_pivots)] = FAILED
        if since_refactor >= refactor_every:
            refactor(batch)
            since_refactor = 0


def _fill(rows, token: int, size: int, C: int) -> np.ndarray:
    """``size`` distinct candidate rows other than ``token``: ``rows`` first, then any."""
    ordered = list(dict.fromkeys(int(j) for j in rows if int(j) != token))[:size]
    seen = set(ordered) | {token}
    j = 0
    while len(ordered) < size and j < C:
        if j not in seen:
            ordered.append(j)
        j += 1
    return np.array(ordered[:size], np.int64)
