"""The exact oracle by hand and against HiGHS/qhull; the independent verifier against tampering."""

from fractions import Fraction

import numpy as np
import pytest
from helpers import highs_margins, hull_vertices_argmaxable
from hypothesis import given, settings
from hypothesis import strategies as st

import unargmax_jax as ua
from unargmax_jax import exact


def test_exact_oracle_by_hand():
    # d = 1: rows 1, 0, -1 without bias. The middle row is unargmaxable with margin 0.
    W = np.array([[1.0], [0.0], [-1.0]])
    assert exact.box_margins(W, None, -2.0, 2.0) == [Fraction(2), Fraction(0), Fraction(2)]
    assert exact.free_verdicts(W) == [True, False, True]
    # A bias lifts the middle row: min(0.5 - x, 0.5 + x) is largest, 1/2, at x = 0.
    b = np.array([0.0, 0.5, 0.0])
    assert exact.box_margins(W, b, -2.0, 2.0)[1] == Fraction(1, 2)
    # A class that wins only for x > 150 has a negative margin on [-100, 100], not on R.
    W2, b2 = np.array([[1.0], [0.0]]), np.array([-150.0, 0.0])
    assert exact.box_margins(W2, b2, -100.0, 100.0)[0] == Fraction(-50)
    assert exact.free_verdicts(W2, b2) == [True, True]


@pytest.mark.parametrize("seed", range(4))
def test_exact_oracle_agrees_with_highs_and_qhull(seed):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(7, 2))
    b = rng.normal(size=7)
    np.testing.assert_allclose([float(m) for m in exact.box_margins(W, b, -3.0, 3.0)],
                               highs_margins(W, b, -3.0, 3.0), atol=1e-7)
    assert exact.free_verdicts(W) == hull_vertices_argmaxable(W).tolist()


@pytest.fixture(scope="module")
def head_and_report():
    rng = np.random.default_rng(21)
    W = rng.normal(size=(40, 2))
    b = rng.normal(size=40)
    report = ua.check(W, b)
    assert ua.verify(report, W, b).ok
    return W, b, report


def _copy(report):
    import copy
    return copy.deepcopy(report)


def test_tampering_with_any_evidence_fails(head_and_report):
    W, b, report = head_and_report
    argmaxable = report.witness_ids[0]
    unarg = report.certificate_ids[0]

    def expect_failure(mutate, token):
        bad = _copy(report)
        mutate(bad)
        result = ua.verify(bad, W, b)
        assert not result.ok and token in result.failed.tolist(), result.reasons

    expect_failure(lambda r: r.witnesses.__setitem__(0, -r.witnesses[0]), argmaxable)
    expect_failure(lambda r: r.witnesses.__setitem__(0, r.witnesses[0] * 0 + 150.0), argmaxable)
    expect_failure(lambda r: r.certificate_weights.__setitem__(0, -1.0), unarg)
    expect_failure(lambda r: r.certificate_support.__setitem__(slice(0, r.certificate_offsets[1]), unarg), unarg)
    expect_failure(lambda r: r.certificate_weights.__setitem__(slice(0, r.certificate_offsets[1]), 0.0), unarg)
    expect_failure(lambda r: r.lower.__setitem__(argmaxable, r.lower[argmaxable] + 10.0), argmaxable)
    expect_failure(lambda r: r.upper.__setitem__(unarg, r.upper[unarg] - 10.0), unarg)
    expect_failure(lambda r: r.verdict.__setitem__(unarg, 1), unarg)
    bad = _copy(report)
    bad.head["sha256"] = "0" * 64
    assert not ua.verify(bad, W, b).ok
    assert not ua.verify(report, W, b + 1e-9).ok


def test_verifier_refuses_a_float_check_that_rounding_fools():
    """Logits 1e16 + 1 and 1e16 are equal in float64 (the +1 is rounded away), so a naive
    float check cannot tell who wins at x = 1; the exact step must refuse token 1."""
    W = np.array([[1e16], [1e16], [0.0]])
    b = np.array([1.0, 0.0, 0.0])
    report = ua.check(W, b, ua.Box(-1.0, 1.0))
    assert report.verdict.tolist() == [1, -1, 1]
    assert ua.verify(report, W, b).ok
    # Claim token 1 argmaxable with the witness x = 1: z_1 = 1e16 < z_0 = 1e16 + 1 exactly.
    bad = _copy(report)
    bad.verdict[1], bad.lower[1] = 1, 1e-3
    bad.witness_ids = np.append(bad.witness_ids, 1)
    bad.witnesses = np.vstack([bad.witnesses, [[1.0]]])
    result = ua.verify(bad, W, b)
    assert not result.ok and 1 in result.failed.tolist()


def test_damaged_report_is_a_value_error(tmp_path):
    import json
    rng = np.random.default_rng(4)
    ua.check(rng.normal(size=(5, 2))).save(tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    del data["tokens"][0]["verdict"]
    (tmp_path / "report.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="damaged report"):
        ua.Report.load(tmp_path)
    (tmp_path / "certificates.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError):
        ua.Report.load(tmp_path)


def _exact_accepts(W, b, i, x, ties_first) -> bool:
    """Truth in rationals: x makes token i the strict argmax (ties="first": against every
    non-twin row, and no lower-index twin)."""
    C = len(W)
    z = [sum(Fraction(int(w)) * Fraction(float(v)) for w, v in zip(W[j], x)) + Fraction(int(b[j])) for j in range(C)]
    twins = [j for j in range(C) if list(W[j]) == list(W[i]) and b[j] == b[i]]
    if ties_first and min(twins) < i:
        return False
    rivals = [j for j in range(C) if j != i and not (ties_first and j in twins)]
    return all(z[i] > z[j] for j in rivals)


@given(st.integers(2, 7).flatmap(lambda C: st.tuples(
    st.lists(st.lists(st.integers(-2, 2), min_size=2, max_size=2), min_size=C, max_size=C),
    st.lists(st.integers(-1, 1), min_size=C, max_size=C),
    st.lists(st.lists(st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0]), min_size=2, max_size=2), min_size=C, max_size=C))),
    st.booleans())
@settings(max_examples=75, deadline=None, derandomize=True)
def test_verifier_accepts_a_witness_exactly_when_it_makes_the_strict_argmax(data, ties_first):
    _accepts_exactly(data, ties_first, np.float64)


@given(st.integers(2, 7).flatmap(lambda C: st.tuples(
    st.lists(st.lists(st.integers(-2, 2), min_size=2, max_size=2), min_size=C, max_size=C),
    st.lists(st.integers(-1, 1), min_size=C, max_size=C),
    st.lists(st.lists(st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0]), min_size=2, max_size=2), min_size=C, max_size=C))),
    st.booleans())
