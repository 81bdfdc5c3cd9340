"""The whitening estimated on the device against the host's float64 estimate, and a check
that uses it (as a GPU/TPU run does) against the plain one."""

import jax.numpy as jnp
import numpy as np
import pytest

import unargmax_jax as ua
from unargmax_jax.solve import context, whitening
from unargmax_jax.trained import trained_head


@pytest.mark.parametrize("classes,dim,rows_per_dim", [(300, 12, 16), (2000, 24, 4), (10, 16, 16)])
def test_device_estimate_matches_the_host_one(classes, dim, rows_per_dim):
    # A trained-looking head; (2000, 24, 4) samples 96 of the rows in blocks that pad the
    # last one with ids that must add nothing; (10, 16) has C < d (the ridge keeps P finite).
    W, _ = trained_head(classes, dim, steps=60, seed=3)
    mean64, P64 = whitening.on_host(W, rows_per_dim=rows_per_dim)
    mean32, P32 = (np.asarray(a, np.float64)
                   for a in whitening.on_device(jnp.asarray(W), block=32, rows_per_dim=rows_per_dim))
    scale = np.max(np.abs(W))
    assert np.max(np.abs(mean32 - mean64)) <= 1e-5 * scale
    assert np.max(np.abs(P32 - P64)) <= 1e-3  # both scaled to a largest entry of 1
    assert np.max(np.abs(P64)) == pytest.approx(1.0) and np.max(np.abs(P32)) == pytest.approx(1.0, abs=1e-6)


def test_constant_rows_fall_back_to_the_identity():
    W = np.ones((50, 6), np.float32)
    for mean, P in (whitening.on_host(W), whitening.on_device(jnp.asarray(W))):
        np.testing.assert_allclose(np.asarray(mean), 1.0)
        np.testing.assert_array_equal(np.asarray(P), np.eye(6))


def test_a_check_whitened_on_the_device_proves_the_same_verdicts(monkeypatch):
    W, b = (np.array(a) for a in trained_head(400, 6, steps=80, seed=5))
    W[7], b[7] = (W[1] + W[2]) / 2, min(b[1], b[2]) - 0.5  # strictly dominated: unargmaxable
    plain = ua.check(W, b)
    made = context.make_context
    monkeypatch.setattr("unargmax_jax.engine.make_context",
                        lambda *a, **k: made(*a, **{**k, "whiten_on_device": True}))
    device = ua.check(W, b)
    np.testing.assert_array_equal(device.verdict, plain.verdict)
    assert device.verdict[7] == -1 and ua.verify(device, W, b).ok
