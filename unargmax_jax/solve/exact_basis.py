"""Exact certificates from an optimal basis (the basis stage's last resort): the basis's
square system solved with FLINT on the float64 values as integers, and U evaluated exactly.

A margin inside the float64 pad (exactly 0, e.g. a convex combination of rows in a head
without bias) has no float certificate; the square system
:math:`W_{J,F}^T \\lambda = w_{i,F},\\ 1^T \\lambda = 1` of the active rows J and free
coordinates F gives exact weights, and U is then exact.
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

import numpy as np

from .rational import rows64


def _dyadic_integers(*arrays):
    """The float64 arrays times one power of two 2^-e that makes every entry an integer
    (exact: a float is m 2^e with an integer m), as Python ints, and e."""
    values = np.concatenate([np.ravel(a) for a in arrays])
    nonzero = values[values != 0]
    e = int(np.min(np.frexp(nonzero)[1])) - 53 if nonzero.size else 0
    return [np.vectorize(int, otypes=[object])(np.ldexp(np.asarray(a, np.float64), -e)) for a in arrays], e


class ExactCertificate(NamedTuple):
    support: np.ndarray  # row ids J
    weights: list  # Fractions, sum 1
    upper: Fraction  # exact U(lam)


def exact_certificate(W, b64, lo, hi, token: int, basis, *, free_only: bool) -> ExactCertificate | None:
    """Solve the square system of ``basis`` (a :class:`~unargmax_jax.solve.basis.Basis`)
    exactly and evaluate U exactly; None if it is not square, singular, or its solution is
    not a certificate (lam < 0 or U > 0).

    ``free_only``: on R^d only g = 0 is a certificate, so g must vanish exactly on the
    fixed coordinates too (it does on the free ones by construction).
    """
    import flint

    J = basis.rows[basis.active]
    F = np.flatnonzero(basis.free)
    if J.size != F.size + 1:
        return None
    rows, own = rows64(W, J), rows64(W, [token])[0]
    M = np.vstack([rows[:, F].T, np.ones((1, J.size))])
    (M_int, rhs_int), _ = _dyadic_integers(M, np.r_[own[F], 1.0][:, None])
    try:
        lam = flint.fmpz_mat(M_int.tolist()).solve(flint.fmpz_mat(rhs_int.tolist()))
    except ZeroDivisionError:
        return None
    weights = [Fraction(int(lam[r, 0].p), int(lam[r, 0].q)) for r in range(J.size)]
    if any(w < 0 for w in weights):
        return None
    fixed = np.setdiff1d(np.arange(W.shape[1]), F)
    upper, residual = _exact_upper(rows[:, fixed], own[fixed], b64[token], b64[J], lo[fixed], hi[fixed], lam)
    if upper > 0 or (free_only and residual):
        return None
    keep = [r for r, w in enumerate(weights) if w != 0]
    return ExactCertificate(J[keep], [weights[r] for r in keep], upper)


def _fmpq(value: float):
    import flint

    return flint.fmpq(*float(value).as_integer_ratio())


def _exact_upper(rows, own, b_own, b_rows, lo, hi, lam) -> tuple[Fraction, bool]:
    """Exact :math:`b_i - \\lambda^T b_J + \\sum_k \\max(g_k lo_k, g_k hi_k)` over the fixed
    coordinates k (``rows``, ``own`` restricted to them; on the free ones g = 0 exactly),
    and whether some g_k there is not 0."""
    import flint

    upper, residual = _fmpq(b_own), False
    for r, value in enumerate(b_rows):
        upper -= lam[r, 0] * _fmpq(value)
    if own.size:
        (rows_int, own_int), e = _dyadic_integers(rows.T, own)
        combined = flint.fmpq_mat(flint.fmpz_mat(rows_int.tolist())) * lam  # W_J^T lam, scaled by 2^-e
        scale = flint.fmpq(2) ** e if e >= 0 else 1 / flint.fmpq(2) ** (-e)
        for k in range(own.size):
            g = (flint.fmpq(int(own_int[k])) - combined[k, 0]) * scale
            upper += g * _fmpq(hi[k] if g > 0 else lo[k])
            residual = residual or g != 0
    return Fraction(int(upper.p), int(upper.q)), residual
