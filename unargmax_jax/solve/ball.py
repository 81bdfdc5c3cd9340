"""Stage 4 on a ball: the margin problem's optimum in float64 (Newton on its optimality
conditions), and the witness or certificate read off it.

On :math:`X = \\{x : \\|x - x_0\\|_2 \\le R\\}` token i's margin is, by duality,

.. math:: m^* = \\max_{x \\in X} \\min_j a_j^T x + c_j
              = \\min_{\\lambda \\in \\Delta}\\; U(\\lambda) = \\lambda^T p + R\\,\\|A^T \\lambda\\|_2,

with :math:`a_j = w_i - w_j`, :math:`c_j = b_i - b_j`, :math:`p = A x_0 + c`; the maximiser is
:math:`x = x_0 + R\\,\\hat g` for :math:`\\hat g = A^T\\lambda / \\|A^T\\lambda\\|`. On the rows J
carrying weight, the optimum solves :math:`p_J + R A_J \\hat g = \\mu 1,\\ 1^T\\lambda_J = 1`:
a square system in :math:`(\\lambda_J, \\mu)` that Newton's method solves to float64
accuracy from PDHG's weights, with row generation against all C rows at x. The norm
domains are solved as this ball (``domains.norm_head``).

* U < 0 with the float64 pad (:func:`ball_certificate_bound`): the weights are a
  certificate. Float32 iterates leave :math:`\\|g\\|` errors of ~d 2^-24 |W|; these ~1e-16.
* Otherwise x, pulled inside X by a relative 1e-12 (membership checked exactly), is a
  witness when its margin is positive (``rational.witness_lower``).
* An optimum inside X (:math:`A^T\\lambda = 0`: Newton has no direction) is left to the
  box LPs around and inside the ball (:func:`bounding_box`, :func:`inscribed_box`, run
  by :mod:`.basis`).
"""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np

from ..bounds import gamma
from ..verdicts import UNARGMAXABLE
from .context import Context
from .evidence import Evidence
from .rational import (U64, candidate_rows, combination64, keep_float64_witness, keep_float_certificate, margins64,
                       rows64, witness_lower)

# A weight below this fraction of the largest leaves the active set.
DROP = 1e-13


def project_simplex(v: np.ndarray) -> np.ndarray:
    """The Euclidean projection of v onto the probability simplex."""
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1.0
    positive = np.flatnonzero(u - cumulative / np.arange(1, v.size + 1) > 0)
    r = int(positive[-1]) if positive.size else 0  # (rounding can lose even the first)
    return np.maximum(v - cumulative[r] / (r + 1), 0.0)


def _objective(A, p, R, lam) -> float:
    return float(lam @ p + R * np.linalg.norm(A.T @ lam))


def descend(A: np.ndarray, p: np.ndarray, R: float, lam: np.ndarray, *, iterations: int) -> np.ndarray:
    """Projected gradient steps with backtracking on :math:`\\lambda^T p + R\\|A^T\\lambda\\|`:
    slow to high accuracy but it sets the inactive weights exactly to 0, which is what
    Newton's method on the active rows needs."""
    step = 1.0 / (R * np.linalg.norm(A, 2) ** 2 / max(float(np.linalg.norm(A.T @ lam)), 1e-300) + 1e-300)
    value = _objective(A, p, R, lam)
    for _ in range(iterations):
        g = A.T @ lam
        n = float(np.linalg.norm(g))
        if not n > 0:
            break
        gradient = p + R * (A @ (g / n))
        step = min(step, 1e8 / (float(np.ptp(gradient)) + 1e-300))  # beyond it, a step only rounds
        for _ in range(60):
            trial = project_simplex(lam - step * gradient)
            trial_value = _objective(A, p, R, trial)
            if trial_value <= value - 0.5 / step * float((trial - lam) @ (trial - lam)) + 1e-15 * abs(value):
                break
            step *= 0.5
        else:
            break
        lam, value, step = trial, trial_value, step * 2.0
    return lam


