"""Rigorous margin bounds for a chunk of tokens: L(x) from witnesses, U(lam) from certificates.

For token i, any x in X gives :math:`L_i(x) = \\min_{j \\ne i} z_i(x) - z_j(x) \\le m_i^*` and
any lam >= 0 with sum s > 0 gives
:math:`s\\,m_i^* \\le U_i(\\lambda) = s b_i - \\lambda^T b + \\sigma_X(s w_i - W^T \\lambda)`.
Both are computed in floating point and then padded by a bound on their rounding
error (DESIGN.md section 6, :math:`\\gamma_n = n u / (1 - n u)`), so ``L_rig > 0``
proves argmaxable and ``U_rig <= 0`` proves unargmaxable. The bounds hold for any
summation order, provided products run at ``Precision.HIGHEST``. Every gamma carries
two extra units so that rounding the user's weights to the working dtype (float64
weights checked in float32) is covered too: the bounds are about the stored values.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from ._shapes import Array, Float, Int

from . import domains as dom

HIGHEST = jax.lax.Precision.HIGHEST


def gamma(n: int, dtype) -> float:
    """:math:`\\gamma_n = n u / (1 - n u)`, doubled so the pad's own rounding is covered."""
    u = float(jnp.finfo(dtype).eps) / 2
    return 2.0 * n * u / (1.0 - n * u)


def tiny_pad(n: int, dtype) -> float:
    """Absolute pad for underflow (XLA on CPU may flush subnormals to zero)."""
    return 4.0 * (n + 4) * float(jnp.finfo(dtype).tiny)


class WitnessBounds(NamedTuple):
    """Full-head evaluation of a chunk of witnesses."""

    lower: Float[Array, " b"]  # rigorous lower bound on the margin at x
    margin: Float[Array, " b"]  # floating-point margin at x (unpadded)
    top: Int[Array, "b k"]  # the k strongest competitors at x (ids into the head)
    rival: Int[Array, " b"]  # the strongest competitor at x


def logits(W: Float[Array, "c d"], b: Float[Array, " c"], X: Float[Array, "n d"]) -> Float[Array, "n c"]:
    """:math:`z(x) = W x + b` for a batch of points, one product at full precision."""
    return jnp.matmul(X, W.T, precision=HIGHEST) + b


def _rival_logits(W, b, ids, X):
    """Logits with each token's own entry set to -inf, and the own logit.

    The mask is a comparison with a column iota rather than a scatter, so XLA fuses it
    into the reductions that follow instead of writing a masked copy of the block. The
    own logit is its own small product: gathering it from the block would make XLA write
    the block out before reducing it. (The two round differently; the pad covers each.)
    """
    Z = logits(W, b, X)
    own = jnp.arange(W.shape[0])[None, :] == ids[:, None]
    z_own = jnp.einsum("nd,nd->n", W[ids], X, precision=HIGHEST) + b[ids]
    return jnp.where(own, -jnp.inf, Z), z_own


def witness_bounds(
    W: Float[Array, "c d"],
    b: Float[Array, " c"],
    row_norms: Float[Array, " c"],
    ids: Int[Array, " n"],
    X: Float[Array, "n d"],
    *,
    num_top: int,
) -> WitnessBounds:
    r"""Rigorous :math:`L_i(x_i)` for each (token, point) pair against all C rows.

    The rounding pad bounds every row at once with
    :math:`|w_j|^T |x| \le \max_j \|w_j\|_2 \|x\|_2`: it costs one reduction instead
    of a second product, and tokens it cannot settle go on to later stages.

    Args:
        W, b: the head (b zeros when the head has no bias).
        row_norms: :math:`\|w_j\|_2` for every row.
        ids: token ids of the chunk.
        X: one point per token.
        num_top: how many strongest competitors to return per token (0 for none).
    """
    dtype = W.dtype
    d = W.shape[1]
    rivals, z_own = _rival_logits(W, b, ids, X)
    x_norm = jnp.linalg.norm(X, axis=1)
    scale = (row_norms[ids] + jnp.max(row_norms)) * x_norm + jnp.abs(b[ids]) + jnp.max(jnp.abs(b))
    pad = gamma(d + 6, dtype) * scale + tiny_pad(d, dtype)
    # A max reduction, then the first column attaining it: XLA:CPU vectorises both, while
    # its (value, index) argmax reduction runs about 4x slower than the max alone.
    strongest = jnp.max(rivals, axis=1)
    rival = jnp.argmax(rivals == strongest[:, None], axis=1)
    margin = z_own - strongest
    lower = margin - pad
    # fl(a - b) - pad > 0 implies a - b > pad (subtraction keeps the sign); round the pad
    # subtraction down to keep lower a lower bound.
    lower = jnp.where(lower > 0, lower * (1 - 4 * float(jnp.finfo(dtype).eps)), lower * (1 + 4 * float(jnp.finfo(dtype).eps)))
    top = jax.lax.top_k(rivals, num_top)[1] if num_top else jnp.zeros((ids.shape[0], 0), jnp.int32)
    return WitnessBounds(lower=lower, margin=margin, top=top, rival=rival)


def certificate_bound(
    W: Float[Array, "c d"],
    b: Float[Array, " c"],
    domain: dom.Domain,
    token: Int[Array, ""],
    support: Int[Array, " k"],
    weights: Float[Array, " k"],
) -> Float[Array, ""]:
    """Rigorous upper bound on :math:`m_i^*` from one sparse certificate (single token).

    Returns :math:`U_{rig} / s`, rounded so that its sign is that of :math:`U_{rig}`
    (``+inf`` if the weights are all zero). Entries of ``support`` equal to ``token``
    must carry zero weight (the caller masks them).
    """
    dtype = W.dtype
    d = W.shape[1]
    k = support.shape[0]
    weights = jnp.maximum(weights, 0.0)
    total = jnp.sum(weights)
    rows = W[support]
    w_own = W[token]
    g = total * w_own - jnp.matmul(weights, rows, precision=HIGHEST)
    g_err = gamma(k + 4, dtype) * (total * jnp.abs(w_own) + jnp.matmul(weights, jnp.abs(rows), precision=HIGHEST))
    bias_part = total * b[token] - jnp.dot(weights, b[support], precision=HIGHEST)
    bias_err = gamma(k + 4, dtype) * (total * jnp.abs(b[token]) + jnp.dot(weights, jnp.abs(b[support]), precision=HIGHEST))
    sigma = dom.support(domain, g)
    ext = dom.extent(domain)
    if isinstance(domain, dom.Box):
        sigma_err = gamma(d + 2, dtype) * jnp.sum(jnp.abs(g) * ext)
    else:
        sigma_err = gamma(d + 4, dtype) * (jnp.sum(jnp.abs(g * domain.center)) + domain.radius * jnp.linalg.norm(g))
    pad = bias_err + jnp.sum(g_err * ext) + sigma_err + gamma(d + 4, dtype) * (jnp.abs(bias_part) + jnp.abs(sigma))
    upper = bias_part + sigma + pad + tiny_pad(d + k, dtype)
    # Dividing by total keeps the sign; the 1 + 4u factor keeps it an upper bound.
    u4 = 4 * float(jnp.finfo(dtype).eps)
    normalised = upper / jnp.maximum(total, jnp.finfo(dtype).tiny)
    normalised = jnp.where(normalised > 0, normalised * (1 + u4), normalised * (1 - u4))
    return jnp.where(total > 0, normalised, jnp.inf)


certificate_bounds = jax.vmap(certificate_bound, in_axes=(None, None, None, 0, 0, 0))
"""Batched :func:`certificate_bound` over tokens (W, b, domain shared)."""

