"""The batched PDHG solver (stage 3) alone and in the pipeline, against HiGHS and exact rationals."""

from fractions import Fraction
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import highs_margins, small_heads
from hypothesis import example, given, settings

import unargmax_jax as ua
from unargmax_jax import bounds, exact
from unargmax_jax.solve import pdhg
from unargmax_jax import domains as dom

TOLERANCE = 1e-5  # relative duality gap at which the solver reports CONVERGED (float32)


def _restricted_all_rows(W, b):
    """Problems of every token against all other rows (tiny heads only)."""
    C = W.shape[0]
    others = np.array([[j for j in range(C) if j != i] for i in range(C)])
    problems = jax.vmap(pdhg.restrict)(jnp.asarray(W), jnp.asarray(b), jnp.asarray(W[others]), jnp.asarray(b[others]))
    return problems, others


@partial(jax.jit, static_argnames=("iterations",))
def _solve_all(problems, domain, iterations):
    C, k = problems.c.shape
    d = problems.A.shape[2]
    solve = partial(pdhg.solve, max_iterations=iterations, tolerance=TOLERANCE, decisive=1e30)
    return jax.vmap(solve, in_axes=(0, 0, 0, 0, None))(
        problems, jnp.zeros((C, d), problems.A.dtype), jnp.full((C, k), 1.0 / k, problems.A.dtype),
        jnp.full((C,), 0.01, problems.A.dtype), domain)


def _exact_lower(W, b, i, x):
    xs = [Fraction(float(v)) for v in x]
    z = [sum((Fraction(float(W[j, k])) * xs[k] for k in range(W.shape[1])), Fraction(float(b[j]))) for j in range(W.shape[0])]
    return min(z[i] - z[j] for j in range(W.shape[0]) if j != i)


@given(small_heads(with_bias=True))
# Regression: the weighted average of box points rounded to just outside the box.
@example(head=(np.array([[0.0], [1.0], [0.0]]), np.array([0.0, 0.0, 1.0])))
@settings(deadline=None, max_examples=25, derandomize=True)
def test_solver_alone_brackets_the_exact_margin(head):
    """No screening, no ascent: (x, lam) from PDHG bracket the exact margin, and the gap
    closes to the documented tolerance whenever the solver says CONVERGED."""
    W, b = head
    W = W.astype(np.float32).astype(np.float64)
    b = b.astype(np.float32).astype(np.float64)
    C, d = W.shape
    box = dom.Box(jnp.full(d, -100.0, jnp.float32), jnp.full(d, 100.0, jnp.float32))
    problems, others = _restricted_all_rows(W.astype(np.float32), b.astype(np.float32))
    result = _solve_all(problems, box, 20000)
    weights = result.lam / problems.row_scale
    upper = bounds.certificate_bounds(jnp.asarray(W, jnp.float32), jnp.asarray(b, jnp.float32), box,
                                      jnp.arange(C), jnp.asarray(others), weights)
    margins = exact.box_margins(W, b, -100.0, 100.0)
    for i in range(C):
        lower = _exact_lower(W, b, i, np.asarray(result.x[i], np.float64))
        assert lower <= margins[i] <= Fraction(float(upper[i]))
        if int(result.status[i]) == pdhg.CONVERGED:
            scale = float(jnp.linalg.norm(dom.extent(box))) + float(jnp.max(jnp.abs(problems.c[i])))
            assert float(result.upper[i] - result.lower[i]) <= TOLERANCE * scale * 1.0001


def _agree_with_highs(report, W, b, ids, zero_tol):
    truth = highs_margins(W.astype(np.float64), None if b is None else b.astype(np.float64), -100.0, 100.0, ids=ids)
    for i, m in zip(ids, truth):
        if m > zero_tol:
            assert report.verdict[i] == 1, (i, m)
        elif m < -zero_tol or b is None:  # without bias m* >= 0, and m* <= tol means m* == 0
            assert report.verdict[i] == -1, (i, m)
        assert report.lower[i] <= m + zero_tol and m - zero_tol <= report.upper[i]


def test_gaussian_head_2000_by_5_without_bias():
    W = np.random.default_rng(11).normal(size=(2000, 5)).astype(np.float32)
    report = ua.check(W)
    assert report.counts()["undecided"] == 0
    assert report.counts()["unargmaxable"] > 1000
    assert ua.verify(report, W).ok
    sample = np.random.default_rng(0).choice(2000, 150, replace=False)
    _agree_with_highs(report, W, None, sample, 1e-7)