def kkt_weights(A: np.ndarray, p: np.ndarray, R: float, lam0: np.ndarray, *, iterations: int = 40):
    """Weights minimising :math:`\\lambda^T p + R\\|A^T\\lambda\\|` over the simplex (A: (k, d),
    p: (k,), float64): projected gradient steps to find the active rows, then Newton's
    method on them; None when :math:`A^T\\lambda` vanishes (an interior optimum)."""
    lam = np.where(lam0 > 0, lam0, 0.0)
    if not lam.sum() > 0:
        return None
    lam = descend(A, p, R, lam / lam.sum(), iterations=300)
    # Near an interior optimum (A^T lam -> 0, e.g. a margin of exactly 0 without a bias)
    # the conditions below are singular: the box LPs' case (basis._decide_on_bounding_box).
    vanishing = 1e-9 * float(np.abs(A).max())
    best, stalled = np.inf, 0
    for _ in range(iterations):
        S = np.flatnonzero(lam > 0)
        g = A[S].T @ lam[S]
        n = float(np.linalg.norm(g))
        if not n > vanishing:
            return None
        Au = A @ (g / n)
        grad = p + R * Au
        mu = float(lam[S] @ grad[S])
        residual = np.r_[grad[S] - mu, lam[S].sum() - 1.0]
        scale = np.abs(p).max() + R * np.abs(Au).max() + 1e-300
        size = float(np.abs(residual).max())
        if size <= 1e-14 * scale:
            break
        best, stalled = min(best, size), (stalled + 1 if size >= best else 0)
        if stalled >= 3:  # rounding level, or a wrong active set: what it has is the answer
            break
        H = (R / n) * (A[S] @ A[S].T - np.outer(Au[S], Au[S]))
        K = np.block([[H, -np.ones((S.size, 1))], [np.ones((1, S.size)), np.zeros((1, 1))]])
        step = np.linalg.lstsq(K, -residual, rcond=None)[0][:-1]
        shrinking = step < 0
        ratio = np.min(-lam[S][shrinking] / step[shrinking]) if shrinking.any() else np.inf
        lam[S] = np.maximum(lam[S] + min(1.0, ratio) * step, 0.0)
        lam[lam < DROP * lam.max()] = 0.0
        lam /= lam.sum()
    return lam


def ball_certificate_bound(W, b64, center, R: float, token: int, support, weights) -> float:
    """Rigorous float64 upper bound on :math:`U(\\lambda)/s` over the ball (s = sum of weights):
    every sum of n products is off by at most :math:`\\gamma_n` times its absolute terms."""
    combination = combination64(W, b64, token, support, weights)
    if combination is None:
        return np.inf
    d = W.shape[1]
    s, g, g_err, bias, bias_err = combination
    shift = float(g @ center)
    shift_err = float(g_err @ np.abs(center)) + gamma(d + 2, np.float64) * float(np.abs(g) @ np.abs(center))
    norm = (float(np.linalg.norm(g)) + float(np.linalg.norm(g_err))) * (1 + gamma(d + 4, np.float64))
    support_term = R * norm * (1 + 2 * U64)
    # The last sums round too: at most gamma_8 of their absolute terms.
    pad = bias_err + shift_err + gamma(8, np.float64) * (abs(bias) + abs(shift) + support_term + bias_err + shift_err)
    upper = (bias + shift + support_term + pad + 1e-300) / s
    return upper * (1 + 4 * U64) if upper > 0 else upper * (1 - 4 * U64)


def inside(x: np.ndarray, center: np.ndarray, R: float) -> bool:
    """Exactly: :math:`\\|x - x_0\\|^2 \\le R^2`."""
    return sum((Fraction(float(a)) - Fraction(float(c))) ** 2 for a, c in zip(x, center)) <= Fraction(R) ** 2


