"""Dot algorithms and their pads: every algorithm emulated exactly, against exact rationals.

The emulator splits float32 inputs into bfloat16 / TF32 parts (rounding to nearest or
truncating), forms the part products exactly, and sums them in float32 in several orders;
its error against the exact rational product must stay within the pad the bounds use.
"""

from fractions import Fraction

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unargmax_jax import bounds, check, domains as dom
from unargmax_jax import verify as ua_verify

try:
    from jax.extend.core import jaxprs_in_params
except ImportError:  # JAX before jax.extend.core had it
    from jax.core import jaxprs_in_params

SETTINGS = settings(deadline=None, max_examples=60, derandomize=True)
F32 = np.float32
EMULATED = [n for n in bounds.ALGORITHMS if n != "F64_F64_F64"]
TINY = float(np.finfo(F32).tiny)


# ----------------------------------------------------------------------------- the emulator
def narrow(v: np.ndarray, unit: float, mode: str, ftz: bool) -> np.ndarray:
    """v (float32) to the format of eps ``unit`` (0: unchanged), as float32 values."""
    v = np.asarray(v, F32)
    if ftz:
        v = np.where(np.abs(v) < TINY, F32(0), v)
    if unit == 0.0:
        return v
    drop = 23 - int(round(-np.log2(unit)))  # mantissa bits the narrow format lacks
    bits = v.view(np.uint32)
    if mode == "nearest" and unit == bounds._BF16_UNIT:
        out = v.astype(ml_dtypes.bfloat16).astype(F32)
    elif mode == "nearest":  # round half to even on the kept bits
        half = np.uint32(1 << (drop - 1)) - np.uint32(1) + ((bits >> np.uint32(drop)) & np.uint32(1))
        out = ((bits + half) & ~np.uint32((1 << drop) - 1)).view(F32)
    else:
        out = (bits & ~np.uint32((1 << drop) - 1)).view(F32)
    return np.where(np.abs(out) < TINY, F32(0), out) if ftz else out


def split(v: np.ndarray, spec: bounds.DotAlgorithm, mode: str, ftz: bool) -> list:
    parts, rest = [], np.asarray(v, F32)
    for _ in range(spec.parts):
        part = narrow(rest, spec.unit, mode, ftz)
        parts.append(part)
        rest = (rest - part).astype(F32)  # exact: the part is rest with its low bits cut
    return parts


def emulated_terms(x, y, spec, mode="nearest", ftz=False) -> np.ndarray:
    """The float32 part products of x^T y, each exact (asserted) unless the algorithm is
    IEEE float32, whose products round (gamma_n counts that rounding)."""
    px, py = split(x, spec, mode, ftz), split(y, spec, mode, ftz)
    terms = np.concatenate([px[i].astype(np.float64) * py[j].astype(np.float64) for i, j in spec.pairs])
    as_f32 = terms.astype(F32)
    normal = np.abs(terms) >= TINY
    if not spec.ieee:  # products of bfloat16 / TF32 parts are exact in float32
        assert np.all(as_f32[normal].astype(np.float64) == terms[normal])
    return np.where(normal, as_f32, F32(0)) if ftz else as_f32


def accumulate(terms: np.ndarray, order: str, seed: int = 0) -> float:
    """float32 sum of ``terms`` in a given order."""
    if order == "sequential":
        return float(np.add.accumulate(terms, dtype=F32)[-1])
    if order == "reverse":
        return float(np.add.accumulate(terms[::-1], dtype=F32)[-1])
    if order == "pairwise":
        return float(np.sum(terms, dtype=F32))
    perm = np.random.default_rng(seed).permutation(terms.size)
    return float(np.add.accumulate(terms[perm], dtype=F32)[-1])


def exact_dot(x, y) -> Fraction:
    return sum((Fraction(float(a)) * Fraction(float(b)) for a, b in zip(x, y)), Fraction(0))


