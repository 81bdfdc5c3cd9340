"""Loading and validating heads: names, layouts, dtypes, and every way a file can be wrong."""

import importlib.util
import json
import pickle
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from unargmax_jax.heads import (FinalNorm, Head, HeadError, HeadTypeError, example_head_path, load_head,
                                validate_head)

ROOT = Path(__file__).resolve().parent.parent


def save(path, **arrays):
    np.savez(path, **arrays)
    return path


# ------------------------------------------------------------------ names, layouts
def test_default_names(tmp_path):
    W = np.arange(12, dtype=np.float32).reshape(4, 3)
    head = load_head(save(tmp_path / "h.npz", W=W, b=np.ones(4, np.float32), other=np.zeros((2, 2))))
    assert isinstance(head, Head)
    np.testing.assert_array_equal(head.W, W)
    np.testing.assert_array_equal(head.b, np.ones(4))
    assert (head.weight_name, head.bias_name, head.source) == ("W", "b", str(tmp_path / "h.npz"))
    head = load_head(save(tmp_path / "nob.npz", W=W))
    assert head.b is None and head.bias_name is None


def test_published_decoder_wemb_is_transposed(tmp_path):
    W = np.arange(12, dtype=np.float32).reshape(4, 3)  # C = 4, d = 3
    head = load_head(save(tmp_path / "pub.npz", decoder_Wemb=W.T))  # stored d x C
    np.testing.assert_array_equal(head.W, W)
    assert head.W.flags.c_contiguous and head.weight_name == "decoder_Wemb" and head.b is None
    # Named explicitly, it is transposed too; W wins over decoder_Wemb by default.
    np.testing.assert_array_equal(load_head(tmp_path / "pub.npz", weight="decoder_Wemb").W, W)
    both = load_head(save(tmp_path / "both.npz", W=W[:2], decoder_Wemb=W.T))
    assert both.weight_name == "W" and both.W.shape == (2, 3)


def test_marian_bias_and_row_vector_biases(tmp_path):
    W = np.arange(12, dtype=np.float32).reshape(4, 3)
    bias = np.arange(4, dtype=np.float32)
    # Marian: decoder_Wemb with its output bias decoder_ff_logit_out_b stored (1, C).
    head = load_head(save(tmp_path / "marian.npz", decoder_Wemb=W.T, decoder_ff_logit_out_b=bias[None, :]))
    np.testing.assert_array_equal(head.W, W)
    np.testing.assert_array_equal(head.b, bias)
    assert head.bias_name == "decoder_ff_logit_out_b"
    # A decoder_Wemb already stored C x d is recognised by its bias and left as is.
    head = load_head(save(tmp_path / "cxd.npz", decoder_Wemb=W, decoder_ff_logit_out_b=bias[None, :]))
    np.testing.assert_array_equal(head.W, W)
    # The published tool's own random models store b as (1, C); (C, 1) is flattened too.
    for shape in [(1, 4), (4, 1)]:
        head = load_head(save(tmp_path / "row.npz", W=W, b=bias.reshape(shape)))
        np.testing.assert_array_equal(head.b, bias)


def test_explicit_names_and_missing_names(tmp_path):
    W = np.ones((4, 3), np.float32)
    path = save(tmp_path / "named.npz", emb=W, bias=np.zeros(4), other=np.zeros((2, 2)), vec=np.zeros(5))
    with pytest.raises(HeadError, match=r"no weight array named W or decoder_Wemb; 2-D arrays in the file: "
                                        r"\['emb', 'other'\] \(shapes \(4, 3\), \(2, 2\)\)") as info:
        load_head(path)
    assert str(path) in str(info.value) and "--weight" in str(info.value)
    with pytest.raises(HeadError, match=r"no array named 'nope'; 2-D arrays in the file: \['emb', 'other'\]"):
        load_head(path, weight="nope")
    head = load_head(path, weight="emb", bias="bias")
    assert head.b.shape == (4,) and (head.weight_name, head.bias_name) == ("emb", "bias")
    assert load_head(path, weight="emb").b is None  # no default bias name in the file
    with pytest.raises(HeadError, match=r"no bias array named 'beta'; vectors in the file: \['bias', 'vec'\]"):
        load_head(path, weight="emb", bias="beta")
    with pytest.raises(HeadError, match=r"expected a bias of shape \(4,\).*got shape \(5,\)"):
        load_head(path, weight="emb", bias="vec")
    with pytest.raises(HeadError, match="expected 2-D weights"):
        load_head(path, weight="vec")


