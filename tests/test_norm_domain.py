"""Norm-aware domains: the outputs gamma * n + beta of a final LayerNorm / RMSNorm.

Truth comes from the norms themselves: pre-norm inputs are pushed through the norm
formula (NumPy float64, and flax's own LayerNorm/RMSNorm) and through the head, so a
token seen winning is argmaxable on the norm's real output set, and a token the check
certifies unargmaxable must never be seen winning. Every witness is also realised by an
explicit pre-norm input.
"""

import json

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import unargmax_jax as ua
from unargmax_jax import domains as dom
from unargmax_jax.cli import main
from unargmax_jax.report import Report

EPS = 1e-5


def norm_output(kind, h, gamma, beta, eps=EPS):
    """The norm applied to pre-norm inputs h (rows), in float64."""
    h = np.asarray(h, np.float64)
    if kind == "layernorm":
        h = h - h.mean(axis=-1, keepdims=True)
    return gamma * h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + eps) + beta


def sampled_winners(kind, W, b, gamma, beta, *, samples, seed):
    """Which tokens win (strictly) at some sampled output of the norm.

    Pre-norm inputs are random directions at scales from far below to far above
    sqrt(eps), so the outputs fill the whole ball (or centred disc), not only its rim.
    """
    rng = np.random.default_rng(seed)
    d = W.shape[1]
    u = rng.standard_normal((samples, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    scale = np.sqrt(EPS) * 10.0 ** rng.uniform(-2, 3, (samples, 1))
    X = norm_output(kind, u * scale, gamma, beta)
    Z = X @ np.asarray(W, np.float64).T + (0.0 if b is None else np.asarray(b, np.float64))
    top2 = np.sort(Z, axis=1)[:, -2:]
    strict = top2[:, 1] > top2[:, 0]
    return set(np.argmax(Z, axis=1)[strict].tolist())


def realise(kind, n, eps=EPS):
    """A pre-norm input h whose normalised vector is exactly n (centred first for LayerNorm).

    Scaling n by s gives s n / sqrt(s^2 |n|^2 / d + eps) = n when s^2 = eps / (1 - |n|^2 / d).
    """
    n = np.asarray(n, np.float64)
    if kind == "layernorm":
        n = n - n.mean()
    q = float(n @ n) / n.size
    assert q < 1.0, "a witness must lie strictly inside the ball"
    return n * np.sqrt(eps / (1.0 - q)), n


def planted_head(d, C, seed, with_bias=True):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((C, d)).astype(np.float32)
    W[3] = (W[1] + W[2]) / 2  # beaten by rows 1 and 2 everywhere (with the bias below)
    b = rng.standard_normal(C).astype(np.float32) if with_bias else None
    if b is not None:
        b[3] = min(b[1], b[2]) - 0.5
    gamma = rng.uniform(0.3, 2.0, d).astype(np.float32)
    beta = (0.5 * rng.standard_normal(d)).astype(np.float32)
    return W, b, gamma, beta


@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("d", [2, 3])
def test_verdicts_match_sampled_norm_outputs(kind, d):
    W, b, gamma, beta = planted_head(d, 14, seed=d)
    report = ua.check(W, b, ua.NormOutput(kind, gamma, beta))
    assert ua.verify(report, W, b).ok
    assert report.counts()["undecided"] == 0
    seen = sampled_winners(kind, W, b, gamma, beta, samples=200_000, seed=1)
    unargmaxable = set(report.ids("unargmaxable").tolist())
    assert 3 in unargmaxable
    assert not seen & unargmaxable, "a sampled norm output beat a certificate"
    # Every token with a clear margin is found by dense sampling (regions of tiny margin may be missed).
    spread = np.max(np.linalg.norm((W[:, None] - W[None]) * gamma, axis=-1))
    clear = {int(i) for i in report.ids("argmaxable") if report.lower[i] > 0.05 * spread}
    assert clear <= seen
    assert seen <= set(report.ids("argmaxable").tolist())


@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
def test_witnesses_are_realised_by_pre_norm_inputs(kind):
    W, b, gamma, beta = planted_head(6, 40, seed=7)
    report = ua.check(W, b, ua.NormOutput(kind, gamma, beta))
    assert ua.verify(report, W, b).ok
    flax_norm = nn.LayerNorm(epsilon=EPS) if kind == "layernorm" else nn.RMSNorm(epsilon=EPS)
    params = {"params": {"scale": jnp.asarray(gamma)}}
    if kind == "layernorm":
        params["params"]["bias"] = jnp.asarray(beta)
    checked = 0
    for i in report.ids("argmaxable"):
        h, n = realise(kind, report.witness(int(i)))
        x = norm_output(kind, h, gamma, beta)
        np.testing.assert_allclose(x, gamma * n + beta, rtol=1e-9, atol=1e-9)
        z = np.asarray(W, np.float64) @ x + b
        assert np.argmax(z) == i and np.sort(z)[-2] < z[i]
        if report.lower[i] > 1e-2:  # flax computes in float32: only clear margins survive it
            x32 = np.asarray(flax_norm.apply(params, jnp.asarray(h, jnp.float32)), np.float64)
            if kind == "rmsnorm":
                x32 = x32 + beta  # flax's RMSNorm has no shift; the domain's beta is added after it
            assert np.argmax(np.asarray(W, np.float64) @ x32 + b) == i
        checked += 1
    assert checked >= 5


@settings(max_examples=25, deadline=None, derandomize=True)
@given(kind=st.sampled_from(["rmsnorm", "layernorm"]), seed=st.integers(0, 2**31 - 1),
       with_bias=st.booleans(), d=st.sampled_from([2, 3]))
def test_no_sampled_output_beats_a_certificate(kind, seed, with_bias, d):
    W, b, gamma, beta = planted_head(d, 10, seed, with_bias)
    report = ua.check(W, b, ua.NormOutput(kind, gamma, beta), ascent_steps=100)
    assert ua.verify(report, W, b).ok
    seen = sampled_winners(kind, W, b, gamma, beta, samples=20_000, seed=seed % 1000)
    assert not seen & set(report.ids("unargmaxable").tolist())
    # Undecided only when the margin is 0 up to the transformation's rounding (the
    # planted midpoint without a bias); such a token may appear to win by a rounding error.
    undecided = report.ids("undecided")
    assert np.all(report.upper[undecided] - report.lower[undecided] < 1e-4)
    assert seen <= set(report.ids("argmaxable").tolist()) | set(undecided.tolist())


def test_rmsnorm_without_shift_or_bias_matches_the_plain_ball():
    # x = gamma * n: with gamma = 1 and no bias the domain is the ball of radius sqrt(d).
    W, _, _, _ = planted_head(4, 30, seed=3, with_bias=False)
    on_norm = ua.check(W, None, ua.NormOutput("rmsnorm", 1.0, 0.0))
    on_ball = ua.check(W, None, ua.Ball(0.0, 2.0))
    np.testing.assert_array_equal(on_norm.verdict, on_ball.verdict)


def test_norm_head_is_the_same_map():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((50, 5)).astype(np.float32)
    b = rng.standard_normal(50)
    norm = dom.validate(ua.NormOutput("layernorm", rng.uniform(0.5, 2, 5), rng.standard_normal(5)), 5)
    W2, b2, ball, exact = dom.norm_head(W, b, norm, block=7)
    assert not exact
    n = rng.standard_normal((20, 5))
    n -= n.mean(axis=1, keepdims=True)
    x = norm.gamma * n + norm.beta
    np.testing.assert_allclose(n @ W2.T + b2, x @ W.T.astype(np.float64) + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(W2.astype(np.float64).sum(axis=1), 0.0, atol=1e-5)  # centred rows
    assert float(ball.radius) == pytest.approx(np.sqrt(5))


def test_report_round_trip_and_tampering(tmp_path):
    W, b, gamma, beta = planted_head(3, 12, seed=5)
    report = ua.check(W, b, ua.NormOutput("layernorm", gamma, beta))
    report.save(tmp_path / "out")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["domain"]["kind"] == "layernorm" and len(data["domain"]["gamma"]) == 3
    loaded = Report.load(tmp_path / "out")
    assert ua.verify(loaded, W, b).ok
    # Another gamma makes other logits: the stored evidence must not pass for it.
    other = loaded._replace(domain=ua.NormOutput("layernorm", gamma * 3.0, beta)) if hasattr(loaded, "_replace") else None
    if other is None:
        loaded.domain = ua.NormOutput("layernorm", np.asarray(gamma) * 3.0, beta)
        other = loaded
    assert not ua.verify(other, W, b).ok


def test_bad_norm_domains_are_refused():
    W = np.ones((4, 3), np.float32) * np.arange(4)[:, None]
    with pytest.raises(ValueError, match="kind must be one of"):
        ua.check(W, None, ua.NormOutput("batchnorm", 1.0, 0.0))
    with pytest.raises(ValueError, match=r"gamma must be a scalar or have shape \(3,\)"):
        ua.check(W, None, ua.NormOutput("rmsnorm", np.ones(4), 0.0))
    with pytest.raises(ValueError, match="finite"):
        ua.check(W, None, ua.NormOutput("rmsnorm", 1.0, np.array([0.0, np.nan, 0.0])))


def test_beta_none_means_no_shift():
    # load_head reports an RMSNorm's beta as None; NormOutput(kind, gamma, None) must work
    # and equal beta = 0 (it raised "beta must be finite").
    rng = np.random.default_rng(3)
    W = rng.normal(size=(40, 3)).astype(np.float32)
    gamma = rng.uniform(0.5, 2.0, size=3)
    with_none = ua.check(W, None, ua.NormOutput("rmsnorm", gamma, None))
    with_zero = ua.check(W, None, ua.NormOutput("rmsnorm", gamma, 0.0))
    assert np.array_equal(with_none.verdict, with_zero.verdict)
    assert ua.verify(with_none, W, None).ok


def test_cli_domain_from_the_checkpoint_norm(tmp_path, capsys):
    W, b, gamma, beta = planted_head(4, 20, seed=11)
    directory = tmp_path / "ckpt"
    directory.mkdir()
    save_file({"lm_head.weight": W, "lm_head.bias": b, "transformer.ln_f.weight": gamma,
               "transformer.ln_f.bias": beta}, str(directory / "model.safetensors"))
    out = tmp_path / "out"
    assert main(["check", str(directory), "--domain", "layernorm", "--out", str(out), "--quiet", "--verify"]) == 0
    report = Report.load(out)
    assert isinstance(report.domain, ua.NormOutput) and report.domain.kind == "layernorm"
    np.testing.assert_array_equal(np.asarray(report.domain.gamma, np.float32), gamma)
    direct = ua.check(W, b, ua.NormOutput("layernorm", gamma, beta))
    np.testing.assert_array_equal(report.verdict, direct.verdict)
    assert main(["verify", str(out), "--weights", str(directory)]) == 0
    # A head file without a final norm: a one-line usage error, nothing written.
    np.savez(tmp_path / "bare.npz", W=W)
    capsys.readouterr()
    assert main(["check", str(tmp_path / "bare.npz"), "--domain", "rmsnorm", "--out", str(tmp_path / "o2"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--domain rmsnorm needs the final norm" in err and not (tmp_path / "o2" / "report.json").exists()


def test_small_positive_margins_on_a_norm_ball_get_witnesses():
    # Regression (found by a new-user pass): without a bias PDHG used to stop after two
    # rounds and leave margin-0 candidates to the exact stage, which makes witnesses only
    # on boxes; on a norm ball, tokens with small positive margins stayed undecided (2 of
    # 1200 on this seeded head). Truth: qhull vertices of the gamma-scaled rows (general
    # position: no duplicates or midpoints planted here).
    from helpers import hull_vertices_argmaxable

    rng = np.random.default_rng(1)
    W = rng.normal(size=(1200, 8)).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, size=8).astype(np.float32)
    report = ua.check(W, None, ua.NormOutput("rmsnorm", gamma, None))
    truth = hull_vertices_argmaxable(W.astype(np.float64) * gamma)
    decided = report.verdict != 0
    assert np.array_equal(report.verdict[decided] == 1, truth[decided])
    assert np.sum(~decided) <= 1, np.flatnonzero(~decided)
    assert np.all(report.lower[~decided] <= 0) and np.all(report.upper[~decided] > 0)
    assert ua.verify(report, W, None).ok
