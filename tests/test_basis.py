"""The float64 basis stage: every token of heads that look trained decided, checked against HiGHS
(scipy), against margins planted exactly, and by ``verify``."""

from __future__ import annotations

import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest

import unargmax_jax as ua
from unargmax_jax import domains as dom
from unargmax_jax.solve import basis
from unargmax_jax.trained import trained_head
from unargmax_jax.verdicts import ARGMAXABLE, UNARGMAXABLE

from helpers import highs_margins


@pytest.fixture(scope="module")
def trained():
    return trained_head(600, 12, steps=150, batch=512, seed=3)


@pytest.mark.parametrize("radius", [100.0, 10.0])
def test_trained_head_every_token_decided_and_agrees_with_highs(trained, radius):
    W, b = trained
    # A short PDHG budget hands many tokens to the basis stage, which must decide them all.
    report = ua.check(W, b, dom.Box(-radius, radius), pdhg_iterations=256, pdhg_round_iterations=128)
    assert report.counts()["undecided"] == 0
    assert np.sum(report.stage == "basis") > 0
    hard = np.flatnonzero(np.isin(report.stage, ["pdhg", "basis"]))
    truth = highs_margins(W, b, -radius, radius, hard)
    clear = np.abs(truth) > 1e-7  # HiGHS's own tolerance; planted tests cover the thin ones
    assert np.all((truth[clear] > 0) == (report.verdict[hard][clear] == ARGMAXABLE))
    assert ua.verify(report, W, b).ok


@pytest.mark.parametrize("radius", [100.0, 10.0])
def test_trained_head_at_scale_agrees_with_highs(radius):
    """A 5000 x 64 softmax regression fitted on Zipf classes, with a bias: 0 undecided, and
    every sampled hard token (not decided by the screen) has HiGHS's sign and lies in its
    proved interval."""
    W, b = trained_head(5000, 64, steps=200, batch=1024, seed=11)
    report = ua.check(W, b, dom.Box(-radius, radius))
    assert report.counts()["undecided"] == 0
    hard = np.flatnonzero(report.stage != "screen")
    assert hard.size >= 20
    sample = np.random.default_rng(0).choice(hard, size=min(40, hard.size), replace=False)
    truth = highs_margins(W, b, -radius, radius, sample)
    clear = np.abs(truth) > 1e-7
    assert np.all((truth[clear] > 0) == (report.verdict[sample][clear] == ARGMAXABLE))
    assert np.all((report.lower[sample] <= truth + 1e-6) & (truth - 1e-6 <= report.upper[sample]))
    assert ua.verify(report, W, b).ok


def _planted_head(d: int, C: int, margin: float, *, bias: bool, seed: int = 0, gap: float = 64.0):
    """Dyadic rows; rows 0 and 1 tie at the top at x = 0 (the others lower by >= gap); the
    planted last row w = (w_0 + w_1) / 2 (exact) with b = b_0 + margin * scale has margin
    exactly that: min over rows 0, 1 of z - z_j is at most it everywhere, and equal at x = 0.
    Returns (W, b, token, exact margin)."""
    rng = np.random.default_rng(seed)
    W = np.round(rng.standard_normal((C, d)) * 64) / 64
    b = -gap - np.round(rng.random(C) * 64) / 64
    b[:2] = 0.0
    scale = 100.0 * np.abs(W).sum(axis=1).max()
    eps = float(np.sign(margin) * 2.0 ** np.round(np.log2(abs(margin) * scale))) if margin else 0.0
    W = np.vstack([W, (W[0] + W[1]) / 2]).astype(np.float32)
    b = np.r_[b, eps]
    assert np.all(W[-1] == (W[0].astype(np.float64) + W[1]) / 2) and abs(eps) < gap / 2
    return W, (b.astype(np.float32) if bias else None), C, eps