def test_no_bias_ignores_the_files_bias(tmp_path):
    path = save(tmp_path / "h.npz", W=np.ones((3, 2)), b=np.ones(3))
    head = load_head(path, no_bias=True)
    assert head.b is None and head.bias_name is None
    with pytest.raises(HeadError, match="not both"):
        load_head(path, bias="b", no_bias=True)


# ------------------------------------------------------------------------- pickle
def test_pickled_arrays_are_refused_never_unpickled(tmp_path, monkeypatch):
    def no_unpickling(*args, **kwargs):
        raise AssertionError("the loader tried to unpickle")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    weights = save(tmp_path / "w.npz", W=np.array([[object(), 1.0]], dtype=object))
    with pytest.raises(HeadError, match=r"array 'W' contains pickled object arrays; refusing to unpickle"):
        load_head(weights)
    bias = save(tmp_path / "b.npz", W=np.ones((2, 2)), b=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(HeadError, match=r"array 'b' contains pickled object arrays; refusing to unpickle"):
        load_head(bias)
    # An object array the head does not need is never read, and never offered as a weight.
    meta = save(tmp_path / "meta.npz", W=np.ones((2, 2)), meta=np.array([[{}, {}]], dtype=object))
    assert load_head(meta).W.shape == (2, 2)
    with pytest.raises(HeadError, match="refusing to unpickle"):
        load_head(meta, weight="meta")
    with pytest.raises(HeadError, match=r"2-D arrays in the file: none"):
        load_head(save(tmp_path / "only.npz", X=np.array([[{}, {}]], dtype=object)))


# ------------------------------------------------------------------------- values
@pytest.mark.parametrize("W, b, error, message", [
    (np.array([[1.0, np.nan], [0.0, 1.0]]), None, HeadError, r"expected finite weights, got nan at \(row 0, column 1\)$"),
    (np.array([[1.0, 2.0], [np.inf, -np.inf]]), None, HeadError, r"got inf at \(row 1, column 0\) and 1 more non-finite"),
    (np.ones((3, 2)), np.array([0.0, 0.0, np.nan]), HeadError, r"expected a finite bias, got nan at index 2"),
    (np.ones(3), None, HeadError, r"expected 2-D weights \(classes x features\), got shape \(3,\)"),
    (np.ones((2, 2, 2)), None, HeadError, r"expected 2-D weights .* got shape \(2, 2, 2\)"),
    (np.float32(1.0), None, HeadError, r"expected 2-D weights .* got shape \(\)"),
    (np.zeros((0, 3)), None, HeadError, r"expected at least one class and one feature, got shape \(0, 3\)"),
    (np.zeros((3, 0)), None, HeadError, r"expected at least one class and one feature, got shape \(3, 0\)"),
    (np.ones((3, 2)), np.ones(4), HeadError, r"expected a bias of shape \(3,\) to match the weights \(3, 2\), got shape \(4,\)"),
    (np.ones((3, 2)), np.ones((3, 1, 1)), HeadError, r"expected a bias of shape \(3,\)"),
    (np.ones((3, 2)), np.ones((1, 3)), HeadError, r"expected a bias of shape \(3,\)"),  # only files flatten
    (np.ones((2, 2), bool), None, HeadTypeError, r"expected real floating-point or integer weights, got dtype bool"),
    (np.ones((2, 2), complex), None, HeadTypeError, r"got dtype complex128"),
    (np.array([["a", "b"]]), None, HeadTypeError, r"got dtype <U1"),
    (np.ones((2, 2)), np.array(["a", "b"]), HeadTypeError, r"expected real floating-point or integer bias"),
    (np.array([[2**53 + 1, 0]], np.int64), None, HeadError, r"magnitude at most 2\^53"),
    ([[1.0, 2.0], [3.0]], None, HeadError, r"expected weights as an array"),
])
def test_bad_heads_are_refused(W, b, error, message):
    with pytest.raises(error, match=message):
        validate_head(W, b)


def test_non_finite_weights_are_found_and_counted_across_row_blocks():
    # The finiteness check runs in row blocks (no (C, d) mask of a large head): the first
    # bad entry and the total count must still be those of the whole array.
    W = np.ones((10000, 3), np.float32)
    W[5000, 2], W[9999, 0], W[9999, 1] = np.nan, np.inf, -np.inf
    with pytest.raises(HeadError, match=r"got nan at \(row 5000, column 2\) and 2 more non-finite entries$"):
        validate_head(W)


def test_errors_are_value_and_type_errors():
    assert issubclass(HeadError, ValueError)
    assert issubclass(HeadTypeError, TypeError) and issubclass(HeadTypeError, HeadError)


def test_dtypes_are_kept_or_upcast_exactly():
    for dtype, expected in [(np.float16, np.float32), (ml_dtypes.bfloat16, np.float32), (np.float32, np.float32),
                            (np.float64, np.float64), (">f8", np.float64), (">f4", np.float32),
                            (np.int8, np.float64), (np.int64, np.float64), (np.uint32, np.float64)]:
        values = np.array([[1.5, -2.0], [3.0, 0.25]]) if np.dtype(dtype).kind == "f" else np.array([[1, 2], [3, 4]])
        W, b = validate_head(values.astype(dtype), values[0].astype(dtype))
        assert W.dtype == expected and b.dtype == expected, dtype
        assert W.flags.c_contiguous and W.dtype.isnative
        np.testing.assert_array_equal(W, values)
    with pytest.raises(HeadError, match=r"got inf at \(row 1, column 0\)"):
        validate_head(np.array([[1, 2], [np.inf, 0]], np.float16))
    W, _ = validate_head(np.array([[2**53, -(2**53)]], np.int64))
    assert W[0, 0] == 2.0**53
    if np.dtype(np.longdouble).itemsize > 8:
        with pytest.raises(HeadTypeError, match="float16/bfloat16/float32/float64"):
            validate_head(np.ones((2, 2), np.longdouble))


def test_half_precision_files_are_upcast(tmp_path):
    W = np.array([[0.1, -2.5], [65504.0, 1e-4]], np.float16)
    head = load_head(save(tmp_path / "h.npz", W=W, b=np.array([1.0, 2.0], np.float16)))
    assert head.W.dtype == np.float32 and head.b.dtype == np.float32
    np.testing.assert_array_equal(head.W, W.astype(np.float32))
    # numpy writes bfloat16 as opaque 2-byte values: refused with a hint, not misread.
    with pytest.raises(HeadTypeError, match=r"got dtype \|V2 \(numpy stores bfloat16"):
        load_head(save(tmp_path / "bf.npz", W=np.ones((2, 2), ml_dtypes.bfloat16)))


def test_messages_name_the_file_and_arrays(tmp_path):
    path = save(tmp_path / "bad.npz", W=np.array([[1.0, np.nan]]))
    with pytest.raises(HeadError, match=rf"^{tmp_path / 'bad.npz'} \[W\]: expected finite weights"):
        load_head(path)
    path = save(tmp_path / "bad2.npz", W=np.ones((3, 2)), b=np.ones(2))
    with pytest.raises(HeadError, match=r"bad2.npz \[W, b\]: expected a bias of shape \(3,\)"):
        load_head(path)


# -------------------------------------------------------------------------- files
def test_unusable_files(tmp_path):
    with pytest.raises(HeadError, match="no such file"):
        load_head(tmp_path / "missing.npz")
    with pytest.raises(HeadError, match=r"is a directory; expected model.safetensors"):
        load_head(tmp_path)
    (tmp_path / "head.h5").write_bytes(b"{}")
    with pytest.raises(HeadError, match=r"unsupported file type '.h5'; supported: .npz"):
        load_head(tmp_path / "head.h5")
    (tmp_path / "head.bin").write_bytes(b"{}")  # .bin is PyTorch, Marian or CTranslate2: none of them
    with pytest.raises(HeadError, match=r"expected a .bin that is a PyTorch zip checkpoint, a Marian"):
        load_head(tmp_path / "head.bin")
    (tmp_path / "noext").write_bytes(b"")
    with pytest.raises(HeadError, match=r"unsupported file type '\(no suffix\)'"):
        load_head(tmp_path / "noext")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(HeadError, match="not a readable .npz file") as refused:
        load_head(tmp_path / "junk.npz")
    assert "pickle" not in str(refused.value)  # NumPy's own message advises allow_pickle=True
    np.save(tmp_path / "single.npy", np.ones((2, 2)))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(HeadError, match="a single .npy array, not an archive"):
        load_head(tmp_path / "single.npz")
    with open(tmp_path / "UPPER.NPZ", "wb") as handle:  # np.savez would append ".npz"
        np.savez(handle, W=np.ones((2, 2)))
    assert load_head(tmp_path / "UPPER.NPZ").W.shape == (2, 2)


def test_compressed_archives_load(tmp_path):
    W = np.random.default_rng(0).normal(size=(5, 3))
    np.savez_compressed(tmp_path / "c.npz", W=W)
    np.testing.assert_array_equal(load_head(tmp_path / "c.npz").W, W)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(W=hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64]), hnp.array_shapes(min_dims=2, max_dims=2),
                    elements=st.floats(-1e4, 1e4, width=16)),
       transposed=st.booleans())
