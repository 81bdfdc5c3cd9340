"""Everything a check knows about each solved row, and the two ways it grows.

:class:`Evidence` holds, per row, the verdict so far, the proved interval [lower, upper]
on its margin, the stage that decided it, its best witness and best certificate, and the
competitor sets the later stages start from. Stages add to it only through
:func:`record_witness` (a point x proves L(x); the best one is kept) and
:func:`record_certificate` (a lam proves U(lam); the best one is kept). ``resume`` saves
and loads it under its field names.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..verdicts import ARGMAXABLE, NOT_DECIDED, SKIPPED, STAGES, UNARGMAXABLE, UNDECIDED
from .context import Context
from .witness import witness_chunk


class Evidence(NamedTuple):
    """Per-row state of a check (U solved rows). The arrays are updated in place.

    Attributes:
        verdict: (U,) int8 verdict codes (``verdicts``); rows nobody asked about are SKIPPED.
        lower, upper: (U,) float64 proved bounds on each row's margin.
        stage: (U,) object, the stage that decided each row (``"none"`` while undecided).
        witness: (U, d) the best point per row, float16 when ``Context.half`` else the
            working dtype (each exact in that dtype).
        exact_witness: row -> float64 point, where the table cannot hold the witness
            exactly (from the rational stage, or a point float16 rounding would spoil).
        cert_support, cert_weights: row -> the best certificate's rows and weights.
        cert_rational: row -> exact weights ``"p/q"`` of a rational certificate.
        top: row -> competitor candidates (strongest rivals), kept for undecided rows.
        pdhg_support: row -> PDHG's last competitor set, for the exact stage.
        seconds: stage name -> seconds spent.
    """

    verdict: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    stage: np.ndarray
    witness: np.ndarray
    exact_witness: dict
    cert_support: dict
    cert_weights: dict
    cert_rational: dict
    top: dict
    pdhg_support: dict
    seconds: dict


ARRAY_FIELDS = ("verdict", "lower", "upper", "stage", "witness")
TABLE_FIELDS = ("exact_witness", "cert_support", "cert_weights", "cert_rational", "top", "pdhg_support", "seconds")


def new_evidence(wanted: np.ndarray, d: int, witness_dtype) -> Evidence:
    """Nothing known yet about the ``wanted`` rows (U,); the others are SKIPPED."""
    U = wanted.shape[0]
    return Evidence(
        verdict=np.where(wanted, UNDECIDED, SKIPPED).astype(np.int8), lower=np.full(U, -np.inf),
        upper=np.full(U, np.inf), stage=np.array([NOT_DECIDED] * U, dtype=object),
        witness=np.zeros((U, d), witness_dtype), exact_witness={}, cert_support={}, cert_weights={}, cert_rational={},
        top={}, pdhg_support={}, seconds={name: 0.0 for name in STAGES})


def restore(evidence: Evidence, snapshot: dict) -> None:
    """Overwrite ``evidence`` in place with a saved snapshot's fields."""
    for name in ARRAY_FIELDS:
        getattr(evidence, name)[...] = snapshot[name]
    for name in TABLE_FIELDS:
        getattr(evidence, name).update(snapshot[name])


def pending(evidence: Evidence) -> np.ndarray:
    """Rows still undecided."""
    return np.flatnonzero(evidence.verdict == UNDECIDED)


def start_points(ctx: Context, evidence: Evidence, ids) -> np.ndarray:
    """The best point so far per row, at full precision (a later stage starts there)."""
    x = evidence.witness[ids].astype(ctx.dtype)
    for r, i in enumerate(ids):
        if int(i) in evidence.exact_witness:
            x[r] = evidence.exact_witness[int(i)]
    return x


