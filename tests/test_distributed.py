"""Multi-host checks: token shares, report merging, and a real 2-process jax.distributed job
on localhost (gloo collectives on CPU), compared with a one-process check."""

import dataclasses
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unargmax_jax as ua
from unargmax_jax import domains as dom
from unargmax_jax.ceiling import ceilings
from unargmax_jax.distributed import decode_report, encode_report, merge_reports, token_share


def _head(seed=7, C=600, d=4):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(C, d)).astype(np.float32)
    b = rng.normal(size=C).astype(np.float32)
    W[5], b[5] = W[9], b[9]  # an exact tie
    return W, b


@given(st.lists(st.booleans(), min_size=1, max_size=60), st.integers(1, 7))
@settings(max_examples=60, deadline=None)
def test_token_shares_partition_the_selection(mask, count):
    selected = np.array(mask)
    shares = [token_share(selected, k, count) for k in range(count)]
    total = np.sum(shares, axis=0)
    assert np.array_equal(total, selected.astype(int))  # disjoint and covering
    sizes = [s.sum() for s in shares]
    assert max(sizes) - min(sizes) <= 1  # balanced


def test_token_share_rejects_a_bad_index():
    with pytest.raises(ValueError, match="process_index"):
        token_share(np.ones(5, bool), 3, 3)


def _assert_same_decisions(merged, full, *, same_evidence=True):
    """Same verdicts and evidence kinds; with ``same_evidence`` (same device layout) the
    same stages and certificates too."""
    assert np.array_equal(merged.verdict, full.verdict)
    assert merged.twins == full.twins
    assert np.array_equal(merged.witness_ids, full.witness_ids)
    assert np.array_equal(merged.certificate_ids, full.certificate_ids)
    if not same_evidence:
        return
    assert np.array_equal(merged.stage, full.stage)
    for i in full.certificate_ids:
        (s1, w1), (s2, w2) = full.certificate(i), merged.certificate(i)
        assert np.array_equal(s1, s2) and np.allclose(w1, w2, rtol=1e-5, atol=1e-7)


def test_merged_shares_equal_one_check_and_verify():
    W, b = _head()
    full = ua.check(W, b, chunk_size=64)
    assert full.counts()["unargmaxable"] > 0 and full.counts()["argmaxable"] > 0
    selected = np.ones(W.shape[0], bool)
    parts = [ua.check(W, b, chunk_size=64, tokens=token_share(selected, k, 3)) for k in range(3)]
    merged = merge_reports([decode_report(encode_report(p)) for p in parts])  # as sent between hosts
    _assert_same_decisions(merged, full)
    assert ua.verify(merged, W, b).ok  # the independent checker accepts the merged evidence


def test_encoding_round_trips_every_field():
    W, b = _head(seed=3, C=80, d=3)
    report = ua.check(W, b, ua.Ball(0.0, 2.0), tokens=np.arange(40))
    report.add_ceilings(ceilings(W, b, ua.Ball(0.0, 2.0), tokens=np.arange(4), steps=20))
    back = decode_report(encode_report(report))
    for name in ("verdict", "lower", "upper", "stage", "witness_ids", "witnesses", "certificate_ids",
                 "certificate_offsets", "certificate_support", "certificate_weights", "certificate_rational",
                 "ceiling_ids", "ceiling_lower", "ceiling_upper", "ceiling_points"):
        assert np.array_equal(getattr(back, name), getattr(report, name)), name
    assert back.head == report.head and back.twins == report.twins and back.notes == report.notes
    assert dom.to_json(back.domain) == dom.to_json(report.domain) and back.settings == report.settings