@pytest.mark.parametrize("d,margin", [(d, m) for d in (16, 64, 256) for m in (1e-3, -1e-3, 1e-6, -1e-6)])
def test_planted_margins_are_decided_with_their_sign(d, margin):
    # At d = 256, 1e-3 of the logit scale (about 20) needs the other rows further down.
    W, b, token, eps = _planted_head(d, 300, margin, bias=True, gap=64.0 if d <= 64 else 1024.0)
    report = ua.check(W, b)
    assert report.verdict[token] == (ARGMAXABLE if eps > 0 else UNARGMAXABLE), report.stage[token]
    assert report.lower[token] <= eps <= report.upper[token]
    assert report.counts()["undecided"] == 0
    assert ua.verify(report, W, b).ok


@pytest.mark.parametrize("d", [128, 1024])
def test_exact_convex_combination_without_bias_at_any_dimension(d):
    """Margin exactly 0 (w = (w_0 + w_1) / 2, no bias): only exact arithmetic decides it."""
    W, _, token, _ = _planted_head(d, 40, 0.0, bias=False)
    report = ua.check(W)
    assert report.verdict[token] == UNARGMAXABLE and report.stage[token] == "basis"
    assert report.upper[token] == 0.0
    assert report.counts()["undecided"] == 0
    assert ua.verify(report, W).ok


def test_float_certificate_bound_covers_the_exact_value():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((30, 8)).astype(np.float32)
    b = rng.standard_normal(30).astype(np.float32).astype(np.float64)
    lo, hi = np.full(8, -3.0), np.full(8, 2.5)
    for _ in range(20):
        support = rng.choice(np.arange(1, 30), size=6, replace=False)
        weights = rng.random(6)
        bound = basis.float_certificate_bound(W, b, lo, hi, 0, support, weights)
        lam = [Fraction(float(w)) for w in weights]
        s = sum(lam)
        g = [Fraction(float(W[0, k])) * s - sum(l * Fraction(float(W[j, k])) for l, j in zip(lam, support))
             for k in range(8)]
        exact = (Fraction(float(b[0])) * s - sum(l * Fraction(float(b[j])) for l, j in zip(lam, support))
                 + sum(max(gk * Fraction(lo[k]), gk * Fraction(hi[k])) for k, gk in enumerate(g))) / s
        assert exact <= Fraction(bound)


def test_tampered_basis_certificate_is_refused():
    W, b, token, eps = _planted_head(16, 300, -1e-6, bias=True)
    report = ua.check(W, b)
    # A float64 certificate: from the least-squares weights on the first pass's rivals
    # (stage "screen") since they run before the second pass, else from an optimal basis.
    assert report.verdict[token] == UNARGMAXABLE and report.stage[token] in ("screen", "basis")
    assert ua.verify(report, W, b).ok
    row = int(np.flatnonzero(np.asarray(report.certificate_ids) == token)[0])
    start, stop = report.certificate_offsets[row], report.certificate_offsets[row + 1]
    # Rows 2.. lie below rows 0 and 1 by at least 64 at x = 0: any combination of them fails.
    report.certificate_support[start:stop] = np.arange(2, 2 + stop - start)
    result = ua.verify(report, W, b)
    assert not result.ok and token in result.failed