def allowed_error(x, y, spec) -> float:
    """The pad of bounds for x^T y: relative part, flushed inputs, underflow."""
    magnitude = float(sum(abs(Fraction(float(a)) * Fraction(float(b))) for a, b in zip(x, y)))
    n = len(x)
    return (bounds.dot_error(n, jnp.float32, spec) * magnitude
            + bounds.flush_pad(spec, jnp.float32) * float(np.sum(np.abs(x), dtype=np.float64) + np.sum(np.abs(y), dtype=np.float64))
            + bounds.tiny_pad(n * len(spec.pairs), jnp.float32))


# ----------------------------------------------------------------------------- inputs
def vectors(seed: int, n: int, kind: str):
    """float32 vectors: spread exponents, or adversarial cancellation (x^T y ~ 0 with big terms)."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=n) * np.exp2(rng.integers(-20, 20, n))).astype(F32)
    y = (rng.normal(size=n) * np.exp2(rng.integers(-20, 20, n))).astype(F32)
    if kind == "cancel" and n >= 2:
        # Pairs whose products cancel to the last bit, plus one small term that survives.
        half = n // 2
        x[half:2 * half] = x[:half]
        y[half:2 * half] = -y[:half]
        y[:half] = (y[:half] * (1 + rng.normal(size=half) * 2.0 ** -20)).astype(F32)
    if kind == "tiny":
        x = (x * F32(2.0 ** -110)).astype(F32)  # parts fall below the normal range
    return x, y


ORDERS = ("sequential", "reverse", "pairwise", "random")


@given(seed=st.integers(0, 2**31 - 1), n=st.sampled_from([1, 2, 7, 33, 64]),
       name=st.sampled_from(EMULATED), mode=st.sampled_from(["nearest", "truncate"]),
       kind=st.sampled_from(["spread", "cancel", "tiny"]), ftz=st.booleans())
@SETTINGS
def test_pad_covers_emulated_error_in_every_order(seed, n, name, mode, kind, ftz):
    spec = bounds.ALGORITHMS[name]
    x, y = vectors(seed, n, kind)
    truth = exact_dot(x, y)
    terms = emulated_terms(x, y, spec, mode, ftz)
    pad = allowed_error(x, y, spec)
    for order in ORDERS:
        error = abs(Fraction(accumulate(terms, order, seed)) - truth)
        assert error <= Fraction(pad), (name, order, float(error), pad)


@given(x=st.lists(st.floats(-2.0 ** 50, 2.0 ** 50, width=32), min_size=1, max_size=24),
       name=st.sampled_from(EMULATED), mode=st.sampled_from(["nearest", "truncate"]))
@SETTINGS
def test_pad_covers_hypothesis_floats_against_themselves_negated(x, name, mode):
    """y = -x shifted by one element: cancellation between neighbours, subnormals included."""
    spec = bounds.ALGORITHMS[name]
    x = np.asarray(x, F32)
    y = -np.roll(x, 1)
    truth = exact_dot(x, y)
    pad = allowed_error(x, y, spec)
    for ftz in (False, True):
        terms = emulated_terms(x, y, spec, mode, ftz)
        for order in ORDERS:
            assert abs(Fraction(accumulate(terms, order)) - truth) <= Fraction(pad)


def test_pads_are_ordered_as_the_algorithms_precision():
    """The IEEE pad is gamma_n; every non-IEEE algorithm's pad is larger; more parts, smaller."""
    f32 = jnp.float32
    err = {name: bounds.dot_error(576, f32, spec) for name, spec in bounds.ALGORITHMS.items() if name != "F64_F64_F64"}
    assert err["F32_F32_F32"] == bounds.gamma(576, f32)
    assert all(err[name] > err["F32_F32_F32"] for name in err if name != "F32_F32_F32")
    assert err["BF16_BF16_F32"] > err["TF32_TF32_F32"] > err["BF16_BF16_F32_X3"]
    assert err["BF16_BF16_F32"] >= 2 * bounds._BF16_UNIT  # rounding both inputs to bfloat16


