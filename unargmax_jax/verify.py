"""The independent checker: re-verifies every witness and certificate of a report.

It shares no numerical code with the solver: NumPy with its own rounding bounds (the
witnesses in one product per block in the head's precision, padded for it, and float64
on the few rows that does not settle: :mod:`unargmax_jax._verify_witnesses`; the
certificates in float64), and exact ``fractions.Fraction`` arithmetic wherever floats
cannot settle a sign. Only the report's file format (``report``, ``csr``, ``verdicts``)
and the domain classes are imported. Its memory beyond the head: the block's logits (a
quarter of the head) and, for ``--ceiling`` reports or a float32 head with a bias that
is not float32, a float64 copy of W.

* argmaxable token i with witness x: x in X and
  :math:`\\min_{j \\ne i} z_i(x) - z_j(x) > 0` over every row j;
* unargmaxable token i with certificate lam >= 0 (sum s > 0, i not in its support):
  :math:`s b_i - \\lambda^T b + \\sigma_X(s w_i - W^T \\lambda) \\le 0`; on R^d (``Free``)
  only exact certificates with :math:`s w_i = W^T \\lambda` count.
"""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from . import domains as dom
from ._verify_witnesses import Head, box_bounds as _box_bounds, check_witnesses, in_domain as _in_domain, twin_groups
from .csr import Certificates
from .report import Report
from .verdicts import ARGMAXABLE, UNARGMAXABLE

UNIT = 2.0**-53


class VerifyResult(NamedTuple):
    ok: bool
    failed: np.ndarray  # token ids whose evidence does not hold
    reasons: dict  # token id -> why (id -1: the head itself)
    checked: int  # tokens whose verdict was re-proved


def _gamma(n: int) -> float:
    return 2.0 * n * UNIT / (1.0 - n * UNIT)


def _sha256(W: np.ndarray, b: np.ndarray | None) -> str:
    """Same recipe as ``report.head_sha256``, re-implemented: the checker shares no code.
    W's float64 bytes are hashed a chunk of rows at a time (no float64 copy of W)."""
    digest = hashlib.sha256()
    digest.update(f"W{W.shape}".encode())
    for start in range(0, W.shape[0], 4096):
        digest.update(np.ascontiguousarray(W[start:start + 4096], dtype=np.float64).tobytes())
    if b is not None:
        b = np.ascontiguousarray(b, dtype=np.float64)
        digest.update(f"b{b.shape}".encode())
        digest.update(b.tobytes())
    return digest.hexdigest()


def _norm_coordinates(W: np.ndarray, b: np.ndarray | None, domain):
    """A norm-output domain as a ball: logits gamma-scaled rows times n, plus b + W beta.

    For LayerNorm n is centred, and centring the rows makes every point of the ball act
    as its centred part (so the ball's verdicts are the centred disc's).
    """
    gamma = np.asarray(domain.gamma, np.float64)
    beta = np.asarray(domain.beta, np.float64)
    scaled = W * gamma[None, :]
    if domain.kind == "layernorm":
        scaled = scaled - np.mean(scaled, axis=1)[:, None]
    shift = None if b is None and not np.any(beta) else (W @ beta if b is None else b + W @ beta)
    return scaled, shift, dom.Ball(np.zeros(W.shape[1]), np.float64(np.sqrt(W.shape[1])))