def test_round_trip(tmp_path_factory, W, transposed):
    path = tmp_path_factory.mktemp("rt") / "h.npz"
    np.savez(path, **({"decoder_Wemb": W.T} if transposed else {"W": W}))
    head = load_head(path)
    assert head.W.shape == W.shape and head.W.dtype == (np.float64 if W.dtype == np.float64 else np.float32)
    np.testing.assert_array_equal(head.W, W)


# ------------------------------------------------------------------ token strings
def test_head_fields_default_to_none():
    head = Head(np.ones((2, 1)), None, "W", None, None)  # constructions from before the extra fields
    assert (head.tokens, head.tokens_source, head.norm) == (None, None, None)
    norm = FinalNorm("rmsnorm", np.ones(1), None, None, ("g",))
    assert head._replace(norm=norm).norm.kind == "rmsnorm"


VOCAB = {"[PAD]": 0, "Ġthe": 1, "▁un": 2, "##ing": 3}


@pytest.mark.parametrize("model", [
    {"type": "BPE", "vocab": VOCAB, "merges": []},
    {"type": "WordPiece", "vocab": VOCAB, "unk_token": "[PAD]"},
    {"type": "WordLevel", "vocab": VOCAB},
    {"type": "Unigram", "vocab": [[piece, -float(i)] for piece, i in VOCAB.items()], "unk_id": 0},
])
def test_tokenizer_json_of_each_model_kind(tmp_path, model):
    path = save(tmp_path / "h.npz", W=np.ones((6, 2)))
    added = [{"id": 5, "content": "<|eos|>", "special": True}, {"id": 0, "content": "<pad>", "special": True}]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": model, "added_tokens": added}),
                                             encoding="utf-8")
    (tmp_path / "vocab.txt").write_text("a\nb\nc\nd\ne\nf\n", encoding="utf-8")  # tokenizer.json is preferred
    head = load_head(path)
    # Strings as stored (markers kept); added tokens override by id; id 4 is in neither list.
    assert head.tokens == ("<pad>", "Ġthe", "▁un", "##ing", None, "<|eos|>")
    assert head.tokens_source == str(tmp_path / "tokenizer.json")
    assert load_head(tmp_path / "h.npz", tokens=False)[5:] == (None, None, None)


