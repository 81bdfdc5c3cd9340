"""Stage 1: cheap starting points that already prove most tokens argmaxable.

A token whose row points "outwards" wins at a point along its own direction. Rows of
trained heads share a large common component and are far from isotropic, so the
direction that wins is the whitened one, :math:`v_i = \\Sigma^{-1}(w_i - \\mu)` (row mean
and covariance): in whitened coordinates :math:`u_j = \\Sigma^{-1/2}(w_j - \\mu)` the
logit gap is :math:`(u_i - u_j)^T u_i`, positive for every j unless :math:`u_i` lies
inside the cloud. Points along :math:`v_i` and :math:`w_i` (scaled to touch the domain's
boundary) and the box vertex :math:`c + h \\odot \\mathrm{sign}(w_i)` decide almost every
token of real heads with one blocked all-pairs product each. The optional braid-reflect steps (after Grivas et
al., 2022) reflect x across the decision boundary of the strongest competitor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from .._shapes import Array, Float, Int

from .. import bounds
from .. import domains as dom


def whitening(W, *, block: int = 2048, ridge: float = 1e-3):
    """Row mean and regularised inverse row covariance of W, in float64 on the host.

    :math:`P = (\\Sigma + \\rho\\,\\mathrm{tr}(\\Sigma)/d\\,I)^{-1}`; the ridge keeps P finite
    when C <= d or rows are collinear. Accumulated in row blocks so no float64 copy of W
    is ever made.
    """
    C, d = W.shape
    mean = np.zeros(d)
    for start in range(0, C, block):
        mean += np.asarray(W[start:start + block], np.float64).sum(axis=0)
    mean /= C
    gram = np.zeros((d, d))
    for start in range(0, C, block):
        centred = np.asarray(W[start:start + block], np.float64) - mean
        gram += centred.T @ centred
    cov = gram / C
    scale = np.trace(cov) / d
    if not np.isfinite(scale) or scale <= 0:
        return mean, np.eye(d)
    precision = np.linalg.inv(cov + ridge * scale * np.eye(d))
    return mean, precision / np.max(np.abs(precision))


def whitened_directions(rows: Float[Array, "n d"], mean: Float[Array, " d"],
                        precision: Float[Array, "d d"]) -> Float[Array, "n d"]:
    """:math:`v_i = P(w_i - \\mu)`, the direction along which row i wins in whitened coordinates."""
    return jnp.matmul(rows - mean, precision, precision=jax.lax.Precision.HIGHEST)


def starting_points(rows: Float[Array, "n d"], domain: dom.Domain,
                    directions: Float[Array, "n d"] | None = None) -> Float[Array, "n m d"]:
    """Candidate points per token: along ``directions`` (default its own row), along its own
    row, the matching box vertex, the centre."""
    tiny = jnp.finfo(rows.dtype).tiny
    directions = rows if directions is None else directions
    if isinstance(domain, dom.Box):
        centre = (domain.lo + domain.hi) / 2
        half = (domain.hi - domain.lo) / 2

        def along(v):
            return centre + half * v / jnp.maximum(jnp.max(jnp.abs(v), axis=1, keepdims=True), tiny)

        candidates = [along(directions), along(rows), centre + half * jnp.sign(rows),
                      jnp.broadcast_to(centre, rows.shape)]
    elif isinstance(domain, dom.Ball):
        def along(v):
            return domain.center + domain.radius * v / jnp.maximum(jnp.linalg.norm(v, axis=1, keepdims=True), tiny)

        candidates = [along(directions), along(rows), jnp.broadcast_to(domain.center, rows.shape)]
    else:
        raise TypeError(f"cannot screen on {type(domain).__name__}; resolve Free first")
    return dom.project(domain, jnp.stack(candidates, axis=1))


def braid_reflect(
    W: Float[Array, "c d"],
    b: Float[Array, " c"],
    ids: Int[Array, " n"],
    X: Float[Array, "n d"],
    domain: dom.Domain,
    *,
    steps: int,
) -> Float[Array, "n d"]:
    """Reflect each x across the boundary with its strongest competitor, ``steps`` times.

    .. math:: x \\leftarrow P_X\\big(x - 2\\,\\frac{(w_i - w_j)^T x + b_i - b_j}{\\|w_i - w_j\\|^2}(w_i - w_j)\\big)

    applied only while token i is not the argmax; the best point seen is returned.
    """
    C = W.shape[0]
    own = jax.nn.one_hot(ids, C, dtype=bool)

    def margin_and_rival(x):
        Z = bounds.logits(W, b, x)
        rivals = jnp.where(own, -jnp.inf, Z)
        j = jnp.argmax(rivals, axis=1)
        z_own = jnp.take_along_axis(Z, ids[:, None], axis=1)[:, 0]
        return z_own - jnp.max(rivals, axis=1), j

    def step(_, carry):
        x, best_x, best_m = carry
        m, j = margin_and_rival(x)
        improved = m > best_m
        best_x = jnp.where(improved[:, None], x, best_x)
        best_m = jnp.where(improved, m, best_m)
        direction = W[ids] - W[j]
        norm2 = jnp.maximum(jnp.sum(direction**2, axis=1), jnp.finfo(W.dtype).tiny)
        shift = 2 * (m / norm2)[:, None] * direction
        x = jnp.where((m <= 0)[:, None], dom.project(domain, x - shift), x)
        return x, best_x, best_m

    m0, _ = margin_and_rival(X)
    _, best_x, _ = jax.lax.fori_loop(0, steps, step, (X, X, m0))
    return best_x