def verify(report: Report, W, b=None, *, block: int | None = None) -> VerifyResult:
    """Re-prove every decided verdict of ``report`` from the weights alone.

    Args:
        report: a Report (from ``check`` or ``Report.load``).
        W, b: the head the report claims to be about.
        block: witnesses evaluated per product (memory is block x C; None: d / 4, so
            that the block's logits are a quarter of the head's size).
    """
    # W stays in its own dtype (a float32 head is checked in float32 products, padded for
    # them); only row subsets are ever converted to float64.
    W = np.asarray(W)
    W = W if W.dtype in (np.float32, np.float64) else W.astype(np.float64)
    b = None if b is None else np.asarray(b, np.float64)
    C = report.verdict.shape[0]
    reasons: dict[int, str] = {}
    if W.ndim != 2 or W.shape != (report.head.get("classes"), report.head.get("dim")) or C != W.shape[0]:
        reasons[-1] = f"weights of shape {W.shape} do not match the report's head {report.head.get('classes')} x {report.head.get('dim')}"
        return VerifyResult(False, np.arange(C), reasons, 0)
    if _sha256(W, b) != report.head.get("sha256"):
        reasons[-1] = "sha256 of the weights differs from the report's: not the same head"
        return VerifyResult(False, np.arange(C), reasons, 0)
    d = W.shape[1]
    domain = dom.validate(report.domain, d)
    if isinstance(domain, dom.NormOutput):
        W, b, domain = _norm_coordinates(W, b, domain)
    bias = np.zeros(C) if b is None else np.asarray(b, np.float64)
    first_wins_ties = report.settings.get("ties", "strict") == "first"
    head = Head(W, bias, twin_groups(W, b) if first_wins_ties else None)

    def fail(i, why):
        reasons.setdefault(int(i), why)

    verdict = np.asarray(report.verdict)
    lower = np.asarray(report.lower, np.float64)
    upper = np.asarray(report.upper, np.float64)
    for i in np.flatnonzero((lower > upper) & np.isfinite(lower) & np.isfinite(upper)):
        fail(i, f"lower bound {lower[i]} exceeds upper bound {upper[i]}")
    for i in np.flatnonzero((verdict == ARGMAXABLE) & ~(lower > 0)):
        fail(i, f"argmaxable with lower bound {lower[i]} <= 0")
    for i in np.flatnonzero((verdict == UNARGMAXABLE) & ~(upper <= 0)):
        fail(i, f"unargmaxable with upper bound {upper[i]} > 0")

    checked = check_witnesses(report, head, domain, verdict == ARGMAXABLE, fail, block=block)
    checked += _check_certificates(report, W, b, bias, domain, fail)
    _check_ceilings(report, head.W64() if np.asarray(report.ceiling_ids).size else W, bias, domain, fail)
    failed = np.array(sorted(i for i in reasons if i >= 0), dtype=np.int64)
    return VerifyResult(not reasons, failed, reasons, checked)


def _check_certificates(report, W, b, bias, domain, fail) -> int:
    C, d = W.shape
    ids = np.asarray(report.certificate_ids, np.int64)
    offsets = np.asarray(report.certificate_offsets, np.int64)
    support_all = np.asarray(report.certificate_support, np.int64)
    weights_all = np.asarray(report.certificate_weights, np.float64)
    rational_all = np.asarray(report.certificate_rational).astype(str)
    unargmaxable = set(np.flatnonzero(report.verdict == UNARGMAXABLE).tolist())
    well_formed = (offsets.size == ids.size + 1 and (offsets.size == 0 or offsets[0] == 0)
                   and np.all(np.diff(offsets) >= 0) and (offsets.size == 0 or offsets[-1] == support_all.size)
                   and support_all.size == weights_all.size == rational_all.size)
    if not well_formed:
        for i in unargmaxable:
            fail(i, "certificate table is malformed")
        return 0
    for i in unargmaxable - set(ids.tolist()):
        fail(i, "unargmaxable but no certificate")
    checked = 0
    for i, support, weights, rational in Certificates(ids, offsets, support_all, weights_all, rational_all).rows():
        if i not in unargmaxable:
            continue
        if support.size == 0 or np.any((support < 0) | (support >= C)) or np.any(support == i):
            fail(i, "certificate support is empty, out of range, or contains the token itself")
            continue
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or not weights.sum() > 0:
            fail(i, "certificate weights must be finite, >= 0 and not all zero")
            continue
        if all(text for text in rational):
            value = _exact_certificate_value(W, bias, domain, i, support, weights, rational)
            if isinstance(value, str):
                fail(i, value)
                continue
            upper_value = value
        elif isinstance(domain, dom.Free):
            fail(i, "on R^d only an exact certificate (rational weights, s w_i = W^T lam) proves unargmaxable")
            continue
        else:
            upper_value = _float_certificate_value(W, bias, domain, i, support, weights)
            if not upper_value <= 0:
                fail(i, f"certificate does not prove the margin <= 0 (rigorous bound {upper_value})")
                continue
        if report.upper[i] < float(upper_value) - 1e-9 * (1 + abs(float(upper_value))):
            fail(i, f"stored upper bound {report.upper[i]} is below what the certificate proves ({float(upper_value)})")
            continue
        checked += 1
    return checked


