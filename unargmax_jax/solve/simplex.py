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

Once the start's artificial column has left, every lam the iteration visits is
feasible, so its objective is an upper bound on the margin: an unargmaxable token is
certified as soon as the bound is negative, before optimality. The batch keeps B explicit
inverses of the (d + 1) x (d + 1) basis matrices (product-form updates, refactorised every
few dozen pivots) in NumPy float64: each pivot of the whole batch is a handful of batched
matrix-vector products. Dantzig's rule on normalised columns, Harris's two-pass ratio test.

A primal simplex is only as quick as its start: from the point of a first-order method
it needs thousands of pivots on a hard token of a real head (more than HiGHS's dual
simplex takes), from the optimal vertex of a nearby row (a row that training moved a
little away from an already solved one) a few dozen. :mod:`.basis` uses it for those;
a token that runs out of pivots goes on to HiGHS.

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
        pivots: (B,) pivots made; ``status``: (B,) OPTIMAL, RUNNING, FAILED or DECIDED.
        artificial: (B, m) the column of the artificial variable (index K + 2d) of a
            crashed start, cost ``penalty`` (B,).
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
    artificial: np.ndarray
    penalty: np.ndarray


def _slot_columns(W, b64, tokens, rows):
    """(a_j, c_j, ||[a_j; 1]||) for each token's slot rows, float64 (B, K, d)."""
    own = np.asarray(W[tokens], np.float64)
    cols = own[:, None, :] - np.asarray(W[rows.ravel()], np.float64).reshape(rows.shape + (W.shape[1],))
    cost = b64[tokens][:, None] - b64[rows]
    return cols, cost, np.sqrt(np.einsum("bkd,bkd->bk", cols, cols) + 1.0)


def _kinds(index: np.ndarray, K: int, d: int):
    """Which variable each column index is: (lam slot, p, q, artificial) masks and the
    coordinate k of a p or q."""
    lam, art = index < K, index == K + 2 * d
    p = ~lam & (index < K + d)
    return lam, p, ~lam & ~p & ~art, art, (index - K) % d


def _columns_of(batch: Batch, index: np.ndarray) -> np.ndarray:
    """(B, n, m): the columns with indices ``index`` (B, n)."""
    B, K, d = batch.cols.shape
    lam, p, q, art, k = _kinds(index, K, d)
    slot = np.where(lam, index, 0)
    out = np.zeros(index.shape + (d + 1,))
    out[..., :d] = np.take_along_axis(batch.cols, slot[:, :, None], axis=1)
    out[..., d] = 1.0
    out *= lam[..., None]
    b, n = np.nonzero(p | q)
    out[b, n, k[b, n]] = np.where(p[b, n], -1.0, 1.0)
    out[art] = batch.artificial[np.nonzero(art)[0]]
    return out


def _basis_matrix(batch: Batch) -> np.ndarray:
    """(B, m, m): column r is the column of the variable basic in row r."""
    return np.swapaxes(_columns_of(batch, batch.basis), 1, 2)


def _column(batch: Batch, entering: np.ndarray) -> np.ndarray:
    """(B, m): the column of each token's entering variable."""
    return _columns_of(batch, entering[:, None])[:, 0]


def _costs_of(batch: Batch, index: np.ndarray, lo, hi) -> np.ndarray:
    K, d = batch.cols.shape[1:]
    lam, p, q, art, k = _kinds(index, K, d)
    lam_cost = np.take_along_axis(batch.cost, np.where(lam, index, 0), axis=1)
    return np.where(lam, lam_cost, np.where(p, hi[k], np.where(q, -lo[k], batch.penalty[:, None])))


def duals(batch: Batch, lo, hi) -> np.ndarray:
    """(B, m) simplex multipliers y (B^T y = c_B): the margin LP's (-x, t)."""
    return np.einsum("bij,bi->bj", batch.inverse, _costs_of(batch, batch.basis, lo, hi))


def _reduced_costs(batch: Batch, y, lo, hi) -> np.ndarray:
    """(B, K + 2d + 1) reduced costs over column norms; +inf on basic columns and on the
    artificial (once it has left it never comes back)."""
    B, K, d = batch.cols.shape
    lam = (batch.cost - np.einsum("bkd,bd->bk", batch.cols, y[:, :d]) - y[:, d:]) / batch.norms
    rc = np.concatenate([lam, hi + y[:, :d], -lo - y[:, :d], np.full((B, 1), np.inf)], axis=1)
    np.put_along_axis(rc, batch.basis, np.inf, axis=1)
    return rc