def test_cli_output_carries_no_solver_banner(tmp_path):
    """Regression: highspy.Highs() printed HiGHS's banner on stdout from C, in the middle of
    the check's own output (the example's midpoint token goes through the basis stage)."""
    done = subprocess.run([sys.executable, "-m", "unargmax_jax.cli", "check", "--example", "--quiet",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, check=True)
    assert "decided by stage:" in done.stdout and "basis 1" in done.stdout
    assert "HiGHS" not in done.stdout + done.stderr


def _planted_ball_head(d: int, margins, *, R: float = 2.0, C: int = 300, beta: float = 8.0, seed: int = 0):
    """Dyadic Gaussian rows plus one planted token per margin e: at x* = R e_a (an axis),
    with k the argmax there, w = w_k + beta e_a (exact) and b = b_k - beta R + e beta R.
    Then z - z_k = beta x_a + b - b_k <= e beta R on the ball, with equality at x*, where
    every other row is below k: the margin is e * beta * R (rounded to a power of 2). Returns (W, b, [(token, m)])."""
    rng = np.random.default_rng(seed)
    W = np.round(rng.standard_normal((C, d)) * 1024) / 1024
    b = np.round(rng.standard_normal(C) * 1024) / 1024
    planted = []
    for n, e in enumerate(margins):
        axis = np.zeros(d)
        axis[n % d] = R
        k = int(np.argmax(W[:C] @ axis + b[:C]))
        w = W[k].copy()
        w[n % d] += beta
        planted_margin = float(np.sign(e) * 2.0 ** np.round(np.log2(abs(e) * beta * R)))  # dyadic: exact
        W, b = np.vstack([W, w]), np.r_[b, b[k] - beta * R + planted_margin]
        planted.append((C + n, Fraction(float(b[-1])) - Fraction(float(b[k])) + Fraction(beta * R)))
    assert np.all(W.astype(np.float32) == W) and np.all(b.astype(np.float32) == b)
    return W.astype(np.float32), b.astype(np.float32), planted


@pytest.mark.parametrize("d", [16, 64, 256])
def test_planted_ball_margins_are_decided_with_their_sign(d):
    W, b, planted = _planted_ball_head(d, [1e-3, -1e-3, 1e-6, -1e-6, 1e-5, -1e-5])
    report = ua.check(W, b, ua.Ball(0.0, 2.0))
    assert report.counts()["undecided"] == 0
    for token, margin in planted:
        assert report.verdict[token] == (ARGMAXABLE if margin > 0 else UNARGMAXABLE), (token, margin)
        assert Fraction(float(report.lower[token])) <= margin <= Fraction(float(report.upper[token]))
    assert "basis" in set(report.stage[[t for t, _ in planted]].tolist())
    assert ua.verify(report, W, b).ok


@pytest.mark.parametrize("d", [16, 64, 256])
def test_planted_margins_on_rmsnorm_outputs(d):
    # RMSNorm with gamma = 1: the engine solves the ball of radius sqrt(d) in n exactly.
    W, b, planted = _planted_ball_head(d, [1e-3, -1e-3, 1e-6, -1e-6], R=float(np.sqrt(d)))
    domain = ua.NormOutput("rmsnorm", 1.0, None)
    report = ua.check(W, b, domain)
    for token, margin in planted:
        assert report.verdict[token] == (ARGMAXABLE if margin > 0 else UNARGMAXABLE), (token, margin)
    assert "basis" in set(report.stage[[t for t, _ in planted]].tolist())
    assert ua.verify(report, W, b).ok  # the report carries its domain


NORM_DOMAINS = {"ball": ua.Ball(0.0, 3.0), "rmsnorm": ua.NormOutput("rmsnorm", 1.0, None), "free": ua.Free()}


@pytest.mark.parametrize("d", [128, 1024])
@pytest.mark.parametrize("where", ["ball", "rmsnorm", "free"])
def test_exact_convex_combination_on_balls_and_norm_outputs_at_any_dimension(d, where):
    """Margin exactly 0 on a ball (w = (w_0 + w_1) / 2, no bias): the optimum is inside the
    ball (x = 0, where A^T lam vanishes), so Newton's method on the ball cannot reach it,
    and d > 64 is beyond the exact rational stage. Regression: it stayed undecided (also
    on RMSNorm outputs and on R^d, solved as the unit ball)."""
    W, _, token, _ = _planted_head(d, 40, 0.0, bias=False)
    report = ua.check(W, domain=NORM_DOMAINS[where])
    assert report.verdict[token] == UNARGMAXABLE and report.stage[token] == "basis"
    assert report.upper[token] == 0.0
    assert report.counts()["undecided"] == 0
    assert ua.verify(report, W).ok


def _interior_optimum_head(d: int, C: int = 300, seed: int = 0):
    """Dyadic rows and biases; rows 0 and 1 have the largest biases, and three rows on their
    midpoint w = (w_0 + w_1) / 2 with biases (b_0 + b_1) / 2 + e, for e = 0, -eps, +eps.
    The last one (+eps) beats the other two by eps and rows 0 and 1 by eps on their
    boundary: its optimum is a face reaching into the ball (not on the sphere). Returns
    (W, b, the two rows it beats everywhere, it, a point of the boundary)."""
    rng = np.random.default_rng(seed)
    W = np.round(rng.standard_normal((C, d)) * 1024) / 1024
    b = np.round(rng.standard_normal(C) * 1024) / 1024
    b[:2] = b.max() + np.array([0.5, 0.0])
    eps = 2.0 ** -18  # b ~ 4: float32 keeps b + eps exactly; float32 cannot sign the margin
    w, middle = (W[0] + W[1]) / 2, (b[0] + b[1]) / 2
    W, b = np.vstack([W, w, w, w]), np.r_[b, middle, middle - eps, middle + eps]
    assert np.all(W.astype(np.float32) == W) and np.all(b.astype(np.float32) == b)
    u = W[0] - W[1]
    point = -(b[0] - b[1]) / (u @ u) * u  # nearest point of the rows' boundary to 0
    return W.astype(np.float32), b.astype(np.float32), [C, C + 1], C + 2, point


@pytest.mark.parametrize("where", ["ball", "rmsnorm"])
def test_tiny_margins_at_an_optimum_inside_the_ball(where):
    """Rows beaten everywhere by a row with the same w and a larger bias are unargmaxable;
    the winner is argmaxable with margin at most eps (2^-18) on the ball, decided from a box
    LP's vertex inside the ball. The truth is checked here, exactly, at the boundary point."""
    d = 128
    W, b, beaten, winner, point = _interior_optimum_head(d)
    radius = 3.0 if where == "ball" else np.sqrt(d)
    x = [Fraction(float(v)) for v in point]
    assert sum(v * v for v in x) < Fraction(radius) ** 2
    z = [sum(Fraction(float(W[j, k])) * x[k] for k in range(d)) + Fraction(float(b[j])) for j in range(W.shape[0])]
    assert all(z[winner] > z[j] for j in range(W.shape[0]) if j != winner)  # the truth: argmaxable
    report = ua.check(W, b, NORM_DOMAINS[where])
    assert report.counts()["undecided"] == 0
    assert np.all(report.verdict[beaten] == UNARGMAXABLE)
    assert report.verdict[winner] == ARGMAXABLE
    assert 0 < report.lower[winner] <= 2.0 ** -18 <= report.upper[winner]
    assert ua.verify(report, W, b).ok


def test_kkt_weights_reach_the_optimum_of_a_small_dual():
    # Against a brute force over the simplex's edges and vertices (k = 3 rows in the plane).
    from unargmax_jax.solve import ball

    rng = np.random.default_rng(5)
    for _ in range(20):
        A, p, R = rng.standard_normal((3, 2)), rng.standard_normal(3), 1.5
        lam = ball.kkt_weights(A, p, R, np.full(3, 1 / 3))
        grid = [np.array([t, 1 - t, 0.0])[list(perm)] for t in np.linspace(0, 1, 2001) for perm in
                ((0, 1, 2), (0, 2, 1), (2, 0, 1))]
        grid += [np.array([u, v, 1 - u - v]) for u in np.linspace(0, 1, 101) for v in np.linspace(0, 1 - u, 101)]
        best = min(float(g @ p + R * np.linalg.norm(A.T @ g)) for g in grid)
        if lam is not None:
            assert lam.min() >= 0 and abs(lam.sum() - 1) < 1e-12
            assert float(lam @ p + R * np.linalg.norm(A.T @ lam)) <= best + 1e-6


def _thin_hull_head(d: int = 24, C: int = 300, seed: int = 0):
    """A head without bias whose face in direction u is the edge [w_0, w_1] (u.w = 2 |u|^2
    on both, at most |u|^2 on the cloud of other rows), with thin vertices planted on it
    (exact dyadic values, u.v = 0 exactly):

    * ``thin``: (w_0 + w_1) / 2 + 2^-20 u, beyond the edge: a vertex, margin at most
      2^-20 u^T x <= 2^-20 * 100 |u|_1 on the box (5e-7 of the logit scale: float32 cannot sign it);
    * ``twin``: w_0 with one coordinate moved by one float32 ulp: a vertex, as is w_0.

    Returns (W, ids of the planted argmaxable rows)."""
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=d)
    u = signs / 8
    flip = np.ones(d)
    flip[rng.permutation(d)[: d // 2]] = -1.0
    v = u * flip  # u.v = sum(flip) / 64 = 0
    cloud = rng.standard_normal((C, d))
    cloud *= (np.linalg.norm(u) / np.linalg.norm(cloud, axis=1))[:, None] * rng.uniform(0.3, 1.0, (C, 1))
    w0, w1 = 2 * u + v / 2, 2 * u - v / 2
    twin = w0.copy()
    twin[0] = np.nextafter(np.float32(w0[0]), np.float32(np.inf))
    thin = (w0 + w1) / 2 + 2.0 ** -20 * u
    W = np.vstack([cloud, w0, w1, twin, thin]).astype(np.float32)
    assert np.all(W[C:].astype(np.float64) == np.vstack([w0, w1, twin, thin]))
    return W, np.arange(C, C + 4)


def test_aligned_rows_are_the_largest_dot_products():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((500, 16)).astype(np.float32)
    for token in (0, 17, 499):
        z = W.astype(np.float64) @ W[token].astype(np.float64)
        z[token] = -np.inf
        got = basis.aligned_rows(W, token, 40, block=64)  # several blocks
        assert token not in got and len(got) == 40
        assert set(got) == set(np.argsort(-z)[:40].tolist())


def test_thin_vertices_without_bias_are_decided_by_the_basis_stage(monkeypatch):
    """Regression (Whisper tiny.en's tied head, 51864 x 384, no bias): hundreds of thin
    vertices reached the basis stage, whose LPs started from PDHG's competitor sets and
    solved neighbours' bases and hit the 20 s limit; they now start from each row's
    aligned rows, one LP per core. The planted rows are vertices by construction, so each
    must get a witness (proved by the independent checker); the other rows' verdicts agree
    with HiGHS wherever its tolerance can sign them."""
    calls = []
    parallel = basis._solve_rows_in_parallel
    monkeypatch.setattr(basis, "_solve_rows_in_parallel", lambda *a: calls.append(len(a[2])) or parallel(*a))
    monkeypatch.setattr(basis, "host_workers", lambda: 2)
    W, planted = _thin_hull_head()
    report = ua.check(W, pdhg_iterations=256, pdhg_round_iterations=128)
    assert report.counts()["undecided"] == 0
    assert np.all(report.verdict[planted] == ARGMAXABLE)
    assert report.stage[planted[-1]] == "basis" and calls  # the thin one needs float64
    assert 0 < report.lower[planted[-1]] <= 2.0 ** -20 * 100 * np.abs(W[-1]).sum() / 2
    hard = np.flatnonzero(np.isin(report.stage, ["pdhg", "basis"]))
    truth = highs_margins(W, None, -100.0, 100.0, hard)
    clear = np.abs(truth) > 1e-7
    assert np.all((truth[clear] > 0) == (report.verdict[hard][clear] == ARGMAXABLE))
    assert ua.verify(report, W).ok


def test_a_row_whose_lp_runs_out_of_time_is_tried_again_for_longer(monkeypatch):
    """Regression: on Whisper tiny.en one thin token (decided alone in 5.5 s) ran into the
    20 s per-token wall-clock limit while the machine was loaded and stayed undecided."""
    W, planted = _thin_hull_head()
    thin, seen = int(planted[-1]), []
    solve = basis.optimal_basis

    def first_try_times_out(W_, b64, token, *args, deadline, **kwargs):
        if token == thin:
            seen.append(deadline - time.monotonic())
            if len(seen) == 1:
                return None
        return solve(W_, b64, token, *args, deadline=deadline, **kwargs)

    monkeypatch.setattr(basis, "optimal_basis", first_try_times_out)
    report = ua.check(W, pdhg_iterations=256, pdhg_round_iterations=128, basis_token_seconds=5.0)
    assert report.verdict[thin] == ARGMAXABLE and report.stage[thin] == "basis"
    assert len(seen) == 2 and seen[0] <= 5.0 < seen[1] <= basis.RETRY_FACTOR * 5.0
    assert ua.verify(report, W).ok
