"""Hard tokens per second: our stages vs HiGHS per token, and the whole check as a user runs it.

Usage: python scripts/bench_lp.py [--classes 2000] [--dim 5] [--bias] [--sample 200]
       python scripts/bench_lp.py --trained [--classes 10000] [--dim 128]

"Hard" tokens are those the screening stage does not decide. Our time is what the
engine spends after screening (ascent + PDHG + basis + rational), measured on a second
run so that compilation is excluded. The yardsticks, on a random sample of the hard
tokens, extrapolated to all of them:

* the published method's LP over all rows (scipy.optimize.linprog, method "highs");
* HiGHS with row generation per token (highspy): start from the 2 (d + 1) strongest
  rivals at the corner sign(w_i) of the box, add the 64 rows most violated at the optimum,
  re-solve from the last basis, until none is.

With ``--trained`` the head is a softmax regression fitted with optax on Zipf-distributed
classes (``unargmax_jax.trained``), with a bias, and the script also times
``unargmax check`` on it in a subprocess (end to end: start-up, loading, every stage,
the report files). Prints the ratios measured in this one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

import highspy
import numpy as np
from scipy.optimize import linprog

from unargmax_jax import domains as dom
from unargmax_jax.engine import check
from unargmax_jax.trained import trained_head


def highs_margin(W, b, i, lo, hi):
    """m_i* by HiGHS: maximise t s.t. t <= (w_i - w_j).x + b_i - b_j, lo <= x <= hi."""
    C, d = W.shape
    others = np.arange(C) != i
    A = np.hstack([-(W[i] - W[others]), np.ones((C - 1, 1))])
    rhs = b[i] - b[others]
    result = linprog(np.r_[np.zeros(d), -1.0], A_ub=A, b_ub=rhs, bounds=[(lo, hi)] * d + [(None, None)], method="highs")
    return -result.fun


def highs_row_generation(W, b, i, lo, hi, *, grow=64):
    """m_i* by HiGHS with row generation (see the module docstring)."""
    C, d = W.shape
    lp = highspy.Highs()
    lp.setOptionValue("output_flag", False)
    inf = highspy.kHighsInf
    lp.addVars(d + 1, np.r_[np.full(d, lo), -inf], np.r_[np.full(d, hi), inf])
    lp.changeColsCost(d + 1, np.arange(d + 1, dtype=np.int32), np.r_[np.zeros(d), -1.0])
    inside = np.zeros(C, bool)
    inside[i] = True

    def add(rows):
        n = rows.size
        A = np.hstack([W[i] - W[rows], -np.ones((n, 1))])
        lp.addRows(n, b[rows] - b[i], np.full(n, inf), n * (d + 1), np.arange(n, dtype=np.int32) * (d + 1),
                   np.tile(np.arange(d + 1, dtype=np.int32), n), A.ravel())
        inside[rows] = True

    corner = np.where(W[i] >= 0, hi, lo)
    gaps = (W[i] - W) @ corner + b[i] - b
    gaps[i] = np.inf
    add(np.argsort(gaps)[: 2 * (d + 1)])
    while True:
        lp.run()
        values = np.asarray(lp.getSolution().col_value)
        x, t = values[:d], values[d]
        gaps = (W[i] - W) @ x + b[i] - b
        violated = np.flatnonzero((gaps < t - 1e-9 * (1 + abs(t))) & ~inside)
        if violated.size == 0:
            return t
        add(violated[np.argsort(gaps[violated])][:grow])


def cli_seconds(W, b, radius: float) -> float:
    """``unargmax check head.npz`` in a subprocess, end to end."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "head.npz")
        np.savez(path, W=W, b=b)
        start = time.perf_counter()
        # Progress bars off (--quiet): the bench prints only its own lines.
        run = subprocess.run([sys.executable, "-m", "unargmax_jax.cli", "check", path, "--out", os.path.join(tmp, "out"),
                              "--domain", f"box:{radius:g}", "--quiet"], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if run.returncode != 0:
            raise SystemExit(f"unargmax check failed (exit {run.returncode}):\n{run.stderr}")
        return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=None, help="default 2000 (10000 with --trained)")
    parser.add_argument("--dim", type=int, default=None, help="default 5 (128 with --trained)")
    parser.add_argument("--bias", action="store_true", help="add a Gaussian bias")
    parser.add_argument("--trained", action="store_true", help="a head trained on Zipf classes, with a bias")
    parser.add_argument("--sample", type=int, default=200, help="hard tokens solved with HiGHS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--adaptive-step", action="store_true", help="PDLP's adaptive PDHG step size")
    parser.add_argument("--radius", type=float, default=100.0, help="the box [-R, R]^d (default 100)")
    parser.add_argument("--skip-all-rows", action="store_true",
                        help="no HiGHS LP over all rows (minutes per token on large heads)")
    parser.add_argument("--skip-warm", action="store_true", help="one check, compilation included (large heads)")
    parser.add_argument("--skip-cli", action="store_true", help="no end-to-end CLI run")
    args = parser.parse_args()
    classes = args.classes or (10000 if args.trained else 2000)
    dim = args.dim or (128 if args.trained else 5)

    rng = np.random.default_rng(args.seed)
    if args.trained:
        W, b = trained_head(classes, dim, seed=args.seed)
    else:
        W = rng.normal(size=(classes, dim)).astype(np.float32)
        b = rng.normal(size=classes).astype(np.float32) if args.bias else None
    R = args.radius
    domain = dom.Box(-R, R)

    options = {"pdhg_adaptive_step": args.adaptive_step}
    if not args.skip_warm:
        check(W, b, domain, **options)  # compile
    report = check(W, b, domain, **options)
    hard = np.flatnonzero(report.stage != "screen")
    later = ("ascent", "pdhg", "basis", "rational")
    ours = sum(report.stage_seconds.get(s, 0.0) for s in later)
    counts = report.counts()

    sample = rng.choice(hard, size=min(args.sample, hard.size), replace=False) if hard.size else hard
    W64 = W.astype(np.float64)
    b64 = np.zeros(classes) if b is None else b.astype(np.float64)
    rates = {}
    solvers = (("HiGHS, all rows", highs_margin), ("HiGHS, row generation", highs_row_generation))
    for name, solve in solvers[1:] if args.skip_all_rows else solvers:
        start = time.perf_counter()
        agree = 0
        for i in sample:
            m = solve(W64, b64, int(i), -R, R)
            agree += int((m > 1e-7 and report.verdict[i] == 1) or (m <= 1e-7 and report.verdict[i] == -1))
        per_token = (time.perf_counter() - start) / max(sample.size, 1)
        rates[name] = (1.0 / per_token if per_token > 0 else float("inf"), agree)

    ours_rate = hard.size / ours if ours > 0 else float("inf")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()}, python {platform.python_version()}")
    kind = "trained (Zipf classes)" if args.trained else "Gaussian"
    print(f"head: {classes} x {dim} {kind}, bias={b is not None}, box [-{R:g}, {R:g}]; verdicts {counts}")
    print(f"hard tokens (not decided by screening): {hard.size}")
    seconds = ", ".join(f"{s} {report.stage_seconds.get(s, 0.0):.2f}s" for s in later)
    print(f"ours:  {ours_rate:10.1f} hard tokens/s  ({seconds}); check in-process {report.seconds:.1f}s")
    for name, (rate, agree) in rates.items():
        print(f"{name}: {rate:10.1f} hard tokens/s  (sample of {sample.size}, verdicts agree on {agree}); "
              f"ours / this: {ours_rate / rate:.1f}x")
    if args.trained and not args.skip_cli:
        print(f"unargmax check, end to end (subprocess): {cli_seconds(W, b, R):.1f}s")


if __name__ == "__main__":
    main()
