"""The unargmax command: exit codes, one-line errors, files written, verification, tampering.

The first half never runs the engine (``engine.check`` is replaced by a tripwire): bad
input must be refused before any work. The second half runs ``check`` end to end.
"""

import importlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from unargmax_jax.cli import main
from unargmax_jax.heads import example_head_path

# The package re-exports the functions check and verify, which shadow the module names.
engine_module = importlib.import_module("unargmax_jax.engine")
verify_module = importlib.import_module("unargmax_jax.verify")
EXAMPLE_UNARGMAXABLE = [3, 7, 11, 20, 33, 46, 59]  # planted by scripts/make_example_head.py


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unargmax: error: "), captured.err
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    return lines[0]


@pytest.fixture
def no_engine(monkeypatch):
    """Fail the test if the engine is reached."""

    def tripwire(*args, **kwargs):
        raise AssertionError("the engine ran although the input is bad")

    monkeypatch.setattr(engine_module, "check", tripwire)


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("head") / "head.npz"
    W = rng.normal(size=(50, 2)).astype(np.float32)
    b = rng.normal(size=50).astype(np.float32)
    W[9], b[9] = W[2], b[2]  # a tie
    np.savez(path, W=W, b=b)
    return path


# ------------------------------------------------------------ bad input: exit 2
BAD_HEADS = [
    ("nan", lambda p: np.savez(p, W=np.array([[1.0, np.nan], [0.0, 1.0]])), "expected finite weights, got nan at (row 0, column 1)"),
    ("inf-bias", lambda p: np.savez(p, W=np.ones((2, 2)), b=np.array([0.0, np.inf])), "expected a finite bias, got inf at index 1"),
    ("rank-3", lambda p: np.savez(p, W=np.ones((2, 2, 2))), "expected 2-D weights"),
    ("rank-1", lambda p: np.savez(p, W=np.ones(4)), "got shape (4,)"),
    ("length", lambda p: np.savez(p, W=np.ones((3, 2)), b=np.ones(4)), "expected a bias of shape (3,)"),
    ("no-name", lambda p: np.savez(p, V=np.ones((3, 2))), "no weight array named W or decoder_Wemb"),
    ("no-classes", lambda p: np.savez(p, W=np.zeros((0, 2))), "expected at least one class and one feature, got shape (0, 2)"),
    ("no-features", lambda p: np.savez(p, W=np.zeros((2, 0))), "got shape (2, 0)"),
    ("pickled", lambda p: np.savez(p, W=np.array([{"a": 1}], dtype=object)), "contains pickled object arrays; refusing to unpickle"),
    ("pickled-bias", lambda p: np.savez(p, W=np.ones((1, 2)), b=np.array([None], dtype=object)), "refusing to unpickle"),
    ("strings", lambda p: np.savez(p, W=np.array([["a", "b"]])), "expected real floating-point or integer weights"),
    ("not-zip", lambda p: p.write_bytes(b"not a zip"), "not a readable .npz"),
    ("empty-file", lambda p: p.write_bytes(b""), "not a readable .npz"),
]


