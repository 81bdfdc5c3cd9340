"""Create the bundled example head unargmax_jax/data/example_head.npz (deterministic).

A 3-feature head with 60 classes and a bias, small enough to check in seconds and built
to show every kind of verdict: Gaussian rows (the bias pushes some inside the hull of
the others: unargmaxable), one exact duplicate (a tie), and one row and bias at the
exact midpoint of two others (margin exactly 0: proved in rational arithmetic).
"""

from pathlib import Path

import numpy as np


def main() -> None:
    rng = np.random.default_rng(2022)
    C, d = 60, 3
    # Multiples of 1/64 keep the midpoint exact in float32.
    W = np.round(rng.normal(size=(C, d)) * 64) / 64
    b = np.round(rng.normal(size=C) * 16) / 16 - 0.5
    W[7], b[7] = W[3], b[3]  # exact duplicate of token 3
    W[11] = (W[4] + W[5]) / 2  # exact midpoint of tokens 4 and 5 ...
    b[11] = (b[4] + b[5]) / 2  # ... with the midpoint bias
    out = Path(__file__).resolve().parent.parent / "unargmax_jax" / "data" / "example_head.npz"
    np.savez(out, W=W.astype(np.float32), b=b.astype(np.float32))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