@pytest.mark.parametrize("adaptive_step", [False, True])
def test_gaussian_head_500_by_3_with_bias(adaptive_step):
    rng = np.random.default_rng(12)
    W = rng.normal(size=(500, 3)).astype(np.float32)
    b = rng.normal(size=500).astype(np.float32)
    report = ua.check(W, b, pdhg_adaptive_step=adaptive_step)
    assert report.counts()["undecided"] == 0
    assert report.counts()["unargmaxable"] > 100
    assert ua.verify(report, W, b).ok
    _agree_with_highs(report, W, b, np.arange(500), 1e-7)


def test_gaussian_head_20000_by_64_with_bias():
    rng = np.random.default_rng(13)
    W = rng.normal(size=(20000, 64)).astype(np.float32)
    b = rng.normal(size=20000).astype(np.float32)
    report = ua.check(W, b)
    assert report.counts()["undecided"] == 0
    assert ua.verify(report, W, b).ok
    _agree_with_highs(report, W, b, rng.choice(20000, 6, replace=False), 1e-6)


@pytest.mark.parametrize("sign", [+1, -1])
def test_planted_margins_of_plus_minus_1e_4(sign):
    """Shift the biases of a few tokens so that their exact margin is +-1e-4 (margins move
    one-for-one with b_i), far below float32 resolution at this logit scale."""
    rng = np.random.default_rng(14 if sign > 0 else 15)
    W = rng.normal(size=(300, 4))
    b = rng.normal(size=300)
    planted = rng.choice(300, 8, replace=False)
    # Planted tokens may be each other's competitors: shift until all margins sit at the target.
    for _ in range(10):
        margins = highs_margins(W, b, -100.0, 100.0, ids=planted)
        if np.all(np.abs(margins - sign * 1e-4) < 1e-9):
            break
        b[planted] += sign * 1e-4 - margins
    report = ua.check(W, b)
    assert report.counts()["undecided"] == 0
    assert ua.verify(report, W, b).ok
    for i, m in zip(planted, highs_margins(W, b, -100.0, 100.0, ids=planted)):
        assert abs(m - sign * 1e-4) < 1e-7  # HiGHS agrees the plant worked
        assert report.verdict[i] == sign, (i, m)
        assert report.lower[i] <= m + 1e-7 and m - 1e-7 <= report.upper[i]


def test_time_limit_leaves_tokens_honestly_undecided():
    rng = np.random.default_rng(16)
    W = rng.normal(size=(300, 3))
    b = rng.normal(size=300)
    report = ua.check(W, b, max_seconds=0.0)
    assert report.counts()["undecided"] == 300
    assert set(report.stage.tolist()) == {"none"}
    assert ua.verify(report, W, b).ok
    capped = ua.check(W, b, pdhg_iterations=32, ascent_steps=10, rational_max_dim=0)
    undecided = capped.ids("undecided")
    assert ua.verify(capped, W, b).ok
    truth = highs_margins(W, b, -100.0, 100.0, ids=undecided[:20])
    assert np.all(capped.lower[undecided[:20]] <= truth + 1e-9) and np.all(truth - 1e-9 <= capped.upper[undecided[:20]])


def test_float64_mode_in_a_subprocess(tmp_path):
    """With jax_enable_x64 the whole solver runs in float64 and still verifies."""
    import subprocess
    import sys
    script = (
        "import jax; jax.config.update('jax_enable_x64', True)\n"
        "import numpy as np, unargmax_jax as ua\n"
        "rng = np.random.default_rng(17); W = rng.normal(size=(400, 3)); b = rng.normal(size=400)\n"
        "r = ua.check(W, b); assert ua.verify(r, W, b).ok\n"
        "from unargmax_jax.solve.context import device_dtype; assert device_dtype() == jax.numpy.float64\n"
        "np.save(%r, r.verdict)\n" % str(tmp_path / "v.npy")
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    verdict = np.load(tmp_path / "v.npy", allow_pickle=False)
    rng = np.random.default_rng(17)
    W = rng.normal(size=(400, 3))
    b = rng.normal(size=400)
    truth = highs_margins(W, b, -100.0, 100.0)
    np.testing.assert_array_equal(verdict, np.where(truth > 0, 1, -1))
