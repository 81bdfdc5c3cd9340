"""Numerical kernels: jit == eager, vmap == loop, and outside references."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from unargmax_jax import bounds, domains as dom
from unargmax_jax.solve import pdhg, screen

SETTINGS = settings(deadline=None, max_examples=40, derandomize=True)


def _box(d, lo=-100.0, hi=100.0, dtype=jnp.float32):
    v = dom.validate(dom.Box(lo, hi), d)
    return dom.Box(jnp.asarray(v.lo, dtype), jnp.asarray(v.hi, dtype))


def _ball(d, radius=3.0, dtype=jnp.float32):
    v = dom.validate(dom.Ball(0.5, radius), d)
    return dom.Ball(jnp.asarray(v.center, dtype), jnp.asarray(v.radius, dtype))


@given(st.integers(0, 10_000), st.sampled_from([1, 2, 5]))
@SETTINGS
def test_projection_and_support_agree_with_brute_force(seed, d):
    rng = np.random.default_rng(seed)
    for domain in (_box(d, -2.0, 3.0, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32), _ball(d)):
        g = jnp.asarray(rng.normal(size=d), jnp.float32)
        x = jnp.asarray(5 * rng.normal(size=d), jnp.float32)
        p = dom.project(domain, x)
        # The projection is the closest feasible point: random feasible points are never closer.
        samples = dom.project(domain, jnp.asarray(4 * rng.normal(size=(200, d)), jnp.float32))
        assert np.all(np.linalg.norm(samples - x, axis=1) >= np.linalg.norm(p - x) - 1e-4)
        # The support function dominates g.x on the domain and is attained at a feasible point.
        assert np.all(samples @ g <= dom.support(domain, g) + 1e-4)
        if isinstance(domain, dom.Box):
            best = np.where(np.asarray(g) > 0, np.asarray(domain.hi), np.asarray(domain.lo))
        else:
            best = np.asarray(domain.center) + float(domain.radius) * np.asarray(g) / np.linalg.norm(g)
        np.testing.assert_allclose(float(dom.support(domain, g)), float(best @ np.asarray(g)), rtol=1e-5, atol=1e-5)


@given(st.integers(0, 10_000), st.integers(1, 12))
@SETTINGS
def test_simplex_projection_matches_scipy(seed, k):
    v = np.random.default_rng(seed).normal(size=k) * 3
    p = np.asarray(pdhg.project_simplex(jnp.asarray(v, jnp.float32)))
    ref = minimize(lambda q: np.sum((q - v) ** 2), np.full(k, 1 / k), method="SLSQP",
                   bounds=[(0, None)] * k, constraints=[{"type": "eq", "fun": lambda q: q.sum() - 1}]).x
    np.testing.assert_allclose(p, ref, atol=2e-4)
    assert abs(p.sum() - 1) < 1e-5 and p.min() >= 0


def _simplex_projection_by_sorting(v):
    """The textbook projection (Held et al., 1974), in exact rationals: theta is the
    largest prefix average of the sorted entries minus 1/n."""
    q = sorted((Fraction(float(x)) for x in v), reverse=True)
    prefix, theta = Fraction(0), None
    for n, value in enumerate(q, 1):
        prefix += value
        candidate = (prefix - 1) / n
        if value > candidate:
            theta = candidate
    return np.array([float(max(Fraction(float(x)) - theta, Fraction(0))) for x in v])


@given(st.integers(0, 10_000), st.integers(1, 600), st.sampled_from([1e-3, 0.1, 1.0, 30.0]), st.booleans())
@SETTINGS
def test_simplex_projection_matches_exact_sort(seed, k, scale, ties):
    """Against exact arithmetic at PDHG's sizes (k up to 2 (d + 1)), with repeated
    entries (tied weights of duplicate rows) and the spreads PDHG's steps produce."""
    rng = np.random.default_rng(seed)
    v = (rng.normal(size=k) * scale).astype(np.float32)
    if ties:
        v = v[rng.integers(0, max(1, k // 3), size=k)]
    p = np.asarray(jax.jit(pdhg.project_simplex)(jnp.asarray(v)), np.float64)
    ref = _simplex_projection_by_sorting(v)
    np.testing.assert_allclose(p, ref, atol=4 * np.finfo(np.float32).eps * max(1.0, float(np.max(np.abs(v)))))
    assert p.min() >= 0 and abs(p.sum() - 1) < 1e-5


def test_simplex_projection_jit_vmap():
    V = jnp.asarray(np.random.default_rng(0).normal(size=(7, 5)), jnp.float32)
    batched = jax.vmap(pdhg.project_simplex)(V)
    jitted = jax.jit(pdhg.project_simplex)
    for r in range(7):
        np.testing.assert_allclose(batched[r], pdhg.project_simplex(V[r]), atol=1e-7)
        np.testing.assert_allclose(jitted(V[r]), pdhg.project_simplex(V[r]), atol=1e-7)


def _exact_margin_at(W, b, i, x):
    xf = [Fraction(float(v)) for v in x]
    z = [sum((Fraction(float(W[j, k])) * xf[k] for k in range(W.shape[1])), Fraction(float(b[j]))) for j in range(W.shape[0])]
    return min(z[i] - z[j] for j in range(W.shape[0]) if j != i)


@given(st.integers(0, 10_000), st.sampled_from([(6, 2), (9, 3)]), st.sampled_from([1e-3, 1.0, 1e3]))
@SETTINGS
def test_witness_lower_bound_is_below_exact_margin(seed, shape, scale):
    """L_rig never exceeds the exact margin at x (exact rationals as the truth)."""
    rng = np.random.default_rng(seed)
    C, d = shape
    W = (scale * rng.normal(size=(C, d))).astype(np.float32)
    b = (scale * rng.normal(size=C)).astype(np.float32)
    X = (100 * rng.uniform(-1, 1, size=(C, d))).astype(np.float32)
    Wj, bj = jnp.asarray(W), jnp.asarray(b)
    ids = jnp.arange(C)
    wb = bounds.witness_bounds(Wj, bj, jnp.linalg.norm(Wj, axis=1), ids, jnp.asarray(X), num_top=2)
    jitted = jax.jit(bounds.witness_bounds, static_argnames="num_top")(Wj, bj, jnp.linalg.norm(Wj, axis=1), ids, jnp.asarray(X), num_top=2)
    # XLA may fuse differently under jit: equal up to rounding, and both rigorous (checked below).
    np.testing.assert_allclose(np.asarray(wb.lower), np.asarray(jitted.lower), rtol=1e-5, atol=1e-5 * scale)
    for i in range(C):
        exact = _exact_margin_at(W, b, i, X[i])
        assert Fraction(float(wb.lower[i])) <= exact
        assert Fraction(float(jitted.lower[i])) <= exact
        assert abs(float(wb.margin[i]) - float(exact)) <= 1e-4 * scale * 100 * d + 1e-6


@given(st.integers(0, 10_000), st.sampled_from([(16, 3), (24, 2), (40, 4), (64, 3)]), st.sampled_from([1e-3, 1.0, 1e3]),
       st.booleans())
@SETTINGS
def test_blocked_strongest_rival_matches_exact_rationals(seed, shape, scale, ties):
    """The block-maximum path (num_top=0, C divisible by a block size): L_rig below the
    exact margin, the rival named attains the exact strongest competitor (up to the
    rounding of nearly equal logits), under jit and vmap; ``ties`` copies rows next to
    the token (into its own block) so the own row is often the block's maximum."""
    rng = np.random.default_rng(seed)
    C, d = shape
    assert bounds.rival_block(C) is not None
    W = (scale * rng.normal(size=(C, d))).astype(np.float32)
    b = (scale * rng.normal(size=C)).astype(np.float32)
    if ties:
        W[1::2], b[1::2] = W[0::2], b[0::2]
    X = np.concatenate([100 * rng.uniform(-1, 1, size=(C // 2, d)), 100 * W[:C - C // 2] / scale]).astype(np.float32)
    Wj, bj = jnp.asarray(W), jnp.asarray(b)
    norms = jnp.linalg.norm(Wj, axis=1)
    wb = jax.jit(bounds.witness_bounds, static_argnames="num_top")(Wj, bj, norms, jnp.arange(C), jnp.asarray(X), num_top=0)
    one = jax.vmap(lambda i, x: bounds.witness_bounds(Wj, bj, norms, i[None], x[None], num_top=0))(
        jnp.arange(C), jnp.asarray(X))
    np.testing.assert_array_equal(np.asarray(one.rival)[:, 0], np.asarray(wb.rival))
    for i in range(C):
        xf = [Fraction(float(v)) for v in X[i]]
        z = [sum((Fraction(float(W[j, k])) * xf[k] for k in range(d)), Fraction(float(b[j]))) for j in range(C)]
        strongest = max(z[j] for j in range(C) if j != i)
        rival = int(wb.rival[i])
        assert rival != i
        assert Fraction(float(wb.lower[i])) <= z[i] - strongest
        assert float(strongest - z[rival]) <= 1e-5 * scale * 100 * d


@given(st.integers(0, 10_000), st.sampled_from([(6, 2), (9, 3)]), st.sampled_from([1e-3, 1.0, 1e3]), st.booleans())
@SETTINGS
def test_certificate_upper_bound_is_above_exact_value(seed, shape, scale, use_ball):
    """U_rig / s is never below the exact U(lam) / s (exact rationals; box support exact)."""
    rng = np.random.default_rng(seed)
    C, d = shape
    W = (scale * rng.normal(size=(C, d))).astype(np.float32)
    b = (scale * rng.normal(size=C)).astype(np.float32)
    domain = _ball(d) if use_ball else _box(d)
    i = int(rng.integers(C))
    support = np.array([j for j in range(C) if j != i][:4])
    weights = rng.uniform(0, 1, size=support.size).astype(np.float32)
    U = float(bounds.certificate_bound(jnp.asarray(W), jnp.asarray(b), domain, jnp.asarray(i), jnp.asarray(support), jnp.asarray(weights)))
    lam = [Fraction(float(w)) for w in weights]
    s = sum(lam)
    g = [s * Fraction(float(W[i, k])) - sum(l * Fraction(float(W[j, k])) for l, j in zip(lam, support)) for k in range(d)]
    bias = s * Fraction(float(b[i])) - sum(l * Fraction(float(b[j])) for l, j in zip(lam, support))
    if use_ball:
        c = [Fraction(float(v)) for v in np.asarray(domain.center)]
        norm = float(np.sqrt(float(sum(gk * gk for gk in g))))  # float sqrt: compare with slack below
        exact = bias + sum(gk * ck for gk, ck in zip(g, c)) + Fraction(float(domain.radius)) * Fraction(norm)
        assert Fraction(U) * s >= exact - Fraction(abs(norm) * 1e-12)
    else:
        lo, hi = float(domain.lo[0]), float(domain.hi[0])
        exact = bias + sum(max(gk * Fraction(lo), gk * Fraction(hi)) for gk in g)
        assert Fraction(U) * s >= exact


def test_certificate_bound_vmap_equals_loop():
    rng = np.random.default_rng(1)
    W = jnp.asarray(rng.normal(size=(10, 3)), jnp.float32)
    b = jnp.asarray(rng.normal(size=10), jnp.float32)
    ids = jnp.arange(4)
    support = jnp.asarray([[4, 5], [6, 7], [8, 9], [0, 1]])
    weights = jnp.asarray(rng.uniform(size=(4, 2)), jnp.float32)
    box = _box(3)
    batched = bounds.certificate_bounds(W, b, box, ids, support, weights)
    for r in range(4):
        assert float(batched[r]) == pytest.approx(float(bounds.certificate_bound(W, b, box, ids[r], support[r], weights[r])), rel=1e-6)


def test_braid_reflect_does_not_lose_the_best_point():
    rng = np.random.default_rng(2)
    W = jnp.asarray(rng.normal(size=(40, 4)), jnp.float32)
    b = jnp.asarray(rng.normal(size=40), jnp.float32)
    box = _box(4, -3.0, 3.0)
    ids = jnp.arange(40)
    x0 = screen.starting_points(W, box)[:, 0]
    x = screen.braid_reflect(W, b, ids, x0, box, steps=20)
    norms = jnp.linalg.norm(W, axis=1)
    before = bounds.witness_bounds(W, b, norms, ids, x0, num_top=1).margin
    after = bounds.witness_bounds(W, b, norms, ids, x, num_top=1).margin
    assert np.all(np.asarray(after) >= np.asarray(before) - 1e-5)
    assert np.all(np.abs(np.asarray(x)) <= 3.0 + 1e-6)


def test_hashed_uniform_is_keyed_by_token_and_uniform():
    """The screen's random points: the same per token whatever the chunk (under jit and
    vmap), different for another seed, in [-1, 1), and uniform (Kolmogorov-Smirnov)."""
    from scipy.stats import kstest

    key, d = jax.random.PRNGKey(3), 16
    every = np.asarray(jax.jit(screen.hashed_uniform, static_argnums=2)(key, jnp.arange(4096, dtype=jnp.int32), d))
    some = jnp.array([5, 4095, 17], jnp.int32)
    one_at_a_time = jax.vmap(lambda i: screen.hashed_uniform(key, i[None], d)[0])(some)
    assert np.array_equal(np.asarray(one_at_a_time), every[np.asarray(some)])
    other = np.asarray(screen.hashed_uniform(jax.random.PRNGKey(4), jnp.arange(4096, dtype=jnp.int32), d))
    assert np.mean(other == every) < 1e-3
    assert every.min() >= -1.0 and every.max() < 1.0
    assert kstest(every.ravel(), "uniform", args=(-1.0, 2.0)).pvalue > 1e-3
    assert abs(np.corrcoef(every[:, 0], every[:, 1])[0, 1]) < 0.05
