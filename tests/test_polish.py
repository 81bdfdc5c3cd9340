"""Least-squares certificates before any LP (:mod:`unargmax_jax.solve.polish`): rows
dominated by a mixture of two others at d = 512, decided without an LP and proved by
``verify``; the weights against an independent null-space solve."""

from __future__ import annotations

import numpy as np

import unargmax_jax as ua
from unargmax_jax.solve import basis, polish
from unargmax_jax.verdicts import UNARGMAXABLE


def _mixture_head(C: int, d: int, planted: int, seed: int = 0):
    """Anisotropic dyadic rows with a bias; ``planted`` rows are exact midpoints of two
    others with a bias 1 below both: z_p = (z_a + z_c) / 2 - 1 < max(z_a, z_c) everywhere,
    so they are unargmaxable (the truth, by construction)."""
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.normal(0, 0.7, d))
    W = np.round((rng.normal(size=(C, d)) * scales + rng.normal(size=d)) * 256) / 256
    b = np.round(rng.normal(0, 1, C) * 256) / 256
    ids = rng.choice(C, planted, replace=False)
    others = np.setdiff1d(np.arange(C), ids)
    a, c = rng.choice(others, (2, planted))
    W[ids] = (W[a] + W[c]) / 2
    b[ids] = np.minimum(b[a], b[c]) - 1.0
    assert np.all(W.astype(np.float32) == W)
    return W.astype(np.float32), b.astype(np.float32), ids


def test_mixtures_are_decided_without_an_lp(monkeypatch):
    """Regression: at d = 4096 PDHG's float32 weights leave a residual whose support term on
    [-100, 100]^d exceeds a margin of -1, so each such row went through ascent and PDHG to a
    HiGHS LP with d + 1 columns (minutes per row at d = 1024-4096 on 2 cores)."""
    W, b, planted = _mixture_head(400, 512, 8)
    lp_rows = []
    solve = basis.optimal_basis
    monkeypatch.setattr(basis, "optimal_basis", lambda W_, b_, token, *a, **k: lp_rows.append(token) or solve(W_, b_, token, *a, **k))
    report = ua.check(W, b)
    assert report.counts()["undecided"] == 0
    assert np.all(report.verdict[planted] == UNARGMAXABLE)
    assert np.all(report.stage[planted] == "screen")  # before ascent and PDHG: from the screen's rivals
    assert not set(lp_rows) & set(planted.tolist())
    assert ua.verify(report, W, b).ok


def test_least_squares_weights_match_a_null_space_solve():
    rng = np.random.default_rng(3)
    for k, d in [(2, 5), (5, 40), (12, 8), (30, 100)]:
        rows, own = rng.normal(size=(k, d)), rng.normal(size=d)
        # Independent: lam = e/k + N z over the null space N of 1^T, least squares in z.
        N = np.linalg.svd(np.ones((1, k)))[2][1:].T
        z = np.linalg.lstsq(rows.T @ N, own - rows.T @ np.full(k, 1 / k), rcond=None)[0]
        truth = np.full(k, 1 / k) + N @ z
        lam = polish.least_squares_weights(rows, own)
        if np.all(truth >= 0):
            np.testing.assert_allclose(lam, truth, atol=1e-9)
        else:  # clipped: still weights on the simplex
            assert lam is None or (np.all(lam >= 0) and abs(lam.sum() - 1) < 1e-12)


def test_mixtures_are_decided_before_the_second_pass(monkeypatch):
    """Rows a mixture of two others dominates at d = 48 (fewer dimensions than competitors,
    where least-norm weights over every competitor spread and clipping loses the mixture):
    the least-squares certificates on the first pass's rivals decide them, so the second
    pass (five points each, then braid) never evaluates the head for them. Regression: they
    went through both passes and braid first (on a 128256 x 4096 head, 1282 such rows cost
    about a third of an all-pairs product)."""
    import sys
    from pathlib import Path

    from unargmax_jax.solve import screen

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import highs_margins

    W, b, planted = _mixture_head(2400, 48, 24, seed=4)
    second = []
    run_pass = screen._screen_pass
    monkeypatch.setattr(screen, "_screen_pass", lambda ctx, ev, ph, name, todo, *a, **k: (
        second.extend(todo.tolist()) if name == "screen 2" else None) or run_pass(ctx, ev, ph, name, todo, *a, **k))
    report = ua.check(W, b)
    assert np.all(report.verdict[planted] == UNARGMAXABLE) and np.all(report.stage[planted] == "screen")
    assert not set(second) & set(planted.tolist())
    assert ua.verify(report, W, b).ok
    rng = np.random.default_rng(4)
    sample = np.r_[planted[:4], rng.choice(np.setdiff1d(np.arange(2400), planted), 12, replace=False)]
    truth = highs_margins(W, b, -100.0, 100.0, sample)
    assert np.all(truth[:4] < 0) and np.all((truth > 0) == (report.verdict[sample] == 1))