# ----------------------------------------------------------------------------- per backend
@pytest.mark.parametrize("platform", ["cpu", "gpu", "cuda", "rocm", "tpu", "metal", "some-new-backend"])
def test_backend_choice_never_pairs_non_ieee_product_with_float32_pad(platform, monkeypatch):
    name = bounds.backend_algorithm(platform)
    spec = bounds.algorithm_spec(name)
    assert spec.ieee == (name in ("F32_F32_F32", "F64_F64_F64"))
    if not spec.ieee:
        assert bounds.product_pad(64, jnp.float32, spec, extra=6) > bounds.gamma(64 + 6, jnp.float32)
    # The dots a bound traces on that backend carry exactly the algorithm its pad is for.
    monkeypatch.setattr(jax, "default_backend", lambda: platform)
    presets = _traced_presets(None)
    assert presets == {getattr(jax.lax.DotAlgorithmPreset, name)}
    assert bounds.backend_algorithm(dtype=jnp.float64) == "F64_F64_F64"


def test_tpu_uses_the_six_pass_pad():
    assert bounds.backend_algorithm("tpu") == "BF16_BF16_F32_X6"
    assert not bounds.ALGORITHMS["BF16_BF16_F32_X6"].ieee


def _traced_presets(algorithm):
    W, b = jnp.ones((6, 3)), jnp.zeros(6)
    found = set()
    for fn in (lambda W, b, x: bounds.witness_bounds(W, b, jnp.ones(6), jnp.array([0, 1]), x, num_top=0,
                                                     algorithm=algorithm),
               lambda W, b, x: bounds.certificate_bounds(W, b, dom.Box(jnp.full(3, -1.0), jnp.full(3, 1.0)),
                                                         jnp.array([0, 1]), jnp.array([[2, 3], [4, 5]]), x[:, :2],
                                                         algorithm=algorithm)):
        jaxpr = jax.make_jaxpr(fn)(W, b, jnp.ones((2, 3)))
        found |= {e.params["precision"] for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "dot_general"}
    return found


def _eqns(jaxpr):
    for e in jaxpr.eqns:
        yield e
        for sub in jaxprs_in_params(e.params):
            yield from _eqns(sub)


@pytest.mark.parametrize("name", list(bounds.ALGORITHMS))
def test_every_algorithm_traces_its_own_preset_off_cpu(name, monkeypatch):
    if name == "F64_F64_F64":
        with pytest.raises(ValueError, match="does not fit float32"):
            _traced_presets(name)
        return
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert _traced_presets(name) == {getattr(jax.lax.DotAlgorithmPreset, name)}


@pytest.mark.parametrize("name", [n for n in bounds.ALGORITHMS if n != "F64_F64_F64"])
def test_on_cpu_every_algorithm_runs_ieee_float32_under_a_pad_at_least_gamma(name, monkeypatch):
    """XLA:CPU computes the bfloat16 presets as float32 (and may abort on them): bounds ask
    it for F32_F32_F32 and keep the named algorithm's pad, which contains gamma_n."""
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert _traced_presets(name) == {jax.lax.DotAlgorithmPreset.F32_F32_F32}
    spec = bounds.algorithm_spec(name)
    for n in (1, 8, 576, 4096):
        assert bounds.product_pad(n, jnp.float32, spec, extra=6) >= bounds.gamma(n + 6, jnp.float32)
        assert bounds.dot_error(n, jnp.float32, spec) >= bounds.gamma(n, jnp.float32)


def test_unknown_algorithm_is_refused():
    with pytest.raises(ValueError, match="unknown dot algorithm 'BF17'"):
        bounds.algorithm_spec("BF17")


