"""Exact oracle for tiny heads by enumeration in rational arithmetic (tests, teaching).

Floats are rationals, so ``Fraction(float)`` gives the stored values exactly and every
answer here is exact. Cost grows combinatorially: meant for d <= 3 and C <= 10.

* :func:`box_margins`: :math:`m_i^* = \\max_{lo \\le x \\le hi} \\min_{j \\ne i} (w_i - w_j)^T x + b_i - b_j`,
  the best vertex of the LP in (x, t) (a bounded LP attains its optimum at a vertex).
* :func:`free_verdicts`: argmaxability on all of R^d. By Motzkin's transposition
  theorem token i is unargmaxable iff some lam >= 0 with sum 1 has
  :math:`\\sum_j \\lambda_j w_j = w_i` and :math:`\\sum_j \\lambda_j b_j \\ge b_i`; the
  maximum of :math:`\\lambda^T b` over that polytope sits at a basic solution (support
  of at most d + 1 rows), which we enumerate.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Sequence


def _solve(matrix: list[list[Fraction]], rhs: list[Fraction]) -> list[Fraction] | None:
    """Exact Gaussian elimination for a square system; None when singular."""
    n = len(rhs)
    rows = [list(r) + [v] for r, v in zip(matrix, rhs)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if rows[r][col] != 0), None)
        if pivot is None:
            return None
        rows[col], rows[pivot] = rows[pivot], rows[col]
        p = rows[col][col]
        rows[col] = [v / p for v in rows[col]]
        for r in range(n):
            if r != col and rows[r][col] != 0:
                f = rows[r][col]
                rows[r] = [a - f * c for a, c in zip(rows[r], rows[col])]
    return [rows[r][n] for r in range(n)]


def _rational_head(W, b):
    W = [[Fraction(float(v)) for v in row] for row in W]
    b = [Fraction(0)] * len(W) if b is None else [Fraction(float(v)) for v in b]
    return W, b


def box_margins(W, b=None, lo=-100.0, hi=100.0, *, ids: Sequence[int] | None = None) -> list:
    """Exact margins on the box (``math.inf`` for a single-class head).

    Args:
        W: C x d array-like; b: length C or None; lo, hi: scalars or length-d.
        ids: tokens to compute (default: all).
    """
    Wq, bq = _rational_head(W, b)
    C, d = len(Wq), len(Wq[0])
    lo_q = [Fraction(float(v)) for v in (lo if hasattr(lo, "__len__") else [lo] * d)]
    hi_q = [Fraction(float(v)) for v in (hi if hasattr(hi, "__len__") else [hi] * d)]
    out = []
    for i in range(C) if ids is None else ids:
        if C == 1:
            out.append(math.inf)
            continue
        # Constraints a.(x, t) <= r: t - (w_i - w_j).x <= b_i - b_j, x_k <= hi_k, -x_k <= -lo_k.
        constraints = []
        for j in range(C):
            if j != i:
                constraints.append(([-(Wq[i][k] - Wq[j][k]) for k in range(d)] + [Fraction(1)], bq[i] - bq[j]))
        bound_rows = []
        for k in range(d):
            unit = [Fraction(int(k == m)) for m in range(d)]
            bound_rows.append((unit + [Fraction(0)], hi_q[k]))
            bound_rows.append(([-v for v in unit] + [Fraction(0)], -lo_q[k]))
        everything = constraints + bound_rows
        best = None
        # A vertex needs d + 1 tight constraints, at least one of them a margin row (t is
        # unbounded otherwise).
        for chosen in itertools.combinations(range(len(everything)), d + 1):
            if chosen[0] >= len(constraints):
                break
            point = _solve([everything[c][0] for c in chosen], [everything[c][1] for c in chosen])
            if point is None:
                continue
            if all(sum(a * p for a, p in zip(row, point)) <= rhs for row, rhs in everything):
                if best is None or point[d] > best:
                    best = point[d]
        out.append(best)
    return out


def free_verdicts(W, b=None) -> list[bool]:
    """Exact argmaxability on all of R^d (True: some x makes the token the strict argmax)."""
    Wq, bq = _rational_head(W, b)
    C, d = len(Wq), len(Wq[0])
    verdicts = []
    for i in range(C):
        others = [j for j in range(C) if j != i]
        beaten = False
        for size in range(1, min(d + 1, len(others)) + 1):
            for support in itertools.combinations(others, size):
                lam = _basic_solution(Wq, support, Wq[i])
                if lam is None or any(v < 0 for v in lam):
                    continue
                if sum(v * bq[j] for v, j in zip(lam, support)) >= bq[i]:
                    beaten = True
                    break
            if beaten:
                break
        verdicts.append(not beaten)
    return verdicts


def _basic_solution(Wq, support, target) -> list[Fraction] | None:
    """lam on ``support`` with sum 1 and sum lam_j w_j = target, if the system pins it down.

    The system has d + 1 equations and |support| unknowns; we pick |support| linearly
    independent equations (sum row first), solve, and check all equations exactly.
    """
    d = len(target)
    size = len(support)
    equations = [([Fraction(1)] * size, Fraction(1))]
    equations += [([Wq[j][k] for j in support], target[k]) for k in range(d)]
    for chosen in itertools.combinations(range(len(equations)), size):
        lam = _solve([equations[c][0] for c in chosen], [equations[c][1] for c in chosen])
        if lam is None:
            continue
        if all(sum(a * v for a, v in zip(row, lam)) == rhs for row, rhs in equations):
            return lam
        return None
    return None
