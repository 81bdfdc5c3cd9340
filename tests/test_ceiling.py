"""Probability ceilings bracket float64 brute force and closed forms; jit/vmap behaviour."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import expit, logsumexp

import unargmax_jax as ua
from unargmax_jax.ceiling import ceilings


def brute_force_log_ceiling(W, b, lo, hi, i, seed=0, samples=2000):
    """max log softmax_i over the box: best of dense samples, polished by L-BFGS-B (float64)."""
    W = np.asarray(W, np.float64)
    b = np.zeros(W.shape[0]) if b is None else np.asarray(b, np.float64)
    d = W.shape[1]

    def f(x):
        z = W @ x + b
        p = np.exp(z - logsumexp(z))
        return -(z[i] - logsumexp(z)), -(W[i] - p @ W)

    rng = np.random.default_rng(seed)
    X = rng.uniform(lo, hi, size=(samples, d))
    Z = X @ W.T + b
    values = Z[:, i] - logsumexp(Z, axis=1)
    best = -np.inf
    for x0 in X[np.argsort(-values)[:5]]:
        result = minimize(f, x0, jac=True, method="L-BFGS-B", bounds=[(lo, hi)] * d,
                          options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 2000})
        best = max(best, -result.fun, values.max())
    return best


@given(st.integers(0, 10_000), st.sampled_from([(6, 2), (9, 3)]), st.booleans())
@settings(max_examples=12, deadline=None, derandomize=True)
def test_ceilings_bracket_brute_force(seed, shape, with_bias):
    rng = np.random.default_rng(seed)
    C, d = shape
    W = rng.normal(size=(C, d))
    b = rng.normal(size=C) if with_bias else None
    result = ceilings(W, b, ua.Box(-2.0, 2.0), steps=400, chunk_size=8)
    for n, i in enumerate(result.ids):
        best = brute_force_log_ceiling(W, b, -2.0, 2.0, int(i), seed)
        assert result.log_lower[n] <= best + 1e-6  # the lower bound is attained at a point of the box
        assert best <= result.log_upper[n] + 1e-9
        assert result.log_upper[n] - result.log_lower[n] < 5e-3  # and the interval is tight
        assert np.all(np.abs(result.points[n]) <= 2.0)


def test_two_classes_on_a_box_match_the_closed_form():
    W = np.array([[1.5, -0.5, 0.25], [-1.0, 0.5, 0.0]])
    b = np.array([0.3, -0.2])
    lo, hi = -1.0, 2.0
    result = ceilings(W, b, ua.Box(lo, hi), steps=500)
    for n, (i, j) in enumerate([(0, 1), (1, 0)]):
        g = W[i] - W[j]
        exact = np.log(expit(np.sum(np.maximum(g * lo, g * hi)) + b[i] - b[j]))
        assert result.log_lower[n] <= exact <= result.log_upper[n]
        assert result.log_upper[n] - result.log_lower[n] < 1e-4


def test_unargmaxable_tokens_stay_at_or_below_one_half():
    # Token 2 is the midpoint of tokens 0 and 1 with a lower bias: it never wins.
    W = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [-1.0, -1.0]])
    b = np.array([0.0, 0.0, -0.1, 0.0])
    report = ua.check(W, b, ua.Box(-3.0, 3.0))
    assert report.verdict[2] == -1
    result = ceilings(W, b, ua.Box(-3.0, 3.0), steps=500)
    assert result.upper[2] <= 0.5
    assert result.lower[0] > 0.5 and result.lower[3] > 0.5


def test_subset_ball_and_errors():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(7, 3))
    part = ceilings(W, None, ua.Ball(np.zeros(3), 1.5), tokens=[4, 1], steps=300)
    assert part.ids.tolist() == [4, 1]
    for n, i in enumerate(part.ids):
        assert np.linalg.norm(part.points[n]) <= 1.5 * (1 + 1e-6)
        z = W @ part.points[n]
        assert part.log_lower[n] <= z[i] - logsumexp(z) + 1e-6
    with pytest.raises(ValueError, match="bounded domain"):
        ceilings(W, None, ua.Free())
    with pytest.raises(ValueError, match=r"ids in 0..6"):
        ceilings(W, None, tokens=[7])


def test_ceilings_in_reports_round_trip_and_are_verified(tmp_path):
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(30, 3)), rng.normal(size=30)
    box = ua.Box(-2.0, 2.0)
    report = ua.check(W, b, box)
    report.add_ceilings(ceilings(W, b, box, tokens=np.arange(0, 30, 3), steps=300))
    report.save(tmp_path)
    loaded = ua.Report.load(tmp_path)
    assert loaded.ceiling(3) == report.ceiling(3) and loaded.ceiling(4) is None
    assert ua.verify(loaded, W, b).ok
    for i in loaded.ids("unargmaxable"):
        if loaded.ceiling(int(i)) is not None:
            assert loaded.ceiling(int(i))[1] <= 0.5
    # Tampering with either side is caught by the independent checker.
    low = ua.Report.load(tmp_path)
    low.ceiling_lower[1] *= 0.5  # still a true lower bound, so only the upper bound is wrong:
    low.ceiling_upper[1] = low.ceiling_lower[1] * 1.01
    result = ua.verify(low, W, b)
    assert not result.ok and "below the dual bound" in result.reasons[3]
    high = ua.Report.load(tmp_path)
    true_best = brute_force_log_ceiling(W, b, -2.0, 2.0, 3)
    high.ceiling_lower[1] = min(1.0, np.exp(true_best) * 1.01)
    high.ceiling_upper[1] = 1.0
    assert not ua.verify(high, W, b).ok
