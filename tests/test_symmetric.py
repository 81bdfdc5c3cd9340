"""The symmetric first pass: its lower bounds against exact arithmetic, and the check with
and without it."""

import functools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unargmax_jax as ua
from unargmax_jax import domains as dom
from unargmax_jax.solve import symmetric, whitening
from unargmax_jax.solve.context import DeviceHead, domain_on_device
from unargmax_jax.trained import trained_head

SMALL = symmetric.Blocks(rows=8, columns=16, group=8)


def _device_head(W, b):
    mean, precision = whitening.on_host(W)
    Wj = jnp.asarray(W)
    return DeviceHead(Wj, jnp.asarray(b), jnp.linalg.norm(Wj, axis=1), jnp.asarray(mean, jnp.float32),
                      jnp.asarray(precision, jnp.float32))


def _domain(kind, d):
    if kind == "box":
        return dom.Box(jnp.full(d, -100.0, jnp.float32), jnp.full(d, 100.0, jnp.float32))
    if kind == "shifted box":
        return dom.Box(jnp.full(d, -20.0, jnp.float32), jnp.full(d, 60.0, jnp.float32))
    # As the engine puts it on the device: rounded inwards, so projected points stay inside.
    return domain_on_device(dom.validate(dom.Ball(0.5, 3.0), d), jnp.float32)


def _run_blocks(head, domain, blocks, *, half, jit=True):
    """Every row block in order, as the screen runs them: (x, lower, margin, rival) per row."""
    C = head.W.shape[0]
    pre = symmetric.prepare(head, domain, blocks=blocks, algorithm="F32_F32_F32")
    carry = symmetric.Carry(jnp.full(C, -jnp.inf, jnp.float32), jnp.zeros(C, jnp.int32))
    step = symmetric.step if jit else symmetric._step
    out = {}
    for index in range(symmetric.blocks_for(C, blocks)):
        carry, ids, (x, wb, _, upper) = step(head, pre, carry, domain, jnp.int32(index), blocks=blocks,
                                               algorithm="F32_F32_F32", half=half)
        for r, i in enumerate(np.asarray(ids)):
            out.setdefault(int(i), (np.asarray(x[r]), float(wb.lower[r]), float(wb.margin[r]), int(wb.rival[r]),
                                    float(upper[r])))
    return out


def _exact_margin(W, b, i, x):
    """min_j z_i(x) - z_j(x) exactly (float32 products are exact in float64; fsum is
    correctly rounded; exact rationals where the rounding could matter)."""
    best = None
    for j in range(W.shape[0]):
        if j == i:
            continue
        terms = list(W[i].astype(np.float64) * x) + list(-W[j].astype(np.float64) * x) + [float(b[i]), -float(b[j])]
        value = math.fsum(terms)
        best = value if best is None else min(best, value)
    return best


def _head(seed, C, d, scale, kind):
    rng = np.random.default_rng(seed)
    if kind == "trained":
        W, b = trained_head(C, d, steps=60, batch=256, seed=seed)
        return (W * scale).astype(np.float32), (b * scale).astype(np.float32)
    W = (scale * (rng.normal(size=(C, d)) * np.exp(rng.normal(0, 1, d)) + scale * rng.normal(size=d))).astype(np.float32)
    b = (scale * rng.normal(size=C)).astype(np.float32)
    if kind == "ties":  # exact duplicates and rows a hair apart: the own row is often a group's maximum
        n, m = W[1::3].shape[0], W[2::3].shape[0]
        W[1::3], b[1::3] = W[0::3][:n], b[0::3][:n]
        W[2::3], b[2::3] = np.nextafter(W[0::3][:m], np.float32(np.inf)), b[0::3][:m]
    if kind == "collinear":  # a nearly singular covariance: P has large entries of both signs, Q = w'P cancels
        W[:, 1:] = W[:, :1] * np.float32(1 + 1e-3) + (1e-3 * scale * rng.normal(size=(C, d - 1))).astype(np.float32)
    if kind == "no bias":
        b[:] = 0
    return W, b


@given(st.integers(0, 10_000), st.sampled_from([(40, 3), (72, 6), (100, 12)]), st.sampled_from([1e-3, 1.0, 1e3]),
       st.sampled_from(["gaussian", "ties", "collinear", "no bias", "trained"]), st.sampled_from(["box", "shifted box", "ball"]),
       st.booleans())
