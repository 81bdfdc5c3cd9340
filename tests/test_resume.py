"""Interrupted runs resume: a check killed with SIGKILL and run again gives the uninterrupted report."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

import unargmax_jax as ua
from unargmax_jax.resume import Checkpoint


def _head(path, C=1200, d=6, seed=11):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(C, d)).astype(np.float32)
    b = rng.normal(size=C).astype(np.float32)
    W[7], b[7] = W[3], b[3]  # a tie
    np.savez(path, W=W, b=b)
    return W, b


def _tokens(directory):
    data = json.loads((directory / "report.json").read_text())
    return [(t["verdict"], t["lower"], t["upper"], t["stage"]) for t in data["tokens"]]


def test_killed_run_resumes_to_the_same_report(tmp_path):
    head = tmp_path / "head.npz"
    _head(head)
    command = [sys.executable, "-m", "unargmax_jax", "check", str(head), "--quiet", "--chunk-size", "16"]
    whole = tmp_path / "whole"
    subprocess.run(command + ["--out", str(whole)], check=True, capture_output=True, timeout=900)
    command += ["--checkpoint-seconds", "0"]  # the run to kill saves after every chunk

    cut = tmp_path / "cut"
    partial = cut / ".unargmax-partial.npz"
    process = subprocess.Popen(command + ["--out", str(cut)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    saves = 0
    last = None
    while time.monotonic() < deadline and process.poll() is None:
        if partial.exists() and partial.stat().st_mtime_ns != last:
            last, saves = partial.stat().st_mtime_ns, saves + 1
            if saves >= 3:  # a few chunks into the screen
                break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed; make the head larger"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert partial.exists() and not (cut / "report.json").exists()

    done = subprocess.run(command + ["--out", str(cut)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert _tokens(cut) == _tokens(whole)
    assert not partial.exists()  # cleared once the report is written
    W, b = np.load(head)["W"], np.load(head)["b"]
    assert ua.verify(ua.Report.load(cut), W, b).ok


def test_every_phase_resumes_identically(tmp_path):
    """Snapshots taken at every phase and chunk, each resumed in-process, give the same report."""
    rng = np.random.default_rng(2)
    W = rng.normal(size=(300, 3)).astype(np.float32)
    b = rng.normal(size=300).astype(np.float32)
    reference = ua.check(W, b, chunk_size=32)
    saved = []
    original_save = Checkpoint.save

    def recording_save(self, phase, position, todo, state):
        original_save(self, phase, position, todo, state)
        copy = tmp_path / f"snap{len(saved)}.npz"
        copy.write_bytes(self.path.read_bytes())
        saved.append((phase, position, copy))

    path = tmp_path / "partial.npz"
    try:
        Checkpoint.save = recording_save
        first = ua.check(W, b, chunk_size=32, checkpoint=path, checkpoint_seconds=0.0)
    finally:
        Checkpoint.save = original_save
    np.testing.assert_array_equal(first.verdict, reference.verdict)
    phases = {phase for phase, _, _ in saved}
    assert {"screen", "top", "ascent", "pdhg", "rational"} <= phases
    # Every phase at its first, middle and last snapshot (the screens save one per chunk;
    # resuming from all 50-odd is what made this test take minutes).
    by_phase = {}
    for snapshot in saved:
        by_phase.setdefault(snapshot[0], []).append(snapshot)
    chosen = {id(s): s for group in by_phase.values() for s in (group[0], group[len(group) // 2], group[-1])}
    for phase, position, copy in chosen.values():
        path.write_bytes(copy.read_bytes())
        resumed = ua.check(W, b, chunk_size=32, checkpoint=path, checkpoint_seconds=1e9)
        for name in ("verdict", "lower", "upper", "stage"):
            np.testing.assert_array_equal(getattr(resumed, name), getattr(reference, name), err_msg=f"{phase} {position}")
        np.testing.assert_array_equal(resumed.witnesses, reference.witnesses)
        np.testing.assert_array_equal(resumed.certificate_weights, reference.certificate_weights)


def test_a_snapshot_of_another_run_is_ignored(tmp_path):
    rng = np.random.default_rng(3)
    W = rng.normal(size=(50, 2)).astype(np.float32)
    path = tmp_path / "partial.npz"
    ua.check(W, None, checkpoint=path, checkpoint_seconds=0.0)
    other = ua.check(W * 2, None, checkpoint=path)  # another head: starts afresh
    np.testing.assert_array_equal(other.verdict, ua.check(W * 2, None).verdict)
    path.write_bytes(b"garbage")
    assert ua.check(W, None, checkpoint=path).counts()["undecided"] == 0


def test_a_stage_start_saves_only_when_a_snapshot_is_due(tmp_path):
    """Regression: every stage start used to save (a second per stage for a 50k-token head)."""
    from unargmax_jax.resume import Phases
    from unargmax_jax.solve.evidence import new_evidence

    class Silent:
        def note(self, text):
            raise AssertionError(text)

    evidence = new_evidence(np.ones(5, bool), 3, np.float32)
    todo = np.arange(5)
    late = Phases(Checkpoint(tmp_path / "late.npz", "key", every=3600.0), evidence, Silent())
    assert late.begin("screen", todo) == (todo, 0) and not (tmp_path / "late.npz").exists()
    due = Phases(Checkpoint(tmp_path / "due.npz", "key", every=0.0), evidence, Silent())
    assert due.begin("screen 2", todo) == (todo, 0)
    assert Checkpoint(tmp_path / "due.npz", "key").load()["phase"] == "screen 2"


def test_the_head_is_hashed_once_for_the_checkpoint_and_the_report(tmp_path, monkeypatch):
    """Regression: a check with a checkpoint hashed the head twice (its key, then the
    report's ``head.sha256``), each a float64 pass over the head (12 s at 128256 x 4096)."""
    import hashlib

    from unargmax_jax import engine, report as report_module

    rng = np.random.default_rng(2)
    W, b = rng.normal(size=(300, 5)).astype(np.float32), rng.normal(size=300).astype(np.float32)
    calls = []
    hash_head = engine.head_sha256
    for module in (engine, report_module):
        monkeypatch.setattr(module, "head_sha256", lambda *a: calls.append(1) or hash_head(*a))
    report = ua.check(W, b, checkpoint=tmp_path / "partial.npz")
    assert len(calls) == 1
    truth = hashlib.sha256(b"W(300, 5)" + W.astype(np.float64).tobytes() + b"b(300,)" + b.astype(np.float64).tobytes())
    assert report.head["sha256"] == truth.hexdigest()
