"""``unargmax survey``: many heads in one run, failures recorded and skipped, tables written."""

import csv

import numpy as np
import pytest
from safetensors.numpy import save, save_file

from fake_hub import hub_env
from helpers import hull_vertices_argmaxable
from unargmax_jax.cli import main
from unargmax_jax.report import Report
from unargmax_jax.resume import Checkpoint


def _circle_head(path, C, inside):
    """C rows on the unit circle plus ``inside`` rows strictly inside it (no bias)."""
    angles = np.linspace(0, 2 * np.pi, C, endpoint=False)
    W = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    W = np.concatenate([W, 0.5 * W[:inside]])
    np.savez(path, W=W)
    return W


def test_survey_checks_each_head_and_records_failures(tmp_path, capsys):
    heads = tmp_path / "heads"
    heads.mkdir()
    W_a = _circle_head(heads / "a.npz", 12, 3)
    W_b = _circle_head(heads / "b.npz", 20, 0)
    (heads / "broken.npz").write_bytes(b"not a zip file")
    listing = tmp_path / "list.txt"
    listing.write_text("# three heads\nheads/a.npz\n\nheads/missing.npz   # gone\nheads/broken.npz\nheads/b.npz\n")
    out = tmp_path / "survey"

    code = main(["survey", str(listing), "--out", str(out), "--quiet", "--domain", "free"])

    assert code == 1  # two heads failed; the rest were still checked
    with open(out / "survey.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["model"] for r in rows] == ["a", "missing", "broken", "b"]
    by_name = {r["model"]: r for r in rows}
    for name, W in (("a", W_a), ("b", W_b)):
        expected = hull_vertices_argmaxable(W)  # qhull, independent of the engine
        assert by_name[name]["status"] == "ok"
        assert int(by_name[name]["unargmaxable"]) == int(np.sum(~expected))
        assert int(by_name[name]["argmaxable"]) == int(np.sum(expected))
    assert by_name["missing"]["status"].startswith("error: ") and "missing.npz" in by_name["missing"]["status"]
    assert "broken.npz" in by_name["broken"]["status"]
    report_dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert report_dirs == ["001-a", "004-b"]
    assert Report.load(out / "001-a").counts()["unargmaxable"] == 3
    markdown = (out / "survey.md").read_text()
    assert "4 head(s), 2 checked, 2 failed" in markdown and "| a |" in markdown


def test_survey_of_good_heads_exits_0(tmp_path, capsys):
    _circle_head(tmp_path / "only.npz", 8, 1)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'only.npz'}\n")
    assert main(["survey", str(listing), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "1 checked, 0 failed" in capsys.readouterr().out


def test_survey_bad_list_is_a_usage_error(tmp_path, capsys):
    assert main(["survey", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "out")]) == 2
    assert "cannot read the survey list" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    assert main(["survey", str(empty), "--out", str(tmp_path / "out")]) == 2
    assert "expected one checkpoint path or model id per line" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_survey_table_has_one_row_per_model_as_in_the_study(tmp_path, capsys):
    tokens = [f"t{i}" for i in range(15)]
    (tmp_path / "a").mkdir()
    _circle_head(tmp_path / "a" / "a.npz", 12, 3)
    (tmp_path / "a" / "vocab.txt").write_text("".join(t + "\n" for t in tokens))
    listing = tmp_path / "list.txt"
    listing.write_text("a/a.npz\n")
    out = tmp_path / "out"
    assert main(["survey", str(listing), "--out", str(out), "--quiet", "--domain", "free"]) == 0
    with open(out / "survey.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert list(row)[:9] == ["model", "C", "d", "bias", "argmaxable", "unargmaxable", "undecided", "seconds",
                             "unargmaxable_tokens"]
    assert (row["model"], row["C"], row["d"], row["bias"]) == ("a", "15", "2", "no")
    assert (row["argmaxable"], row["unargmaxable"], row["undecided"]) == ("12", "3", "0")
    assert row["unargmaxable_tokens"] == "'t12' 't13' 't14'"  # the rows planted inside the hull
    assert float(row["seconds"]) >= 0 and row["source"] == str(tmp_path / "a" / "a.npz")
    assert "| model | C | d | bias |" in (out / "survey.md").read_text()


def _normed_head(path, with_norm=True):
    """12 unit rows, token 3 with bias -10: on an RMSNorm's outputs (||y|| <= sqrt(2) with gamma = 1)
    every logit W y lies in [-sqrt(2), sqrt(2)], so token 3 always loses; on all of R^2 it can win."""
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    tensors = {"lm_head.weight": np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32),
               "lm_head.bias": np.where(np.arange(12) == 3, -10.0, 0.0).astype(np.float32)}
    if with_norm:
        tensors["model.norm.weight"] = np.ones(2, np.float32)
    save_file(tensors, str(path))


