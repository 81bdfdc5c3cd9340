"""ArgmaxableDense heads have no unargmaxable class; the warm-started monitor counts like a full check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unargmax_jax as ua
from helpers import hull_vertices_argmaxable
from unargmax_jax.monitor import Monitor, warm_check


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_argmaxable_dense_heads_have_no_unargmaxable_class(seed):
    # C >> d: an ordinary Dense head of this shape has many interior rows (see below).
    layer = ua.ArgmaxableDense(features=300)
    params = layer.init(jax.random.PRNGKey(seed), jnp.zeros((1, 3)))["params"]
    W, b = ua.ArgmaxableDense.head(params)
    W = np.asarray(W)
    assert b is None
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(seed + 10), (5, 3)))
    np.testing.assert_allclose(np.asarray(layer.apply({"params": params}, x)), x @ W.T, rtol=1e-5, atol=1e-6)
    report = ua.check(W, None, ua.Box(-100.0, 100.0))
    assert ua.verify(report, W, None).ok
    assert report.counts() == {"argmaxable": 300, "unargmaxable": 0, "undecided": 0, "skipped": 0}
    assert hull_vertices_argmaxable(W).all()  # qhull agrees: every unit row is a hull vertex
    plain = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (300, 3)))
    assert not hull_vertices_argmaxable(plain).all()  # the property is not automatic


def test_argmaxable_dense_with_bias_on_all_of_r_d():
    layer = ua.ArgmaxableDense(features=120, use_bias=True, scale_init=0.5)
    params = layer.init(jax.random.PRNGKey(4), jnp.zeros((1, 4)))["params"]
    params = {**params, "bias": jax.random.normal(jax.random.PRNGKey(5), (120,)) * 3}
    W, b = (np.asarray(a) for a in ua.ArgmaxableDense.head(params))
    report = ua.check(W, b, ua.Free())
    assert ua.verify(report, W, b).ok
    assert report.counts()["argmaxable"] == 120


def _training_run(seed, steps, with_bias):
    """A head drifting like a training run: small steps, occasionally a large one."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(80, 3)).astype(np.float32)
    b = rng.normal(size=80).astype(np.float32) if with_bias else None
    for step in range(steps):
        size = 0.3 if step % 3 == 2 else 1e-3
        W = (W + size * rng.normal(size=W.shape)).astype(np.float32)
        if b is not None:
            b = (b + size * rng.normal(size=b.shape)).astype(np.float32)
        yield step, W.copy(), None if b is None else b.copy()


@pytest.mark.parametrize("with_bias", [True, False])
def test_monitor_counts_equal_full_checks(with_bias):
    monitor = Monitor(ua.Box(-10.0, 10.0), every=1)
    reused = []
    for step, W, b in _training_run(3, 6, with_bias):
        count = monitor(step, W, b)
        full = ua.check(W, b, ua.Box(-10.0, 10.0))
        assert count == full.counts()["unargmaxable"]
        np.testing.assert_array_equal(monitor.report.verdict, full.verdict)
        assert ua.verify(monitor.report, W, b).ok
        reused.append(monitor.history[-1]["reused"])
    # Small steps reuse most of the evidence. Without a bias an unargmaxable token has
    # margin exactly 0 (x = 0 ties everything), so only witnesses can carry over.
    assert reused[0] == 0 and max(reused) > (40 if with_bias else 15)
    assert [h["step"] for h in monitor.history] == list(range(6))


def test_monitor_skips_steps_and_checks_inputs():
    monitor = Monitor(every=5)
    W = np.random.default_rng(0).normal(size=(10, 2))
    assert monitor(3, W) is None and monitor.history == []
    assert isinstance(monitor(5, W), int)
    with pytest.raises(ValueError, match="every must be a positive"):
        Monitor(every=0)
    with pytest.raises(ValueError, match="previous report and weights must be for a 10 x 2 head"):
        warm_check(W, previous=monitor.report, previous_W=W[:5])
    with pytest.raises(ValueError, match="other weights"):
        warm_check(W, previous=monitor.report, previous_W=W + 1)
