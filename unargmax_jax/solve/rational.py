"""Stage 4: exact rational certification for margins the floating-point bounds cannot sign.

Without a bias every box around 0 gives :math:`m_i^* \\ge 0` (take x = 0), so an
unargmaxable token has :math:`m_i^* = 0` exactly and its certificate needs
:math:`w_i = \\sum_j \\lambda_j w_j` exactly. Floats are rationals, so we solve the dual
LP of DESIGN.md section 2 restricted to a few candidate rows T exactly, with
``fractions.Fraction`` and Bland's rule:

.. math:: \\min\\; -\\lambda^T b_T + hi^T g^+ - lo^T g^- \\;\\text{s.t.}\\;
          W_T^T \\lambda + g^+ - g^- = w_i,\\; 1^T \\lambda = 1,\\; \\lambda, g^\\pm \\ge 0

(its value plus :math:`b_i` is :math:`U^*_T \\ge m_i^*`). For Ball and Free the slack
:math:`g^\\pm` is pushed to zero first (a lexicographic objective), since only
:math:`g = 0` gives a certificate there. The LP's dual prices are a witness x for the
box when :math:`U^*_T > 0`; it is then checked exactly against every row.
"""

from __future__ import annotations

import time
from fractions import Fraction
from typing import NamedTuple, Sequence

import numpy as np

from .. import domains as dom
from ..bounds import gamma
from ..resume import Phases
from ..verdicts import ARGMAXABLE, UNARGMAXABLE
from .context import Context
from .evidence import Evidence, pending

U64 = 2.0 ** -53


class RationalVerdict(NamedTuple):
    verdict: int  # 1 argmaxable, -1 unargmaxable, 0 undecided
    support: np.ndarray  # certificate ids (unargmaxable) or empty
    weights: list  # Fractions matching support
    witness: np.ndarray | None  # float64 x (argmaxable)
    value: Fraction | None  # exact U (unargmaxable) or exact L at the witness


def _lex_less_than_zero(values: Sequence[Fraction]) -> bool:
    for v in values:
        if v != 0:
            return v < 0
    return False


def lexicographic_simplex(columns, rhs, costs, basis, *, max_pivots: int, deadline: float):
    """Minimise lexicographic costs over {M y = rhs, y >= 0} from a feasible basis (Bland's rule).

    Args:
        columns: list of n columns, each a list of m Fractions.
        rhs: m Fractions.
        costs: list of cost levels, each n Fractions (earlier levels dominate).
        basis: m column indices forming a feasible basis.

    Returns:
        (values of basic variables by column index, basis, duals of every level,
        True if optimal) or None when the pivot or time budget ran out.
    """
    m = len(rhs)
    n = len(columns)
    # Explicit inverse of the basis matrix, built by Gauss-Jordan elimination.
    B = [[columns[basis[c]][r] for c in range(m)] for r in range(m)]
    inverse = [[Fraction(int(r == c)) for c in range(m)] for r in range(m)]
    for col in range(m):
        pivot = next((r for r in range(col, m) if B[r][col] != 0), None)
        if pivot is None:
            return None
        B[col], B[pivot] = B[pivot], B[col]
        inverse[col], inverse[pivot] = inverse[pivot], inverse[col]
        p = B[col][col]
        B[col] = [v / p for v in B[col]]
        inverse[col] = [v / p for v in inverse[col]]
        for r in range(m):
            if r != col and B[r][col] != 0:
                f = B[r][col]
                B[r] = [a - f * b for a, b in zip(B[r], B[col])]
                inverse[r] = [a - f * b for a, b in zip(inverse[r], inverse[col])]
    values = [sum((inverse[r][k] * rhs[k] for k in range(m)), Fraction(0)) for r in range(m)]
    if any(v < 0 for v in values):
        return None
    basis = list(basis)
    for _ in range(max_pivots):
        if time.monotonic() > deadline:
            return None
        duals = [[sum((level[basis[r]] * inverse[r][k] for r in range(m)), Fraction(0)) for k in range(m)]
                 for level in costs]
        in_basis = set(basis)
        entering = None
        for j in range(n):
            if j in in_basis:
                continue
            reduced = [level[j] - sum((pi[k] * columns[j][k] for k in range(m)), Fraction(0))
                       for level, pi in zip(costs, duals)]
            if _lex_less_than_zero(reduced):
                entering = j
                break
        if entering is None:
            return {basis[r]: values[r] for r in range(m)}, basis, duals, True
        direction = [sum((inverse[r][k] * columns[entering][k] for k in range(m)), Fraction(0)) for r in range(m)]
        leaving = None
        best = None
        for r in range(m):
            if direction[r] > 0:
                ratio = values[r] / direction[r]
                if best is None or ratio < best or (ratio == best and basis[r] < basis[leaving]):
                    best, leaving = ratio, r
        if leaving is None:
            return None  # unbounded: cannot happen for these bounded problems
        p = direction[leaving]
        inverse[leaving] = [v / p for v in inverse[leaving]]
        values[leaving] = values[leaving] / p
        for r in range(m):
            if r != leaving and direction[r] != 0:
                f = direction[r]
                inverse[r] = [a - f * b for a, b in zip(inverse[r], inverse[leaving])]
                values[r] = values[r] - f * values[leaving]
        basis[leaving] = entering
    return None


