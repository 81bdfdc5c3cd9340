"""``unargmax survey``: many heads in one run, failures recorded and skipped, tables written."""

import csv

import numpy as np

from helpers import hull_vertices_argmaxable
from unargmax_jax.cli import main
from unargmax_jax.report import Report


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
