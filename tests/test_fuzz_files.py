"""Damaged head files: every mutation either loads as a valid head or raises HeadError.

Hypothesis flips bytes, truncates, appends and rewrites the length/header fields of small
valid .npz, .safetensors, .gguf, .msgpack, PyTorch zip, CTranslate2 and Marian files. Nothing else may escape the loader
(no IndexError, struct.error, MemoryError, ...), and a head that loads is finite and 2-D.
"""

import io
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unargmax_jax.cli import main
from unargmax_jax.heads import HeadError, load_head
from file_writers import (PROTO, REDUCE, STOP, contiguous, ct2_model, marian_float, marian_model, p_global, p_str,
                          p_tuple, state_dict_file, torch_zip)

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


def _torch() -> bytes:
    return state_dict_file({"lm_head.weight": contiguous("0", W), "lm_head.bias": contiguous("1", B)},
                           {"0": W, "1": B})


def _ctranslate2() -> bytes:
    return ct2_model({"decoder/projection/weight": W, "decoder/projection/bias": B})


def _marian() -> bytes:
    return marian_model({"Wemb": marian_float(W), "decoder_ff_logit_out_b": marian_float(B.reshape(1, -1))})


# File name endings of the formats (both .bin formats are told apart by their first bytes).
SUFFIXES = [".npz", ".safetensors", ".gguf", ".msgpack", ".pt", "-ct2.bin", "-marian.bin"]


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    return {".npz": _npz(), ".safetensors": _safetensors(), ".gguf": _gguf(tmp_path_factory), ".msgpack": _msgpack(),
            ".pt": _torch(), "-ct2.bin": _ctranslate2(), "-marian.bin": _marian()}


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


@pytest.mark.parametrize("suffix", SUFFIXES)
@given(data=st.data())
@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_mutated_files_load_or_raise_head_error(originals, tmp_path, suffix, data):
    original = originals[suffix]
    edits = data.draw(mutations(len(original)))
    path = tmp_path / f"head{suffix}"
    path.write_bytes(_apply(original, edits))
    _loads_or_refuses(path)


@pytest.mark.parametrize("suffix", SUFFIXES)
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


def _refused_by_the_cli(path, tmp_path, capsys, *expected: str) -> str:
    """``unargmax check`` exits 2 with one line naming the problem and writes nothing."""
    out = tmp_path / "out"
    assert main(["check", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(word in err for word in expected), err
    assert not out.exists()
    return err


@pytest.mark.parametrize("module, name", [("os", "system"), ("subprocess", "call"), ("builtins", "exec")])
def test_a_pickle_that_would_run_a_command_is_refused_unrun(tmp_path, capsys, module, name):
    marker = tmp_path / "executed"
    call = p_global(module, name) + p_tuple(p_str(f"touch {marker}")) + REDUCE
    for suffix in ("pytorch_model.bin", "model.pth"):
        path = tmp_path / suffix
        path.write_bytes(torch_zip(PROTO + call + STOP, {}))
        _refused_by_the_cli(path, tmp_path, capsys, f"{module}.{name}", "nothing was executed")
    assert not marker.exists()


def test_truncated_zips_are_refused(originals, tmp_path, capsys):
    data = originals[".pt"]
    for cut in (2, 30, len(data) // 2, len(data) - 10):
        path = tmp_path / "model.pt"
        path.write_bytes(data[:cut])
        _refused_by_the_cli(path, tmp_path, capsys, str(path))


def test_a_ctranslate2_file_with_lying_sizes_is_refused(tmp_path, capsys):
    for lie in (8, -8, 2**31):
        path = tmp_path / "model.bin"
        path.write_bytes(ct2_model({"decoder/projection/weight": W, "decoder/projection/bias": B}, size_lie=lie))
        _refused_by_the_cli(path, tmp_path, capsys, "size field")


def test_a_truncated_marian_model_is_refused(originals, tmp_path, capsys):
    data = originals["-marian.bin"]
    for cut in (12, 100, len(data) - 200):
        path = tmp_path / "model.xx.bin"
        path.write_bytes(data[:cut])
        _refused_by_the_cli(path, tmp_path, capsys, "Marian")