def _exact_certificate_value(W, bias, domain, i, support, weights, rational):
    """Exact U(lam)/s from rational weights, or a failure reason (str)."""
    try:
        lam = [Fraction(text) for text in rational]
    except (ValueError, ZeroDivisionError):
        return "certificate has malformed rational weights"
    if any(v < 0 for v in lam) or sum(lam) <= 0:
        return "certificate rational weights must be >= 0 and not all zero"
    for v, w in zip(lam, weights):
        if abs(float(v) - w) > 1e-6 * max(1.0, abs(w)):
            return "certificate float and rational weights disagree"
    d = W.shape[1]
    s = sum(lam)
    g, value = exact_combination(W, bias, i, support, lam)
    if isinstance(domain, dom.Box):
        lo, hi = _box_bounds(domain, d)
        value += sum((max(gk * Fraction(float(lo[k])), gk * Fraction(float(hi[k]))) for k, gk in enumerate(g)), Fraction(0))
    elif isinstance(domain, dom.Ball):
        centre = np.broadcast_to(np.asarray(domain.center, np.float64), (d,))
        value += sum((gk * Fraction(float(centre[k])) for k, gk in enumerate(g)), Fraction(0))
        norm2 = sum((gk * gk for gk in g), Fraction(0))
        radius = Fraction(float(domain.radius))
        # value + radius * sqrt(norm2) <= 0  <=>  value <= 0 and radius^2 norm2 <= value^2
        if norm2 != 0:
            if value > 0 or radius * radius * norm2 > value * value:
                return "exact certificate does not prove the margin <= 0 on the ball"
            return Fraction(0)
    elif any(gk != 0 for gk in g):
        return "on R^d a certificate needs s w_i = W^T lam exactly"
    if value > 0:
        return f"exact certificate value {float(value / s)} > 0"
    return value / s


