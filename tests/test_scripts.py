"""The benchmark scripts' building blocks run (the full scripts take minutes and are run by hand)."""

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
from helpers import highs_margins

import unargmax_jax as ua
from unargmax_jax.heads import example_head_path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_real_heads_run_one_on_the_example(tmp_path):
    result = _load("check_real_heads").run_one(str(example_head_path()), str(tmp_path / "out"), None)
    assert result["verified"] and result["shape"] == [60, 3]
    assert [i for i, _ in result["unargmaxable"]] == [3, 7, 11, 20, 33, 46, 59]
    assert (tmp_path / "out" / "summary.md").is_file()


def test_bench_published_method_agrees_with_the_engine():
    bench = _load("bench")
    W, b, _ = bench.synthetic_head(300, 3, seed=1)
    report = ua.check(W, b)
    bench._init(W, b)
    for i in range(0, 300, 7):
        _, argmaxable, how, _ = bench._published_one((i, -100.0, 100.0, 60.0))
        assert how != "lp-timeout"
        assert argmaxable == bool(report.verdict[i] == 1), (i, how)
    planted = np.flatnonzero(report.verdict == -1)
    assert planted.size >= 3  # the synthetic head's planted tokens are found


def test_bench_shape_argument_and_synthetic_head_file(tmp_path):
    bench = _load("bench")
    args = bench.parse(["--shape", "300,3", "--skip-published"])
    assert args.shape == (300, 3)
    path, name = bench.head_file(args, tmp_path)
    W, b = bench.load(path)
    W0, b0, _ = bench.synthetic_head(300, 3, seed=0)
    assert np.array_equal(W, W0) and np.array_equal(b, b0) and "synthetic" in name
    import argparse
    import pytest

    with pytest.raises(argparse.ArgumentTypeError, match="expected C,d"):
        bench._shape("300x3")
    with pytest.raises(SystemExit):
        bench.parse(["--repeats", "0"])


def test_bench_first_runs_rounds_each_with_a_fresh_compile_cache(tmp_path):
    bench = _load("bench")
    path, _ = bench.head_file(bench.parse(["--shape", "300,3"]), tmp_path)
    W, b = bench.load(path)
    rounds, report = bench.first_runs(path, tmp_path, W, b, 2)
    assert len(rounds) == 2
    truth = np.where(highs_margins(W, b, -100.0, 100.0) > 0, 1, -1)  # every token decided, as HiGHS says
    for r, (cli, floor, ours, peak, code, verdict, same, own_peak) in enumerate(rounds):
        assert code in (0, 1) and cli > 0 and floor > 0 and ours > 0 and peak > 0
        assert own_peak > 0 or np.isnan(own_peak)  # NaN only where VmHWM cannot be reset
        assert same and np.array_equal(verdict, truth)
        assert any((tmp_path / f"round-{r}" / "xla-cache").iterdir())  # each round compiled into its own cache
        assert (tmp_path / f"round-{r}" / "cli-out" / "report.json").is_file()
    assert np.array_equal(report.verdict, rounds[-1][5])


def test_gpu_bench_cpu_path_on_a_tiny_head(tmp_path):
    """The script's CPU path: device products run, and the verdicts are compared with a
    stored report of the same head (and refused for another head)."""
    import sys

    sys.path.insert(0, str(SCRIPTS))
    gpu = _load("gpu_bench")
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    W = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)  # all argmaxable: screen only
    assert gpu.device_product_seconds(W, "F32_F32_F32", block=16) > 0
    # Every algorithm this backend runs stays within its pad against exact products.
    ratios = gpu.pad_check(n=96, m=8)
    assert "F32_F32_F32" in ratios and all(0 < r <= 1 for r in ratios.values())
    report = ua.check(W)
    assert np.all(report.verdict == 1)
    report.save(tmp_path / "cpu")
    args = gpu.parse(["--cpu-report", str(tmp_path / "cpu")])
    assert gpu.compare(args, report) == 0
    verdict = report.verdict.copy()
    flipped = dataclasses.replace(report, verdict=verdict)
    verdict[0] = -verdict[0]
    assert gpu.compare(args, flipped) == 1
    other = dataclasses.replace(report, head=dict(report.head, sha256="0" * 64))
    assert gpu.compare(args, other) == 2
