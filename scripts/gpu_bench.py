"""A Llama-shaped synthetic head checked on the default accelerator, against its own products.

    scripts/gpu_bench.sh [--shape 128256,4096] [--sample 256] [--cpu-report DIR]

Runs from the checkout with what is installed (no network). Prints:

1. the device's own all-pairs products W @ W.T (row blocks, reduced on the device so
   only a column of maxima comes back) under ``F32_F32_F32`` and ``BF16_BF16_F32``;
2. ``check(W, b)`` on the device (dot algorithm and bf16 rung as the backend chooses,
   recorded in the report), its time as ratios to both products;
3. the verdicts against a CPU run: a stored CPU report (``--cpu-report``, the output
   directory of a CPU ``unargmax check`` of the same head, saved as .npz) or, by default, a CPU check (``JAX_PLATFORMS=cpu`` subprocess) of
   ``--sample`` random tokens (every row still competes), which takes seconds where the
   whole head would take an hour on CPU.

Exit code 0 when the verdicts agree, 1 when they differ.
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
    flops = 2.0 * C * C * d
    products = {preset: device_product_seconds(W, preset) for preset in ("F32_F32_F32", "BF16_BF16_F32")}
    for preset, seconds in products.items():
        print(f"device all-pairs product {preset}: {seconds:.2f} s ({flops / seconds / 1e12:.1f} TFLOP/s)")
    start = time.perf_counter()
    report = ua.check(W, b)
    seconds = time.perf_counter() - start
    print(f"check: {seconds:.1f} s (stages {', '.join(f'{k} {v:.1f}' for k, v in report.stage_seconds.items())}; "
          f"includes compilation); verdicts {report.counts()}; dot algorithm {report.settings['dot_algorithm']}, "
          f"bf16 rung {report.settings['bf16_screen']}")
    for preset, product in products.items():
        print(f"  ratio to the device's {preset} product: {seconds / product:.2f}x")
    return compare(args, report)


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
