"""Stage 1: cheap starting points that already prove most tokens argmaxable.

A token whose row points "outwards" wins at a point along its own direction, so
:math:`x = c + h \\odot w_i / \\|w_i\\|` (scaled to touch the domain's boundary) and the
box vertex :math:`c + h \\odot \\mathrm{sign}(w_i)` decide most tokens of real heads with
one blocked all-pairs product each. The optional braid-reflect steps (after Grivas et
al., 2022) reflect x across the decision boundary of the strongest competitor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from ._shapes import Array, Float, Int

from . import bounds
from . import domains as dom


def starting_points(rows: Float[Array, "n d"], domain: dom.Domain) -> Float[Array, "n m d"]:
    """Candidate points per token: along its own row, the matching box vertex, the centre."""
    tiny = jnp.finfo(rows.dtype).tiny
    if isinstance(domain, dom.Box):
        centre = (domain.lo + domain.hi) / 2
        half = (domain.hi - domain.lo) / 2
        along = rows / jnp.maximum(jnp.max(jnp.abs(rows), axis=1, keepdims=True), tiny)
        candidates = [centre + half * along, centre + half * jnp.sign(rows), jnp.broadcast_to(centre, rows.shape)]
    elif isinstance(domain, dom.Ball):
        along = rows / jnp.maximum(jnp.linalg.norm(rows, axis=1, keepdims=True), tiny)
        candidates = [domain.center + domain.radius * along, jnp.broadcast_to(domain.center, rows.shape)]
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