class _Exact(NamedTuple):
    """One token's exact data: float64 rows and biases, the right-hand side (w_i, 1) and the
    box bounds as rationals (None off a box)."""

    W64: np.ndarray
    b64: np.ndarray
    rhs: list
    lo: list | None
    hi: list | None


def certify(
    W: np.ndarray,
    b: np.ndarray | None,
    domain: dom.Domain,
    token: int,
    candidates: np.ndarray,
    *,
    deadline: float,
    weights: np.ndarray | None = None,
    max_pivots: int = 5000,
    max_rounds: int = 30,
) -> RationalVerdict:
    """Decide one token exactly, starting from candidate rows T, or return verdict 0.

    Column generation: solve the exact LP on T; rows whose reduced cost (from the
    exact dual prices) is negative would improve it, so the most negative ones join T
    and the LP is solved again, until none is left. A certificate found on T is valid
    for the whole head; a box witness (the dual prices) is checked exactly on every row.
    """
    undecided = RationalVerdict(0, np.zeros(0, np.int64), [], None, None)
    C, d = W.shape
    W64 = np.asarray(W, np.float64)
    b64 = np.zeros(C) if b is None else np.asarray(b, np.float64)
    T = [int(j) for j in dict.fromkeys(int(j) for j in candidates) if int(j) != token]
    if not T:
        T = [int(np.argmax(np.where(np.arange(C) == token, -np.inf, W64 @ W64[token])))]
    is_box = isinstance(domain, dom.Box)
    problem = _Exact(W64, b64, [Fraction(float(v)) for v in W64[token]] + [Fraction(1)],
                     [Fraction(float(v)) for v in np.asarray(domain.lo)] if is_box else None,
                     [Fraction(float(v)) for v in np.asarray(domain.hi)] if is_box else None)
    quick = _simplex_certificate(W64, b64, token, T[: d + 1])
    if quick is None and weights is not None and min(len(weights), len(T)) > d + 1:
        n = min(len(weights), len(T))
        quick = _simplex_certificate(W64, b64, token, _caratheodory(W64, T[:n], weights[:n]))
    if quick is not None:
        return quick
    for _ in range(max_rounds):
        solved = _solve_on(problem, token, T, max_pivots=max_pivots, deadline=deadline)
        if solved is None:
            return undecided
        lam, upper, duals = solved
        if upper is not None and upper <= 0 and lam:
            support = np.array(sorted(lam), dtype=np.int64)
            return RationalVerdict(-1, support, [lam[j] for j in support], None, upper)
        entering = _entering_rows(problem, domain, token, T, duals)
        if not entering:
            break
        T = T + entering
    if is_box and upper is not None and upper > 0:
        x = np.array([float(p) for p in duals[-1][:d]], dtype=np.float64)
        x = np.clip(x, np.asarray(domain.lo, np.float64), np.asarray(domain.hi, np.float64))
        lower = witness_lower(W, np.zeros(len(W)) if b is None else np.asarray(b, np.float64), token, x)
        if lower is not None and lower > 0:
            return RationalVerdict(1, np.zeros(0, np.int64), [], x, lower)
    return undecided