def exact_combination(W, bias, i, support, lam: list, *, use_flint: bool = True) -> tuple[list, Fraction]:
    r"""Exact :math:`g = s w_i - W_S^T \lambda` and :math:`s b_i - \lambda^T b_S` (s = sum lam).

    With FLINT the floats are integers times one power of two and the rationals integers
    over one denominator q, so the k x d combination is one integer product
    (``fmpz_mat``); only the d results become Fractions. Without it (or
    ``use_flint=False``), Fractions throughout: k x d rational products.
    """
    try:
        import flint
    except ImportError:
        use_flint = False
    if not use_flint:
        g = [sum(lam) * Fraction(float(W[i, k])) - sum((v * Fraction(float(W[j, k])) for v, j in zip(lam, support)),
                                                      Fraction(0)) for k in range(W.shape[1])]
        value = sum(lam) * Fraction(float(bias[i])) - sum((v * Fraction(float(bias[j])) for v, j in zip(lam, support)),
                                                          Fraction(0))
        return g, value
    rows = np.concatenate([np.asarray(W[np.r_[i, support]], np.float64),
                           np.asarray(bias, np.float64)[np.r_[i, support]][:, None]], axis=1)
    ints, shift = _dyadic_integers(rows)
    q = math.lcm(*(v.denominator for v in lam))
    numerators = [v.numerator * (q // v.denominator) for v in lam]
    coefficients = flint.fmpz_mat(1, len(lam) + 1, [sum(numerators)] + [-p for p in numerators])
    combined = coefficients * flint.fmpz_mat(rows.shape[0], rows.shape[1], ints)
    scale = Fraction(2) ** shift / q
    out = [Fraction(int(combined[0, k])) * scale for k in range(rows.shape[1])]
    return out[:-1], out[-1]


def _dyadic_integers(values: np.ndarray) -> tuple[list, int]:
    """Finite float64 values as Python integers times 2**shift, exactly: (row-major ints, shift)."""
    mantissa, exponent = np.frexp(values.ravel())
    m = (mantissa * 2.0**53).astype(np.int64).tolist()  # exact: 53 significant bits
    e = (exponent.astype(np.int64) - 53).tolist()
    nonzero = [b for a, b in zip(m, e) if a]
    shift = min(nonzero) if nonzero else 0
    return [a << (b - shift) if a else 0 for a, b in zip(m, e)], shift


def _float_certificate_value(W, bias, domain, i, support, weights) -> float:
    """Rigorous float64 upper bound on U(lam)/s."""
    d = W.shape[1]
    k = support.size
    s = float(weights.sum())
    rows, own = np.asarray(W[support], np.float64), np.asarray(W[i], np.float64)  # float64 work on a float32 head too
    g = s * own - weights @ rows
    g_err = _gamma(k + 3) * (s * np.abs(own) + weights @ np.abs(rows))
    bias_part = s * bias[i] - weights @ bias[support]
    bias_err = _gamma(k + 3) * (s * abs(bias[i]) + weights @ np.abs(bias[support]))
    if isinstance(domain, dom.Box):
        lo, hi = _box_bounds(domain, d)
        extent = np.maximum(np.abs(lo), np.abs(hi))
        sigma = float(np.sum(np.maximum(g * lo, g * hi)))
        sigma_err = _gamma(d + 2) * float(np.sum(np.abs(g) * extent))
    else:
        centre = np.broadcast_to(np.asarray(domain.center, np.float64), (d,))
        extent = np.abs(centre) + float(domain.radius)
        sigma = float(g @ centre + float(domain.radius) * np.linalg.norm(g))
        sigma_err = _gamma(d + 4) * float(np.abs(g) @ np.abs(centre) + float(domain.radius) * np.linalg.norm(g))
    pad = bias_err + float(g_err @ extent) + sigma_err + _gamma(d + 4) * (abs(bias_part) + abs(sigma)) + 1e-300
    total = bias_part + sigma + pad
    return total / s * (1 + 8 * UNIT) if total > 0 else total / s * (1 - 8 * UNIT)


def _log_sum_exp(z: np.ndarray) -> float:
    top = float(np.max(z))
    return top + float(np.log(np.sum(np.exp(z - top))))


def _check_ceilings(report, W, bias, domain, fail) -> None:
    r"""Re-derive both ceiling bounds from the stored point x in float64.

    Lower: :math:`\log p_i(x)`. Upper: with :math:`\nu = \exp(z(x) - \max z)`,
    :math:`s = \sum \nu`, Gibbs' inequality gives
    :math:`\log p^* \le \sigma_X(w_i - W^T\nu/s) + b_i - \nu^T b/s + \sum_j \nu_j \log \nu_j / s - \log s`.
    Each side is padded by a float64 rounding bound before comparing.
    """
    ids = np.asarray(report.ceiling_ids, np.int64)
    if not ids.size:
        return
    C, d = W.shape
    points = np.asarray(report.ceiling_points, np.float64).reshape(-1, d)
    if points.shape[0] != ids.size or report.ceiling_lower.shape != ids.shape or report.ceiling_upper.shape != ids.shape:
        for i in ids:
            fail(i, "ceiling table is malformed")
        return
    row_norm = float(np.max(np.linalg.norm(W, axis=1)))
    bias_max = float(np.max(np.abs(bias)))
    g_pad = _gamma(C + d + 8)
    for n, i in enumerate(ids):
        i, x = int(i), points[n]
        lo, hi = float(report.ceiling_lower[n]), float(report.ceiling_upper[n])
        if not (0.0 <= lo <= hi <= 1.0) or i < 0 or i >= C:
            fail(i, f"ceiling interval [{lo}, {hi}] is not inside [0, 1]")
            continue
        if not _in_domain(domain, x) or isinstance(domain, dom.Free):
            fail(i, "ceiling point lies outside the domain")
            continue
        z = W @ x + bias
        E = _gamma(d + 2) * (row_norm * float(np.linalg.norm(x)) + bias_max)
        lse = _log_sum_exp(z)
        log_p_high = z[i] - lse + 2 * E + g_pad * (abs(lse) + abs(z[i]) + 1.0)
        if lo > 0 and np.log(lo) > log_p_high:
            fail(i, f"ceiling lower bound {lo} exceeds the probability at its point")
            continue
        nu = np.exp(z - np.max(z))
        s = float(nu.sum())
        g = W[i] - (nu @ W) / s
        g_err = g_pad * (np.abs(W[i]) + (nu @ np.abs(W)) / s)
        if isinstance(domain, dom.Box):
            box_lo, box_hi = _box_bounds(domain, d)
            extent = np.maximum(np.abs(box_lo), np.abs(box_hi))
            sigma = float(np.sum(np.maximum(g * box_lo, g * box_hi)))
        else:
            centre = np.broadcast_to(np.asarray(domain.center, np.float64), (d,))
            extent = np.abs(centre) + float(domain.radius)
            sigma = float(g @ centre + float(domain.radius) * np.linalg.norm(g))
        positive = nu > 0
        nu_log_nu = float(np.sum(nu[positive] * np.log(nu[positive])))
        rest = bias[i] - float(nu @ bias) / s + nu_log_nu / s - np.log(s)
        pad = (float(g_err @ extent) + g_pad * (float(np.abs(g) @ extent) + abs(bias[i]) + float(nu @ np.abs(bias)) / s
                                                 + abs(nu_log_nu) / s + abs(np.log(s)) + 1.0))
        log_upper = sigma + rest + pad
        # An unargmaxable token's probability is at most 1/2 (its certificate is checked on its own).
        half_is_enough = report.verdict[i] == UNARGMAXABLE and hi >= 0.5
        if hi < 1.0 and np.log(hi) < log_upper and np.log(hi) < 0 and not half_is_enough:
            fail(i, f"ceiling upper bound {hi} is below the dual bound {np.exp(min(log_upper, 0.0))} at its point")
