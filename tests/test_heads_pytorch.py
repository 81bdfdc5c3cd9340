"""PyTorch zip checkpoints written here opcode by opcode (tests/file_writers.py), read without torch.

Values are checked against the arrays written; hostile pickles must be refused before anything
they name is looked up or run (a marker file that ``os.system`` would create stays absent).
"""

import pickle
import zipfile

import numpy as np
import pytest

from unargmax_jax.cli import main
from unargmax_jax.heads import HeadError, load_head
from file_writers import (BFLOAT16, MARK, PROTO, REDUCE, STOP, Tensor, contiguous, p_dict, p_global, p_str,
                          p_tuple, state_dict_file, torch_zip)

rng = np.random.default_rng(7)
W = rng.standard_normal((6, 4)).astype(np.float32)
B = rng.standard_normal(6).astype(np.float32)


def _write(tmp_path, tree, storages, name="pytorch_model.bin", **kwargs):
    path = tmp_path / name
    path.write_bytes(state_dict_file(tree, storages, **kwargs))
    return path


def test_untied_lm_head_with_final_logits_bias(tmp_path):
    storages = {"0": W, "1": B.reshape(1, 6), "2": W[:, :2].copy()}
    tree = {"lm_head.weight": contiguous("0", W), "final_logits_bias": contiguous("1", B.reshape(1, 6)),
            "model.encoder.x": contiguous("2", storages["2"])}
    head = load_head(_write(tmp_path, tree, storages))
    assert (head.weight_name, head.bias_name) == ("lm_head.weight", "final_logits_bias")
    np.testing.assert_array_equal(head.W, W)
    np.testing.assert_array_equal(head.b, B)


def test_tied_embedding_without_bias_in_a_dict_and_pt_suffix(tmp_path):
    storages = {"emb": W.astype(np.float16)}
    tree = {"model.embed_tokens.weight": Tensor("emb", W.shape, (4, 1), parameter=True)}
    path = tmp_path / "ckpt.pt"
    path.write_bytes(torch_zip(PROTO + _plain_dict(tree, storages) + STOP, storages, root="ckpt"))
    head = load_head(path)
    assert head.weight_name == "model.embed_tokens.weight" and head.b is None
    np.testing.assert_array_equal(head.W, W.astype(np.float16).astype(np.float32))


def _plain_dict(tree, storages):
    return p_dict(tree, storages, ordered=False)


def test_nested_seq2seq_checkpoint_like_the_pytorch_tutorial(tmp_path):
    """{"encoder": ..., "decoder": {"out.weight", "out.bias"}, "loss": float}, as cn2en ships it."""
    storages = {"0": rng.standard_normal((6, 4)).astype(np.float32), "1": W, "2": B}
    tree = {"learning_rate": 0.01, "encoder": {"embedding.weight": contiguous("0", storages["0"])},
            "decoder": {"embedding.weight": contiguous("0", storages["0"]), "out.weight": contiguous("1", W),
                        "out.bias": contiguous("2", B)}, "loss": 2.5}
    head = load_head(_write(tmp_path, tree, storages, name="model.pth"))
    assert (head.weight_name, head.bias_name) == ("decoder.out.weight", "decoder.out.bias")
    np.testing.assert_array_equal(head.W, W)
    np.testing.assert_array_equal(head.b, B)


def test_strided_views_into_a_shared_storage(tmp_path):
    """A head stored as the transpose of a d x C storage (stride (1, C)), from an offset."""
    stored = np.concatenate([np.full(5, 9.0, np.float32), W.T.reshape(-1)])  # 5 values before the view
    tree = {"lm_head.weight": Tensor("0", (6, 4), (1, 6), offset=5), "lm_head.bias": Tensor("0", (6,), (1,), 5)}
    head = load_head(_write(tmp_path, tree, {"0": stored}))
    np.testing.assert_array_equal(head.W, W)
    np.testing.assert_array_equal(head.b, W.T.reshape(-1)[:6])


@pytest.mark.parametrize("dtype", [np.float64, BFLOAT16])
def test_other_storage_dtypes_and_a_compressed_zip(tmp_path, dtype):
    stored = W.astype(dtype)
    head = load_head(_write(tmp_path, {"lm_head.weight": contiguous("0", stored)}, {"0": stored},
                            compress=zipfile.ZIP_DEFLATED))
    np.testing.assert_array_equal(head.W, stored.astype(np.float64 if dtype == np.float64 else np.float32))


