"""Cheap float64 certificates before any LP: least-squares weights on the rows a token's
evidence already names.

First-order iterates name the right rows long before their weights are accurate, and on
a box a certificate's support term :math:`\\sigma(g) = \\sum_k \\max(g_k lo_k, g_k hi_k)`
grows with the residual :math:`g = w_i - W_S^T\\lambda` over all d coordinates: at d = 4096
weights off by 1e-6 already cost more than a margin of -1. For the rows S of token i's best
certificate (and with them PDHG's competitor set) the weights closest to reproducing
:math:`w_i`,

.. math:: \\min_{\\lambda}\\; \\|W_S^T \\lambda - w_i\\|_2 \\;\\text{s.t.}\\; 1^T\\lambda = 1,

are one small float64 solve (its KKT system, k + 1 unknowns); clipped to lam >= 0 they are
bounded rigorously (:func:`~unargmax_jax.solve.rational.float_certificate_bound`). A token
whose margin is clearly negative and whose certificate is a combination of few rows (a
row dominated by a mixture of others, as in a merged or re-initialised vocabulary) is
decided here in microseconds instead of by an LP with d + 1 columns.
"""

from __future__ import annotations

import numpy as np

from .. import domains as dom
from ..verdicts import UNDECIDED
from .context import Context, bias64, box_bounds64, margins_floor_at_zero
from .evidence import Evidence
from .rational import float_certificate_bound, keep_float_certificate, rows64


def least_squares_weights(rows: np.ndarray, own: np.ndarray) -> np.ndarray | None:
    """Weights on the k rows (k, d) minimising :math:`\\|rows^T \\lambda - own\\|_2` with
    :math:`1^T\\lambda = 1`, clipped to >= 0 and renormalised; None if none is left."""
    k = rows.shape[0]
    kkt = np.block([[rows @ rows.T, np.ones((k, 1))], [np.ones((1, k)), np.zeros((1, 1))]])
    lam = np.linalg.lstsq(kkt, np.r_[rows @ own, 1.0], rcond=None)[0][:k]
    lam = np.maximum(lam, 0.0)
    return lam / lam.sum() if lam.sum() > 0 else None


MAX_ROWS = 128  # the KKT system is (k + 1)^2 with k rows: a few ms at k = 128, d = 4096
FEW_ROWS = 8  # first the strongest few: with k >= d rows the fit is not unique, and the
# least-norm weights spread over every row, so clipping them to >= 0 loses a 2-row mixture


def candidate_sets(evidence: Evidence, i: int) -> list[np.ndarray]:
    """Row sets to try (at most ``MAX_ROWS`` each): the best certificate's heaviest rows,
    then with the strongest ``FEW_ROWS`` of PDHG's competitors, or else the screen's, then
    with as many as fit."""
    support = np.asarray(evidence.cert_support.get(i, []), np.int64)
    weights = np.asarray(evidence.cert_weights.get(i, []), np.float64)
    support = support[np.argsort(-weights, kind="stable")][:MAX_ROWS]
    named = set(support.tolist()) | {i}
    rivals = evidence.pdhg_support.get(i, evidence.top.get(i, []))
    competitors = [int(j) for j in rivals if int(j) not in named]
    sets = [support] if support.size else []
    room = MAX_ROWS - support.size
    for size in sorted({min(FEW_ROWS, room), room}):
        if competitors and size > 0:
            sets.append(np.r_[support, np.asarray(competitors[:size], np.int64)])
    return sets


def applies(ctx: Context) -> bool:
    """On a box, where a float certificate can decide: not on R^d (only exact ones count
    there), nor without a bias on a box around 0 (every margin is >= 0 there)."""
    return (isinstance(ctx.domain, dom.Box) and not ctx.exact_certificates_only
            and not margins_floor_at_zero(ctx))


def run(ctx: Context, evidence: Evidence, todo: np.ndarray, stage: str) -> None:
    """Try :func:`least_squares_weights` on each row of ``todo``; a bound <= 0 decides the
    row (as ``stage``), a tighter one is kept."""
    if not applies(ctx) or not todo.size:
        return
    lo, hi = box_bounds64(ctx)
    b64 = bias64(ctx)
    for i in todo:
        i = int(i)
        for rows in candidate_sets(evidence, i):
            if evidence.verdict[i] != UNDECIDED or ctx.expired():
                break
            lam = least_squares_weights(rows64(ctx.W, rows), rows64(ctx.W, [i])[0])
            if lam is None:
                continue
            keep = lam > 0
            bound = float_certificate_bound(ctx.W, b64, lo, hi, i, rows[keep], lam[keep])
            keep_float_certificate(evidence, i, stage, rows[keep], lam[keep], bound)