def test_survey_norm_domain_uses_each_heads_own_norm(tmp_path, capsys):
    _normed_head(tmp_path / "normed.safetensors")
    _normed_head(tmp_path / "bare.safetensors", with_norm=False)
    listing = tmp_path / "list.txt"
    listing.write_text("normed.safetensors\nbare.safetensors\n")
    out = tmp_path / "out"
    assert main(["survey", str(listing), "--out", str(out), "--quiet", "--domain", "rmsnorm"]) == 1
    with open(out / "survey.csv", newline="") as handle:
        normed, bare = list(csv.DictReader(handle))
    assert normed["status"] == "ok" and normed["unargmaxable"] == "1" and normed["bias"] == "yes"
    assert list(Report.load(out / "001-normed").ids("unargmaxable")) == [3]
    assert bare["status"].startswith("error: ") and "final norm" in bare["status"]
    assert main(["survey", str(listing), "--out", str(tmp_path / "free"), "--quiet", "--domain", "free"]) == 0
    assert Report.load(tmp_path / "free" / "001-normed").counts()["unargmaxable"] == 0  # on R^2 token 3 can win


def test_survey_checkpoint_seconds_saves_and_a_cut_survey_resumes(tmp_path, monkeypatch, capsys):
    W = _circle_head(tmp_path / "a.npz", 12, 4)
    listing = tmp_path / "list.txt"
    listing.write_text("a.npz\n")
    saves, original = [], Checkpoint.save

    def recording(self, phase, position, todo, evidence):
        original(self, phase, position, todo, evidence)
        saves.append(position)
        if cut_after is not None and len(saves) == cut_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", recording)
    command = ["survey", str(listing), "--quiet", "--domain", "free", "--chunk-size", "4"]
    cut_after = None
    assert main(command + ["--out", str(tmp_path / "rare"), "--checkpoint-seconds", "1e6"]) == 0
    assert not saves  # a snapshot is due only every 1e6 s: a short run writes none
    saves.clear()
    assert main(command + ["--out", str(tmp_path / "often"), "--checkpoint-seconds", "0"]) == 0
    assert any(p > 0 for p in saves)  # inside phases too, after every chunk

    saves.clear()
    cut_after = 3
    out = tmp_path / "cut"
    assert main(command + ["--out", str(out), "--checkpoint-seconds", "0"]) == 130
    assert (out / "001-a" / ".unargmax-partial.npz").is_file() and not (out / "001-a" / "report.json").exists()
    cut_after = None
    assert main(command + ["--out", str(out), "--checkpoint-seconds", "0"]) == 0
    assert not (out / "001-a" / ".unargmax-partial.npz").exists()
    expected = hull_vertices_argmaxable(W)
    assert Report.load(out / "001-a").counts()["unargmaxable"] == int(np.sum(~expected)) == 4


def test_survey_takes_model_ids(tmp_path, monkeypatch, capsys):
    pytest.importorskip("huggingface_hub")
    hub = next(hub_env(tmp_path, monkeypatch))
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    W = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    W = np.concatenate([W, 0.5 * W[:3]]).astype(np.float32)
    commit = hub.add("org/tied", {"model.safetensors": save({"model.embed_tokens.weight": W})})
    _circle_head(tmp_path / "local.npz", 8, 1)
    listing = tmp_path / "list.txt"
    listing.write_text("org/tied\nlocal.npz\n")
    out = tmp_path / "out"
    try:
        assert main(["survey", str(listing), "--out", str(out), "--quiet", "--domain", "free"]) == 0
    finally:
        hub.server.shutdown()
    with open(out / "survey.csv", newline="") as handle:
        remote, local = list(csv.DictReader(handle))
    assert (remote["model"], remote["unargmaxable"], remote["C"]) == ("org/tied", "3", "15")
    assert remote["source"] == f"hf://org/tied@{commit}" and local["unargmaxable"] == "1"
    assert Report.load(out / "001-org_tied").head["hub"]["commit"] == commit