@settings(max_examples=40, deadline=None, derandomize=True)
def test_float32_head_takes_the_float32_blocks_and_still_agrees_with_rationals(data, ties_first):
    # The same with a float32 head: the witness blocks run as float32 products under the
    # float32 pad, then float64 and exact on the rows they leave open.
    _accepts_exactly(data, ties_first, np.float32)


def _accepts_exactly(data, ties_first, dtype):
    # A hand-made report claims every token argmaxable with an arbitrary point: integer
    # rows and dyadic points make exact ties common, so the verifier's block-wise float
    # screening and its exact fallback both run. Its verdict must match rational truth.
    W, b, X = (np.array(a, dtype) for a in data)
    C = W.shape[0]
    report = ua.check(W, b, ua.Box(-1.0, 1.0), ties="first" if ties_first else "strict")
    report.verdict = np.ones(C, np.int8)
    report.lower, report.upper = np.full(C, 1e-300), np.full(C, np.inf)
    report.witness_ids, report.witnesses = np.arange(C), X
    empty = np.zeros(0, np.int64)
    report.certificate_ids, report.certificate_offsets = empty, np.zeros(1, np.int64)
    report.certificate_support, report.certificate_weights, report.certificate_rational = empty, np.zeros(0), np.zeros(0, str)
    result = ua.verify(report, W, b, block=3)  # blocks that do not divide C
    truth = [_exact_accepts(W, b, i, X[i], ties_first) for i in range(C)]
    assert [i not in result.failed.tolist() for i in range(C)] == truth, result.reasons


def _exact_margin(W, b, i, x) -> Fraction:
    z = [sum((Fraction(float(w)) * Fraction(float(v)) for w, v in zip(W[j], x)), Fraction(float(b[j])))
         for j in range(len(W))]
    return z[i] - max(z[j] for j in range(len(W)) if j != i)


def test_float32_blocks_still_catch_a_stored_lower_bound_just_above_the_margin():
    """A stored lower bound 1e-7 (relative) above the exact margin at the witness is far
    inside the float32 pad: the float32 block cannot tell, so float64 must, as before."""
    rng = np.random.default_rng(3)
    W = rng.normal(size=(300, 16)).astype(np.float32)
    b = rng.normal(size=300).astype(np.float32)
    report = ua.check(W, b)
    assert ua.verify(report, W, b, block=64).ok
    n = 0
    i = int(report.witness_ids[n])
    margin = float(_exact_margin(W, b, i, np.asarray(report.witnesses[n], np.float64)))
    for factor, ok in ((1 - 1e-7, True), (1 + 1e-7, False)):
        bad = _copy(report)
        bad.lower[i] = margin * factor
        result = ua.verify(bad, W, b, block=64)
        assert result.ok == ok and (ok or result.failed.tolist() == [i]), result.reasons
        # The float64 path (the same values as float64) agrees.
        assert ua.verify(bad, W.astype(np.float64), b.astype(np.float64), block=64).ok == ok


def test_flint_combination_agrees_with_fractions_on_honest_and_tampered_certificates(monkeypatch):
    import functools
    import importlib
    verify_module = importlib.import_module("unargmax_jax.verify")
    rng = np.random.default_rng(12)
    W = rng.normal(size=(12, 3))
    W[10] = (W[0] + W[1]) / 2  # exactly a midpoint: only an exact certificate proves it on R^d
    W[11] = W[2] * 0.25 + W[3] * 0.75
    W[4, 1], W[5, 0] = 0.0, 2.0 ** -60  # a zero and a far exponent in the dyadic integers
    report = ua.check(W, None, ua.Free())
    exact_rows = [n for n, text in enumerate(np.asarray(report.certificate_rational).astype(str)) if text]
    assert exact_rows
    lam = [Fraction(1, 3), Fraction(0), Fraction(7, 5)]
    assert verify_module.exact_combination(W, np.arange(12.0), 10, np.array([0, 4, 5]), lam) == \
        verify_module.exact_combination(W, np.arange(12.0), 10, np.array([0, 4, 5]), lam, use_flint=False)
    tampered = _copy(report)
    text = np.asarray(tampered.certificate_rational).astype(object)
    first = Fraction(text[exact_rows[0]])
    text[exact_rows[0]] = str(first * (1 + Fraction(1, 10**9)))  # float weights still agree to 1e-6
    tampered.certificate_rational = text.astype(str)
    results, original = {}, verify_module.exact_combination
    for use_flint in (True, False):
        monkeypatch.setattr(verify_module, "exact_combination", functools.partial(original, use_flint=use_flint))
        results[use_flint] = (ua.verify(report, W), ua.verify(tampered, W))
    for honest, bad in results.values():
        assert honest.ok and not bad.ok
    assert results[True][1].reasons == results[False][1].reasons
