r"""Continuous search: projected Adam on a continuous input, one run per target (vmapped).

The input is whatever ``f(params, x) -> logits`` takes: input embeddings through the whole
model, or a hidden state at some layer through the layers after it. The pieces, in the order
:func:`continuous_search` runs them: check the arguments, draw each target's start
(:func:`_continuous_init`), run jitted chunks of :func:`_continuous_step` with a progress
bar between them (:func:`_run_continuous`), score the last iterate
(:func:`_continuous_finish`), and re-evaluate the best one separately (:func:`_evaluate`).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._shapes import Array, Bool, Float, Int
from ._common import (CHUNK, _base_key, _check_nonnegative_float, _check_objective, _check_positive_int,
                      _check_targets, _logits_shape, _Progress, _target_keys)
from ._objectives import _exact_objective, _smooth_objective, log_prob, margin

FINAL_TEMPERATURE_RATIO = 1e-2  # the smoothed margin's temperature anneals down to this fraction


class ContinuousResult(NamedTuple):
    """Result of :func:`continuous_search`, one row per target.

    Attributes:
        inputs: the best input found per target, shape ``[n_targets, *x0.shape]``.
        margin: exact margin :math:`z_t - \\max_{j \\ne t} z_j` at ``inputs``.
        log_prob: :math:`\\log \\mathrm{softmax}(z)_t` at ``inputs``.
        reached: ``margin > 0``: the target is the strict argmax at ``inputs``.
        best_step: how many optimiser updates led to ``inputs`` (0: the starting point).
    """

    inputs: Float[Array, "n ..."]
    margin: Float[Array, " n"]
    log_prob: Float[Array, " n"]
    reached: Bool[Array, " n"]
    best_step: Int[Array, " n"]


class _ContinuousState(NamedTuple):
    x: Array  # current iterate
    adam: optax.OptState
    best_x: Array
    best_value: Float[Array, ""]  # exact objective at best_x
    best_step: Int[Array, ""]


# ------------------------------------------------------------------ validation
def _identity(x):
    return x


def _check_settings(objective, steps, learning_rate, temperature, noise) -> tuple[int, float, float, float]:
    """The scalar options, checked in the order the errors are reported."""
    _check_objective(objective)
    steps = _check_positive_int("steps", steps)
    learning_rate = _check_nonnegative_float("learning_rate", learning_rate, positive=True)
    temperature = _check_nonnegative_float("temperature", temperature, positive=True)
    noise = _check_nonnegative_float("noise", noise)
    return steps, learning_rate, temperature, noise


def _check_x0(x0) -> Array:
    x0 = jnp.asarray(x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"x0: expected a floating array, got dtype {x0.dtype} (for token ids use token_search)")
    return x0


def _check_project(project, x0) -> Callable:
    """The projection (the identity for None), checked to keep the shape of ``x0``."""
    if project is None:
        project = _identity
    elif not callable(project):
        raise ValueError(f"project: expected a callable x -> x or None, got {type(project).__name__}")
    projected = jax.eval_shape(project, x0)
    if getattr(projected, "shape", None) != x0.shape:
        raise ValueError(f"project: expected it to return shape {x0.shape}, got {getattr(projected, 'shape', projected)}")
    return project


# ------------------------------------------------------------------ kernels
def _cosine(fraction):
    """Learning-rate factor: cosine decay from 1 to 1% over the run."""
    return 0.01 + 0.99 * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(fraction, 0.0, 1.0)))


def _continuous_step(f, project, objective, params, target, steps, learning_rate, temperature, state, t):
    """One projected Adam step for one target; iterate t is scored on the way."""
    fraction = t / jnp.maximum(steps - 1, 1)
    tau = temperature * FINAL_TEMPERATURE_RATIO ** fraction

    def smooth(x):
        logits = f(params, x)
        return _smooth_objective(objective, logits, target, tau), logits

    (_, logits), grad = jax.value_and_grad(smooth, has_aux=True)(state.x)
    value = _exact_objective(objective, logits, target)
    active = t < steps  # the last chunk may run past the budget: those steps change nothing
    better = active & (value > state.best_value)  # NaN never counts as better
    direction, adam = optax.scale_by_adam().update(grad, state.adam)
    step_size = (learning_rate * _cosine(fraction)).astype(state.x.dtype)
    x = project(state.x + step_size * direction.astype(state.x.dtype))  # ascent
    return _ContinuousState(
        x=jnp.where(active, x, state.x),
        adam=jax.tree_util.tree_map(lambda new, old: jnp.where(active, new, old), adam, state.adam),
        best_x=jnp.where(better, state.x, state.best_x),
        best_value=jnp.where(better, value, state.best_value),
        best_step=jnp.where(better, t, state.best_step),
    ), None


@partial(jax.jit, static_argnames=("project", "value_dtype"))
def _continuous_init(project, value_dtype, x0, keys, noise):
    def one(key):
        x = project(x0 + noise * jax.random.normal(key, x0.shape, x0.dtype))
        return _ContinuousState(x, optax.scale_by_adam().init(x), x, jnp.array(-jnp.inf, value_dtype), jnp.int32(0))

    return jax.vmap(one)(keys)


@partial(jax.jit, static_argnames=("f", "project", "objective", "length"))
def _continuous_chunk(f, project, objective, length, params, targets, state, start, steps, learning_rate, temperature):
    def one(target, state):
        step = partial(_continuous_step, f, project, objective, params, target, steps, learning_rate, temperature)
        state, _ = jax.lax.scan(step, state, start + jnp.arange(length, dtype=jnp.int32))
        return state

    return jax.vmap(one)(targets, state)


@partial(jax.jit, static_argnames=("f", "objective"))
def _continuous_finish(f, objective, params, targets, state, steps):
    """Score the iterate after the last update (the scan scores each iterate before its update)."""

    def one(target, state):
        value = _exact_objective(objective, f(params, state.x), target)
        better = value > state.best_value
        return (jnp.where(better, state.x, state.best_x), jnp.where(better, steps, state.best_step),
                jnp.where(better, value, state.best_value))

    return jax.vmap(one)(targets, state)


@partial(jax.jit, static_argnames=("f",))
def _evaluate(f, params, inputs, targets):
    """The final, separate evaluation: exact margin and log-probability at each input."""
    logits = jax.vmap(f, in_axes=(None, 0))(params, inputs)
    return margin(logits, targets), log_prob(logits, targets)


# ------------------------------------------------------------------ driver
def _continuous_status(objective: str, best_value) -> str:
    """The progress bar's status: targets reached so far, or the best log-probability."""
    best = np.asarray(best_value)
    if objective == "margin":
        return f"best margin > 0 for {int(np.sum(best > 0))}/{best.size} targets"
    return f"best log p {np.max(best):.4g}"


