"""The benchmark scripts' building blocks run (the full scripts take minutes and are run by hand)."""

import importlib.util
from pathlib import Path

import numpy as np

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
