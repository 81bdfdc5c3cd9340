"""Hard tokens per second: our batched solver stages vs one HiGHS LP per token.

Usage: python scripts/bench_lp.py [--classes 2000] [--dim 5] [--bias] [--sample 200]

"Hard" tokens are those the screening stage does not decide. Our time is what the
engine spends after screening (ascent + PDHG + rational), measured on a second run so
that compilation is excluded; HiGHS solves the margin LP of DESIGN.md section 2 over
all rows for a random sample of the hard tokens (scipy.optimize.linprog, method
"highs"), extrapolated to all of them. Prints the ratio measured in this one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy.optimize import linprog

from unargmax_jax import domains as dom
from unargmax_jax.engine import check


def highs_margin(W, b, i, lo, hi):
    """m_i* by HiGHS: maximise t s.t. t <= (w_i - w_j).x + b_i - b_j, lo <= x <= hi."""
    C, d = W.shape
    others = np.arange(C) != i
    A = np.hstack([-(W[i] - W[others]), np.ones((C - 1, 1))])
    rhs = b[i] - b[others]
    result = linprog(np.r_[np.zeros(d), -1.0], A_ub=A, b_ub=rhs, bounds=[(lo, hi)] * d + [(None, None)], method="highs")
    return -result.fun


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=5)
    parser.add_argument("--bias", action="store_true", help="add a Gaussian bias")
    parser.add_argument("--sample", type=int, default=200, help="hard tokens solved with HiGHS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--adaptive-step", action="store_true", help="PDLP's adaptive PDHG step size")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    W = rng.normal(size=(args.classes, args.dim)).astype(np.float32)
    b = rng.normal(size=args.classes).astype(np.float32) if args.bias else None
    domain = dom.Box(-100.0, 100.0)

    options = {"pdhg_adaptive_step": args.adaptive_step}
    check(W, b, domain, **options)  # compile
    report = check(W, b, domain, **options)
    hard = np.flatnonzero(report.stage != "screen")
    ours = sum(report.stage_seconds[s] for s in ("ascent", "pdhg", "rational"))
    counts = report.counts()

    sample = rng.choice(hard, size=min(args.sample, hard.size), replace=False) if hard.size else hard
    W64 = W.astype(np.float64)
    b64 = np.zeros(args.classes) if b is None else b.astype(np.float64)
    start = time.perf_counter()
    agree = 0
    for i in sample:
        m = highs_margin(W64, b64, int(i), -100.0, 100.0)
        agree += int((m > 1e-7 and report.verdict[i] == 1) or (m <= 1e-7 and report.verdict[i] == -1))
    highs_per_token = (time.perf_counter() - start) / max(sample.size, 1)

    ours_rate = hard.size / ours if ours > 0 else float("inf")
    highs_rate = 1.0 / highs_per_token if highs_per_token > 0 else float("inf")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()}, python {platform.python_version()}")
    print(f"head: {args.classes} x {args.dim}, bias={args.bias}; verdicts {counts}")
    print(f"hard tokens (not decided by screening): {hard.size}")
    print(f"ours:  {ours_rate:10.1f} hard tokens/s  (ascent+pdhg+rational {ours:.2f}s)")
    print(f"HiGHS: {highs_rate:10.1f} hard tokens/s  (sample of {sample.size}, verdicts agree on {agree})")
    print(f"ratio ours/HiGHS: {ours_rate / highs_rate:.2f}x")


if __name__ == "__main__":
    main()
