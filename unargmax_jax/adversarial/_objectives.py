r"""The objectives the searches follow and score: exact margin, log-probability, smoothed margin.

All in at least float32, whatever the model's logits dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._shapes import Array, Float, Int

OBJECTIVES = ("margin", "log_prob")


def _at_least_float32(logits):
    logits = jnp.asarray(logits)
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def margin(logits: Float[Array, "... c"], target: Int[Array, "..."]) -> Float[Array, "..."]:
    """Exact argmax margin of a target, in at least float32.

    .. math:: m_t(z) = z_t - \\max_{j \\ne t} z_j

    Positive iff t is the strict argmax of z; an exact tie gives 0.

    Args:
        logits: logits over the last axis, shape ``[..., C]``.
        target: class ids, broadcastable against ``logits.shape[:-1]``.

    Returns:
        The margin, shape ``broadcast(logits.shape[:-1], target.shape)``.
    """
    z = _at_least_float32(logits)
    is_target = jnp.arange(z.shape[-1]) == jnp.asarray(target)[..., None]
    own = jnp.sum(jnp.where(is_target, z, 0.0), axis=-1)
    rival = jnp.max(jnp.where(is_target, -jnp.inf, z), axis=-1)
    return own - rival


def log_prob(logits: Float[Array, "... c"], target: Int[Array, "..."]) -> Float[Array, "..."]:
    """Log-probability of a target under the softmax, in at least float32.

    .. math:: \\log p_t(z) = z_t - \\log \\sum_j \\exp z_j
    """
    z = _at_least_float32(logits)
    is_target = jnp.arange(z.shape[-1]) == jnp.asarray(target)[..., None]
    return jnp.sum(jnp.where(is_target, z, 0.0), axis=-1) - jax.nn.logsumexp(z, axis=-1)


def _smoothed_margin(logits, target, temperature):
    """:math:`z_t - \\tau \\log \\sum_{j \\ne t} \\exp(z_j / \\tau)`, a lower bound on the margin
    within :math:`\\tau \\log(C - 1)` of it."""
    z = _at_least_float32(logits)
    is_target = jnp.arange(z.shape[-1]) == target
    rivals = jnp.where(is_target, -jnp.inf, z)
    return z[target] - temperature * jax.nn.logsumexp(rivals / temperature)


def _smooth_objective(objective: str, logits, target, temperature):
    """What the gradient follows."""
    if objective == "margin":
        return _smoothed_margin(logits, target, temperature)
    return log_prob(logits, target)


def _exact_objective(objective: str, logits, target):
    """What the best iterate is chosen by."""
    if objective == "margin":
        return margin(logits, target)
    return log_prob(logits, target)
