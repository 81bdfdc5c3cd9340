"""ONNX heads: the MatMul/Gemm that makes the logits, found in synthetic graphs built with onnx.helper."""

import numpy as np
import pytest

from unargmax_jax.cli import main
from unargmax_jax.heads import HeadError, load_head
from unargmax_jax.report import Report

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

C, D = 7, 3
RNG = np.random.default_rng(5)
W = RNG.normal(size=(C, D)).astype(np.float32)
B = RNG.normal(size=C).astype(np.float32)


def _save(path, nodes, initializers, output="probs"):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, D])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(a), name) for name, a in initializers.items()])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_matmul_with_bias_add_and_softmax(tmp_path):
    path = _save(tmp_path / "m.onnx", [
        helper.make_node("MatMul", ["x", "w"], ["mm"]),
        helper.make_node("Add", ["bias", "mm"], ["logits"]),  # the constant first: still the bias
        helper.make_node("Identity", ["logits"], ["id"]),
        helper.make_node("Softmax", ["id"], ["probs"], axis=-1),
    ], {"w": W.T, "bias": B})  # MatMul(x, B) stores d x C
    head = load_head(path)
    np.testing.assert_array_equal(head.W, W)
    np.testing.assert_array_equal(head.b, B)
    assert (head.weight_name, head.bias_name) == ("w", "bias")


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_trans_b_alpha_beta(tmp_path, trans_b):
    stored = W if trans_b else W.T
    path = _save(tmp_path / "g.onnx", [
        helper.make_node("Gemm", ["x", "w", "c"], ["logits"], transB=trans_b, alpha=2.0, beta=0.5),
        helper.make_node("LogSoftmax", ["logits"], ["probs"]),
    ], {"w": stored, "c": B.reshape(1, C)})
    head = load_head(path)
    np.testing.assert_allclose(head.W, 2.0 * W.astype(np.float64), rtol=0, atol=0)  # alpha * W: exact
    np.testing.assert_allclose(head.b, 0.5 * B.astype(np.float64), rtol=0, atol=0)


def test_weight_from_a_constant_node_behind_a_transpose_no_bias_graph_output(tmp_path):
    path = _save(tmp_path / "c.onnx", [
        helper.make_node("Constant", [], ["w_cd"], value=numpy_helper.from_array(W, "w_value")),
        helper.make_node("Transpose", ["w_cd"], ["w"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "w"], ["probs"]),  # the logits are the graph's output
    ], {})
    head = load_head(path)
    np.testing.assert_array_equal(head.W, W)
    assert head.b is None


def test_no_head_is_a_one_line_error(tmp_path, capsys):
    path = _save(tmp_path / "none.onnx", [helper.make_node("Relu", ["x"], ["probs"])], {})
    with pytest.raises(HeadError, match="no head found"):
        load_head(path)
    out = tmp_path / "out"
    assert main(["check", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no head found" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    (tmp_path / "junk.onnx").write_bytes(b"\x08\xff\xff\xff garbage")
    with pytest.raises(HeadError, match="not a readable ONNX model|no head found"):
        load_head(tmp_path / "junk.onnx")


def test_external_data_outside_the_model_directory_is_refused(tmp_path):
    tensor = numpy_helper.from_array(W.T, "w")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["probs"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, D])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, None)], [tensor])
    onnx.save(helper.make_model(graph), str(tmp_path / "ext.onnx"))
    with pytest.raises(HeadError, match="external data in a file next to the model"):
        load_head(tmp_path / "ext.onnx")


def test_onnx_check_matches_the_hull(tmp_path):
    """Rows on a circle and three inside it: exactly the inside ones are unargmaxable (no bias, R^2)."""
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    ring = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    rows = np.concatenate([ring, 0.5 * ring[:3]]).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["logits"], transB=1), helper.make_node("ArgMax", ["logits"], ["probs"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("probs", TensorProto.INT64, None)], [numpy_helper.from_array(rows, "w")])
    onnx.save(helper.make_model(graph), str(tmp_path / "ring.onnx"))
    (tmp_path / "ppocr_keys.txt").write_text("".join(f"c{i}\n" for i in range(15)))
    out = tmp_path / "out"
    assert main(["check", str(tmp_path / "ring.onnx"), "--out", str(out), "--quiet", "--domain", "free",
                 "--verify"]) == 0
    report = Report.load(out)
    assert list(report.ids("unargmaxable")) == [12, 13, 14] and report.tokens[12] == "c12"
