"""Witnesses kept as float16 points on boxes with float16 bounds (half the memory of a
float32 witness table), with a float32 fallback where rounding would lose a margin."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unargmax_jax as ua
from unargmax_jax.solve.context import half_witnesses as _half_witnesses
from helpers import highs_margins


@pytest.mark.parametrize("domain, dtype, expected", [
    (ua.Box(-100.0, 100.0), np.float32, True),
    (ua.Box(np.array([-1.0, 0.5]), np.array([2.0, 65504.0])), np.float32, True),
    (ua.Box(-0.1, 0.1), np.float32, False),       # 0.1 is not a float16 number
    (ua.Box(-1e5, 1e5), np.float32, False),       # beyond float16's range
    (ua.Box(-100.0, 100.0), np.float64, False),   # float64 runs keep float64 points
    (ua.Ball(0.0, 1.0), np.float32, False),       # rounding can leave a ball
])
def test_half_witnesses_only_where_rounding_stays_in_the_domain(domain, dtype, expected):
    assert _half_witnesses(domain, dtype) is expected


@given(st.floats(-6e4, 6e4, allow_nan=False, width=16), st.floats(-6e4, 6e4, allow_nan=False, width=16),
       st.floats(-1e5, 1e5, allow_nan=False, width=32))
@settings(max_examples=300, deadline=None)
def test_float16_rounding_maps_a_box_with_float16_bounds_into_itself(a, b, x):
    lo, hi = min(a, b), max(a, b)
    inside = np.float32(min(max(x, lo), hi))
    rounded = float(np.float16(inside))
    assert lo <= rounded <= hi


@pytest.mark.parametrize("seed", [3, 4])
def test_box_check_keeps_float16_witnesses_that_verify(seed):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(300, 5)).astype(np.float32)
    b = rng.normal(size=300).astype(np.float32)
    box = ua.Box(-100.0, 100.0)
    half = ua.check(W, b, box)
    full = ua.check(W, b, box, half_witnesses=False)
    # Most witnesses come from PDHG and ascent here: rounded to float16 and re-proved. A
    # point from the exact stage (seed 3 has one) is float64, which widens the table.
    from_rational = np.any((half.verdict == 1) & (half.stage == "rational"))
    assert half.witnesses.dtype == (np.float64 if from_rational else np.float16)
    assert np.any((half.verdict == 1) & (half.stage == "pdhg"))
    assert np.array_equal(half.verdict, full.verdict)
    truth = highs_margins(W, b, -100.0, 100.0)
    decided = half.verdict != 0
    assert np.array_equal(half.verdict[decided], np.where(truth[decided] > 0, 1, -1))
    X = half.witnesses.astype(np.float64)
    assert np.all(np.abs(X) <= 100.0)
    assert ua.verify(half, W, b).ok


def test_float16_witnesses_survive_save_and_load(tmp_path):
    rng = np.random.default_rng(4)
    W = rng.normal(size=(200, 4)).astype(np.float32)
    report = ua.check(W, None)
    report.save(tmp_path)
    loaded = ua.Report.load(tmp_path)
    assert loaded.witnesses.dtype == np.float16
    assert np.array_equal(loaded.witnesses, report.witnesses)
    assert ua.verify(loaded, W, None).ok


def test_ball_witnesses_stay_float32():
    W = np.random.default_rng(5).normal(size=(100, 3)).astype(np.float32)
    report = ua.check(W, None, ua.Ball(0.0, 2.0))
    assert report.witnesses.dtype == np.float32
    assert ua.verify(report, W, None).ok


def _thin_cone_head(eps: float, d: int = 80, seed: int = 0) -> np.ndarray:
    """Token 2d-1 = (1 + eps) u wins only in a thin cone around u: its margin on a box is
    about eps, less than float16 rounding of a point can cost (d > 64: no exact stage)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    Q, _ = np.linalg.qr(np.column_stack([u, rng.normal(size=(d, d - 1))]))
    P = Q[:, 1:].T
    return np.array([u + p for p in P] + [u - p for p in P] + [-u, u * (1 + eps)], np.float32)


@pytest.mark.parametrize("eps", [5e-5, 3e-5])
def test_a_margin_rounding_would_lose_keeps_its_float32_witness(eps):
    # Regression: the later stages' points are rounded to float16 and re-proved; where the
    # rounded point no longer wins, the float32 point must be kept (the report widens).
    W = _thin_cone_head(eps)
    token = W.shape[0] - 1
    assert highs_margins(W, None, -1.0, 1.0, [token])[0] > 0  # argmaxable (HiGHS)
    report = ua.check(W, None, ua.Box(-1.0, 1.0))
    assert report.verdict[token] == 1
    assert report.witnesses.dtype == np.float32
    x = report.witness(token)
    assert not np.array_equal(x.astype(np.float16).astype(np.float32), x)  # really not a float16 point
    assert ua.verify(report, W, None).ok


@pytest.mark.parametrize("eps", [5e-5, 3e-5])
def test_rounding_on_an_accelerator_gives_the_same_report(eps, monkeypatch):
    # On GPU/TPU the float16 rounding and the rows it leaves unchanged come from the device
    # (evidence._half_on_device); run that path here and compare with the host's.
    from unargmax_jax.solve import evidence

    W = _thin_cone_head(eps)
    host = ua.check(W, None, ua.Box(-1.0, 1.0))
    monkeypatch.setattr(evidence, "_rounds_on_device", lambda x: isinstance(x, evidence.jax.Array))
    calls = []
    original = evidence._half_on_device
    monkeypatch.setattr(evidence, "_half_on_device", lambda x: calls.append(1) or original(x))
    device = ua.check(W, None, ua.Box(-1.0, 1.0))
    assert calls
    for field in ("verdict", "lower", "upper", "stage", "witness_ids"):
        np.testing.assert_array_equal(getattr(device, field), getattr(host, field), err_msg=field)
    np.testing.assert_array_equal(device.witnesses, host.witnesses)
    assert ua.verify(device, W, None).ok