def test_a_directory_stands_for_its_pytorch_model_bin(tmp_path):
    _write(tmp_path, {"lm_head.weight": contiguous("0", W)}, {"0": W})
    (tmp_path / "vocab.txt").write_text("".join(f"t{i}\n" for i in range(6)))
    head = load_head(tmp_path)
    assert head.weight_name == "lm_head.weight" and head.tokens[5] == "t5"


def _hostile(tmp_path, body: bytes, name="pytorch_model.bin"):
    path = tmp_path / name
    path.write_bytes(torch_zip(PROTO + body + STOP, {}))
    return path


@pytest.mark.parametrize("module, name", [("os", "system"), ("builtins", "eval"), ("posix", "system"),
                                          ("torch", "load"), ("numpy.core.multiarray", "_reconstruct")])
def test_a_pickle_naming_any_other_global_is_refused_and_nothing_runs(tmp_path, module, name):
    marker = tmp_path / "pwned"
    body = p_global(module, name) + p_tuple(p_str(f"touch {marker}")) + REDUCE
    with pytest.raises(HeadError, match=rf"{module}\.{name}.*nothing was executed"):
        load_head(_hostile(tmp_path, body))
    assert not marker.exists()


def test_the_inst_opcode_and_a_foreign_persistent_id_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    inst = MARK + p_str(f"touch {marker}") + b"ios\nsystem\n"  # INST: find_class, then call
    with pytest.raises(HeadError, match=r"os\.system"):
        load_head(_hostile(tmp_path, inst))
    foreign = p_tuple(p_str("module"), p_str("x")) + b"Q"
    with pytest.raises(HeadError, match="expected a storage as persistent id"):
        load_head(_hostile(tmp_path, foreign))
    assert not marker.exists()


def test_legacy_and_damaged_files_give_one_line_errors(tmp_path):
    legacy = tmp_path / "old.pt"
    legacy.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(HeadError, match="legacy .*torch.save"):
        load_head(legacy)
    legacy_bin = tmp_path / "pytorch_model.bin"  # a .bin is told apart by its first bytes
    legacy_bin.write_bytes(legacy.read_bytes())
    with pytest.raises(HeadError, match="legacy .*torch.save"):
        load_head(legacy_bin)
    data = state_dict_file({"lm_head.weight": contiguous("0", W)}, {"0": W})
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(HeadError):
        load_head(truncated)
    short = tmp_path / "short.pt"  # storage shorter than the tensor says
    short.write_bytes(torch_zip(PROTO + _plain_dict({"lm_head.weight": Tensor("0", (6, 4), (4, 1))},
                                                    {"0": W}) + STOP, {"0": W[:3]}))
    with pytest.raises(HeadError, match="expected 96 bytes"):
        load_head(short)
    no_pickle = tmp_path / "n.pt"
    with zipfile.ZipFile(no_pickle, "w") as archive:
        archive.writestr("x/constants.pkl", b"")
    with pytest.raises(HeadError, match="TorchScript"):
        load_head(no_pickle)


def test_cli_refuses_a_hostile_checkpoint_with_exit_2_and_writes_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = _hostile(tmp_path, p_global("os", "system") + p_tuple(p_str(f"touch {marker}")) + REDUCE)
    out = tmp_path / "out"
    assert main(["check", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "os.system" in err and "Traceback" not in err
    assert not out.exists() and not marker.exists()


def test_a_bin_file_beside_another_head_file_does_not_hide_it(tmp_path):
    from safetensors.numpy import save_file

    save_file({"lm_head.weight": W}, str(tmp_path / "adapter.safetensors"))
    (tmp_path / "training_args.bin").write_bytes(b"\x80\x02}q\x00.")
    head = load_head(tmp_path)
    assert head.source.endswith("adapter.safetensors")
    np.testing.assert_array_equal(head.W, W)


def test_a_pickle_cannot_set_attributes_on_what_it_names(tmp_path):
    """BUILD with slot state is setattr(global, ...): on the loader's stand-in functions it must fail."""
    from unargmax_jax.heads import pytorch

    for attribute, value in (("injected", p_str("yes")), ("__defaults__", p_tuple(p_str("x")))):
        state = p_tuple(b"N" + b"}" + MARK + p_str(attribute) + value + b"u")  # (None, {attribute: value})
        body = p_global("torch._utils", "_rebuild_tensor_v2") + state + b"b" + b"0" + b"}"  # BUILD, POP, a dict
        with pytest.raises(HeadError, match="damaged pickle"):
            load_head(_hostile(tmp_path, body))
    assert not hasattr(pytorch._rebuild_tensor, "injected") and pytorch._rebuild_tensor.__defaults__ is None
