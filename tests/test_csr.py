"""The CSR helpers against a plain list-of-rows model: pack/unpack and the certificate table."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from unargmax_jax.csr import Certificates, pack, unpack

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)

_entry = st.tuples(st.integers(0, 50), st.floats(0.0, 10.0, allow_nan=False),
                   st.sampled_from(["", "1/2", "3/7", "12/5"]))
# A certificate row: (token id, [(support id, weight, rational), ...]); ids may repeat.
_row = st.tuples(st.integers(0, 30), st.lists(_entry, max_size=5))
_table = st.lists(_row, max_size=8)


def _rows(model):
    """The model as ``Certificates.from_rows`` input."""
    return [(i, [e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries]) for i, entries in model]


def _as_model(table: Certificates):
    """A table back as the model (plain Python values), checking each row's dtypes on the way."""
    model = []
    for i, support, weights, rational in table.rows():
        assert isinstance(i, int)
        assert support.dtype == np.int64 and weights.dtype == np.float64 and rational.dtype.kind == "U"
        model.append((i, [(int(s), float(w), str(r)) for s, w, r in zip(support, weights, rational)]))
    return model


@given(st.lists(st.lists(st.integers(-5, 5), max_size=6), max_size=8))
@SETTINGS
def test_pack_then_unpack_gives_the_rows_back(rows):
    offsets, values = pack(rows, np.int64)
    assert offsets.dtype == np.int64 and offsets.shape == (len(rows) + 1,) and offsets[0] == 0
    assert values.dtype == np.int64 and values.size == offsets[-1]
    assert [row.tolist() for row in unpack(offsets, values)] == rows


def test_pack_keeps_the_dtype_of_empty_tables():
    offsets, values = pack([], np.float64)
    assert offsets.tolist() == [0] and values.dtype == np.float64 and values.size == 0
    offsets, values = pack([["1/2", ""], []], np.str_)
    assert offsets.tolist() == [0, 2, 2] and values.tolist() == ["1/2", ""]


@given(_table)
@SETTINGS
def test_from_rows_then_rows_round_trips(model):
    table = Certificates.from_rows(_rows(model))
    assert table.ids.dtype == np.int64 and table.offsets.shape == (len(model) + 1,)
    assert _as_model(table) == model
    for r, (i, entries) in enumerate(model):
        assert table.row(r)[0] == i


@given(_table)
@SETTINGS
def test_find_gives_the_first_row_of_a_token(model):
    table = Certificates.from_rows(_rows(model))
    for token in range(31):
        found = table.find(token)
        first = next((entries for i, entries in model if i == token), None)
        if first is None:
            assert found is None
        else:
            support, weights = found
            assert support.tolist() == [e[0] for e in first] and weights.tolist() == [e[1] for e in first]


@given(_table, st.data())
@SETTINGS
def test_take_by_mask_and_by_rows(model, data):
    table = Certificates.from_rows(_rows(model))
    mask = data.draw(st.lists(st.booleans(), min_size=len(model), max_size=len(model)))
    assert _as_model(table.take(np.array(mask, bool))) == [row for row, keep in zip(model, mask) if keep]
    picks = data.draw(st.lists(st.integers(0, max(len(model) - 1, 0)), max_size=6)) if model else []
    assert _as_model(table.take(np.array(picks, np.int64))) == [model[r] for r in picks]


@given(st.lists(_table, max_size=4))
@SETTINGS
def test_concat_and_sorted_by_id_against_the_model(models):
    tables = [Certificates.from_rows(_rows(model)) for model in models]
    joined = Certificates.concat(tables)
    everything = [row for model in models for row in model]
    assert _as_model(joined) == everything
    assert _as_model(joined.sorted_by_id()) == sorted(everything, key=lambda row: row[0])  # sorted() is stable


def test_empty_table_and_missing_rationals():
    empty = Certificates.empty()
    assert empty.offsets.tolist() == [0] and list(empty.rows()) == [] and empty.find(3) is None
    assert _as_model(Certificates.concat([])) == []
    table = Certificates.from_rows([(4, [1, 2], [0.5, 0.5], None)])
    assert table.rational.tolist() == ["", ""] and table.offsets.tolist() == [0, 2]