def _update(batch: Batch, moving: np.ndarray, u: np.ndarray, r: np.ndarray, entering: np.ndarray) -> None:
    """Product-form update of the inverses: column ``entering`` (B^-1 a = u) replaces the
    variable basic in row r, for the tokens ``moving``."""
    B = u.shape[0]
    pivot = np.where(moving, u[np.arange(B), r], 1.0)
    u = np.where(moving[:, None], u, 0.0)
    row = batch.inverse[np.arange(B), r, :] / pivot[:, None]
    np.subtract(batch.inverse, u[:, :, None] * row[:, None, :], out=batch.inverse)
    batch.inverse[np.arange(B), r, :] = row
    batch.basis[moving, r[moving]] = entering[moving]


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
    _update(batch, moving, u, np.argmax(np.where(near, u, -np.inf), axis=1), entering)
    batch.pivots[moving] += 1


def _invert(M: np.ndarray):
    """(inverses, ok): batched inverses of (B, m, m), ok False where a matrix is singular
    or too ill-conditioned to pivot on in float64."""
    inverse, ok = np.zeros_like(M), np.ones(M.shape[0], bool)
    try:
        inverse[...] = np.linalg.inv(M)
    except np.linalg.LinAlgError:
        for n in range(M.shape[0]):
            try:
                inverse[n] = np.linalg.inv(M[n])
            except np.linalg.LinAlgError:
                ok[n] = False
    size = np.abs(inverse).max(axis=(1, 2)) * np.abs(M).max(axis=(1, 2))
    return inverse, ok & np.isfinite(size) & (size < 1e12)


def refactor(batch: Batch) -> None:
    """Recompute the inverses from the basis columns (rounding in the updates grows);
    a token whose basis matrix is singular is marked FAILED."""
    inverse, ok = _invert(_basis_matrix(batch))
    batch.inverse[ok] = inverse[ok]
    batch.status[~ok] = FAILED


def _cold_basis(cols: np.ndarray, K: int) -> np.ndarray:
    """lam = 1 on slot 0 (row j), and p_k or q_k (by the sign of a_jk) absorbing g = a_j:
    always feasible."""
    d = cols.shape[2]
    k = np.arange(d)
    return np.concatenate([np.where(cols[:, 0, :] >= 0, K + k, K + d + k), np.zeros((cols.shape[0], 1), np.int64)],
                          axis=1)


def _crash_basis(cols: np.ndarray, cost: np.ndarray, x0: np.ndarray, lo, hi) -> np.ndarray:
    """The basis a near-optimal point x0 suggests: its coordinates strictly inside the box
    free (F), the others' p or q basic (at hi: p, at lo: q), and the |F| + 1 slots with
    the smallest margins at x0 as lam (J). Feasible only if the guess is right."""
    B, K, d = cols.shape
    width = hi - lo
    free = (x0 > lo + 1e-4 * width) & (x0 < hi - 1e-4 * width)
    margins = cost + np.einsum("bkd,bd->bk", cols, x0)
    order = np.argsort(margins, axis=1, kind="stable")
    basis = np.empty((B, d + 1), np.int64)
    k = np.arange(d)
    for n in range(B):
        F = int(free[n].sum())
        if F + 1 > K:  # more free coordinates than rows to hold them: no crash
            return None
        at_bound = k[~free[n]]
        upper = x0[n, at_bound] - lo[at_bound] > hi[at_bound] - x0[n, at_bound]
        basis[n] = np.concatenate([order[n, :F + 1], np.where(upper, K + at_bound, K + d + at_bound)])
    return basis


