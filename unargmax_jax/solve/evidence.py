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

import jax
import jax.numpy as jnp
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


@jax.jit
def _half_on_device(x):
    """x rounded to float16, and which rows that leaves unchanged."""
    half = x.astype(jnp.float16)
    return half, jnp.all(half.astype(x.dtype) == x, axis=1)


def _rounds_on_device(x) -> bool:
    return isinstance(x, jax.Array) and jax.default_backend() != "cpu"


def _half(x):
    """(x in float16, (n,) whether each row is exactly that): on an accelerator computed
    there and half the bytes come back (NumPy's float16 casts on a GPU's host took about a
    fifth of a check); on CPU in NumPy (as fast, and no kernel per batch shape to compile)."""
    if _rounds_on_device(x):
        half, exact = _half_on_device(x)
        return np.asarray(half), np.asarray(exact)
    x = np.asarray(x)
    half = x.astype(np.float16)
    return half, np.all(half.astype(x.dtype) == x, axis=1)


def _halved(ctx: Context, ids, x, L):
    """The witness points as the float16 table stores them: rounded, where that keeps a
    positive margin (re-proved at the rounded point); the rows that keep their float32
    point (as float64, for ``exact_witness``): those whose margin rounding would lose, and
    undecided ones (the next stage warm-starts from them). Returns (table rows, L, wide)."""
    half, exact = _half(x)
    take = np.zeros(exact.shape, bool)
    rows = np.flatnonzero(~exact & (L > 0))
    L = L.copy()
    size = ctx.hard_batch
    for start in range(0, rows.size, size):  # one batch shape for every stage: one compile
        part = rows[start:start + size]
        padded = np.concatenate([part, np.full(size - part.size, part[0])])
        L_rounded = np.asarray(witness_chunk(ctx.head, ctx.place.split(ids[padded]),
                                             ctx.place.split(half[padded], ctx.dtype), num_top=0,
                                             algorithm=ctx.settings.dot_algorithm).lower,
                               np.float64)[:part.size]
        take[part] = L_rounded > 0
        L[part[take[part]]] = L_rounded[take[part]]
    wide = np.flatnonzero(~exact & ~take)
    points = np.asarray(x)[wide].astype(np.float64) if wide.size else ()
    return half, L, dict(zip(wide.tolist(), points))


def record_witness(ctx: Context, evidence: Evidence, ids, valid: int, x, bounds, stage: str) -> None:
    """Keep each row's point x where its proved lower bound beats the best so far; a
    positive one decides the row. ``bounds`` is a :class:`~unargmax_jax.bounds.WitnessBounds`
    of the batch (its ``top`` columns become the rows' competitor candidates)."""
    L = np.asarray(bounds.lower, np.float64)
    if ctx.half:
        table, L, wide = _halved(ctx, ids, x, L)
    else:
        table, wide = np.asarray(x), {}
    ids, table, L = ids[:valid], table[:valid], L[:valid]
    improve = L > evidence.lower[ids]
    evidence.lower[ids] = np.where(improve, L, evidence.lower[ids])
    evidence.witness[ids[improve]] = table[improve]
    if ctx.half:
        for r in np.flatnonzero(improve):
            if r in wide:
                evidence.exact_witness[int(ids[r])] = wide[r]
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