@settings(deadline=None, max_examples=60, derandomize=True)
def test_lower_bounds_are_below_the_exact_margin_at_the_stored_point(seed, shape, scale, kind, domain_kind, half):
    """Every lower bound is at most the exact margin at the point returned (which lies in
    the domain, and is a float16 number where the half path took it); the rival is
    another row; the unpadded margin is close to the exact one; the pad is not loose
    enough to lose tokens whose margin is a visible fraction of the logits."""
    C, d = shape
    W, b = _head(seed, C, d, scale, kind)
    head = _device_head(W, b)
    domain = _domain(domain_kind, d)
    half = half and domain_kind != "ball"  # as the engine: float16 witnesses only on boxes (context.half_witnesses)
    out = _run_blocks(head, domain, SMALL, half=half)
    assert sorted(out) == list(range(C))
    lo, hi = (np.asarray(domain.lo, np.float64), np.asarray(domain.hi, np.float64)) if domain_kind != "ball" else (None, None)
    for i, (x, lower, margin, rival, upper) in out.items():
        assert rival != i and 0 <= rival < C
        if lo is not None:
            assert np.all(x >= lo) and np.all(x <= hi)
        else:
            assert float(np.linalg.norm(x.astype(np.float64) - 0.5)) <= 3.0 * (1 + 1e-12)
        exact = _exact_margin(W, b, i, x.astype(np.float64))
        assert lower < exact or Fraction(lower) <= _exact_fraction(W, b, i, x), (i, lower, exact)
        logits = float(np.max(np.abs(W.astype(np.float64) @ x.astype(np.float64) + b)))
        # The estimate is within its own pad on the other side too (a float16 point's
        # margin is estimated from its float32 point's rivals).
        assert exact <= margin + (margin - lower) * (1 + 1e-6) + (2e-3 * logits if half else 0), (i, lower, margin, exact)
        if exact > 1e-2 * logits and kind != "collinear":  # (collinear: Q = w'P cancels, the pad is wide)
            assert lower > 0, (i, lower, exact, logits)


def _exact_fraction(W, b, i, x):
    xf = [Fraction(float(v)) for v in x]
    z = [sum((Fraction(float(W[j, k])) * xf[k] for k in range(W.shape[1])), Fraction(float(b[j])))
         for j in range(W.shape[0])]
    return min(z[i] - z[j] for j in range(W.shape[0]) if j != i)


def test_a_row_equal_to_the_mean_gets_the_centre_and_finite_bounds():
    """Regression: a row equal to the row mean has Q = 0, so its scale was inf and its
    logit estimates inf * 0 = NaN; it now sits at the centre, and every bound is finite."""
    rng = np.random.default_rng(5)
    half = rng.normal(size=(24, 4)).astype(np.float32)
    W = np.concatenate([half, -half, np.zeros((1, 4), np.float32)])  # mean exactly 0, row 48 = mean
    b = rng.normal(size=49).astype(np.float32)
    out = _run_blocks(_device_head(W, b), _domain("box", 4), SMALL, half=True)
    assert np.all(out[48][0] == 0)
    for i, (x, lower, margin, rival, upper) in out.items():
        assert np.isfinite(lower) and np.isfinite(margin), i
        assert lower < _exact_margin(W, b, i, x.astype(np.float64)) or lower <= 0


def test_any_scale_is_safe_the_offset_is_measured():
    """Regression: the stored point's offset from c + s Q was bounded a priori (16 u), which
    holds only if the scale pass's W'P rounds as the block's does; with a scale off by 0.1%
    (points clipped to the box) every lower bound is still below the exact margin."""
    W, b = _head(9, 48, 6, 1.0, "gaussian")
    head, domain = _device_head(W, b), _domain("box", 6)
    pre = symmetric.prepare(head, domain, blocks=SMALL, algorithm="F32_F32_F32")
    pre = pre._replace(scale=pre.scale * np.float32(1.001))
    carry = symmetric.Carry(jnp.full(48, -jnp.inf, jnp.float32), jnp.zeros(48, jnp.int32))
    for index in range(symmetric.blocks_for(48, SMALL)):
        carry, ids, (x, wb, _, _) = symmetric.step(head, pre, carry, domain, jnp.int32(index), blocks=SMALL,
                                                   algorithm="F32_F32_F32", half=False)
        for r, i in enumerate(np.asarray(ids)):
            exact = _exact_fraction(W, b, int(i), np.asarray(x[r]))
            assert Fraction(float(wb.lower[r])) <= exact, (i, float(wb.lower[r]), float(exact))


def test_jit_equals_eager_and_block_sizes_do_not_change_the_proofs():
    """The step gives the same bounds jitted and eager (up to rounding), and other block
    shapes decide the same tokens."""
    W, b = _head(3, 64, 5, 1.0, "gaussian")
    head, domain = _device_head(W, b), _domain("box", 5)
    jitted = _run_blocks(head, domain, SMALL, half=True)
    eager = _run_blocks(head, domain, SMALL, half=True, jit=False)
    wide = _run_blocks(head, domain, symmetric.Blocks(rows=16, columns=32, group=16), half=True)
    for i in range(64):
        np.testing.assert_allclose(jitted[i][1], eager[i][1], rtol=1e-5, atol=1e-5)
        assert (jitted[i][1] > 0) == (wide[i][1] > 0)