def _solve_on(problem: _Exact, token: int, T: list, *, max_pivots: int, deadline: float):
    """The exact LP on rows T: ``(lam, upper, duals)``, where ``upper`` is the exact bound
    U_T the solution proves (None off a box while slack remains), or None when the simplex
    ran out of pivots or time."""
    W64, b64, rhs, lo, hi = problem
    d = W64.shape[1]
    slack_columns = [[Fraction(int(r == k)) for r in range(d)] + [Fraction(0)] for k in range(d)]
    slack_columns += [[Fraction(-int(r == k)) for r in range(d)] + [Fraction(0)] for k in range(d)]
    columns = [[Fraction(float(v)) for v in W64[j]] + [Fraction(1)] for j in T] + slack_columns
    n_rows = len(T)
    bias_cost = [-Fraction(float(b64[j])) for j in T]
    if lo is not None:
        costs = [bias_cost + hi + [-v for v in lo]]
    else:
        costs = [[Fraction(0)] * n_rows + [Fraction(1)] * (2 * d), bias_cost + [Fraction(0)] * (2 * d)]
    # Feasible start: lam = e_{T0}, slack g = w_i - w_{T0} split by sign; row d is sum(lam) = 1.
    basis = [n_rows + k if rhs[k] - columns[0][k] >= 0 else n_rows + d + k for k in range(d)] + [0]
    solved = lexicographic_simplex(columns, rhs, costs, basis, max_pivots=max_pivots, deadline=deadline)
    if solved is None:
        return None
    values, basis, duals, _ = solved
    lam = {T[c]: v for c, v in values.items() if c < n_rows and v != 0}
    slack = sum((v for c, v in values.items() if c >= n_rows), Fraction(0))
    bias_part = Fraction(float(b64[token])) - sum((Fraction(float(b64[j])) * v for j, v in lam.items()), Fraction(0))
    if lo is not None:
        g = [rhs[k] - sum((Fraction(float(W64[j, k])) * v for j, v in lam.items()), Fraction(0)) for k in range(d)]
        upper = bias_part + sum((max(gk * lo[k], gk * hi[k]) for k, gk in enumerate(g)), Fraction(0))
    else:
        upper = bias_part if slack == 0 else None
    return lam, upper, duals


def _entering_rows(problem: _Exact, domain: dom.Domain, token: int, T: list, duals) -> list[int]:
    """Rows outside T whose reduced cost c_j - pi . (w_j, 1) is negative (one value per
    cost level, compared lexicographically), most negative first, at most d + 1."""
    W64, b64 = problem.W64, problem.b64
    C, d = W64.shape
    reduced = []
    for level, pi in enumerate(duals):
        pi = np.array([float(p) for p in pi])
        own_cost = -b64 if level == len(duals) - 1 else np.zeros(C)
        reduced.append(own_cost - W64 @ pi[:d] - pi[d])
    is_box = problem.lo is not None
    scale = 1e-12 * (1.0 + np.abs(W64).max() * (np.max(np.abs(np.asarray(domain.hi))) if is_box else 1.0)
                     + np.abs(b64).max())
    outside = np.ones(C, bool)
    outside[T] = False
    outside[token] = False
    first = reduced[0]
    improving = outside & (first < -scale)
    if len(reduced) == 2:
        improving |= outside & (np.abs(first) <= scale) & (reduced[1] < -scale)
    if not improving.any():
        return []
    order = np.lexsort(tuple(r[improving] for r in reversed(reduced)))
    return np.flatnonzero(improving)[order][: d + 1].tolist()


