"""The screen's whitening: the row mean and a regularised inverse row covariance.

:math:`P = (\\Sigma + \\rho\\,\\mathrm{tr}(\\Sigma)/d\\,I)^{-1}` (scaled to a largest entry of 1)
turns each row into the direction along which its token wins in whitened coordinates.
No bound rests on P (the symmetric pass pads for the P it is given), so it is estimated
from at most 16 d evenly spaced rows: on the host in NumPy (CPU), or on the accelerator
where the head already is (on an H200's host the NumPy estimate took 12 s of a 29 s check
of a 128256 x 4096 head).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

RIDGE = 1e-3
ROWS_PER_DIM = 16


def sample_rows(C: int, d: int, rows_per_dim: int = ROWS_PER_DIM) -> np.ndarray:
    """The rows the estimate reads: all of them, or ``rows_per_dim`` x d evenly spaced."""
    return np.arange(C) if C <= rows_per_dim * d else np.linspace(0, C - 1, rows_per_dim * d).astype(np.int64)


def on_host(W, *, block: int = 2048, ridge: float = RIDGE, rows_per_dim: int = ROWS_PER_DIM):
    """Row mean and regularised inverse row covariance of W, estimated on the host.

    :math:`P = (\\Sigma + \\rho\\,\\mathrm{tr}(\\Sigma)/d\\,I)^{-1}`; the ridge keeps P finite
    when C <= d or rows are collinear. P only chooses the screen's starting directions (no
    bound rests on it), so it is estimated from at most ``rows_per_dim`` x d evenly spaced
    rows, in float32 row blocks (mean and inverse in float64): on a 128256 x 4096 head the
    float64 Gram matrix of every row would be about 7% of the all-pairs product's FLOPs
    (an estimate from the counts, not a measurement).
    """
    C, d = W.shape
    rows = sample_rows(C, d, rows_per_dim)
    n = rows.size
    mean = np.zeros(d)
    for start in range(0, n, block):
        mean += np.asarray(W[rows[start:start + block]], np.float64).sum(axis=0)
    mean /= n
    gram = np.zeros((d, d))
    for start in range(0, n, block):
        centred = (np.asarray(W[rows[start:start + block]], np.float64) - mean).astype(np.float32)
        gram += centred.T @ centred
    cov = gram / n
    scale = np.trace(cov) / d
    if not np.isfinite(scale) or scale <= 0:
        return mean, np.eye(d)
    precision = np.linalg.inv(cov + ridge * scale * np.eye(d))
    return mean, precision / np.max(np.abs(precision))


def on_device(W: jax.Array, *, block: int = 4096, ridge: float = RIDGE,
              rows_per_dim: int = ROWS_PER_DIM) -> tuple[jax.Array, jax.Array]:
    """:func:`on_host`'s estimate from the head on its device, in its dtype (the row blocks'
    Gram matrices summed by the device, the inverse there too); it stays there."""
    C, d = W.shape
    rows = sample_rows(C, d, rows_per_dim)
    padded = np.concatenate([rows, np.full(-rows.size % block, -1)]).reshape(-1, block)
    return _device_estimate(W, jnp.asarray(padded, jnp.int32), jnp.asarray(rows.size, W.dtype), ridge)


@jax.jit
def _device_estimate(W, blocks, n, ridge: float):
    """blocks: (m, block) row ids, -1 past the n real ones (they add nothing). n is traced:
    a constant divisor becomes a multiplication by its rounded reciprocal (a mean of equal
    rows would not be that row)."""
    d = W.shape[1]
    highest = jax.lax.Precision.HIGHEST

    def rows_of(ids):
        return jnp.where((ids >= 0)[:, None], W[jnp.maximum(ids, 0)], 0)

    mean = jax.lax.map(lambda ids: jnp.sum(rows_of(ids), axis=0), blocks).sum(axis=0) / n

    def gram_of(ids):
        centred = jnp.where((ids >= 0)[:, None], rows_of(ids) - mean, 0)
        return jnp.matmul(centred.T, centred, precision=highest)

    cov = jax.lax.map(gram_of, blocks).sum(axis=0) / n
    scale = jnp.trace(cov) / d
    usable = jnp.isfinite(scale) & (scale > 0)
    precision = jnp.linalg.inv(cov + jnp.where(usable, ridge * scale, 1.0) * jnp.eye(d, dtype=W.dtype))
    precision = precision / jnp.max(jnp.abs(precision))
    return mean, jnp.where(usable & jnp.all(jnp.isfinite(precision)), precision, jnp.eye(d, dtype=W.dtype))