def test_work_done_is_monotone_and_ends_at_one():
    shares = [symmetric.work_done(1000, SMALL, k) for k in range(symmetric.blocks_for(1000, SMALL) + 1)]
    assert shares[0] == 0 and shares[-1] == 1 and all(np.diff(shares) > 0)


@functools.lru_cache(maxsize=1)
def _trained_4096():
    return trained_head(4096, 16, steps=150, batch=1024, seed=11)


def test_a_pad_too_wide_hands_the_rest_to_the_plain_pass(monkeypatch):
    """When the pad leaves open most tokens whose margin estimate is positive, the pass
    stops after four row blocks and the plain pass screens the rest: the same verdicts."""
    W, b = _trained_4096()
    calls = []
    original_step = symmetric.step
    monkeypatch.setattr(symmetric, "step", lambda *a, **k: calls.append(1) or original_step(*a, **k))
    monkeypatch.setattr(symmetric, "pad", lambda *a, **k: jnp.float32(1e30))
    jax.clear_caches()  # the step traces pad: no compiled step from another test may serve
    try:
        widened = ua.check(W, b)
    finally:
        jax.clear_caches()
    assert len(calls) == 5  # four recorded, the fifth dispatched before the stop
    plain = ua.check(W, b, symmetric_screen=False)
    np.testing.assert_array_equal(widened.verdict, plain.verdict)
    assert widened.counts()["undecided"] == 0


@pytest.mark.parametrize("domain", ["box:100", "ball:30"])
def test_check_with_and_without_the_symmetric_pass(domain, monkeypatch):
    """On a Zipf-trained 4096 x 16 head the symmetric pass runs (every row block once) and
    the verdicts equal those of the plain first pass; HiGHS agrees on a sample."""
    from helpers import highs_margin

    W, b = _trained_4096()
    calls = []
    original = symmetric.step
    monkeypatch.setattr(symmetric, "step", lambda *a, **k: calls.append(1) or original(*a, **k))
    fast = ua.check(W, b, domain=dom.parse(domain))
    assert len(calls) == symmetric.blocks_for(4096)
    plain = ua.check(W, b, domain=dom.parse(domain), symmetric_screen=False)
    assert len(calls) == symmetric.blocks_for(4096)
    assert fast.counts()["undecided"] == 0 and fast.counts()["unargmaxable"] > 0
    np.testing.assert_array_equal(fast.verdict, plain.verdict)
    assert ua.verify(fast, W, b).ok
    if domain == "box:100":
        rng = np.random.default_rng(0)
        for i in rng.choice(4096, 12, replace=False):
            margin = highs_margin(W.astype(np.float64), b.astype(np.float64), -100.0, 100.0, i)
            if abs(margin) > 1e-6:
                assert fast.verdict[i] == (1 if margin > 0 else -1)


def test_prepare_in_pieces_gives_the_same_rows_and_reports_its_progress(monkeypatch):
    # The pre-pass runs a piece of row blocks per call with a progress update after each
    # (it took minutes without a line on a 128256 x 4096 head): any piece size, the same Rows.
    rng = np.random.default_rng(4)
    W = (rng.normal(size=(203, 5)) * np.exp(rng.normal(size=5))).astype(np.float32)  # last block overlaps
    b = rng.normal(size=203).astype(np.float32)
    head, domain = _device_head(W, b), _domain("box", 5)
    whole = symmetric.prepare(head, domain, blocks=SMALL, algorithm="F32_F32_F32")
    for piece in (1, 3, 1000):
        monkeypatch.setattr(symmetric, "PREPARE_PIECE", piece)
        seen = []
        rows = symmetric.prepare(head, domain, blocks=SMALL, algorithm="F32_F32_F32",
                                 progress=lambda done, total: seen.append((done, total)))
        for name, a, c in zip(symmetric.Rows._fields, rows, whole):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(c), err_msg=name)
        assert seen[-1] == (203, 203) and [d for d, _ in seen] == sorted(d for d, _ in seen)
        assert len(seen) == -(-symmetric.blocks_for(203, SMALL) // piece)


def test_prepare_stops_when_the_time_is_up(monkeypatch):
    # Regression: the pre-pass ran to its end past --max-seconds (minutes on a large head).
    monkeypatch.setattr(symmetric, "PREPARE_PIECE", 2)
    rng = np.random.default_rng(6)
    W, b = rng.normal(size=(100, 4)).astype(np.float32), rng.normal(size=100).astype(np.float32)
    seen = []
    rows = symmetric.prepare(_device_head(W, b), _domain("box", 4), blocks=SMALL, algorithm="F32_F32_F32",
                             progress=lambda done, total: seen.append(done), expired=lambda: len(seen) >= 3)
    assert rows is None and seen == [16, 32, 48]