# ----------------------------------------------------------------------------- whole bounds
def _emulated_dot(mode):
    def dot(a, b, spec):
        a, b = np.asarray(a, F32), np.asarray(b, F32)
        a2, b2 = np.atleast_2d(a), b.reshape(b.shape[0], -1)
        out = np.array([[accumulate(emulated_terms(r, c, spec, mode), "sequential") for c in b2.T] for r in a2], F32)
        out = out if b.ndim == 2 else out[:, 0]
        return jnp.asarray(out if a.ndim == 2 else out[0])

    def row_dot(a, b, spec):
        return jnp.asarray(np.array([accumulate(emulated_terms(r, c, spec, mode), "random")
                                     for r, c in zip(np.asarray(a, F32), np.asarray(b, F32))], F32))

    return dot, row_dot


@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(EMULATED), mode=st.sampled_from(["nearest", "truncate"]))
@settings(deadline=None, max_examples=12, derandomize=True)
def test_witness_and_certificate_bounds_hold_under_emulated_algorithms(seed, name, mode):
    """witness_bounds / certificate_bound with the products emulated: L <= exact margin,
    U >= exact U/s, on heads with near-tied rows (cancellation in w_i - w_j)."""
    dot, row_dot = _emulated_dot(mode)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bounds, "dot", dot)
        patch.setattr(bounds, "row_dot", row_dot)
        _emulated_head_bounds(seed, name)


def _emulated_head_bounds(seed, name):
    rng = np.random.default_rng(seed)
    C, d = 6, 5
    W = rng.normal(size=(C, d)).astype(F32)
    W[1] = (W[0] * (1 + 2.0 ** -12)).astype(F32)  # a near twin: margins cancel
    b = rng.normal(size=C).astype(F32)
    X = rng.uniform(-3, 3, size=(C, d)).astype(F32)
    ids = np.arange(C)
    wb = bounds.witness_bounds(jnp.asarray(W), jnp.asarray(b), jnp.linalg.norm(jnp.asarray(W), axis=1),
                               jnp.asarray(ids), jnp.asarray(X), num_top=0, algorithm=name)
    for i in range(C):
        z = [exact_dot(W[j], X[i]) + Fraction(float(b[j])) for j in range(C)]
        exact_margin = z[i] - max(z[j] for j in range(C) if j != i)
        assert Fraction(float(wb.lower[i])) <= exact_margin
    box = dom.Box(jnp.full(d, F32(-2.0)), jnp.full(d, F32(2.0)))
    support, weights = np.array([1, 2]), rng.uniform(0, 1, 2).astype(F32)
    upper = bounds.certificate_bound(jnp.asarray(W), jnp.asarray(b), box, 0, jnp.asarray(support), jnp.asarray(weights),
                                     algorithm=name)
    s = sum(Fraction(float(w)) for w in weights)
    g = [s * Fraction(float(W[0, c])) - sum(Fraction(float(w)) * Fraction(float(W[j, c])) for w, j in zip(weights, support))
         for c in range(d)]
    exact_u = (s * Fraction(float(b[0])) - sum(Fraction(float(w)) * Fraction(float(b[j])) for w, j in zip(weights, support))
               + sum(abs(gc) * 2 for gc in g)) / s
    assert Fraction(float(upper)) >= exact_u


@pytest.mark.parametrize("name", ["F32_F32_F32", "BF16_BF16_F32", "BF16_BF16_F32_X3", "BF16_BF16_F32_X6"])
def test_xla_cpu_presets_stay_within_their_pads(name):
    """The presets XLA:CPU accepts (it refuses _X9 and TF32, and a 1 x 1 product under any
    but F32_F32_F32): its products are within the pad."""
    spec = bounds.ALGORITHMS[name]
    for kind in ("spread", "cancel"):
        x, y = vectors(11, 48, kind)
        X, Y = np.stack([x, y]), np.stack([y, x]).T
        got = np.asarray(bounds.dot(jnp.asarray(X), jnp.asarray(Y), spec))
        for r in range(2):
            for c in range(2):
                assert abs(Fraction(float(got[r, c])) - exact_dot(X[r], Y[:, c])) <= Fraction(allowed_error(X[r], Y[:, c], spec))


