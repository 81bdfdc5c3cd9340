"""The batched simplex of the basis stage: its optimal values against HiGHS (scipy) and the
exact oracle, its bases' structure, and the check it closes on heads that look trained."""

from __future__ import annotations

from collections import deque
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unargmax_jax as ua
from unargmax_jax import exact
from unargmax_jax.solve import basis, neighbours, simplex
from unargmax_jax.trained import trained_head
from unargmax_jax.verdicts import ARGMAXABLE, UNARGMAXABLE

from helpers import highs_margins, small_heads


def _solve_all(W, b, lo, hi, tokens, *, batch_size=8, **options):
    W = np.asarray(W, np.float32)
    d = W.shape[1]
    b64 = np.zeros(W.shape[0]) if b is None else np.asarray(b, np.float64)
    lo, hi = np.broadcast_to(np.float64(lo), (d,)).copy(), np.broadcast_to(np.float64(hi), (d,)).copy()
    # Start from the row strongest at the token's own direction, as the stage's fallback does.
    start = lambda i: np.argsort(-(W.astype(np.float64) @ W[i].astype(np.float64)))[:3]
    outcomes = simplex.solve(W, b64, deque(int(i) for i in tokens), start, lo, hi, batch_size=batch_size,
                             max_pivots=50 * (d + 1), **options)
    return {o.token: o for o in outcomes}


@pytest.mark.parametrize("lo,hi", [(-100.0, 100.0), (-10.0, 10.0), (-3.0, 7.5)])
def test_optimal_values_equal_highs_on_a_trained_head(lo, hi):
    W, b = trained_head(400, 10, steps=150, batch=512, seed=4)
    tokens = np.arange(0, 400, 7)
    found = _solve_all(W, b, lo, hi, tokens, batch_size=16)
    assert set(found) == set(tokens.tolist())
    truth = highs_margins(W, b, lo, hi, tokens)
    scale = np.abs(np.asarray(W)).sum(axis=1).max() * max(abs(lo), abs(hi)) + np.abs(b).max()
    for i, m in zip(tokens, truth):
        out = found[int(i)]
        assert out.status == simplex.OPTIMAL
        assert abs(out.t - m) <= 1e-9 * scale, (i, out.t, m)
        # A vertex: |J| = |F| + 1, lam in the simplex on J, x in the box.
        assert out.active.sum() == out.free.sum() + 1
        assert np.all(out.lam[~out.active] == 0) and abs(out.lam.sum() - 1) < 1e-9
        assert np.all(out.x >= lo) and np.all(out.x <= hi)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(small_heads())
def test_optimal_values_equal_the_exact_oracle(head):
    W, b = head
    if W.shape[0] < 3:
        return
    truth = exact.box_margins(W, b)
    found = _solve_all(W, b, -100.0, 100.0, range(W.shape[0]), batch_size=4)
    scale = 100 * np.abs(W.astype(np.float64)).sum(axis=1).max() + (0 if b is None else np.abs(b).max())
    for i, m in enumerate(truth):
        assert found[i].status == simplex.OPTIMAL
        assert abs(Fraction(found[i].t) - m) <= Fraction(1e-9) * Fraction(float(scale)) + Fraction(1e-300), (i, m)


def test_unargmaxable_tokens_end_early_with_a_proof():
    """``decide`` sees every basis: a token whose bound is already negative stops there."""
    W, b = trained_head(300, 8, steps=150, batch=512, seed=2)
    truth = highs_margins(W, b, -100.0, 100.0)
    negative = np.flatnonzero(truth < -1e-3)[:6]
    assert negative.size
    calls = []

    def decide(outcome, margins):
        calls.append(outcome.token)
        return outcome.t < 0

    found = _solve_all(W, b, -100.0, 100.0, negative, decide=decide)
    assert not found  # each ended in decide, before optimality was needed
    assert set(calls) == set(negative.tolist())