def _halved(ctx: Context, ids, x, L):
    """Witness points rounded to float16 where that keeps a positive margin (re-proved
    at the rounded point), and which rows keep their float32 point: those whose margin
    rounding would lose, and undecided ones (the next stage warm-starts from them)."""
    rounded = x.astype(np.float16).astype(x.dtype)
    differs = np.any(rounded != x, axis=1)
    decided = differs & (L > 0)
    take = np.zeros_like(differs)
    rows = np.flatnonzero(decided)
    L = L.copy()
    size = ctx.hard_batch
    for start in range(0, rows.size, size):  # one batch shape for every stage: one compile
        part = rows[start:start + size]
        padded = np.concatenate([part, np.full(size - part.size, part[0])])
        L_rounded = np.asarray(witness_chunk(ctx.head, ctx.place.split(ids[padded]),
                                             ctx.place.split(rounded[padded], ctx.dtype), num_top=0,
                                             algorithm=ctx.settings.dot_algorithm).lower,
                               np.float64)[:part.size]
        take[part] = L_rounded > 0
        L[part[take[part]]] = L_rounded[take[part]]
    return np.where(take[:, None], rounded, x), L, differs & ~take


def record_witness(ctx: Context, evidence: Evidence, ids, valid: int, x, bounds, stage: str) -> None:
    """Keep each row's point x where its proved lower bound beats the best so far; a
    positive one decides the row. ``bounds`` is a :class:`~unargmax_jax.bounds.WitnessBounds`
    of the batch (its ``top`` columns become the rows' competitor candidates)."""
    x = np.asarray(x)
    L = np.asarray(bounds.lower, np.float64)
    keep_wide = np.zeros(len(ids), bool)
    if ctx.half:
        x, L, keep_wide = _halved(ctx, ids, x, L)
    ids, x, L, keep_wide = ids[:valid], x[:valid], L[:valid], keep_wide[:valid]
    improve = L > evidence.lower[ids]
    evidence.lower[ids] = np.where(improve, L, evidence.lower[ids])
    evidence.witness[ids[improve]] = x[improve]
    if ctx.half:
        for r in np.flatnonzero(improve):
            if keep_wide[r]:
                evidence.exact_witness[int(ids[r])] = x[r].astype(np.float64)
            else:
                evidence.exact_witness.pop(int(ids[r]), None)
    newly = (L > 0) & (evidence.verdict[ids] == UNDECIDED)
    evidence.verdict[ids[newly]] = ARGMAXABLE
    evidence.stage[ids[newly]] = stage
    tops = np.asarray(bounds.top)
    if tops.shape[1]:
        for r in np.flatnonzero(evidence.verdict[ids] == UNDECIDED):
            evidence.top[int(ids[r])] = tops[r]


def record_certificate(ctx: Context, evidence: Evidence, ids, valid: int, support, weights, upper, stage: str) -> None:
    """Keep each row's certificate (support rows, weights) where its proved upper bound
    beats the best so far; one <= 0 decides the row (on R^d only exact ones do, later)."""
    ids = ids[:valid]
    upper = np.asarray(upper, np.float64)[:valid]
    support = np.asarray(support)[:valid]
    weights = np.asarray(weights, np.float64)[:valid]
    better = upper < evidence.upper[ids]
    evidence.upper[ids[better]] = upper[better]
    rows, keys = np.flatnonzero(better), ids[better].tolist()
    if np.all(weights[rows] > 0):  # the common case (the screen's single rivals): no row to trim
        evidence.cert_support.update(zip(keys, support[rows]))
        evidence.cert_weights.update(zip(keys, weights[rows]))
    else:
        for i, r in zip(keys, rows):
            nz = weights[r] > 0
            evidence.cert_support[i] = support[r][nz]
            evidence.cert_weights[i] = weights[r][nz]
    if not ctx.exact_certificates_only:
        decided = (upper <= 0) & (evidence.verdict[ids] == UNDECIDED)
        evidence.verdict[ids[decided]] = UNARGMAXABLE
        evidence.stage[ids[decided]] = stage
