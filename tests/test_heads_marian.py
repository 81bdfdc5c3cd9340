"""Marian binary models written here in marian's layout (tests/file_writers.py).

Values are checked against the arrays written: float32 items as stored, intgemm8 matrices as
``q * float32(1 / multiplier)`` computed here, the untied ``[d, C]`` output layer transposed,
the intgemm output layer read from its transposed bytes; vocabularies from ``.yml``, ``.spm``
and a Marian config.
"""

import numpy as np
import pytest

from unargmax_jax.heads import HeadError, load_head
from file_writers import Item, marian_float, marian_intgemm8, marian_model, spm_model

rng = np.random.default_rng(5)
C, D = 9, 4
W = rng.standard_normal((C, D)).astype(np.float32)
B = rng.standard_normal(C).astype(np.float32)
OTHER = marian_float(rng.standard_normal((D, D)).astype(np.float32))


def _write(tmp_path, items, name="model.test.bin"):
    path = tmp_path / name
    path.write_bytes(marian_model(items))
    return path


def test_tied_float_embeddings_with_bias_and_a_yml_vocabulary(tmp_path):
    path = _write(tmp_path, {"Wemb": marian_float(W), "decoder_ff_logit_out_b": marian_float(B.reshape(1, C)),
                             "encoder_l1_self_Wq": OTHER})
    tokens = ["</s>", "<unk>", "a: b", "it's", '"q"'] + [f"t{i}" for i in range(5, C)]
    lines = ['"</s>": 0', "<unk>: 1", '"a: b": 2', "'it''s': 3", '"\\"q\\"": 4'] + [f"t{i}: {i}" for i in range(5, C)]
    (tmp_path / "vocab.xy.yml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    head = load_head(path)
    assert (head.weight_name, head.bias_name) == ("Wemb", "decoder_ff_logit_out_b")
    np.testing.assert_array_equal(head.W, W)
    np.testing.assert_array_equal(head.b, B)
    assert head.tokens == tuple(tokens)


def test_untied_float_output_layer_is_stored_d_by_c(tmp_path):
    items = {"Wemb": marian_float(np.zeros((C, D), np.float32)), "decoder_ff_logit_out_W": marian_float(W.T.copy()),
             "decoder_ff_logit_out_b": marian_float(B.reshape(1, C))}
    head = load_head(_write(tmp_path, items))
    assert head.weight_name == "decoder_ff_logit_out_W"
    np.testing.assert_array_equal(head.W, W)
    np.testing.assert_array_equal(head.b, B)


def test_intgemm8_embeddings_are_dequantised_as_marian_does(tmp_path):
    multiplier = np.float32(127.0 / np.abs(W).max())
    q = np.clip(np.rint(W * multiplier), -127, 127).astype(np.int8)
    path = _write(tmp_path, {"Wemb": marian_intgemm8(q, float(multiplier)),
                             "decoder_ff_logit_out_b": marian_float(B.reshape(1, C))})
    (tmp_path / "vocab.spm").write_bytes(spm_model([f"▁p{i}" for i in range(C)]))
    head = load_head(path)
    np.testing.assert_array_equal(head.W, q.astype(np.float32) * np.float32(1 / multiplier))
    np.testing.assert_allclose(head.W, W, atol=1 / multiplier)
    assert head.tokens[3] == "▁p3" and head.tokens_source.endswith("vocab.spm")


def test_an_intgemm8_output_layer_has_its_bytes_transposed(tmp_path):
    q = rng.integers(-127, 128, (C, D)).astype(np.int8)  # bytes: C rows of d values
    path = _write(tmp_path, {"decoder_Wemb": marian_float(np.zeros((C, D), np.float32)),
                             "decoder_ff_logit_out_W": marian_intgemm8(q, 2.0, header_shape=(D, C))})
    head = load_head(path)
    assert head.weight_name == "decoder_ff_logit_out_W" and head.b is None
    np.testing.assert_array_equal(head.W, q.astype(np.float32) * np.float32(0.5))


def test_the_config_names_the_target_vocabulary(tmp_path):
    path = _write(tmp_path, {"decoder_Wemb": marian_float(W)}, name="model.xy.bin")
    (tmp_path / "src.spm").write_bytes(spm_model(["s"] * C))
    (tmp_path / "trg.spm").write_bytes(spm_model([f"t{i}" for i in range(C)]))
    (tmp_path / "config.yml").write_text("models:\n  - model.xy.bin\nvocabs:\n  - src.spm\n  - trg.spm\nbeam-size: 1\n")
    head = load_head(path)
    assert head.weight_name == "decoder_Wemb" and head.tokens[8] == "t8"
    assert head.tokens_source.endswith("trg.spm")


def test_damaged_and_packed_models_are_refused(tmp_path):
    data = marian_model({"Wemb": marian_float(W), "decoder_ff_logit_out_b": marian_float(B.reshape(1, C))})
    for cut in (8, 40, 200, len(data) - 300):
        path = tmp_path / "cut.bin"
        path.write_bytes(data[:cut])
        with pytest.raises(HeadError):
            load_head(path)
    packed = _write(tmp_path, {"Wemb": Item(0x1801, (C, D), bytes(C * D))})  # FBGEMM packed8avx2
    with pytest.raises(HeadError, match="0x1801 is not a plain"):
        load_head(packed)
    short = _write(tmp_path, {"Wemb": Item(0x404, (C, 100), bytes(8))})  # padded to 256 bytes
    with pytest.raises(HeadError, match="expected at least 3600 bytes"):
        load_head(short)
