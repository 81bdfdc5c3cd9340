"""Create the bundled example head ``unargmax_jax/data/example_head.npz``, byte for byte.

60 tokens, 3 features, a bias (W and b float32). Small enough to check in seconds, built
to show every kind of verdict on the default domain [-100, 100]^3:

* 53 rows on a sphere of radius 2 (seeded Gaussian directions, no two closer than 0.3
  rad), biases in [-1, 1]: all argmaxable;
* token 7 = token 3 (row and bias): an exact tie, both unargmaxable (``--ties first``
  makes token 3 argmaxable);
* token 11 = midpoint of tokens 4 and 5 (row and bias; 4 and 5 are nearest neighbours
  with bias 2): margin exactly 0, only exact arithmetic can prove it unargmaxable;
* token 20: a zero row with bias -2: unargmaxable;
* token 33 = (w_0 + w_1 + w_2) / 4 with bias -1.5, token 46 = 3/4 w_8 with bias -0.5:
  inside the hull with too little bias: unargmaxable (certificates);
* token 50: a zero row with the largest bias, 3: inside the hull but argmaxable near x = 0;
* token 59 = 9/8 w_23 with bias b_23 - 48: beats token 23 only where w_23 . x > 384,
  which is outside [-100, 100]^3: unargmaxable there, argmaxable on ``box:1000``/``free``.

So on the default domain 7 tokens are unargmaxable: 3, 7, 11, 20, 33, 46, 59. Every
value is a small integer times a power of two, so midpoints and fractions are exact in
float32. The zip members carry a fixed timestamp, so reruns give identical bytes.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

C, D, RADIUS = 60, 3, 2.0
PLANTED = (7, 11, 20, 33, 46, 50, 59)  # rows that are not on the sphere
UNARGMAXABLE = (3, 7, 11, 20, 33, 46, 59)  # on the default box [-100, 100]^3
OUT = Path(__file__).resolve().parent.parent / "unargmax_jax" / "data" / "example_head.npz"


def sphere_rows(rng: np.random.Generator, n: int, min_angle: float) -> np.ndarray:
    """n Gaussian directions, rejecting any within ``min_angle`` of an earlier one."""
    rows: list[np.ndarray] = []
    while len(rows) < n:
        u = rng.normal(size=D)
        u /= np.linalg.norm(u)
        if all(np.dot(u, v) < np.cos(min_angle) for v in rows):
            rows.append(u)
    return np.array(rows)


def build() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2022)
    on_sphere = [i for i in range(C) if i not in PLANTED]
    W = np.zeros((C, D))
    b = np.zeros(C)
    # Multiples of 1/64 (rows) and 1/16 (biases): exact in float32, and so are the
    # midpoint (1/128), quarters (1/256) and 9/8 (1/512) below.
    W[on_sphere] = np.round(sphere_rows(rng, len(on_sphere), 0.3) * RADIUS * 64) / 64
    b[on_sphere] = np.round(rng.uniform(-1, 1, size=len(on_sphere)) * 16) / 16
    # Make token 5 the nearest neighbour of token 4 (swap rows), and give both bias 2.
    others = [i for i in on_sphere if i not in (4, 5, 3)]
    nearest = max(others, key=lambda j: np.dot(W[4], W[j]))
    W[[5, nearest]] = W[[nearest, 5]]
    b[4] = b[5] = 2.0
    W[7], b[7] = W[3], b[3]  # exact tie
    W[11], b[11] = (W[4] + W[5]) / 2, (b[4] + b[5]) / 2  # exact midpoint: margin 0
    W[20], b[20] = 0.0, -2.0  # zero row, low bias
    W[33], b[33] = (W[0] + W[1] + W[2]) / 4, -1.5  # inside the hull
    W[46], b[46] = 0.75 * W[8], -0.5  # inside the hull
    W[50], b[50] = 0.0, 3.0  # zero row, largest bias: wins at x = 0
    W[59], b[59] = 1.125 * W[23], b[23] - 48.0  # wins only outside the box
    W32, b32 = W.astype(np.float32), b.astype(np.float32)
    if not (np.array_equal(W32, W) and np.array_equal(b32, b)):
        raise RuntimeError("example head is not exact in float32")
    return W32, b32


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` but with fixed zip timestamps, so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, buffer.getvalue())


def main() -> None:
    W, b = build()
    write_npz(OUT, {"W": W, "b": b})
    print(f"wrote {OUT}: {C} tokens x {D} features with bias; planted unargmaxable: {list(UNARGMAXABLE)}")


if __name__ == "__main__":
    main()
