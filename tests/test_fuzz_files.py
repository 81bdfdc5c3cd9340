"""Damaged head files: every mutation either loads as a valid head or raises HeadError.

Hypothesis flips bytes, truncates, appends and rewrites the length/header fields of small
valid .npz, .safetensors, .gguf and .msgpack files. Nothing else may escape the loader
(no IndexError, struct.error, MemoryError, ...), and a head that loads is finite and 2-D.
"""

import io
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unargmax_jax.heads import HeadError, load_head

W = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5) / 3
B = np.linspace(-1, 1, 4).astype(np.float32)


def _npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, W=W, b=B)
    return buffer.getvalue()


def _safetensors() -> bytes:
    from safetensors.numpy import save

    return save({"lm_head.weight": W, "lm_head.bias": B})


def _gguf(tmp_path_factory) -> bytes:
    gguf = pytest.importorskip("gguf")
    path = tmp_path_factory.mktemp("gguf") / "h.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list(["a", "b", "c", "d"])
    writer.add_tensor("output.weight", W)
    writer.add_tensor("output.bias", B)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def _msgpack() -> bytes:
    from flax.serialization import msgpack_serialize

    return msgpack_serialize({"lm_head": {"kernel": W.T.copy(), "bias": B}})


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    return {".npz": _npz(), ".safetensors": _safetensors(), ".gguf": _gguf(tmp_path_factory), ".msgpack": _msgpack()}


@st.composite
def mutations(draw, size: int):
    """A list of edits: flip a byte, overwrite a little-endian length, truncate, append."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "flip-header", "length", "truncate", "append"]))
        if kind == "flip":
            edits.append((kind, draw(st.integers(0, size - 1)), draw(st.integers(1, 255))))
        elif kind == "flip-header":  # the first bytes hold the format's lengths and names
            edits.append(("flip", draw(st.integers(0, min(size, 160) - 1)), draw(st.integers(1, 255))))
        elif kind == "length":
            edits.append((kind, draw(st.integers(0, min(size, 160) - 8)),
                          draw(st.sampled_from([0, 1, 2**31, 2**63 - 1, size, size * 4, 2**40]))))
        elif kind == "truncate":
            edits.append((kind, draw(st.integers(0, size - 1)), 0))
        else:
            edits.append((kind, 0, draw(st.binary(min_size=1, max_size=64))))
    return edits


def _apply(data: bytes, edits) -> bytes:
    data = bytearray(data)
    for kind, where, value in edits:
        if kind == "flip" and where < len(data):
            data[where] ^= value
        elif kind == "length" and where + 8 <= len(data):
            data[where:where + 8] = struct.pack("<Q", value)
        elif kind == "truncate":
            del data[where:]
        elif kind == "append":
            data += value
    return bytes(data)


def _loads_or_refuses(path):
    try:
        head = load_head(path)
    except HeadError as err:
        message = str(err)
        assert message and "\n" not in message.strip()
        return None
    assert head.W.ndim == 2 and head.W.shape[0] >= 1 and head.W.shape[1] >= 1
    assert np.all(np.isfinite(head.W))
    assert head.b is None or (head.b.shape == (head.W.shape[0],) and np.all(np.isfinite(head.b)))
    return head


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".gguf", ".msgpack"])
@given(data=st.data())
@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_mutated_files_load_or_raise_head_error(originals, tmp_path, suffix, data):
    original = originals[suffix]
    edits = data.draw(mutations(len(original)))
    path = tmp_path / f"head{suffix}"
    path.write_bytes(_apply(original, edits))
    _loads_or_refuses(path)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".gguf", ".msgpack"])
def test_unmutated_files_load_exactly(originals, tmp_path, suffix):
    path = tmp_path / f"head{suffix}"
    path.write_bytes(originals[suffix])
    head = _loads_or_refuses(path)
    np.testing.assert_array_equal(head.W, W)
    np.testing.assert_array_equal(head.b, B)


@pytest.mark.parametrize("suffix, edits", [
    # zipfile raises NotImplementedError for flag bits it does not support (found by fuzzing)
    (".npz", [("flip", 154, 16), ("flip", 438, 219)]),
    # a msgpack tree with integer keys (found by fuzzing)
    (".msgpack", [("truncate", 36, 0), ("truncate", 87, 0), ("append", 0, b"zo\x96*\x0b\xfd\xaa\x1e\x99\x0e\xf57@"),
                  ("flip", 39, 133)]),
])
def test_regressions_found_by_fuzzing(originals, tmp_path, suffix, edits):
    path = tmp_path / f"head{suffix}"
    path.write_bytes(_apply(originals[suffix], edits))
    _loads_or_refuses(path)