# ----------------------------------------------------------------------------- the ladder
def _ladder_head():
    """Anisotropic rows on an ellipsoid, no bias: every token wins along its own direction,
    most with a wide margin; rows 20..29 are rows 30..39 turned by ~0.03 rad (margins
    ~4e-4, far below the bfloat16 pad and far above the float32 one)."""
    rng = np.random.default_rng(8)
    C, d = 256, 8
    U = rng.normal(size=(C, d))
    U[20:30] = U[30:40] / np.linalg.norm(U[30:40], axis=1, keepdims=True) + 0.03 * rng.normal(size=(10, d)) / d ** 0.5
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    return (U * np.exp(rng.normal(0, 0.3, d))).astype(F32), None


def test_bf16_rung_gives_the_same_verdicts_and_decides_most_tokens():
    W, b = _ladder_head()
    plain = check(W, b, bf16_screen=False)
    laddered = check(W, b, bf16_screen=True)
    assert laddered.settings["bf16_screen"] is True and plain.settings["bf16_screen"] is False
    assert plain.settings["dot_algorithm"] == laddered.settings["dot_algorithm"] == bounds.backend_algorithm()
    np.testing.assert_array_equal(laddered.verdict, plain.verdict)
    assert np.all(laddered.lower <= laddered.upper) and ua_verify(laddered, W, b).ok
    # Tokens the rung decided carry its (larger-padded, so lower) bound; the near twins
    # fall through to full precision and keep the same bound as without the rung.
    argmaxable = plain.verdict == 1
    by_rung = argmaxable & (laddered.lower < plain.lower)
    assert by_rung.sum() > argmaxable.sum() // 2
    assert not by_rung[20:40].any()


def test_bad_algorithm_settings_are_refused():
    W, b = _ladder_head()
    with pytest.raises(ValueError, match="expected one of"):
        check(W, b, dot_algorithm="TF33")
    with pytest.raises(ValueError, match="bf16_screen must be"):
        check(W, b, bf16_screen="yes")


def _hard_head():
    """Rows with a bias, and tokens at or near the midpoint of two others (ties in the
    limit, margins of +-1e-3 and +-2e-4), plus an exact duplicate: they reach ascent, PDHG
    and the basis stage."""
    rng = np.random.default_rng(16)
    W = rng.normal(size=(48, 4)).astype(F32)
    b = rng.normal(0, 0.5, 48).astype(F32)
    for t, (i, j, shift) in zip(range(10, 16), [(1, 2, 0.0), (3, 4, -1e-3), (5, 6, 1e-3), (7, 8, 0.0),
                                                (20, 21, 2e-4), (22, 23, -2e-4)]):
        W[t] = (W[i].astype(np.float64) + W[j]) / 2
        b[t] = (b[i] + np.float64(b[j])) / 2 + shift
    W[16], b[16] = W[17], b[17]
    return W, b


def test_later_stages_prove_under_the_chosen_algorithm():
    W, b = _hard_head()
    plain = check(W, b)
    chosen = check(W, b, dot_algorithm="BF16_BF16_F32_X3")
    assert chosen.settings["dot_algorithm"] == "BF16_BF16_F32_X3" != plain.settings["dot_algorithm"]
    np.testing.assert_array_equal(chosen.verdict, plain.verdict)
    assert ua_verify(chosen, W, b).ok and ua_verify(plain, W, b).ok
    # On CPU both run IEEE float32 products; only the pad differs, and the X3 pad (~3 u_bf16^2)
    # is far above float32's: the later stages' bounds must carry it (looser than the default's).
    for stage, side in (("ascent", "lower"), ("pdhg", "upper")):
        both = np.flatnonzero((plain.stage == stage) & (chosen.stage == stage))
        assert both.size, stage
        ours, default = getattr(chosen, side)[both], getattr(plain, side)[both]
        assert np.all(ours < default) if side == "lower" else np.all(ours > default), (stage, ours, default)
