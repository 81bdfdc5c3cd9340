"""ONNX models (``.onnx``), through the optional ``onnx`` package (``pip install 'unargmax_jax[onnx]'``).

The head is the ``MatMul`` or ``Gemm`` whose output is the graph's logits: walking back
from each input of a ``Softmax``/``LogSoftmax``/``ArgMax`` node, then from each graph
output, through shape-only nodes (``Identity``, ``Reshape``, ``Squeeze``, ``Unsqueeze``,
``Flatten``, ``Cast``, ``Transpose``) and at most one bias ``Add`` (a constant with one
value per class), to the first ``MatMul``/``Gemm`` with a constant weight. Constants are
initializers or ``Constant`` nodes, possibly behind ``Identity``/``Cast``/2-D ``Transpose``.
``MatMul(x, B)`` stores B as d x C, so W = B^T; ``Gemm`` computes
:math:`\\alpha A B' + \\beta c` with :math:`B' = B^T` under ``transB``, so W = alpha B'^T and
b = beta c. Weights in external data files are read only for the head's tensors, and only
from files inside the model's directory. Token strings: ``tokenizer.json`` / ``vocab.txt``
next to the model, else a single ``*keys*.txt`` / ``*dict*.txt`` character list (PaddleOCR).

(``import onnx`` below is the third-party package: imports are absolute.)
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import vocab
from .formats import _Entry, _Format
from .validate import HeadError

_LOGIT_CONSUMERS = ("Softmax", "LogSoftmax", "ArgMax")
_SHAPE_ONLY = ("Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Cast", "Transpose", "Dropout")
_CONSTANT_PASS = ("Identity", "Cast")
_MAX_WALK = 64  # shape-only nodes between the head and the logits, at most


class _HeadMatch(NamedTuple):
    weight_name: str
    W: np.ndarray  # C x d
    bias_name: str | None
    b: np.ndarray | None


class _Graph:
    """The graph's producers and constants (initializers and ``Constant`` nodes), read lazily."""

    def __init__(self, onnx, graph, base: Path, path: Path):
        self.onnx, self.base, self.path = onnx, base, path
        self.producer = {out: node for node in graph.node for out in node.output}
        self.initializers = {t.name: t for t in graph.initializer}
        self.constant_nodes = {node.output[0]: node for node in graph.node
                               if node.op_type == "Constant" and node.output}

    def constant(self, name: str, depth: int = 0) -> tuple[str, np.ndarray] | None:
        """``(source name, value)`` of a constant tensor, through Identity/Cast/2-D Transpose; else None."""
        if name in self.initializers:
            return name, self._array(self.initializers[name])
        node = self.producer.get(name)
        if node is None or depth > 8:
            return None
        if name in self.constant_nodes:
            value = next((a for a in node.attribute if a.name == "value"), None)
            return (name, self._array(value.t)) if value is not None and value.t is not None else None
        if node.op_type in _CONSTANT_PASS and node.input:
            return self.constant(node.input[0], depth + 1)
        if node.op_type == "Transpose" and node.input:
            inner = self.constant(node.input[0], depth + 1)
            perm = _attribute(self.onnx, node, "perm", None)
            if inner is not None and inner[1].ndim == 2 and perm in (None, [1, 0]):
                return inner[0], inner[1].T
        return None

    def _array(self, tensor) -> np.ndarray:
        if self.onnx.external_data_helper.uses_external_data(tensor):
            info = {entry.key: entry.value for entry in tensor.external_data}
            location = Path(info.get("location", ""))
            if not location.parts or location.is_absolute() or ".." in location.parts:
                raise HeadError(f"{self.path}: tensor {tensor.name!r}: expected its external data in a file next to "
                                f"the model, got location {str(location)!r}")
            try:
                self.onnx.external_data_helper.load_external_data_for_tensor(tensor, str(self.base))
            except (OSError, ValueError) as err:
                raise HeadError(f"{self.path}: tensor {tensor.name!r}: unreadable external data ({err})") from None
        try:
            return np.asarray(self.onnx.numpy_helper.to_array(tensor))
        except (ValueError, TypeError, KeyError) as err:
            raise HeadError(f"{self.path}: tensor {tensor.name!r}: unreadable ({err})") from None


def _attribute(onnx, node, name: str, default):
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else onnx.helper.get_attribute_value(found)


def _bias_of(graph: _Graph, node) -> tuple[str, np.ndarray, str] | None:
    """An ``Add`` of a constant: ``(constant name, values, the other input)``."""
    for const_input, other in ((node.input[1], node.input[0]), (node.input[0], node.input[1])):
        found = graph.constant(const_input)
        if found is not None:
            return found[0], found[1], other
    return None


