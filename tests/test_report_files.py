"""The report's readable files: tokens.csv, summary.md, margins.png; atomic, round-tripping."""

import csv
import json
import sys

import numpy as np
import pytest

import unargmax_jax as ua
from helpers import hull_vertices_argmaxable
from unargmax_jax import render
from unargmax_jax.report import Report

STRINGS = ["plain", "com,ma", 'quo"te', "new\nline", "pi|pe", "back`tick", "Ġπ", "▁дом", None, "tab\t", "",
           "<s>", "x"]


@pytest.fixture(scope="module")
def report():
    """13 rows on a circle and 3 strictly inside it (no bias): the inner ones are unargmaxable."""
    angles = np.linspace(0, 2 * np.pi, 13, endpoint=False)
    W = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    W = np.concatenate([W, 0.25 * W[:3]])
    result = ua.check(W, None, ua.Box(-1.0, 1.0), tokens=np.arange(15))  # token 15 skipped
    result.tokens = STRINGS + ["in1", "in2", "in3"]
    result.head.update(source="memory", weight_name="W")
    expected = hull_vertices_argmaxable(W)  # qhull
    assert (result.verdict[:15] == np.where(expected[:15], 1, -1)).all()
    return result


def test_tokens_csv_round_trips(report, tmp_path):
    report.save(tmp_path)
    with open(tmp_path / "tokens.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16
    names = {1: "argmaxable", -1: "unargmaxable", 0: "undecided", 2: "skipped"}
    for i, row in enumerate(rows):
        assert int(row["id"]) == i
        assert row["token"] == (report.tokens[i] or "")
        assert row["verdict"] == names[int(report.verdict[i])]
        assert float(row["lower"]) == report.lower[i] and float(row["upper"]) == report.upper[i]
        assert row["stage"] == report.stage[i]
    assert rows[15]["verdict"] == "skipped" and rows[15]["lower"] == "-inf" and rows[15]["upper"] == "inf"


def test_summary_lists_exactly_the_unargmaxable_tokens(report, tmp_path):
    report.save(tmp_path)
    text = (tmp_path / "summary.md").read_text(encoding="utf-8")
    section = text.split("## Unargmaxable tokens (2)")[1].split("##")[0]
    listed = [int(line.split("|")[1]) for line in section.splitlines() if line.startswith("| ") and "id" not in line]
    assert listed == report.ids("unargmaxable").tolist() == [13, 14]
    assert "| skipped | 1 |" in text
    # Token strings are escaped: a table row never breaks on | or a newline.
    assert "pi&#124;pe" in text or "pi|pe" not in text
    for line in text.splitlines():
        if line.startswith("| ") and "|" in line[2:]:
            assert line.count("|") in (3, 4, 5), line


def test_margins_png_is_a_png(report, tmp_path):
    report.save(tmp_path)
    assert (tmp_path / "margins.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_json_round_trips_tokens_and_skipped(report, tmp_path):
    report.save(tmp_path)
    loaded = Report.load(tmp_path)
    assert loaded.tokens == [t for t in report.tokens]
    np.testing.assert_array_equal(loaded.verdict, report.verdict)
    assert loaded.counts()["skipped"] == 1
    assert ua.verify(loaded, _weights(), None).ok


def test_report_json_holds_one_token_per_line(report, tmp_path):
    # Regression (speed): json's indented encoder wrote every field on its own line, in
    # pure Python (0.7 s for 49152 tokens); the header stays indented, a token is a line.
    report.save(tmp_path)
    text = (tmp_path / "report.json").read_text(encoding="utf-8")
    assert json.loads(text) == json.loads(json.dumps(report.to_json()))
    lines = [line for line in text.splitlines() if line.startswith('  {"id": ')]
    assert [json.loads(line.rstrip(","))["id"] for line in lines] == list(range(16))
    assert '\n "format": ' in text  # the header is indented


def _weights():
    angles = np.linspace(0, 2 * np.pi, 13, endpoint=False)
    W = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return np.concatenate([W, 0.25 * W[:3]])


def test_failed_rendering_writes_nothing(report, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(render, "margins_png", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="plot failed"):
        report.save(out)
    assert not out.exists() or list(out.iterdir()) == []


def test_without_matplotlib_the_rest_is_written(report, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    (tmp_path / "margins.png").write_bytes(b"stale")
    report.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["certificates.npz", "report.json", "summary.md", "tokens.csv"]
    assert "margins.png was skipped: matplotlib is not installed" in (tmp_path / "summary.md").read_text()


def test_closest_to_boundary_orders_by_distance(report):
    near = render.closest_to_boundary(report, 5)
    distance = np.where(report.verdict[near] == 1, report.lower[near], -report.upper[near])
    assert np.all(np.diff(distance) >= 0)
    decided = np.flatnonzero(np.isin(report.verdict, (1, -1)))
    everyone = np.where(report.verdict[decided] == 1, report.lower[decided], -report.upper[decided])
    assert distance.max() <= np.sort(everyone)[4]


@pytest.mark.parametrize("rows,bias", [(1, False), (1500, True), (4097, False)])
def test_head_sha256_is_the_sha256_of_the_float64_head(rows, bias):
    # The digest keys checkpoints and names the head in every report: hashed a block at a
    # time from the blocks' buffers, it must stay sha256("W(shape)" + W as float64 + ...).
    import hashlib

    from unargmax_jax.report import head_sha256

    rng = np.random.default_rng(rows)
    W = rng.normal(size=(rows, 3)).astype(np.float32)
    b = rng.normal(size=rows).astype(np.float16) if bias else None
    text = f"W{W.shape}".encode() + W.astype(np.float64).tobytes()
    if bias:
        text += f"b{b.shape}".encode() + b.astype(np.float64).tobytes()
    assert head_sha256(W, b) == hashlib.sha256(text).hexdigest()
    assert head_sha256(np.asfortranarray(W), b) == head_sha256(W, b)