def optimum(W, b64, token: int, center, R: float, rows: list, lam0: np.ndarray, *, rounds: int, grow: int,
            deadline: float):
    """Row generation around :func:`kkt_weights`: ``(rows, weights, x)`` at the optimum on the
    rows, once no other row beats x (or rounds or time run out); None if Newton fails."""
    own = rows64(W, [token])[0]
    lam = x = None
    for _ in range(rounds):
        A = own - rows64(W, rows)
        c = b64[token] - b64[rows]
        lam = kkt_weights(A, c + A @ center, R, lam0)
        if lam is None:
            return None
        g = A.T @ lam
        x = center + R * g / np.linalg.norm(g)
        t = float(np.min((A @ x + c)[lam > 0]))
        margins, magnitude = margins64(W, b64, token, x)
        margins[token] = np.inf
        margins[rows] = np.inf
        violated = np.flatnonzero(margins < t - 1e-13 * magnitude)
        if violated.size == 0 or time.monotonic() > deadline:
            break
        violated = violated[np.argsort(margins[violated])][:grow]
        rows = list(rows) + violated.tolist()
        lam0 = np.r_[lam, np.full(violated.size, 1e-3 / max(1, violated.size))]
    return np.asarray(rows, np.int64), lam, x


def center_radius(ctx: Context) -> tuple[np.ndarray, float]:
    """The ball's centre as a float64 (d,) array, and its radius."""
    return np.broadcast_to(np.asarray(ctx.domain.center, np.float64), (ctx.W.shape[1],)).copy(), float(ctx.domain.radius)


def bounding_box(center: np.ndarray, R: float) -> tuple[np.ndarray, np.ndarray]:
    """A box containing the ball: ``[center - R, center + R]`` rounded outwards."""
    return np.nextafter(center - R, -np.inf), np.nextafter(center + R, np.inf)


def inscribed_box(center: np.ndarray, R: float) -> tuple[np.ndarray, np.ndarray]:
    """A box inside the ball: the cube of half-width R / sqrt(d), shrunk by 1e-9 against
    rounding (witnesses found in it are still checked exactly, :func:`inside`)."""
    half = R / np.sqrt(center.size) * (1 - 1e-9)
    return center - half, center + half


def decide_row(ctx: Context, evidence: Evidence, i: int, b64: np.ndarray) -> None:
    """Row i on the ball: a float64 certificate from the optimal weights, else a witness at
    the optimum pulled just inside the ball."""
    W, settings = ctx.W, ctx.settings
    center, R = center_radius(ctx)
    rows = candidate_rows(evidence, i, W.shape[1]) or [int(np.argmax(np.where(np.arange(W.shape[0]) == i, -np.inf,
                                                                      np.asarray(W @ W[i], np.float64))))]
    weights = dict(zip(np.asarray(evidence.cert_support.get(i, []), np.int64).tolist(),
                       np.asarray(evidence.cert_weights.get(i, []), np.float64).tolist()))
    lam0 = np.array([max(weights.get(j, 0.0), 1e-3 / len(rows)) for j in rows])
    deadline = min(ctx.deadline, time.monotonic() + settings.basis_token_seconds)
    found = optimum(W, b64, i, center, R, rows, lam0, rounds=settings.basis_rounds, grow=max(32, W.shape[1] // 2),
                    deadline=deadline)
    if found is None:
        return
    rows, lam, x = found
    support, weights = rows[lam > 0], lam[lam > 0]
    keep_float_certificate(evidence, i, "basis", support, weights,
                           ball_certificate_bound(W, b64, center, R, i, support, weights))
    if evidence.verdict[i] == UNARGMAXABLE:
        return
    for pull in (1e-12, 1e-9, 1e-6):
        point = center + (x - center) * (1 - pull)
        if not inside(point, center, R):
            continue
        lower = witness_lower(W, b64, i, point)
        if lower is not None and lower > 0:
            keep_float64_witness(evidence, i, "basis", point, lower)
            return
