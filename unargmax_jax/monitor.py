r"""Recount unargmaxable tokens during training, warm-started from the previous check.

Between two checks the head moves from :math:`(W, b)` to :math:`(W', b')`. Old evidence
is reused where a perturbation bound shows it still holds:

* a witness x of token i with proved margin :math:`L_i` keeps a positive margin if
  :math:`L_i > (\|\Delta w_i\| + \max_j \|\Delta w_j\|)\,\|x\| + |\Delta b_i| + \max_j |\Delta b_j|`,
  since every logit gap moves by at most that much (Cauchy-Schwarz); the right-hand side
  is subtracted from :math:`L_i` to give the new proved lower bound;
* a certificate :math:`\lambda` of an unargmaxable token is re-evaluated on the new
  weights (a sparse product, :func:`bounds.certificate_bounds`) and kept if its rigorous
  bound is still <= 0.

Only the tokens left over go through :func:`engine.check`; the result is a complete
:class:`Report` with the same verdicts a full check gives (reused tokens have stage
``reused``), which ``verify`` accepts like any other.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from . import bounds
from . import domains as dom
from .csr import Certificates
from .engine import check
from .report import Report, build_report, empty_report, head_record, head_sha256
from .settings import Settings
from .solve.context import device_dtype, domain_on_device
from .twins import find_twins
from .verdicts import ARGMAXABLE, REUSED, SKIPPED, UNARGMAXABLE

_REL_PAD = 1e-9  # relative pad on the float64 perturbation bound (its own rounding is ~d * 1e-16)


def _row_norms(A: np.ndarray, block: int = 8192) -> np.ndarray:
    return np.concatenate([np.linalg.norm(np.asarray(A[s:s + block], np.float64), axis=1)
                           for s in range(0, A.shape[0], block)]) if A.shape[0] else np.zeros(0)


def _reusable_witnesses(previous: Report, dW_norm, db, exclude):
    """Tokens whose old witness still proves them argmaxable, with their new lower bounds."""
    ids = np.asarray(previous.witness_ids, np.int64)
    if not ids.size:
        return ids, np.zeros(0), np.zeros((0, previous.head["dim"]))
    X = np.asarray(previous.witnesses)
    shift = ((dW_norm[ids] + dW_norm.max()) * _row_norms(X) + db[ids] + db.max()) * (1 + _REL_PAD) + 1e-300
    lower = np.asarray(previous.lower, np.float64)[ids] - shift
    keep = (lower > 0) & ~exclude[ids]
    return ids[keep], lower[keep], X[keep]


@jax.jit
def _certificate_upper(W, b, domain, ids, support, weights):
    return bounds.certificate_bounds(W, b, domain, ids, support, weights)


def _reusable_certificates(previous: Report, W, b, domain, exclude):
    """Tokens whose old float certificate still proves them unargmaxable on the new head.

    Returns ``(token, support, weights, new upper bound)`` per kept certificate.
    """
    if isinstance(domain, dom.Free) or not previous.certificate_ids.size:
        return []  # on R^d only exact certificates count: leave those to the check
    rows = [row for row in previous.certificates.rows() if not exclude[row[0]] and not np.any(row[3] != "")]
    if not rows:
        return []
    k = int(max(support.size for _, support, _, _ in rows))
    ids = np.array([i for i, _, _, _ in rows], np.int64)
    support = np.repeat(ids[:, None], k, axis=1)  # padding: the token itself with weight 0
    weights = np.zeros((len(rows), k))
    for n, (_, s, w, _) in enumerate(rows):
        support[n, : s.size] = s
        weights[n, : w.size] = w
    dtype = device_dtype()
    upper = np.asarray(_certificate_upper(jnp.asarray(W, dtype), jnp.asarray(np.zeros(W.shape[0]) if b is None else b, dtype),
                                          domain_on_device(domain, dtype), jnp.asarray(ids), jnp.asarray(support),
                                          jnp.asarray(weights, dtype)), np.float64)
    return [(i, s, w, float(upper[n])) for n, (i, s, w, _) in enumerate(rows) if upper[n] <= 0]


def warm_check(W, b=None, domain: dom.Domain = dom.Box(-100.0, 100.0), *, previous: Report, previous_W,
               previous_b=None, settings: Settings | None = None, **options) -> Report:
    """:func:`engine.check` of ``(W, b)``, reusing ``previous`` (a report on ``previous_W, previous_b``).

    ``settings`` and ``options`` go to :func:`engine.check` for the tokens left over.
    Returns a full report; its ``notes`` say how many tokens were reused.
    """
    start = time.monotonic()
    W = np.asarray(W)
    previous_W = np.asarray(previous_W)
    C, d = W.shape
    if previous_W.shape != (C, d) or previous.verdict.shape != (C,):
        raise ValueError(f"previous report and weights must be for a {C} x {d} head, "
                         f"got weights {previous_W.shape} and {previous.verdict.shape[0]} tokens")
    if (b is None) != (previous_b is None):
        raise ValueError("previous_b must be given exactly when b is")
    if isinstance(domain, dom.NormOutput):
        raise TypeError("warm starts need a Box, Ball or Free domain (a NormOutput's evidence lives in the norm's "
                        "coordinates, which change with gamma); use check() for NormOutput")
    if dom.to_json(previous.domain) != dom.to_json(domain) or previous.head["sha256"] != head_sha256(previous_W, previous_b):
        raise ValueError("previous report is for another domain or other weights than previous_W/previous_b")
    if np.any(previous.verdict == SKIPPED):
        raise ValueError("previous report skipped tokens; warm starts need a report on every token")
    dW_norm = _row_norms(W.astype(np.float64) - previous_W)
    db = np.zeros(C) if b is None else np.abs(np.asarray(b, np.float64) - np.asarray(previous_b, np.float64))
    # Tokens with an exact twin go through the check, which owns the tie rules.
    _, inverse = find_twins(W, None if b is None else np.asarray(b))
    exclude = np.bincount(inverse)[inverse] > 1
    w_ids, w_lower, w_x = _reusable_witnesses(previous, dW_norm, db, exclude)
    certs = _reusable_certificates(previous, W, None if b is None else np.asarray(b), domain, exclude)
    reused = np.zeros(C, bool)
    reused[w_ids] = True
    reused[[c[0] for c in certs]] = True

    if reused.all():
        report = _empty_report(W, b, domain, settings, options)
    else:
        report = check(W, b, domain, tokens=~reused, settings=settings, **options)
    report = _merge(report, w_ids, w_lower, w_x, certs)
    report.seconds = time.monotonic() - start
    report.notes.append(f"warm start: {int(reused.sum())} of {C} token(s) settled by the previous check's evidence")
    return report


def _empty_report(W, b, domain, settings: Settings | None, options) -> Report:
    """A report with every token skipped (all of them are about to be filled in)."""
    ties = options.get("ties", "strict" if settings is None else settings.ties)
    return empty_report(head_record(W, b), domain, {"ties": ties})


def _merge(report: Report, w_ids, w_lower, w_x, certs) -> Report:
    """``report`` with the reused tokens (skipped in it) filled in from their carried-over evidence."""
    verdict, lower, upper = report.verdict.copy(), report.lower.copy(), report.upper.copy()
    stage = report.stage.astype(object)
    verdict[w_ids], lower[w_ids], upper[w_ids], stage[w_ids] = ARGMAXABLE, w_lower, np.inf, REUSED
    for i, _, _, u in certs:
        verdict[i], lower[i], upper[i], stage[i] = UNARGMAXABLE, -np.inf, u, REUSED
    witness_ids = np.concatenate([report.witness_ids, w_ids])
    dtype = np.result_type(report.witnesses.dtype, w_x.dtype)
    witnesses = np.concatenate([np.asarray(report.witnesses, dtype), np.asarray(w_x, dtype)])
    order = np.argsort(witness_ids, kind="stable")
    # Reused certificates after the check's own, in the order they were found.
    reused = Certificates.from_rows((i, s, w, None) for i, s, w, _ in certs)
    certificates = Certificates.concat([report.certificates, reused])
    return build_report(
        head=report.head, domain=report.domain, verdict=verdict, lower=lower, upper=upper, stage=stage,
        twins=report.twins, witness_ids=witness_ids[order], witnesses=witnesses[order], certificates=certificates,
        settings=report.settings, solved_on=report.solved_on, tokens=report.tokens,
        ceilings=(report.ceiling_ids, report.ceiling_lower, report.ceiling_upper, report.ceiling_points),
        notes=report.notes, seconds=report.seconds, stage_seconds=report.stage_seconds)


class Monitor:
    """Counts unargmaxable tokens every ``every`` steps of a training loop, warm-started.

    ``monitor(step, W, b)`` returns the number of unargmaxable tokens on the steps it
    checks (None on the others); ``monitor.report`` is the latest full report and
    ``monitor.history`` a list of ``{"step", "unargmaxable", "undecided", "reused", "seconds"}``.
    ``settings`` and ``options`` go to every check (see :func:`engine.check`).
    """

    def __init__(self, domain: dom.Domain = dom.Box(-100.0, 100.0), *, every: int = 100,
                 settings: Settings | None = None, **options):
        if every < 1:
            raise ValueError(f"every must be a positive number of steps, got {every}")
        if isinstance(domain, dom.NormOutput):
            raise TypeError("Monitor needs a Box, Ball or Free domain; NormOutput evidence cannot be warm-started")
        self.domain, self.every, self.settings, self.options = domain, every, settings, options
        self.report: Report | None = None
        self._weights = None
        self.history: list[dict] = []

    def check(self, W, b=None) -> Report:
        W = np.array(W, copy=True)
        b = None if b is None else np.array(b, copy=True)
        if self.report is None:
            report = check(W, b, self.domain, settings=self.settings, **self.options)
            reused = 0
        else:
            report = warm_check(W, b, self.domain, previous=self.report, previous_W=self._weights[0],
                                previous_b=self._weights[1], settings=self.settings, **self.options)
            reused = int(np.sum(report.stage == REUSED))
        self.report, self._weights = report, (W, b)
        counts = report.counts()
        self.history.append({"step": None, "unargmaxable": counts["unargmaxable"], "undecided": counts["undecided"],
                             "reused": reused, "seconds": report.seconds})
        return report

    def __call__(self, step: int, W, b=None) -> int | None:
        if step % self.every:
            return None
        report = self.check(W, b)
        self.history[-1]["step"] = step
        return report.counts()["unargmaxable"]
