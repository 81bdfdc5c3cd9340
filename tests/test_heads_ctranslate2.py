"""CTranslate2 ``model.bin`` files written here from the spec format (tests/file_writers.py).

Values are checked against the arrays written: float16 upcast exactly, int8 dequantised as
``q / scale`` computed here with NumPy, aliases followed, the decoder's final LayerNorm found.
"""

import json

import numpy as np
import pytest

from unargmax_jax.heads import HeadError, load_head
from file_writers import ct2_model

rng = np.random.default_rng(3)
W = rng.standard_normal((7, 5)).astype(np.float32)
B = rng.standard_normal(7).astype(np.float32)
GAMMA, BETA = rng.random(5).astype(np.float32) + 0.5, rng.standard_normal(5).astype(np.float32)


def _write(tmp_path, variables, aliases=None, **kwargs):
    path = tmp_path / "model.bin"
    path.write_bytes(ct2_model(variables, aliases, **kwargs))
    return path


def test_whisper_like_tied_projection_alias_float16_norm_and_vocabulary_txt(tmp_path):
    variables = {"decoder/embeddings/weight": W.astype(np.float16), "decoder/layer_norm/gamma": GAMMA,
                 "decoder/layer_norm/beta": BETA, "decoder/scale_embeddings": np.array(1, np.int8),
                 "encoder/conv1/weight": rng.standard_normal((5, 3, 3)).astype(np.float16)}
    path = _write(tmp_path, variables, {"decoder/projection/weight": "decoder/embeddings/weight"}, spec="WhisperSpec")
    (tmp_path / "vocabulary.txt").write_text("".join(f"tok{i}\n" for i in range(7)), encoding="utf-8")
    head = load_head(path)
    assert head.weight_name == "decoder/projection/weight" and head.b is None
    np.testing.assert_array_equal(head.W, W.astype(np.float16).astype(np.float32))
    assert head.tokens == tuple(f"tok{i}" for i in range(7)) and head.tokens_source.endswith("vocabulary.txt")
    assert head.norm.kind == "layernorm"
    np.testing.assert_array_equal(head.norm.gamma, GAMMA)
    np.testing.assert_array_equal(head.norm.beta, BETA)


def test_untied_projection_with_bias_and_vocabulary_json(tmp_path):
    variables = {"decoder/projection/weight": W, "decoder/projection/bias": B,
                 "decoder/embeddings/weight": np.zeros((7, 5), np.float32)}
    path = _write(tmp_path, variables)
    (tmp_path / "vocabulary.json").write_text(json.dumps([f"w{i}" for i in range(7)]))
    head = load_head(path)
    assert (head.weight_name, head.bias_name) == ("decoder/projection/weight", "decoder/projection/bias")
    np.testing.assert_array_equal(head.W, W)
    np.testing.assert_array_equal(head.b, B)
    assert head.tokens[6] == "w6"


def test_int8_weights_are_dequantised_with_their_row_scales_through_the_alias(tmp_path):
    amax = np.abs(W).max(axis=1)
    scale = (127.0 / amax).astype(np.float32)
    q = np.rint(W * scale[:, None]).astype(np.int8)
    variables = {"decoder/embeddings/weight": q, "decoder/embeddings/weight_scale": scale,
                 "decoder/projection/bias": B}
    path = _write(tmp_path, variables, {"decoder/projection/weight": "decoder/embeddings/weight"})
    head = load_head(path)
    expected = q.astype(np.float32) / scale[:, None]
    np.testing.assert_array_equal(head.W, expected)
    np.testing.assert_allclose(head.W, W, atol=amax.max() / 127)  # within one quantisation step
    np.testing.assert_array_equal(head.b, B)


def test_an_older_binary_version_with_item_sizes(tmp_path):
    head = load_head(_write(tmp_path, {"decoder/projection/weight": W}, version=3))
    np.testing.assert_array_equal(head.W, W)


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:-7], "truncated|more bytes|expected"),
    (lambda data: data + b"\x00" * 3, "3 more bytes"),
    (lambda data: b"\x09\x00\x00\x00" + data[4:], "binary version 1 to 6"),
])
def test_damaged_files_are_refused(tmp_path, damage, message):
    path = tmp_path / "model.bin"
    path.write_bytes(damage(ct2_model({"decoder/projection/weight": W, "decoder/projection/bias": B})))
    with pytest.raises(HeadError, match=message):
        load_head(path)


@pytest.mark.parametrize("lie", [4, -4, 1 << 20])
def test_a_lying_size_field_is_refused(tmp_path, lie):
    path = _write(tmp_path, {"decoder/projection/weight": W}, size_lie=lie)
    with pytest.raises(HeadError, match="size field"):
        load_head(path)


def test_an_alias_to_nothing_and_bad_scales_are_refused(tmp_path):
    with pytest.raises(HeadError, match="alias 'decoder/projection/weight'"):
        load_head(_write(tmp_path, {"x": W}, {"decoder/projection/weight": "missing"}))
    q = np.ones((7, 5), np.int8)
    path = _write(tmp_path, {"decoder/projection/weight": q, "decoder/projection/weight_scale": np.zeros(7, np.float32)})
    with pytest.raises(HeadError, match="non-zero scales"):
        load_head(path)
