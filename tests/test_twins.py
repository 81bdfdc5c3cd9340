"""Exact duplicates against a brute-force grouping of every row's bytes."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from unargmax_jax.twins import PROBES, find_twins


def _truth(W, b):
    """(representative, inverse) from a dict keyed by each row's canonical bytes."""
    first: dict[bytes, int] = {}
    representative, inverse = [], []
    for i in range(W.shape[0]):
        key = (W[i] + W.dtype.type(0)).tobytes() + (b"" if b is None else (b[i] + b.dtype.type(0)).tobytes())
        if key not in first:
            first[key] = len(representative)
            representative.append(i)
        inverse.append(first[key])
    return np.asarray(representative), np.asarray(inverse)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), d=st.integers(1, 3 * PROBES), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from([np.float16, np.float32, np.float64]), bias=st.booleans())
def test_twins_match_brute_force(rows, d, seed, dtype, bias):
    # Entries from a tiny alphabet (with -0.0), so rows often agree in the probed columns
    # and differ elsewhere, and copies planted whole or with one entry changed.
    rng = np.random.default_rng(seed)
    W = rng.choice(np.array([0.0, -0.0, 1.0, -2.5], dtype), size=(rows, d))
    b = rng.choice(np.array([0.0, -0.0, 3.0], dtype), size=rows) if bias else None
    for _ in range(rows // 3):
        i, j = rng.integers(rows, size=2)
        W[i] = W[j]
        if b is not None:
            b[i] = b[j]
        if rng.random() < 0.5:
            W[i, rng.integers(d)] = dtype(7.0)  # differs in one column, probed or not
    representative, inverse = find_twins(W, b, block=7)
    expected_rep, expected_inv = _truth(W, b)
    np.testing.assert_array_equal(representative, expected_rep)
    np.testing.assert_array_equal(inverse, expected_inv)


def test_rows_equal_in_every_probed_column_but_one_other_are_not_twins():
    # Regression guard for the pre-grouping: the probed columns alone must never decide.
    d = 4 * PROBES
    W = np.zeros((3, d), np.float32)
    W[1, 1] = 1.0  # column 1 is not probed at this d
    W[2] = W[0]
    representative, inverse = find_twins(W, None)
    assert representative.tolist() == [0, 1] and inverse.tolist() == [0, 1, 0]