def test_vocab_txt_short_vocabularies_and_directories(tmp_path):
    save(tmp_path / "h.npz", W=np.ones((5, 2)))
    (tmp_path / "vocab.txt").write_text("[CLS]\nhi\n##!\n", encoding="utf-8")
    for where in [tmp_path / "h.npz", tmp_path]:  # found next to the file or in the directory given
        head = load_head(where)
        assert head.tokens == ("[CLS]", "hi", "##!", None, None)  # rows past the vocabulary get None
        assert head.tokens_source == str(tmp_path / "vocab.txt")


@pytest.mark.parametrize("damage", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"model": 3}',
                                    b'{"model": {"vocab": {"a": "zero"}}}', b'{"model": {"vocab": [[]]}}',
                                    b'{"added_tokens": 7}', b'{"model": {"vocab": {"a": 4611686018427387904}}}',
                                    b"[" * 200_000])
def test_a_damaged_tokenizer_never_fails_the_load(tmp_path, damage):
    W = np.arange(6.0).reshape(3, 2)
    save(tmp_path / "h.npz", W=W)
    (tmp_path / "tokenizer.json").write_bytes(damage)
    head = load_head(tmp_path / "h.npz")
    np.testing.assert_array_equal(head.W, W)
    assert head.tokens is None or len(head.tokens) == 3
    assert (head.tokens is None) == (head.tokens_source is None)
    (tmp_path / "vocab.txt").write_text("x\ny\nz\n", encoding="utf-8")
    fallback = load_head(tmp_path / "h.npz")
    assert fallback.tokens is None or fallback.tokens_source is not None