def _caratheodory(W64, rows, weights) -> list:
    """Float64 Caratheodory reduction: the same combination on at most d + 1 rows.

    Moves along a null vector of [W_S^T; 1^T] until a weight reaches 0, repeatedly;
    the surviving rows are the support to try exactly.
    """
    d = W64.shape[1]
    rows = list(rows)
    lam = np.maximum(np.asarray(weights, np.float64), 0.0)
    keep = lam > 0
    rows, lam = [r for r, k in zip(rows, keep) if k], lam[keep]
    while len(rows) > d + 1:
        M = np.vstack([W64[rows].T, np.ones(len(rows))])
        null = np.linalg.svd(M)[2][-1]
        if not np.any(null > 0):
            null = -null
        positive = null > 0
        step = np.min(lam[positive] / null[positive])
        lam = lam - step * null
        drop = int(np.flatnonzero(positive)[np.argmin(lam[positive])])
        rows.pop(drop)
        lam = np.delete(lam, drop)
        lam = np.maximum(lam, 0.0)
    return [rows[i] for i in np.argsort(-lam)]


def _simplex_certificate(W64, b64, token, rows) -> RationalVerdict | None:
    """Fast path: w_i as an exact affine combination of d + 1 rows; a certificate if the
    weights are >= 0 and the bias condition holds (then g = 0 and U = b_i - lam.b <= 0)."""
    d = W64.shape[1]
    if len(rows) != d + 1:
        return None
    matrix = [[Fraction(float(W64[j, k])) for j in rows] for k in range(d)] + [[Fraction(1)] * (d + 1)]
    rhs = [Fraction(float(v)) for v in W64[token]] + [Fraction(1)]
    lam = _solve_square(matrix, rhs)
    if lam is None or any(v < 0 for v in lam):
        return None
    upper = Fraction(float(b64[token])) - sum((Fraction(float(b64[j])) * v for j, v in zip(rows, lam)), Fraction(0))
    if upper > 0:
        return None
    kept = [(j, v) for j, v in zip(rows, lam) if v != 0]
    kept.sort()
    return RationalVerdict(-1, np.array([j for j, _ in kept], np.int64), [v for _, v in kept], None, upper)


def _solve_square(matrix, rhs):
    """Exact Gaussian elimination; None if singular.

    (The oracle the tests trust, :mod:`unargmax_jax.exact`, solves its systems its own way,
    by Cramer's rule on integers: it must not share code with the solver it judges.)
    """
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


def rows64(W, rows) -> np.ndarray:
    """Rows of the head as float64 (exact: every float32 is a float64)."""
    return np.asarray(W[rows], np.float64)


class Combination64(NamedTuple):
    """:math:`g = s w_i - W_S^T \\lambda` and :math:`s b_i - \\lambda^T b_S` in float64, each with a
    bound on its rounding error (every sum of n products is off by at most :math:`\\gamma_n`
    times its absolute terms, in any summation order)."""

    s: float
    g: np.ndarray
    g_err: np.ndarray
    bias: float
    bias_err: float


def combination64(W, b64: np.ndarray, token: int, support, weights) -> Combination64 | None:
    """The certificate's combination (weights clipped at 0); None when they sum to 0."""
    weights = np.maximum(np.asarray(weights, np.float64), 0.0)
    s = float(weights.sum())
    if not s > 0:
        return None
    k = weights.size
    rows, own = rows64(W, support), rows64(W, [token])[0]
    g_err = gamma(k + 4, np.float64) * (s * np.abs(own) + weights @ np.abs(rows))
    bias_err = gamma(k + 4, np.float64) * (s * abs(b64[token]) + weights @ np.abs(b64[support]))
    return Combination64(s, s * own - weights @ rows, g_err, float(s * b64[token] - weights @ b64[support]),
                         float(bias_err))