def test_pivot_cap_hands_the_token_on():
    W, b = trained_head(300, 8, steps=150, batch=512, seed=2)
    W32, b64 = np.asarray(W, np.float32), np.asarray(b, np.float64)
    lo, hi = np.full(8, -100.0), np.full(8, 100.0)
    found = list(simplex.solve(W32, b64, deque([5, 6]), lambda i: [0 if i else 1], lo, hi, batch_size=2,
                               max_pivots=1, price_every=1))
    assert sorted(o.token for o in found) == [5, 6]
    assert all(o.status in (simplex.FAILED, simplex.OPTIMAL) and o.pivots <= 1 for o in found)


def _head_with_a_dominated_cluster(n: int = 120, seed: int = 7, spread: float = 0.0, tight: int = 0):
    """A trained head plus ``n`` rare classes that training never moved apart: one row
    (a convex combination of trained rows, with a bias 0.01 below the combination's) plus
    noise of a few float32 ulps per entry. Every cluster row is unargmaxable (its margin is
    about -0.01, the noise moves it by < 1e-4 on the box) and first-order iterations cannot
    tell the rows apart. ``spread`` > 0 moves each row further, by that fraction of the
    entries (training that moved the rare rows a little). Returns (W, b, cluster ids)."""
    W, b = trained_head(600, 12, steps=150, batch=512, seed=seed)
    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    parents = rng.choice(600, size=5, replace=False)
    lam = rng.dirichlet(np.ones(5))
    centre, bias = lam @ W[parents], lam @ b[parents] - 0.01
    noise = rng.integers(-4, 5, size=(n, W.shape[1])) * np.spacing(np.abs(centre).astype(np.float32)).astype(np.float64)
    noise[tight:] += spread * np.abs(centre) * rng.standard_normal((n - tight, W.shape[1]))
    cluster = (centre + noise).astype(np.float32)
    W = np.vstack([W.astype(np.float32), cluster])
    b = np.r_[b, np.full(n, bias)].astype(np.float32)
    return W, b, np.arange(600, 600 + n)


def test_a_cluster_of_near_duplicate_rows_is_decided_by_one_shared_certificate(monkeypatch):
    W, b, cluster = _head_with_a_dominated_cluster()
    solved = []
    original = simplex.start

    def counting_start(W_, b_, tokens, *args, **kwargs):
        solved.extend(int(t) for t in tokens)
        return original(W_, b_, tokens, *args, **kwargs)

    monkeypatch.setattr(simplex, "start", counting_start)
    report = ua.check(W, b)
    assert report.counts()["undecided"] == 0
    assert np.all(report.verdict[cluster] == UNARGMAXABLE)
    assert np.all(report.stage[cluster] == "basis")
    assert np.all(report.upper[cluster] < 0)
    # One LP (or a few: rows on a grid line may form two groups), not one per row.
    assert len(set(solved) & set(cluster.tolist())) <= 4
    truth = highs_margins(W, b, -100.0, 100.0, cluster[:5])
    assert np.all(truth < 0)
    assert ua.verify(report, W, b).ok


def test_near_duplicate_groups():
    W = np.array([[1.0, 2.0], [1.0 + 1e-9, 2.0], [1.0, 2.0 - 1e-9], [0.5, 2.0], [0.5, 2.0], [3.0, 1.0]])
    b = np.zeros(6)
    groups = neighbours.near_duplicate_groups(W, b, np.arange(6))
    assert [sorted(g.tolist()) for g in groups] == [[0, 1, 2], [3, 4]]
    assert neighbours.near_duplicate_groups(W, b + np.arange(6), np.arange(6)) == []