def _run_continuous(f, project, objective, params, targets, state, *, steps: int, learning_rate: float,
                    temperature: float, progress: bool) -> _ContinuousState:
    """Every step, in jitted chunks of at most :data:`CHUNK`, redrawing the progress bar between them."""
    length = min(CHUNK, steps)
    bar = _Progress(progress, "continuous", steps)
    for start in range(0, steps, length):
        state = _continuous_chunk(f, project, objective, length, params, targets, state, jnp.int32(start),
                                  jnp.int32(steps), jnp.float32(learning_rate), jnp.float32(temperature))
        if progress:
            bar.update(min(start + length, steps), _continuous_status(objective, state.best_value))
    bar.close()
    return state


def continuous_search(f: Callable, params, x0: Float[Array, "..."], targets, *, steps: int = 300,
                      learning_rate: float = 0.05, objective: str = "margin", project: Callable | None = None,
                      seed=0, noise: float = 0.0, progress: bool = False,
                      temperature: float = 1.0) -> ContinuousResult:
    """Find continuous inputs that make each target the argmax of ``f(params, x)``.

    Projected Adam ascent, one run per target (vmapped), on the smoothed margin

    .. math:: \\tilde m_t(x) = z_t(x) - \\tau \\log \\sum_{j \\ne t} \\exp(z_j(x) / \\tau),\\quad z = f(\\theta, x)

    (a lower bound on the exact margin, within :math:`\\tau \\log(C-1)` of it), with
    :math:`\\tau` annealed geometrically from ``temperature`` to 1% of it, or on
    :math:`\\log \\mathrm{softmax}(z)_t` when ``objective="log_prob"``. The step size decays
    from ``learning_rate`` to 1% of it (cosine). After each update ``project`` maps the
    iterate back onto the feasible set. The best iterate by the exact objective (the exact
    margin for ``"margin"``, the log-probability for ``"log_prob"``) is kept, not the last.

    Args:
        f: ``f(params, x) -> logits (C,)`` for an input x of shape ``x0.shape``: input
            embeddings (T, d) through the whole model, or a hidden state at some layer
            through the layers after it. Must be jittable. Pass the same function object
            across calls to reuse the compiled search.
        params: the model's parameters (any pytree), passed to ``f`` unchanged.
        x0: the starting input (floating).
        targets: a class id or a 1-D array of ids.
        steps: Adam steps per target.
        learning_rate: initial Adam step size (in the units of x).
        objective: ``"margin"`` (smoothed margin) or ``"log_prob"``.
        project: optional ``project(x) -> x`` applied to the start and after every step
            (e.g. clipping to a box or scaling into a ball), so every iterate, and so the
            result, is feasible. Must be jittable; pass the same function object across
            calls to reuse the compiled search.
        seed: an int, or a ``jax.random`` key, for the starting noise. Each target's key
            is folded in from its id, so a target's result does not depend on the batch.
        noise: standard deviation of Gaussian noise added to ``x0`` per target.
        progress: draw a progress bar on stderr between chunks of steps.
        temperature: initial :math:`\\tau` of the smoothed margin (in logit units).

    Returns:
        :class:`ContinuousResult`; ``reached`` comes from a separate final evaluation of
        ``f`` at ``inputs``, in at least float32.

    Raises:
        ValueError: bad targets (not integers, out of range), ``steps < 1``, an unknown
            objective, a non-floating ``x0``, or ``f``/``project`` giving wrong shapes.
    """
    steps, learning_rate, temperature, noise = _check_settings(objective, steps, learning_rate, temperature, noise)
    x0 = _check_x0(x0)
    project = _check_project(project, x0)
    classes, logits_dtype = _logits_shape(f, "f(params, x0)", params, x0)
    targets = jnp.asarray(_check_targets(targets, classes))
    key = _base_key(seed)

    value_dtype = jnp.promote_types(logits_dtype, jnp.float32)
    state = _continuous_init(project, value_dtype, x0, _target_keys(key, targets), jnp.asarray(noise, x0.dtype))
    state = _run_continuous(f, project, objective, params, targets, state, steps=steps, learning_rate=learning_rate,
                            temperature=temperature, progress=progress)
    inputs, best_step, _ = _continuous_finish(f, objective, params, targets, state, jnp.int32(steps))
    exact_margin, exact_log_prob = _evaluate(f, params, inputs, targets)
    return ContinuousResult(inputs, exact_margin, exact_log_prob, exact_margin > 0, best_step)