def test_no_tokenizer_and_no_norm_in_npz(tmp_path):
    head = load_head(save(tmp_path / "h.npz", W=np.ones((2, 2))))
    assert (head.tokens, head.tokens_source, head.norm) == (None, None, None)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(pieces=st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=4), min_size=1, max_size=8,
                       unique=True),
       classes=st.integers(1, 10))
def test_tokenizer_json_round_trip(tmp_path_factory, pieces, classes):
    directory = tmp_path_factory.mktemp("tok")
    save(directory / "h.npz", W=np.ones((classes, 1)))
    vocab = {piece: i for i, piece in enumerate(pieces)}
    (directory / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab}}), encoding="utf-8")
    head = load_head(directory / "h.npz")
    expected = tuple(pieces[:classes]) + (None,) * max(0, classes - len(pieces))
    assert head.tokens == expected


# ------------------------------------------------------------------------ example
def test_example_head_is_what_the_script_plants():
    head = load_head(example_head_path())
    W, b = head.W, head.b
    assert W.shape == (60, 3) and W.dtype == np.float32 and b.dtype == np.float32
    assert np.array_equal(W[7], W[3]) and b[7] == b[3]
    assert np.array_equal(W[11], (W[4] + W[5]) / 2) and b[11] == (b[4] + b[5]) / 2
    assert not W[20].any() and not W[50].any() and b[50] == b.max()
    assert np.array_equal(W[59], np.float32(1.125) * W[23])
    # Exactly one duplicated row: the tie 3 = 7.
    assert np.unique(np.c_[W, b], axis=0).shape[0] == 59


def test_example_head_file_is_reproducible(tmp_path):
    spec = importlib.util.spec_from_file_location("make_example_head", ROOT / "scripts" / "make_example_head.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    W, b = script.build()
    script.write_npz(tmp_path / "again.npz", {"W": W, "b": b})
    assert (tmp_path / "again.npz").read_bytes() == example_head_path().read_bytes()


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_heads_are_read_into_aligned_memory_without_a_second_copy(tmp_path, save):
    """Regression: NumPy's reader returns malloc's 16-byte alignment, so validation copied
    every head once more (a head-sized transient: 2x the head while loading)."""
    from unargmax_jax.heads.npz import _NpzFile
    from unargmax_jax.heads.validate import aligned

    rng = np.random.default_rng(5)
    # 240 kB: above malloc's mmap threshold, where NumPy's own reader lands at 16 mod 64.
    W, b = rng.normal(size=(300, 200)).astype(np.float32), rng.normal(size=300).astype(np.float32)
    save(tmp_path / "h.npz", W=W, b=b)
    archive = _NpzFile(tmp_path / "h.npz")
    read = archive.read("W")
    archive.close()
    assert np.array_equal(read, W) and read.ctypes.data % 64 == 0 and aligned(read) is read
    head = load_head(tmp_path / "h.npz")
    assert np.array_equal(head.W, W) and np.array_equal(head.b, b)
    save(tmp_path / "f.npz", W=np.asfortranarray(W.astype(">f4")))  # NumPy's reader, then converted
    assert np.array_equal(load_head(tmp_path / "f.npz").W, W)
