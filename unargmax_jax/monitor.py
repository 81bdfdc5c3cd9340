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
from .engine import check
from .solve.context import device_dtype, domain_on_device
from .twins import find_twins
from .report import Report, head_sha256

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
    """Tokens whose old float certificate still proves them unargmaxable on the new head."""
    kept = []
    if isinstance(domain, dom.Free) or not previous.certificate_ids.size:
        return kept  # on R^d only exact certificates count: leave those to the check
    offsets = previous.certificate_offsets
    rows = [r for r, i in enumerate(previous.certificate_ids)
            if not exclude[i] and not np.any(previous.certificate_rational[offsets[r]:offsets[r + 1]] != "")]
    if not rows:
        return kept
    k = int(max(offsets[r + 1] - offsets[r] for r in rows))
    ids = np.asarray(previous.certificate_ids, np.int64)[rows]
    support = np.repeat(ids[:, None], k, axis=1)  # padding: the token itself with weight 0
    weights = np.zeros((len(rows), k))
    for n, r in enumerate(rows):
        start, stop = offsets[r], offsets[r + 1]
        support[n, : stop - start] = previous.certificate_support[start:stop]
        weights[n, : stop - start] = previous.certificate_weights[start:stop]
    dtype = device_dtype()
    upper = np.asarray(_certificate_upper(jnp.asarray(W, dtype), jnp.asarray(np.zeros(W.shape[0]) if b is None else b, dtype),
                                          domain_on_device(domain, dtype), jnp.asarray(ids), jnp.asarray(support),
                                          jnp.asarray(weights, dtype)), np.float64)
    for n, r in enumerate(rows):
        if upper[n] <= 0:
            start, stop = offsets[r], offsets[r + 1]
            kept.append((int(ids[n]), previous.certificate_support[start:stop], previous.certificate_weights[start:stop],
                         float(upper[n])))
    return kept


def warm_check(W, b=None, domain: dom.Domain = dom.Box(-100.0, 100.0), *, previous: Report, previous_W,
               previous_b=None, **options) -> Report:
    """:func:`engine.check` of ``(W, b)``, reusing ``previous`` (a report on ``previous_W, previous_b``).

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
    if np.any(previous.verdict == 2):
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
        report = _empty_report(W, b, domain, options)
    else:
        report = check(W, b, domain, tokens=~reused, **options)
    report = _merge(report, w_ids, w_lower, w_x, certs)
    report.seconds = time.monotonic() - start
    report.notes.append(f"warm start: {int(reused.sum())} of {C} token(s) settled by the previous check's evidence")
    return report


def _empty_report(W, b, domain, options) -> Report:
    """A report with every token skipped (all of them are about to be filled in)."""
    C, d = W.shape
    settings = {"ties": options.get("ties", "strict")}
    return Report(head={"classes": C, "dim": d, "has_bias": b is not None, "sha256": head_sha256(W, b)},
                  domain=domain, verdict=np.full(C, 2, np.int8), lower=np.full(C, -np.inf), upper=np.full(C, np.inf),
                  stage=np.full(C, "skipped"), twins={}, witness_ids=np.zeros(0, np.int64), witnesses=np.zeros((0, d)),
                  certificate_ids=np.zeros(0, np.int64), certificate_offsets=np.zeros(1, np.int64),
                  certificate_support=np.zeros(0, np.int64), certificate_weights=np.zeros(0),
                  certificate_rational=np.zeros(0, np.str_), settings=settings)


def _merge(report: Report, w_ids, w_lower, w_x, certs) -> Report:
    """Fill the reused tokens (skipped in ``report``) with their carried-over evidence."""
    verdict, lower, upper = report.verdict.copy(), report.lower.copy(), report.upper.copy()
    stage = report.stage.astype(object)
    verdict[w_ids], lower[w_ids], upper[w_ids], stage[w_ids] = 1, w_lower, np.inf, "reused"
    witness_ids = np.concatenate([report.witness_ids, w_ids])
    dtype = np.result_type(report.witnesses.dtype, w_x.dtype)
    witnesses = np.concatenate([np.asarray(report.witnesses, dtype), np.asarray(w_x, dtype)])
    order = np.argsort(witness_ids, kind="stable")
    ids, offsets = list(report.certificate_ids), list(report.certificate_offsets)
    support, weights = list(report.certificate_support), list(report.certificate_weights)
    rational = list(report.certificate_rational)
    for i, s, w, u in certs:
        verdict[i], lower[i], upper[i], stage[i] = -1, -np.inf, u, "reused"
        ids.append(i)
        support.extend(int(v) for v in s)
        weights.extend(float(v) for v in w)
        rational.extend([""] * len(s))
        offsets.append(len(support))
    report.verdict, report.lower, report.upper = verdict, lower, upper
    report.stage = np.array(stage.tolist(), dtype=np.str_)
    report.witness_ids, report.witnesses = witness_ids[order], witnesses[order]
    report.certificate_ids = np.asarray(ids, np.int64)
    report.certificate_offsets = np.asarray(offsets, np.int64)
    report.certificate_support = np.asarray(support, np.int64)
    report.certificate_weights = np.asarray(weights, np.float64)
    report.certificate_rational = np.asarray(rational, dtype=np.str_)
    return report


class Monitor:
    """Counts unargmaxable tokens every ``every`` steps of a training loop, warm-started.

    ``monitor(step, W, b)`` returns the number of unargmaxable tokens on the steps it
    checks (None on the others); ``monitor.report`` is the latest full report and
    ``monitor.history`` a list of ``{"step", "unargmaxable", "undecided", "reused", "seconds"}``.
    """

    def __init__(self, domain: dom.Domain = dom.Box(-100.0, 100.0), *, every: int = 100, **options):
        if every < 1:
            raise ValueError(f"every must be a positive number of steps, got {every}")
        if isinstance(domain, dom.NormOutput):
            raise TypeError("Monitor needs a Box, Ball or Free domain; NormOutput evidence cannot be warm-started")
        self.domain, self.every, self.options = domain, every, options
        self.report: Report | None = None
        self._weights = None
        self.history: list[dict] = []

    def check(self, W, b=None) -> Report:
        W = np.array(W, copy=True)
        b = None if b is None else np.array(b, copy=True)
        if self.report is None:
            report = check(W, b, self.domain, **self.options)
            reused = 0
        else:
            report = warm_check(W, b, self.domain, previous=self.report, previous_W=self._weights[0],
                                previous_b=self._weights[1], **self.options)
            reused = int(np.sum(report.stage == "reused"))
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