@pytest.mark.parametrize("name, make, expected", BAD_HEADS, ids=[case[0] for case in BAD_HEADS])
def test_bad_head_exits_2_with_one_line(tmp_path, capsys, no_engine, name, make, expected):
    path = tmp_path / "bad.npz"
    make(path)
    out = tmp_path / "never"
    assert main(["check", str(path), "--out", str(out), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert expected in line and str(path) in line, line
    assert not out.exists()


def test_bad_usage_exits_2_with_one_line(tmp_path, head_file, capsys, no_engine):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    out = tmp_path / "never"
    cases = [
        (["--out", str(a_file)], "exists and is not a directory"),
        (["--out", str(a_file / "sub")], "is not a directory"),
        (["--domain", "cube:3"], "bad domain 'cube:3'"),
        (["--domain", "box:2,1"], "bad domain"),
        (["--domain", "ball:-1"], "bad domain"),
        (["--domain", "box:nan"], "bad domain"),
        (["--weight", "nope"], "no array named 'nope'; 2-D arrays in the file: ['W']"),
        (["--bias", "nope"], "no bias array named 'nope'"),
        (["--chunk-size", "0"], "--chunk-size: expected a positive integer, got 0"),
        (["--max-seconds", "-1"], "--max-seconds: expected a finite number >= 0"),
        (["--max-seconds", "nan"], "--max-seconds"),
        (["--seed", "-1"], "--seed: expected an integer in [0, 2^32)"),
        (["--example"], "give a head file or --example (exactly one)"),
    ]
    for extra, expected in cases:
        argv = ["check", str(head_file), "--out", str(out), "--quiet", *extra]
        assert main(argv) == 2, argv
        line = one_error_line(capsys)
        assert expected in line, (argv, line)
        assert not out.exists()
    for argv, expected in [
        (["check", "--out", str(out)], "give a head file or --example"),
        (["check", str(tmp_path / "missing.npz"), "--out", str(out)], "missing.npz: no such file"),
        (["check", str(tmp_path), "--out", str(out)], "is a directory"),
        (["check", str(a_file), "--out", str(out)], "unsupported file type '(no suffix)'; supported: .npz"),
    ]:
        assert main(argv) == 2, argv
        assert expected in one_error_line(capsys)
        assert not out.exists()


def test_unwritable_output_is_refused_before_running(tmp_path, head_file, capsys, no_engine, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # Simulate a read-only directory (chmod does not stop root, who may run the tests).
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(locked) else real_access(path, mode))
    for out in (locked, locked / "new" / "deeper"):
        assert main(["check", str(head_file), "--out", str(out), "--quiet"]) == 2
        assert "not writable" in one_error_line(capsys)
    assert list(locked.iterdir()) == []


def test_argparse_errors_exit_2(capsys):
    for argv in (["check", "--bogus"], [], ["frobnicate"], ["check", "h.npz", "--ties", "sometimes"],
                 ["check", "h.npz", "--bias", "b", "--no-bias"], ["check", "h.npz", "--chunk-size", "many"],
                 ["verify", "somewhere"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0] and "--help" in err[0], (argv, err)
    assert main(["--version"]) == 0
    assert "unargmax_jax" in capsys.readouterr().out
    assert main(["check", "--help"]) == 0


def test_verify_bad_report_dirs_exit_2(tmp_path, head_file, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [(tmp_path / "missing", "no report.json"), (empty, "no report.json")]
    broken_json = tmp_path / "json"
    broken_json.mkdir()
    (broken_json / "report.json").write_text("{not json")
    cases.append((broken_json, "is not valid JSON"))
    wrong_format = tmp_path / "format"
    wrong_format.mkdir()
    (wrong_format / "report.json").write_text(json.dumps({"format": "something-else"}))
    cases.append((wrong_format, "expected format 'unargmax-report/1'"))
    no_tokens = tmp_path / "fields"
    no_tokens.mkdir()
    (no_tokens / "report.json").write_text(json.dumps({"format": "unargmax-report/1", "head": {}}))
    np.savez(no_tokens / "certificates.npz", witness_ids=np.zeros(0, np.int64))
    cases.append((no_tokens, "damaged report"))
    for directory, expected in cases:
        assert main(["verify", str(directory), "--weights", str(head_file)]) == 2, directory
        assert expected in one_error_line(capsys)


def test_engine_bugs_keep_their_traceback(tmp_path, head_file, monkeypatch):
    """Only input problems become one-line errors; a failure inside the engine is a bug."""

    def broken(*args, **kwargs):
        raise ValueError("internal inconsistency")

    monkeypatch.setattr(engine_module, "check", broken)
    with pytest.raises(ValueError, match="internal inconsistency"):
        main(["check", str(head_file), "--out", str(tmp_path / "o"), "--quiet"])
    assert not (tmp_path / "o").exists()


def test_interrupt_exits_130_without_output(tmp_path, head_file, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_module, "check", interrupted)
    assert main(["check", str(head_file), "--out", str(tmp_path / "o"), "--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------- end to end
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
    assert data["head"]["source"] == str(head_file)
    assert (data["head"]["weight_name"], data["head"]["bias_name"], data["head"]["has_bias"]) == ("W", "b", True)
    with np.load(checked_dir / "certificates.npz", allow_pickle=False) as npz:
        assert {"witness_ids", "witnesses", "certificate_ids", "certificate_weights"} <= set(npz.files)


def test_verify_accepts_the_report(checked_dir, head_file, capsys):
    assert main(["verify", str(checked_dir), "--weights", str(head_file)]) == 0
    assert "verified 50 tokens: all witnesses and certificates hold" in capsys.readouterr().out


def copy_with(src, dst, mutate):
    """Copy a report directory, changing its certificates.npz arrays with ``mutate``."""
    shutil.copytree(src, dst)
    with np.load(dst / "certificates.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k].copy() for k in npz.files}
    mutate(arrays)
    np.savez(dst / "certificates.npz", **arrays)
    return arrays


def test_verify_rejects_a_tampered_witness(checked_dir, head_file, tmp_path, capsys):
    def flip(arrays):
        arrays["witnesses"][0] = -arrays["witnesses"][0]

    arrays = copy_with(checked_dir, tmp_path / "t", flip)
    assert main(["verify", str(tmp_path / "t"), "--weights", str(head_file)]) == 1
    out = capsys.readouterr().out
    assert "verification FAILED" in out and f"token {int(arrays['witness_ids'][0])}:" in out


def test_verify_rejects_a_tampered_certificate(checked_dir, head_file, tmp_path, capsys):
    def zero(arrays):
        stop = arrays["certificate_offsets"][1]
        arrays["certificate_weights"][:stop] = 0.0

    arrays = copy_with(checked_dir, tmp_path / "t", zero)
    assert main(["verify", str(tmp_path / "t"), "--weights", str(head_file)]) == 1
    assert f"token {int(arrays['certificate_ids'][0])}:" in capsys.readouterr().out


def test_verify_against_other_weights_fails_cleanly(checked_dir, head_file, tmp_path, capsys):
    with np.load(head_file) as npz:
        W, b = npz["W"], npz["b"]
    other = tmp_path / "other.npz"
    np.savez(other, W=W, b=b + np.float32(1))
    assert main(["verify", str(checked_dir), "--weights", str(other)]) == 1
    out = capsys.readouterr().out
    assert "verification FAILED for 50 token(s)" in out and "head: sha256" in out
    smaller = tmp_path / "smaller.npz"
    np.savez(smaller, W=W[:10], b=b[:10])
    assert main(["verify", str(checked_dir), "--weights", str(smaller)]) == 1
    assert "do not match" in capsys.readouterr().out
    no_bias = tmp_path / "nobias.npz"
    np.savez(no_bias, W=W)
    assert main(["verify", str(checked_dir), "--weights", str(no_bias)]) == 2  # the report names bias "b"
    assert "no bias array named 'b'" in one_error_line(capsys)


def test_fail_on_and_verify_flags(head_file, tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["check", str(head_file), "--out", str(out), "--quiet", "--verify", "--fail-on", "unargmaxable"]) == 1
    printed = capsys.readouterr().out
    assert "verified 50 decided tokens independently" in printed
    assert "unargmaxable token(s) (--fail-on unargmaxable)" in printed
    assert (out / "report.json").exists()  # the report is written even when the check fails


def test_failed_verification_exits_1_and_keeps_the_report(head_file, tmp_path, capsys, monkeypatch):
    def always_fails(report, W, b=None, **kwargs):
        return verify_module.VerifyResult(False, np.array([4]), {4: "planted failure"}, 0)

    monkeypatch.setattr(verify_module, "verify", always_fails)
    out = tmp_path / "v"
    assert main(["check", str(head_file), "--out", str(out), "--quiet", "--verify"]) == 1
    printed = capsys.readouterr().out
    assert "verification FAILED for 1 token(s): [4]" in printed and "token 4: planted failure" in printed
    assert (out / "report.json").exists()


def test_no_bias_ties_first_and_default_out(head_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["check", str(head_file), "--quiet", "--no-bias", "--ties", "first", "--fail-on", "undecided"]) == 0
    out = tmp_path / "unargmax-out"
    data = json.loads((out / "report.json").read_text())
    assert data["head"]["has_bias"] is False and data["head"]["bias_name"] is None
    assert data["settings"]["ties"] == "first"
    assert data["tokens"][9]["verdict"] == "unargmaxable" and data["tokens"][9]["twins"] == [2]
    capsys.readouterr()
    # The file has a bias "b", but the report was made without one: verify reads it the same way.
    assert main(["verify", str(out), "--weights", str(head_file)]) == 0
    assert main(["verify", str(out), "--weights", str(head_file), "--bias", "b"]) == 1


def test_no_background_compile_reaches_the_engine_and_changes_no_verdict(tmp_path, capsys):
    default, off = tmp_path / "default", tmp_path / "off"
    assert main(["check", "--example", "--out", str(default), "--quiet"]) == 0
    assert main(["check", "--example", "--out", str(off), "--quiet", "--no-background-compile"]) == 0
    first, second = (json.loads((d / "report.json").read_text()) for d in (default, off))
    assert (first["settings"]["background_compile"], second["settings"]["background_compile"]) == (True, False)
    assert first["tokens"] == second["tokens"]


def test_example_shows_every_kind_of_verdict(tmp_path, capsys):
    out = tmp_path / "ex"
    assert main(["check", "--example", "--out", str(out), "--quiet", "--verify", "--fail-on", "unargmaxable"]) == 1
    printed = capsys.readouterr().out
    assert "head: 60 classes x 3 features, with bias" in printed and "3 = 7" in printed
    assert "unargmaxable: " + ", ".join(map(str, EXAMPLE_UNARGMAXABLE)) in printed
    assert "verified 60 decided tokens independently" in printed
    tokens = json.loads((out / "report.json").read_text())["tokens"]
    assert [t["id"] for t in tokens if t["verdict"] == "unargmaxable"] == EXAMPLE_UNARGMAXABLE
    assert all(t["verdict"] != "undecided" for t in tokens)
    assert tokens[3]["stage"] == tokens[7]["stage"] == "tie"
    assert tokens[11]["upper"] == 0.0  # margin exactly 0: proved in exact arithmetic
    assert tokens[50]["verdict"] == "argmaxable"  # a zero row rescued by the largest bias
    assert main(["verify", str(out), "--weights", str(example_head_path())]) == 0


def test_module_entry_point(tmp_path):
    done = subprocess.run([sys.executable, "-m", "unargmax_jax", "check", "--example", "--domain", "free",
                           "--out", str(tmp_path / "m"), "--quiet", "--fail-on", "undecided"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # On all of R^d token 59 (it only wins outside [-100, 100]^3) is argmaxable.
    assert "unargmaxable: 3, 7, 11, 20, 33, 46\n" in done.stdout
    done = subprocess.run([sys.executable, "-m", "unargmax_jax", "check", "--example", "--out", str(tmp_path / "x"),
                           "--domain", "box:1,0"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("unargmax: error: bad domain") and not (tmp_path / "x").exists()
    # The process ends without the interpreter's teardown (cli.exit_now): the exit code of
    # --fail-on, every line printed to a pipe and every report file still arrive.
    done = subprocess.run([sys.executable, "-m", "unargmax_jax", "check", "--example", "--out", str(tmp_path / "f"),
                           "--quiet", "--fail-on", "unargmaxable"], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert done.stdout.rstrip().splitlines()[-2:] == [
        f"report written to {tmp_path / 'f'}: report.json, certificates.npz (evidence), tokens.csv, summary.md, "
        "margins.png", "failing: 7 unargmaxable token(s) (--fail-on unargmaxable)"], done.stdout
    assert main(["verify", str(tmp_path / "f"), "--weights", str(example_head_path())]) == 0


def test_time_limit_leaves_tokens_undecided_and_fail_on_undecided(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["check", "--example", "--max-seconds", "0", "--out", str(out), "--quiet", "--fail-on", "undecided"]) == 1
    printed = capsys.readouterr().out
    assert "undecided token(s) (--fail-on undecided)" in printed
    assert main(["verify", str(out), "--weights", str(example_head_path())]) == 0
    assert "undecided token(s) carry no evidence" in capsys.readouterr().out


# ------------------------------------------------------------ token selection
@pytest.mark.parametrize("flags, expected", [
    (["--tokens", "0-50"], "--tokens '0-50': id 50 is out of range; the head has ids 0..49"),
    (["--tokens", "1;2"], "expected ids and ranges like 0-99,1234"),
    (["--script", "latin"], "--script needs token strings"),
    (["--tokens-regex", "a"], "--tokens-regex needs token strings"),
])
def test_bad_token_selection_exits_2(head_file, tmp_path, capsys, no_engine, flags, expected):
    assert main(["check", str(head_file), "--out", str(tmp_path / "out"), *flags]) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_selected_tokens_with_a_vocabulary(tmp_path, capsys):
    rng = np.random.default_rng(8)
    directory = tmp_path / "model"
    directory.mkdir()
    W = rng.normal(size=(12, 2)).astype(np.float32)
    np.savez(directory / "head.npz", W=W)
    words = ["Ġthe", "Ġдом", "##ing", "42", "Ġcat", "中", "Ġdog", "ёж", "<s>", "Ġa|b", "x", "y"]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["check", str(directory / "head.npz"), "--out", str(out), "--quiet",
                 "--script", "latin", "--tokens-regex", "^Ġ", "--tokens", "0-9"]) == 0
    assert "skipped" in capsys.readouterr().out
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    checked = [t["id"] for t in data["tokens"] if t["verdict"] != "skipped"]
    assert checked == [0, 4, 6, 9]
    assert [t["token"] for t in data["tokens"]] == words
    assert data["head"]["tokens_source"] == str(directory / "vocab.txt")
    assert main(["verify", str(out), "--weights", str(directory / "head.npz")]) == 0


def test_ceiling_flag(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["check", "--example", "--ceiling", "--tokens", "0-12", "--out", str(out), "--quiet", "--verify"]) == 0
    data = json.loads((out / "report.json").read_text())
    with_ceiling = [t for t in data["tokens"] if "ceiling" in t]
    assert [t["id"] for t in with_ceiling] == list(range(13))
    for t in with_ceiling:
        lo, hi = t["ceiling"]
        assert 0 <= lo <= hi <= 1
        if t["verdict"] == "unargmaxable":
            assert hi <= 0.5
    assert main(["verify", str(out), "--weights", str(example_head_path())]) == 0
    assert main(["check", "--example", "--ceiling", "--domain", "free", "--out", str(tmp_path / "f")]) == 2
    assert "--ceiling needs a bounded --domain" in capsys.readouterr().err
    assert main(["check", "--example", "--ceiling-steps", "5", "--out", str(tmp_path / "g")]) == 2
    assert "--ceiling-steps applies only with --ceiling" in capsys.readouterr().err
    assert main(["check", "--example", "--ceiling", "--ceiling-steps", "0", "--out", str(tmp_path / "h")]) == 2
    assert not (tmp_path / "g").exists() and not (tmp_path / "h").exists()


def test_compile_cache_directory_is_filled_and_reused(tmp_path):
    import json
    import subprocess
    import sys

    cache = tmp_path / "xla"
    env = {**os.environ, "UNARGMAX_COMPILE_CACHE": "off", "JAX_PLATFORMS": "cpu"}
    verdicts = []
    for run in range(2):
        out = tmp_path / f"out{run}"
        done = subprocess.run([sys.executable, "-m", "unargmax_jax", "check", "--example", "--out", str(out), "--quiet",
                               "--compile-cache", str(cache)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        verdicts.append([t["verdict"] for t in json.loads((out / "report.json").read_text())["tokens"]])
        assert any(cache.iterdir()), "the first run leaves its compiled kernels in the cache"
    assert verdicts[0] == verdicts[1]
    # off: nothing is written under the cache home.
    home = tmp_path / "home"
    done = subprocess.run([sys.executable, "-m", "unargmax_jax", "check", "--example", "--out", str(tmp_path / "o"),
                           "--quiet"], env={**env, "XDG_CACHE_HOME": str(home)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and not (home / "unargmax_jax").exists()


def test_usage_errors_are_one_line(capsys):
    assert main(["check", "--example", "--bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unargmax: error: unrecognized arguments: --bogus"), err
    assert main(["check", "--example", "--chunk-size"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--chunk-size: expected one argument" in err[0], err


def test_a_closed_stdout_pipe_still_writes_the_report(tmp_path):
    # Regression: `unargmax check ... | head` ended in a BrokenPipeError traceback and no report.
    import subprocess
    import sys

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "unargmax_jax", "check", "--example", "--out", str(out), "--quiet",
                             "--verify"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert (out / "report.json").exists() and (out / "certificates.npz").exists()


def test_dot_algorithm_and_bf16_screen_flags_reach_the_report(head_file, tmp_path, capsys):
    default, chosen = tmp_path / "default", tmp_path / "chosen"
    assert main(["check", str(head_file), "--out", str(default), "--quiet"]) == 0
    assert main(["check", str(head_file), "--out", str(chosen), "--quiet", "--dot-algorithm", "BF16_BF16_F32_X3",
                 "--bf16-screen", "on", "--verify"]) == 0
    first, second = (json.loads((d / "report.json").read_text()) for d in (default, chosen))
    assert (first["settings"]["dot_algorithm"], first["settings"]["bf16_screen"]) == ("F32_F32_F32", False)
    assert (second["settings"]["dot_algorithm"], second["settings"]["bf16_screen"]) == ("BF16_BF16_F32_X3", True)
    assert [t["verdict"] for t in first["tokens"]] == [t["verdict"] for t in second["tokens"]]
    capsys.readouterr()
    assert main(["verify", str(chosen), "--weights", str(head_file)]) == 0


@pytest.mark.parametrize("flags, expected", [
    (["--dot-algorithm", "TF33"], "--dot-algorithm: invalid choice: 'TF33'"),
    (["--bf16-screen", "maybe"], "--bf16-screen: invalid choice: 'maybe'"),
    (["--dot-algorithm", "F64_F64_F64"], "dot algorithm F64_F64_F64 does not fit float32 work"),
])
def test_bad_dot_algorithm_flags_exit_2(head_file, tmp_path, capsys, no_engine, flags, expected):
    assert main(["check", str(head_file), "--out", str(tmp_path / "o"), "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "o").exists()