def float_certificate_bound(W, b64, lo, hi, token: int, support, weights) -> float:
    """Rigorous float64 upper bound on :math:`U(\\lambda)/s` over the box (s = sum of weights).

    Every sum of n products is off by at most :math:`\\gamma_n` times the sum of the
    absolute products (any summation order), so each term below carries that pad.
    """
    combination = combination64(W, b64, token, support, weights)
    if combination is None:
        return np.inf
    d = W.shape[1]
    s, g, g_err, bias, bias_err = combination
    sigma_terms = np.maximum(g * lo, g * hi)
    sigma = float(sigma_terms.sum())
    extent = np.maximum(np.abs(lo), np.abs(hi))
    pad = bias_err + float(g_err @ extent) + gamma(d + 4, np.float64) * (float(np.abs(sigma_terms).sum()) + abs(bias) + abs(sigma))
    upper = (bias + sigma + pad + 1e-300) / s
    return upper * (1 + 4 * U64) if upper > 0 else upper * (1 - 4 * U64)


def margins64(W, b64: np.ndarray, token: int, x: np.ndarray, *, block: int = 1 << 15):
    """Float64 :math:`z_i(x) - z_j(x)` and :math:`(|w_i| + |w_j|)^T |x| + |b_i| + |b_j|` for every
    row j, a block of rows at a time (no float64 copy of the head)."""
    own = rows64(W, [token])[0]
    margins, magnitude = np.empty(W.shape[0]), np.empty(W.shape[0])
    ax = np.abs(x)
    for start in range(0, W.shape[0], block):
        rows = np.asarray(W[start:start + block], np.float64)
        margins[start:start + block] = (own @ x + b64[token]) - (rows @ x + b64[start:start + block])
        magnitude[start:start + block] = np.abs(own) @ ax + np.abs(rows) @ ax + abs(b64[token]) + np.abs(b64[start:start + block])
    return margins, magnitude


def witness_lower(W, b64: np.ndarray, token: int, x: np.ndarray):
    """A rigorous lower bound on :math:`\\min_{j \\ne i} z_i(x) - z_j(x)` (float64 with a pad;
    exact, with Fractions, on the rows the pad cannot settle), or None if a row beats i."""
    margins, magnitude = margins64(W, b64, token, x)
    pad = gamma(W.shape[1] + 4, np.float64) * magnitude + 1e-300
    margins[token], pad[token] = np.inf, 0.0
    if np.any(margins + pad < 0):
        return None
    unsettled = np.flatnonzero(margins - pad <= 0)
    settled = np.delete(margins - pad, unsettled)
    lower = float(np.min(settled)) * (1 - 4 * U64) if settled.size else np.inf
    if unsettled.size == 0:
        return lower
    xs = [Fraction(float(v)) for v in x]
    own = sum((Fraction(float(w)) * v for w, v in zip(rows64(W, [token])[0], xs)), Fraction(float(b64[token])))
    exact = min(own - sum((Fraction(float(w)) * v for w, v in zip(rows64(W, [j])[0], xs)), Fraction(float(b64[j])))
                for j in unsettled)
    return exact if exact <= 0 or exact < lower else lower


def keep_float_certificate(evidence: Evidence, i: int, stage: str, support, weights, upper: float) -> None:
    """Store a float64 certificate's bound where it is tighter, and the verdict when it is <= 0."""
    if upper < evidence.upper[i]:
        evidence.upper[i] = upper
        evidence.cert_support[i], evidence.cert_weights[i] = support, weights / weights.sum()
        evidence.cert_rational.pop(i, None)
    if upper <= 0:
        evidence.verdict[i], evidence.stage[i] = UNARGMAXABLE, stage