def _head_at(graph: _Graph, name: str) -> _HeadMatch | None:
    """The head whose logits are the tensor ``name``, walking back through shape-only nodes."""
    bias = None
    for _ in range(_MAX_WALK):
        node = graph.producer.get(name)
        if node is None:
            return None
        if node.op_type in _SHAPE_ONLY and node.input:
            name = node.input[0]
        elif node.op_type == "Add" and bias is None and len(node.input) == 2:
            found = _bias_of(graph, node)
            if found is None:
                return None
            bias, name = (found[0], found[1]), found[2]
        elif node.op_type in ("MatMul", "Gemm") and len(node.input) >= 2:
            return _matmul_head(graph, node, bias)
        else:
            return None
    return None


def _matmul_head(graph: _Graph, node, bias) -> _HeadMatch | None:
    """W (C x d) and b of a MatMul/Gemm with a constant second input; None when it has none."""
    found = graph.constant(node.input[1])
    if found is None:
        return None
    weight_name, B = found
    B = B.reshape(B.shape[-2:]) if B.ndim > 2 and all(s == 1 for s in B.shape[:-2]) else B
    if B.ndim != 2:
        return None
    scale, bias_scale = 1.0, 1.0
    if node.op_type == "Gemm":
        scale, bias_scale = float(_attribute(graph.onnx, node, "alpha", 1.0)), float(_attribute(graph.onnx, node, "beta", 1.0))
        B = B if _attribute(graph.onnx, node, "transB", 0) else B.T
        if len(node.input) >= 3 and node.input[2]:
            if bias is not None:  # a Gemm bias and an Add after it: their sum is the bias
                return None
            constant = graph.constant(node.input[2])
            if constant is None:
                return None
            bias = constant
    else:
        B = B.T
    W = _scaled(B, scale)
    C = W.shape[0]
    b = None
    if bias is not None:
        values = np.asarray(bias[1])
        if values.size == 1:
            values = np.full(C, values.reshape(()), values.dtype)
        if values.size != C:
            return None
        b = _scaled(values.reshape(C), bias_scale)
    return _HeadMatch(weight_name, W, bias[0] if bias is not None else None, b)


def _scaled(array: np.ndarray, factor: float) -> np.ndarray:
    """``factor * array`` (float64 when the factor is not 1, so that only one rounding happens)."""
    array = array.astype(np.float32) if array.dtype == np.float16 else array
    return array if factor == 1.0 else np.asarray(array, np.float64) * factor


def _find_head(graph, g: _Graph) -> _HeadMatch | None:
    """The first head feeding a Softmax/LogSoftmax/ArgMax, else a graph output."""
    targets = [node.input[0] for node in graph.node if node.op_type in _LOGIT_CONSUMERS and node.input]
    targets += [output.name for output in graph.output]
    for name in dict.fromkeys(targets):
        found = _head_at(g, name)
        if found is not None:
            return found
    return None


class _OnnxFile(_Format):
    """An ONNX model: the head found in its graph (see the module docstring)."""

    noun = "initializer"
    choose = "this reader finds the head by the graph, not by name"

    def __init__(self, path: Path):
        self.path = path
        try:
            import onnx
            import onnx.external_data_helper
            import onnx.numpy_helper
        except ImportError:
            raise HeadError(f"{path}: reading ONNX files needs the onnx package: pip install 'unargmax_jax[onnx]'") from None
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as err:  # noqa: BLE001 -- protobuf raises its own DecodeError, among others
            raise HeadError(f"{path}: not a readable ONNX model ({type(err).__name__}: {' '.join(str(err).split())[:100]})") from None
        head = _find_head(model.graph, _Graph(onnx, model.graph, path.parent, path))
        if head is None:
            raise HeadError(f"{path}: no head found: no MatMul/Gemm with a constant weight produces the logits "
                            f"(the input of a Softmax, LogSoftmax or ArgMax, or a graph output)")
        self._arrays = {head.weight_name: head.W}
        if head.bias_name is not None:
            self._arrays[head.bias_name] = head.b
        self.entries = {name: _Entry(a.shape, a.dtype) for name, a in self._arrays.items()}
        self.weight_names = (head.weight_name,)
        self.bias_names = {head.weight_name: (head.bias_name,) if head.bias_name else ()}

    def read(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def vocabulary(self) -> tuple[list | None, str | None]:
        """``tokenizer.json`` / ``vocab.txt``, else the one ``*keys*.txt`` / ``*dict*.txt`` next to the model."""
        tokens, source = super().vocabulary()
        if tokens:
            return tokens, source
        lists = sorted({*self.path.parent.glob("*keys*.txt"), *self.path.parent.glob("*dict*.txt")})
        if len(lists) != 1:
            return None, None
        try:
            return vocab._from_vocab_txt(lists[0]), str(lists[0])
        except (OSError, UnicodeDecodeError):
            return None, None