def test_merge_refuses_parts_of_different_checks():
    W, b = _head()  # the shapes of the tests above: nothing new to compile
    a = ua.check(W, b, chunk_size=64, tokens=np.arange(0, 60))
    with pytest.raises(ValueError, match="decided by both"):
        merge_reports([a, ua.check(W, b, chunk_size=64, tokens=np.arange(50, 120))])
    with pytest.raises(ValueError, match="sha256"):
        merge_reports([a, ua.check(W * 2, b, chunk_size=64, tokens=np.arange(60, 120))])
    rest = ua.check(W, b, chunk_size=64, seed=1, tokens=np.arange(60, 120))
    with pytest.raises(ValueError, match="settings"):
        merge_reports([a, rest])
    # Another domain (a ball check of its own would only compile the ball's kernels again).
    other = dataclasses.replace(rest, domain=ua.Ball(0.0, 1.0), settings=a.settings)
    with pytest.raises(ValueError, match="domain"):
        merge_reports([a, other])
    with pytest.raises(ValueError, match="at least one"):
        merge_reports([])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["UNARGMAX_COMPILE_CACHE"] = "off"
    return env


def _run_job(commands, timeout=600):
    """Start one subprocess per command (the processes of one job); wait for all."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for cmd, env in commands]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def test_two_process_cli_job_equals_one_process_run(tmp_path):
    W, b = _head()
    head = tmp_path / "head.npz"
    np.savez(head, W=W, b=b)
    port = _free_port()
    out = tmp_path / "out"
    cli = [sys.executable, "-m", "unargmax_jax", "check", str(head), "--out", str(out), "--quiet", "--chunk-size", "64",
           "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    # Two devices per process: each process also shards its share over its local devices.
    results = _run_job([(cli + ["--process-id", str(k)], _env(2)) for k in range(2)])
    for code, stdout, stderr in results:
        assert code == 0, stderr[-3000:]
    assert "process 1 of 2: done" in results[1][1]
    assert not list(out.glob(".unargmax-partial*"))  # both processes removed their partial state

    merged = ua.Report.load(out)
    full = ua.check(W, b, chunk_size=64)
    # Sharded batches round differently, so a token may be settled by a later stage.
    _assert_same_decisions(merged, full, same_evidence=False)
    assert "checked by 2 processes" in " ".join(merged.notes)
    data = json.loads((out / "report.json").read_text())
    assert data["summary"]["skipped"] == 0
    verified = subprocess.run([sys.executable, "-m", "unargmax_jax", "verify", str(out), "--weights", str(head)],
                              capture_output=True, text=True, env=_env(1), timeout=300)
    assert verified.returncode == 0, verified.stdout + verified.stderr


API_PROBE = r"""
import json, sys
import numpy as np, jax
from unargmax_jax import distributed
index, count = distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
W = np.array(json.loads(sys.argv[3]), np.float32)
report = distributed.check_distributed(W, None, tokens=[1])  # one token: process 1 has no share
print(json.dumps({"index": index, "verdict": report.verdict.tolist(), "ok": bool(distributed.__name__)}))
"""


def test_api_job_with_fewer_tokens_than_processes():
    W = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [0.2, 0.2]], np.float32)  # token 3 is inside the hull
    port = _free_port()
    results = _run_job([([sys.executable, "-c", API_PROBE, f"127.0.0.1:{port}", str(k), json.dumps(W.tolist())],
                         _env(1)) for k in range(2)])
    for code, stdout, stderr in results:
        assert code == 0, stderr[-3000:]
    outputs = [json.loads(stdout.strip().splitlines()[-1]) for _, stdout, _ in results]
    # Both processes get the merged report: token 1 decided (argmaxable), the rest skipped.
    expected = ua.check(W, None, ua.Box(-100.0, 100.0), tokens=[1]).verdict.tolist()
    assert expected == [2, 1, 2, 2]
    assert [o["verdict"] for o in outputs] == [expected, expected]


def test_cli_refuses_a_bad_process_id(tmp_path, capsys):
    from unargmax_jax.cli import main

    code = main(["check", "--example", "--out", str(tmp_path / "o"), "--num-processes", "2", "--process-id", "2"])
    assert code == 2
    assert "--process-id: expected 0..1, got 2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_distributed_outside_a_cluster_says_what_is_missing(tmp_path, capsys, monkeypatch):
    from unargmax_jax.cli import main

    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_", "TPU_", "JAX_COORDINATOR")):
            monkeypatch.delenv(name)
    code = main(["check", "--example", "--out", str(tmp_path / "o"), "--distributed"])
    assert code == 2
    err = capsys.readouterr().err
    assert "could not join the distributed job" in err and "coordinator" in err
    assert not (tmp_path / "o").exists()
