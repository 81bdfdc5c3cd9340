"""A Llama-shaped synthetic head checked on the default accelerator, against its own products.

    scripts/gpu_bench.sh [--shape 128256,4096] [--sample 256] [--cpu-report DIR] [--skip-pads] [--profile N]

Runs from the checkout with what is installed (no network). Prints:

0. every dot algorithm the device accepts, run on adversarial float32 matrices (spread
   exponents, cancellation to the last bit, trained-looking rows) against the exact
   products: the largest error as a fraction of the pad the bounds use for that algorithm
   (at most 1, or the bounds are not rigorous there), and of the IEEE float32 pad (above
   1 means the hardware does not compute IEEE float32 under that name);
1. the device's own all-pairs products W @ W.T (row blocks, reduced on the device so
   only a column of maxima comes back) under ``F32_F32_F32`` and ``BF16_BF16_F32``;
2. ``check(W, b)`` on the device (dot algorithm and bf16 rung as the backend chooses,
   recorded in the report), its time as ratios to both products;
3. the verdicts against a CPU run: a stored CPU report (``--cpu-report``, the output
   directory of a CPU ``unargmax check`` of the same head, saved as .npz) or, by default, a CPU check (``JAX_PLATFORMS=cpu`` subprocess) of
   ``--sample`` random tokens (every row still competes), which takes seconds where the
   whole head would take an hour on CPU.

Exit code 0 when the verdicts agree and every pad holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench import _shape, synthetic_head  # noqa: E402  (the same seeded head as bench.py)


def device_product_seconds(W, preset: str, block: int = 4096) -> float:
    """All-pairs W @ W.T under ``preset`` on the default device, in row blocks (compiled first)."""
    import jax
    import jax.numpy as jnp

    algorithm = getattr(jax.lax.DotAlgorithmPreset, preset)
    Wd = jax.device_put(W)
    block = min(block, W.shape[0])
    product = jax.jit(lambda rows, full: jnp.max(jnp.matmul(rows, full.T, precision=algorithm), axis=1))
    product(Wd[:block], Wd).block_until_ready()
    start = time.perf_counter()
    outs = [product(Wd[s:s + block], Wd) for s in range(0, W.shape[0] - block + 1, block)]
    jax.block_until_ready(outs)
    full_blocks = len(outs) * block
    return (time.perf_counter() - start) * W.shape[0] / full_blocks


def adversarial_pairs(n: int, m: int, seed: int = 0):
    """float32 (m x n, n x m) pairs: spread exponents; cancellation (the second half of each
    row repeats the first against negated columns, nudged by 2^-20); trained-looking rows."""
    rng = np.random.default_rng(seed)
    spread = [(rng.normal(size=s) * np.exp2(rng.integers(-20, 20, s))).astype(np.float32) for s in ((m, n), (n, m))]
    X = (rng.normal(size=(m, n)) * np.exp2(rng.integers(-8, 8, (m, n)))).astype(np.float32)
    half = n // 2
    X[:, half:2 * half] = X[:, :half]
    Y = rng.normal(size=(n, m)).astype(np.float32)
    Y[half:2 * half] = -Y[:half]
    Y[:half] = (Y[:half] * (1 + rng.normal(size=(half, m)) * 2.0 ** -20)).astype(np.float32)
    scales = np.exp(rng.normal(0, 0.7, n))
    rows = (rng.normal(size=(m, n)) * scales + rng.normal(size=n)).astype(np.float32)
    return {"spread": tuple(spread), "cancel": (X, Y), "trained": (rows, rows[::-1].T.copy())}


def pad_check(n: int = 4096, m: int = 256) -> dict:
    """Largest |device product - exact| over the bounds' pad, per dot algorithm the device runs.

    The exact product is the float64 one (products of float32 are exact there) with its own
    summation error, gamma_n(float64) |X||Y|, taken off the allowed error.
    """
    import jax
    import jax.numpy as jnp

    from unargmax_jax import bounds

    ratios, pairs = {}, adversarial_pairs(n, m).values()
    for name, spec in bounds.ALGORITHMS.items():
        if spec.name == "F64_F64_F64":
            continue
        worst = ieee_worst = 0.0
        product = jax.jit(lambda a, b, s=spec: bounds.dot(a, b, s))
        try:
            for X, Y in pairs:
                got = np.asarray(product(jnp.asarray(X), jnp.asarray(Y)), np.float64)
                X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
                magnitude = np.abs(X64) @ np.abs(Y64)
                f64_error = n * 2.0 ** -52 * magnitude
                error = np.maximum(np.abs(got - X64 @ Y64) - f64_error, 0.0)
                flush = bounds.flush_pad(spec, jnp.float32) * (np.abs(X64).sum(1)[:, None] + np.abs(Y64).sum(0)[None, :])
                allowed = (bounds.dot_error(n, jnp.float32, spec) * magnitude + flush
                           + bounds.tiny_pad(n * len(spec.pairs), jnp.float32))
                worst = max(worst, float(np.max(error / allowed)))
                ieee_worst = max(ieee_worst, float(np.max(error / (bounds.gamma(n, jnp.float32) * magnitude + flush))))
        except Exception as refused:  # noqa: BLE001  (a backend may refuse an algorithm)
            print(f"dot algorithm {name}: refused by the device ({type(refused).__name__}: {str(refused)[:120]})")
            continue
        ratios[name] = worst
        print(f"dot algorithm {name}: largest error {worst:.3g} of its pad, {ieee_worst:.3g} of the IEEE float32 pad"
              + ("" if worst <= 1 else "  PAD EXCEEDED"))
    return ratios


def cpu_verdicts(shape, seed: int, ids: np.ndarray) -> np.ndarray | None:
    """Verdicts of ``ids`` from a CPU check of the same seeded head, in a subprocess."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, __file__, "--shape", f"{shape[0]},{shape[1]}", "--seed", str(seed),
               "--cpu-tokens", ",".join(str(int(i)) for i in ids)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        print(f"CPU check failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return np.asarray(json.loads(done.stdout.strip().splitlines()[-1]), np.int8)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=_shape, default=(128256, 4096), help="C,d (default Llama 3 8B's 128256,4096)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", type=int, default=256, help="tokens the CPU check decides for comparison")
    parser.add_argument("--cpu-report", help="a stored CPU report directory of the same head instead of a CPU check")
    parser.add_argument("--skip-pads", action="store_true", help="skip the dot algorithms' pad check")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="run the compiled check under cProfile and print its N costliest functions (own time "
                             "and cumulative): where the host spends a check's time")
    parser.add_argument("--cpu-tokens", help=argparse.SUPPRESS)  # internal: the CPU side
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    import jax

    import unargmax_jax as ua

    W, b, name = synthetic_head(*args.shape, seed=args.seed)
    if args.cpu_tokens is not None:
        ids = np.asarray([int(i) for i in args.cpu_tokens.split(",")])
        report = ua.check(W, b, tokens=ids)
        print(json.dumps(report.verdict[ids].tolist()))
        return 0
    C, d = W.shape
    device = jax.devices()[0]
    print(f"head: {name}, {C} x {d} ({W.nbytes / 2**30:.2f} GiB as float32); device {device.platform} "
          f"({getattr(device, 'device_kind', '?')}), jax {jax.__version__}")
    pads_hold = args.skip_pads or all(r <= 1 for r in pad_check().values())
    flops = 2.0 * C * C * d
    products = {preset: device_product_seconds(W, preset) for preset in ("F32_F32_F32", "BF16_BF16_F32")}
    for preset, seconds in products.items():
        print(f"device all-pairs product {preset}: {seconds:.2f} s ({flops / seconds / 1e12:.1f} TFLOP/s)")
    start = time.perf_counter()
    report = ua.check(W, b, progress=True)
    seconds = time.perf_counter() - start
    print(f"check: {seconds:.1f} s (stages {', '.join(f'{k} {v:.1f}' for k, v in report.stage_seconds.items())}; "
          f"includes compilation); verdicts {report.counts()}; dot algorithm {report.settings['dot_algorithm']}, "
          f"bf16 rung {report.settings['bf16_screen']}")
    for preset, product in products.items():
        print(f"  ratio to the device's {preset} product: {seconds / product:.2f}x")
    if seconds < 120:  # a second run: the kernels compiled, what a user's later checks take
        start = time.perf_counter()
        again = ua.check(W, b)
        compiled = time.perf_counter() - start
        print(f"check again, compiled: {compiled:.1f} s (stages "
              f"{', '.join(f'{k} {v:.1f}' for k, v in again.stage_seconds.items())}); "
              + ", ".join(f"{compiled / p:.2f}x the {n} product" for n, p in products.items())
              + ("" if np.array_equal(again.verdict, report.verdict) else "; VERDICTS DIFFER from the first run"))
    if args.profile:
        profile_check(W, b, args.profile)
    agree = compare(args, report)
    return agree or (0 if pads_hold else 1)


def profile_check(W, b, top: int) -> None:
    """The check once more (compiled) under cProfile: the ``top`` functions by own time and
    by cumulative time. Time spent waiting for the device shows up in the call that blocks
    (``block_until_ready``, ``np.asarray`` of a device array); the rest is host work."""
    import cProfile
    import io
    import pstats

    import unargmax_jax as ua

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    ua.check(W, b)
    profiler.disable()
    print(f"profiled check: {time.perf_counter() - start:.1f} s (cProfile adds to Python-heavy parts)")
    for key in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats(key).print_stats(top)
        lines = text.getvalue().splitlines()
        first = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
        print(f"-- by {key}:")
        print("\n".join(line.replace(str(REPO) + "/", "") for line in lines[first:] if line.strip()))


def compare(args, report) -> int:
    """Verdicts against a stored CPU report or a CPU check of a sample; 0 if they agree."""
    import unargmax_jax as ua

    C = report.verdict.shape[0]
    if args.cpu_report:
        stored = ua.Report.load(args.cpu_report)
        if stored.head.get("sha256") != report.head.get("sha256"):
            print(f"{args.cpu_report}: a report of another head (sha256 differs); expected this synthetic head")
            return 2
        ids, cpu = np.flatnonzero(stored.verdict != 2), stored.verdict
        where = f"stored CPU report {args.cpu_report}"
    else:
        ids = np.sort(np.random.default_rng(args.seed).choice(C, min(args.sample, C), replace=False))
        cpu = cpu_verdicts(args.shape, args.seed, ids)
        where = f"CPU check of {ids.size} random tokens"
        if cpu is None:
            return 1
        cpu_full = np.full(C, 2, np.int8)
        cpu_full[ids] = cpu
        cpu = cpu_full
    differ = np.flatnonzero(report.verdict[ids] != cpu[ids])
    print(f"verdicts against the {where}: {ids.size - differ.size} of {ids.size} identical"
          + (f"; DIFFERENT at {ids[differ][:20].tolist()}" if differ.size else ""))
    return 0 if differ.size == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