def test_rows_near_a_solved_row_are_solved_by_the_simplex_from_its_vertex(monkeypatch):
    """Rows moved too far for the representative's certificate to cover them: each needs
    its own LP; the simplex, started at the representative's optimal vertex, solves them
    (HiGHS runs for the representative only), in agreement with HiGHS."""
    W, b, cluster = _head_with_a_dominated_cluster(n=60, spread=3e-3, tight=20)
    per_token = []
    original = basis._decide_row

    def counting(ctx, evidence, i, *args):
        per_token.append(i)
        return original(ctx, evidence, i, *args)

    monkeypatch.setattr(basis, "_decide_row", counting)
    report = ua.check(W, b)
    assert report.counts()["undecided"] == 0
    moved = cluster[20:]
    assert np.all(report.stage[cluster] == "basis"), report.stage[cluster]
    assert len(set(per_token) & set(cluster.tolist())) <= 4
    assert np.any(report.upper[moved] > report.upper[cluster[0]] + 1e-3)  # not the shared certificate
    truth = highs_margins(W, b, -100.0, 100.0, cluster)
    assert np.all((truth > 0) == (report.verdict[cluster] == ARGMAXABLE))
    assert np.all((report.lower[cluster] <= truth + 1e-6) & (truth - 1e-6 <= report.upper[cluster]))
    assert ua.verify(report, W, b).ok


def test_pdhg_iterations_zero_skips_pdhg_and_the_basis_stage_closes_the_rest():
    W, b = trained_head(300, 8, steps=150, batch=512, seed=2)
    report = ua.check(W, b, pdhg_iterations=0)
    assert report.counts()["undecided"] == 0
    assert "pdhg" not in set(report.stage.tolist()) and "basis" in set(report.stage.tolist())
    assert ua.verify(report, W, b).ok


def test_no_groups_are_solved_without_a_bias(monkeypatch):
    """Regression: on a box around 0 with no bias every margin is >= 0, so no shared float
    certificate can decide a row; the group step must not spend LPs on representatives
    (Whisper's tied head spent its basis time on them). With the bias it does run."""
    W, b, _ = _head_with_a_dominated_cluster(n=20)
    calls = []
    monkeypatch.setattr(basis, "near_duplicate_groups", lambda *args, **kw: calls.append(1) or [])
    ua.check(W, b)
    assert calls
    calls.clear()
    ua.check(W)
    assert not calls


def test_no_groups_are_looked_for_after_the_deadline(monkeypatch):
    """Regression: with --max-seconds spent in the screen, the group step still sorted every
    pending row (14 s past a 25 s limit for 61485 rows at d = 2048)."""
    W, b, _ = _head_with_a_dominated_cluster(n=20)
    calls = []
    monkeypatch.setattr(basis, "near_duplicate_groups", lambda *args, **kw: calls.append(1) or [])
    report = ua.check(W, b, max_seconds=0.0)
    assert not calls and report.counts()["undecided"] > 0


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(2, 30), d=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_near_duplicate_groups_match_the_definition(rows, d, seed):
    # Rows from a few centres, moved by much less or much more than the grid step, so
    # that many agree in the probed columns and not elsewhere.
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d + 1))
    picked = centres[rng.integers(3, size=rows)]
    noise = rng.choice([0.0, 1e-12, 1e-3], size=(rows, d + 1)) * rng.normal(size=(rows, d + 1))
    full = picked + noise * (rng.random((rows, 1)) < 0.5)
    W, b = full[:, :d], full[:, d]
    ids = np.sort(rng.choice(rows, size=rng.integers(2, rows + 1), replace=False))
    step = 1e-6 * max(np.max(np.abs(W[ids])), np.max(np.abs(b[ids])))
    snapped: dict[tuple, list] = {}
    for i in ids:
        snapped.setdefault(tuple(np.round(np.r_[W[i], b[i]] / step)), []).append(int(i))
    expected = sorted(sorted(g) for g in snapped.values() if len(g) > 1)
    got = neighbours.near_duplicate_groups(W, b, ids)
    assert sorted(sorted(g.tolist()) for g in got) == expected
    assert [len(g) for g in got] == sorted((len(g) for g in got), reverse=True)
