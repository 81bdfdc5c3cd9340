"""The unargmax command: exit codes, messages, files, tampering."""

import json
import subprocess
import sys

import numpy as np
import pytest

from unargmax_jax.cli import main
from unargmax_jax.heads import example_head_path


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("head") / "head.npz"
    W = rng.normal(size=(50, 2)).astype(np.float32)
    b = rng.normal(size=50).astype(np.float32)
    W[9], b[9] = W[2], b[2]  # a tie
    np.savez(path, W=W, b=b)
    return path


@pytest.fixture(scope="module")
def checked_dir(head_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "run"
    assert main(["check", str(head_file), "--out", str(out), "--quiet"]) == 0
    return out


def test_check_writes_a_complete_report(checked_dir, head_file):
    data = json.loads((checked_dir / "report.json").read_text())
    assert data["format"] == "unargmax-report/1"
    assert [t["id"] for t in data["tokens"]] == list(range(50))
    assert data["summary"]["undecided"] == 0
    assert data["tokens"][9]["verdict"] == "unargmaxable" and data["tokens"][9]["twins"] == [2]
    assert data["head"]["source"] == str(head_file) and data["head"]["weight_name"] == "W"
    assert (checked_dir / "certificates.npz").exists()


def test_verify_accepts_then_rejects_tampering(checked_dir, head_file, tmp_path, capsys):
    assert main(["verify", str(checked_dir), "--weights", str(head_file)]) == 0
    with np.load(checked_dir / "certificates.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k].copy() for k in npz.files}
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (tampered / "report.json").write_text((checked_dir / "report.json").read_text())
    arrays["witnesses"][0] = -arrays["witnesses"][0]
    np.savez(tampered / "certificates.npz", **arrays)
    capsys.readouterr()
    assert main(["verify", str(tampered), "--weights", str(head_file)]) == 1
    out = capsys.readouterr().out
    assert f"token {int(arrays['witness_ids'][0])}" in out


def test_fail_on_and_verify_flags(head_file, tmp_path, capsys):
    assert main(["check", str(head_file), "--out", str(tmp_path / "a"), "--quiet", "--verify",
                 "--fail-on", "unargmaxable"]) == 1
    out = capsys.readouterr().out
    assert "verified" in out and "--fail-on unargmaxable" in out


def test_example_runs(tmp_path, capsys):
    assert main(["check", "--example", "--out", str(tmp_path / "ex"), "--quiet", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "unargmaxable" in out and "3 = 7" in out


@pytest.mark.parametrize("make, expected", [
    (lambda p: np.savez(p, W=np.array([[1.0, np.nan], [0.0, 1.0]])), "finite"),
    (lambda p: np.savez(p, W=np.ones((2, 2, 2))), "2-D"),
    (lambda p: np.savez(p, W=np.ones((3, 2)), b=np.ones(4)), "bias of shape (3,)"),
    (lambda p: np.savez(p, V=np.ones((3, 2))), "no weight array"),
    (lambda p: np.savez(p, W=np.zeros((0, 2))), "at least one class"),
    (lambda p: np.savez(p, W=np.array([{"a": 1}], dtype=object)), "refusing to unpickle"),
    (lambda p: p.write_bytes(b"not a zip"), "not a readable .npz"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, make, expected):
    path = tmp_path / "bad.npz"
    make(path)
    out = tmp_path / "never"
    assert main(["check", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unargmax: error:") and expected in err[0], err
    assert not out.exists()


def test_usage_errors_exit_2(tmp_path, head_file, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    cases = [
        ["check", str(head_file), "--out", str(afile)],
        ["check", str(head_file), "--domain", "cube:3", "--out", str(tmp_path / "o")],
        ["check", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o")],
        ["check", str(head_file), "--weight", "nope", "--out", str(tmp_path / "o")],
        ["check", "--out", str(tmp_path / "o")],
        ["verify", str(tmp_path), "--weights", str(head_file)],
    ]
    for argv in cases:
        assert main(argv + ["--quiet"] if argv[0] == "check" else argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("unargmax: error:"), (argv, err)
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--bogus"])
    assert exit_info.value.code == 2


def test_console_module_entry_point(tmp_path):
    done = subprocess.run([sys.executable, "-m", "unargmax_jax", "check", str(example_head_path()), "--out",
                           str(tmp_path / "m"), "--quiet", "--fail-on", "undecided"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "argmaxable" in done.stdout