def keep_float64_witness(evidence: Evidence, i: int, stage: str, x: np.ndarray, lower) -> None:
    """Token i is argmaxable at the float64 point x, with the proved margin ``lower`` > 0."""
    evidence.verdict[i], evidence.stage[i] = ARGMAXABLE, stage
    evidence.lower[i] = -float_at_least(-lower)
    evidence.exact_witness[i] = x


# ----------------------------------------------------------------------------- the stage
def run(ctx: Context, evidence: Evidence, phases: Phases) -> None:
    """Exact LPs (d <= ``rational_max_dim``) for the rows no float bound could sign, from
    their best certificate's rows and competitor sets; on R^d float certificates are
    then dropped (only exact g = 0 ones count there)."""
    todo = phases.todo("rational", pending(evidence))
    d = ctx.W.shape[1]
    if d <= ctx.settings.rational_max_dim:
        deadline = min(ctx.deadline, time.monotonic() + ctx.settings.rational_seconds)
        # On R^d (and for the exact step on a ball) only g = 0 certificates are exact.
        domain = dom.Free() if ctx.exact_certificates_only else ctx.domain
        for n, i in enumerate(todo):
            if time.monotonic() > deadline:
                break
            _certify_row(ctx, evidence, int(i), domain, deadline)
            ctx.progress.update("rational", n + 1, todo.size)
    if ctx.exact_certificates_only:
        for i in pending(evidence):
            if i in evidence.cert_support and i not in evidence.cert_rational:
                evidence.upper[i] = np.inf


def candidate_rows(evidence: Evidence, i: int, d: int) -> list[int]:
    """Rows to start token i's exact LP from: its certificate's, heaviest first, then its
    last PDHG competitor set and its top rivals (at most 2 (d + 1) + 8)."""
    weights = evidence.cert_weights.get(i, np.zeros(0))
    candidates = [int(j) for j in np.asarray(evidence.cert_support.get(i, []))[np.argsort(-weights)]]
    for j in list(evidence.pdhg_support.get(i, [])) + list(evidence.top.get(i, [])):
        if j not in candidates and j != i:
            candidates.append(int(j))
    return candidates[: 2 * (d + 1) + 8]


def _certify_row(ctx: Context, evidence: Evidence, i: int, domain: dom.Domain, deadline: float) -> None:
    """Decide row i exactly where :func:`certify` can; the exact evidence replaces the float
    one, so the stored bound is the one it proves (not a tighter bound from a dropped
    float certificate: on R^d with a bias those never decide, but can be below the exact
    value), rounded outwards."""
    weights = evidence.cert_weights.get(i, np.zeros(0))
    outcome = certify(ctx.W, ctx.b, domain, i, np.asarray(candidate_rows(evidence, i, ctx.W.shape[1]), np.int64),
                      deadline=deadline, weights=np.sort(weights)[::-1])
    if outcome.verdict == UNARGMAXABLE:
        evidence.verdict[i], evidence.stage[i] = UNARGMAXABLE, "rational"
        evidence.upper[i] = float_at_least(outcome.value)
        evidence.cert_support[i] = outcome.support
        evidence.cert_weights[i] = np.array([float(w) for w in outcome.weights])
        evidence.cert_rational[i] = [f"{w.numerator}/{w.denominator}" for w in outcome.weights]
    elif outcome.verdict == ARGMAXABLE:
        evidence.verdict[i], evidence.stage[i] = ARGMAXABLE, "rational"
        evidence.lower[i] = -float_at_least(-outcome.value)
        evidence.exact_witness[i] = np.asarray(outcome.witness, np.float64)


def float_at_least(value) -> float:
    """The smallest float64 >= an exact rational (``float`` rounds to nearest)."""
    approx = float(value)
    return approx if Fraction(approx) >= value else float(np.nextafter(approx, np.inf))