def start(W, b64, tokens, candidates, lo, hi, x0=None, *, penalty: float = 1.0) -> Batch:
    """A starting basis per token. Cold: lam = 1 on its first candidate row (feasible).
    With a near-optimal point ``x0`` (B, d): the basis it suggests (:func:`_crash_basis`);
    where that basic solution has negative entries, one artificial column (Wolfe's single
    artificial variable, cost ``penalty``: big-M) enters at the most negative one, which
    makes it feasible, and the simplex drives the artificial out. ``candidates``: (B, K)."""
    tokens = np.asarray(tokens, np.int64)
    rows = np.asarray(candidates, np.int64)
    cols, cost, norms = _slot_columns(W, b64, tokens, rows)
    (B, K), d = rows.shape, W.shape[1]
    m = d + 1
    basis = _cold_basis(cols, K)
    crash = None if x0 is None else _crash_basis(cols, cost, np.clip(np.asarray(x0, np.float64), lo, hi), lo, hi)
    batch = Batch(tokens, rows, cols, cost, norms, basis, np.zeros((B, m, m)), np.zeros(B, np.int64),
                  np.full(B, RUNNING, np.int8), np.zeros((B, m)), np.full(B, penalty))
    cold_inverse, _ = _invert(_basis_matrix(batch))
    batch.inverse[...] = cold_inverse
    if crash is None:
        return batch
    scale = float(np.max(np.abs(cost))) + float(np.max(np.maximum(np.abs(lo), np.abs(hi)))) * float(
        np.max(np.abs(cols).sum(axis=2)))
    batch.basis[...] = crash
    inverse, ok = _invert(_basis_matrix(batch))
    batch.basis[~ok] = basis[~ok]
    batch.inverse[ok] = inverse[ok]
    x_B = batch.inverse[:, :, -1]
    short = ok & (x_B.min(axis=1) < 0)
    if short.any():
        # The artificial column a = B u with u = -1 on the negative entries: entering at the
        # most negative one lifts every negative entry to >= 0.
        u = -(x_B < 0).astype(np.float64)
        batch.artificial[...] = np.einsum("bij,bj->bi", _basis_matrix(batch), u)
        # Big enough that no real column's cost can pay for keeping the artificial basic.
        batch.penalty[...] = 1e3 * (1.0 + scale * np.abs(batch.artificial).sum(axis=1))
        _update(batch, short, u, np.argmin(x_B, axis=1), np.full(B, K + 2 * d))
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
    is_lam, p, q, _, k = _kinds(basis, K, d)
    lam[basis[is_lam]] = np.maximum(x_B[is_lam], 0.0)
    active = np.zeros(K, bool)
    active[basis[is_lam]] = True
    bound = np.zeros(d, bool)
    bound[k[p | q]] = True
    return Outcome(int(batch.tokens[n]), batch.rows[n].copy(), lam, np.clip(-y[n, :d], lo, hi), float(y[n, d]),
                   active, ~bound, int(batch.status[n]), int(batch.pivots[n]))


def solve(W, b64, queue: deque, candidates, lo, hi, *, batch_size: int, max_pivots: int, price_every: int = 8,
          refactor_every: int = 32, decide=None, expired=lambda: False, start_points=None, wanted=lambda i: True):
    """Run the simplex on every token of ``queue`` (consumed), ``batch_size`` at a time
    (finished tokens' places are refilled); yields an :class:`Outcome` per token that ends
    OPTIMAL or FAILED. ``candidates(token) -> rows`` gives a token's starting rows (its
    first one enters a cold starting basis); ``start_points(tokens) -> (B, d)``, if given,
    near-optimal points whose suggested basis starts the simplex instead. Every ``price_every`` pivots all C rows are
    priced at each token's point; there ``decide(outcome, margins) -> bool`` (margins: the
    float64 margins of all rows at the point) may end a token early: it found a proof.
    Tokens for which ``wanted(token)`` is False by the time they would start are skipped."""
    d = W.shape[1]
    m = d + 1
    slots = K = min(2 * m + 16, W.shape[0] - 1)
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
        new = []
        while running + len(new) < batch_size and queue and not expired():
            token = queue.popleft()
            if wanted(token):
                new.append(token)
        if new:
            rows = np.stack([_fill(candidates(i), i, slots, W.shape[0]) for i in new])
            fresh = start(W, b64, np.array(new), rows, lo, hi,
                          None if start_points is None else start_points(np.array(new)))
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
                # An artificial still carrying weight at the optimum: float64 lost the way.
                infeasible = np.any((batch.basis == K + 2 * d) & (batch.inverse[:, :, -1] > 1e-9), axis=1)
                batch.status[done] = np.where(infeasible[done], FAILED, OPTIMAL)
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
