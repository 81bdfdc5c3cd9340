r"""Adversarial inputs: search through a whole network for inputs that make a target the argmax.

The engine (:func:`unargmax_jax.check`) decides argmaxability for the *head alone*, on a
convex feature domain. This module asks the end-to-end question for one or more target
classes t of a model's next-token logits z(x): find an input x with

.. math:: m_t(x) = z_t(x) - \max_{j \ne t} z_j(x) > 0

and make that margin (or :math:`\log \mathrm{softmax}(z(x))_t`) as large as possible.
A positive margin is a witness that t is producible by greedy decoding from x; a failed
search proves nothing (the searches are local).

Two searches, both vmapped over targets, with the step loop jitted in fixed-size chunks
so a progress bar can be drawn in Python between chunks:

* :func:`continuous_search`: projected Adam on a continuous input (input embeddings, or
  a hidden state at some layer, through a user function ``f(params, x) -> logits``).
* :func:`token_search`: greedy coordinate gradient (GCG; Zou et al. 2023, "Universal and
  Transferable Adversarial Attacks on Aligned Language Models", arXiv:2307.15043,
  Algorithm 1) over the token ids of a prompt.

Both return the best iterate seen (not the last) and re-evaluate it with a separate call
of the model, in at least float32, to fill ``margin``, ``log_prob`` and ``reached``.
"""

from __future__ import annotations

import math
import sys
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._shapes import Array, Bool, Float, Int

__all__ = [
    "ContinuousResult",
    "TokenResult",
    "continuous_search",
    "log_prob",
    "margin",
    "token_search",
]

HIGHEST = jax.lax.Precision.HIGHEST
OBJECTIVES = ("margin", "log_prob")
CHUNK = 25  # steps per jitted chunk: the progress bar and the early exit look between chunks
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


class TokenResult(NamedTuple):
    """Result of :func:`token_search`, one row per target.

    Attributes:
        ids: the best prompt found per target, shape ``[n_targets, T]``.
        margin: exact margin :math:`z_t - \\max_{j \\ne t} z_j` after the prompt ``ids``.
        log_prob: :math:`\\log \\mathrm{softmax}(z)_t` after ``ids``.
        reached: ``margin > 0``: the target is the strict argmax after ``ids``.
        steps_taken: GCG steps run for the target (it stops once reached; 0: the initial
            prompt already reaches it).
    """

    ids: Int[Array, "n t"]
    margin: Float[Array, " n"]
    log_prob: Float[Array, " n"]
    reached: Bool[Array, " n"]
    steps_taken: Int[Array, " n"]


# ------------------------------------------------------------------ objectives
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


# ------------------------------------------------------------------ validation
def _check_objective(objective) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {OBJECTIVES}, got {objective!r}")


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected an int >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value}")
    return int(value)


def _check_nonnegative_float(name: str, value, *, positive: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a finite number, got {value!r}") from None
    if isinstance(value, (bool, np.bool_)) or not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f"{name}: expected a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return number


def _check_targets(targets, classes: int) -> np.ndarray:
    """Targets as a 1-D int32 array of class ids in ``0..classes-1``."""
    arr = np.asarray(targets)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"targets: expected integer class ids, got dtype {arr.dtype}")
    if arr.ndim > 1:
        raise ValueError(f"targets: expected an int or a 1-D array of ids, got shape {arr.shape}")
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError("targets: expected at least one class id, got none")
    if arr.min() < 0 or arr.max() >= classes:
        bad = arr[(arr < 0) | (arr >= classes)]
        raise ValueError(f"targets: expected ids in 0..{classes - 1} (the model has {classes} classes), "
                         f"got {bad[:5].tolist()}")
    return arr.astype(np.int32)


def _logits_shape(fn, what: str, *args) -> tuple[int, np.dtype]:
    """Trace ``fn(*args)`` abstractly; return C and the dtype, checking for logits of shape (C,)."""
    try:
        out = jax.eval_shape(fn, *args)
    except Exception as err:  # a shape mismatch inside the model surfaces here, as any error type
        shapes = jax.tree_util.tree_map(lambda leaf: tuple(jnp.shape(leaf)), args[-1])
        raise ValueError(f"{what}: the model failed on an input of shape {shapes}: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape is None or len(shape) != 1 or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{what}: expected floating logits of shape (C,), got "
                         f"{'a ' + type(out).__name__ if shape is None else f'shape {shape} dtype {dtype}'}")
    if shape[0] < 2:
        raise ValueError(f"{what}: expected at least 2 classes, got logits of shape {shape}")
    return shape[0], dtype


def _base_key(seed):
    """An explicit PRNG key from an int seed (or a key passed as is)."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
        return jax.random.PRNGKey(int(seed))
    if isinstance(seed, jax.Array) and (jnp.issubdtype(seed.dtype, jax.dtypes.prng_key)
                                        or (seed.dtype == jnp.uint32 and seed.shape == (2,))):
        return seed
    raise ValueError(f"seed: expected an int or a jax.random key, got {seed!r}")


def _target_keys(key, targets):
    # One key per target *value*: a target's result does not depend on which other
    # targets share the batch (one-target and multi-target runs agree).
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, targets)


class _Progress:
    """A one-line progress bar on stderr, redrawn between jitted chunks."""

    def __init__(self, enabled: bool, label: str, total: int, *, width: int = 30):
        self.enabled, self.label, self.total, self.width = enabled, label, total, width

    def update(self, done: int, status: str) -> None:
        if not self.enabled:
            return
        filled = int(self.width * done / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        sys.stderr.write(f"\r{self.label} [{bar}] {done}/{self.total} steps, {status} ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ------------------------------------------------------------ continuous search
class _ContinuousState(NamedTuple):
    x: Array  # current iterate
    adam: optax.OptState
    best_x: Array
    best_value: Float[Array, ""]  # exact objective at best_x
    best_step: Int[Array, ""]


def _identity(x):
    return x


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


def continuous_search(
    f: Callable,
    params,
    x0: Float[Array, "..."],
    targets,
    *,
    steps: int = 300,
    learning_rate: float = 0.05,
    objective: str = "margin",
    project: Callable | None = None,
    seed=0,
    noise: float = 0.0,
    progress: bool = False,
    temperature: float = 1.0,
) -> ContinuousResult:
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
    _check_objective(objective)
    steps = _check_positive_int("steps", steps)
    learning_rate = _check_nonnegative_float("learning_rate", learning_rate, positive=True)
    temperature = _check_nonnegative_float("temperature", temperature, positive=True)
    noise = _check_nonnegative_float("noise", noise)
    x0 = jnp.asarray(x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"x0: expected a floating array, got dtype {x0.dtype} (for token ids use token_search)")
    if project is None:
        project = _identity
    elif not callable(project):
        raise ValueError(f"project: expected a callable x -> x or None, got {type(project).__name__}")
    projected = jax.eval_shape(project, x0)
    if getattr(projected, "shape", None) != x0.shape:
        raise ValueError(f"project: expected it to return shape {x0.shape}, got {getattr(projected, 'shape', projected)}")
    classes, logits_dtype = _logits_shape(f, "f(params, x0)", params, x0)
    targets = jnp.asarray(_check_targets(targets, classes))
    key = _base_key(seed)

    value_dtype = jnp.promote_types(logits_dtype, jnp.float32)
    state = _continuous_init(project, value_dtype, x0, _target_keys(key, targets), jnp.asarray(noise, x0.dtype))
    length = min(CHUNK, steps)
    bar = _Progress(progress, "continuous", steps)
    for start in range(0, steps, length):
        state = _continuous_chunk(f, project, objective, length, params, targets, state, jnp.int32(start),
                                  jnp.int32(steps), jnp.float32(learning_rate), jnp.float32(temperature))
        if progress:
            best = np.asarray(state.best_value)
            status = (f"best margin > 0 for {int(np.sum(best > 0))}/{best.size} targets" if objective == "margin"
                      else f"best log p {np.max(best):.4g}")
            bar.update(min(start + length, steps), status)
    bar.close()
    inputs, best_step, _ = _continuous_finish(f, objective, params, targets, state, jnp.int32(steps))
    exact_margin, exact_log_prob = _evaluate(f, params, inputs, targets)
    return ContinuousResult(inputs, exact_margin, exact_log_prob, exact_margin > 0, best_step)


# ----------------------------------------------------------------- token search
class _TokenState(NamedTuple):
    ids: Int[Array, " t"]
    value: Float[Array, ""]  # exact objective of ids
    done: Bool[Array, ""]  # reached: the target is the strict argmax after ids
    steps_taken: Int[Array, ""]
    key: Array


def _prompt_logits(embed_logits, params, table, ids):
    return embed_logits(params, table[ids])


def _gcg_step(embed_logits, objective, top_k, batch_size, params, table, editable, allowed, target, steps, state, t):
    """One GCG step for one target (Zou et al. 2023, Algorithm 1, with one substitution kept
    only if it improves the exact objective)."""

    def smooth(embeddings):
        # The gradient w.r.t. the one-hot matrix of one_hot @ E is (d loss / d embeddings) @ E^T.
        return _smooth_objective(objective, embed_logits(params, embeddings), target, 1.0)

    grad = jax.grad(smooth)(table[state.ids])
    # Linearised gain of swapping position p to token v: grad_p . e_v (ascent on the objective).
    dtype = jnp.promote_types(table.dtype, jnp.float32)
    gain = jnp.matmul(grad.astype(dtype), table.T.astype(dtype), precision=HIGHEST)
    gain = jnp.where(editable[:, None] & allowed[None, :], gain, -jnp.inf)
    _, candidates = jax.lax.top_k(gain, top_k)  # (T, k)

    key, key_position, key_choice = jax.random.split(state.key, 3)
    positions = jax.random.categorical(key_position, jnp.where(editable, 0.0, -jnp.inf), shape=(batch_size,))
    choices = jax.random.randint(key_choice, (batch_size,), 0, top_k)
    tokens = candidates[positions, choices]
    batch = jnp.broadcast_to(state.ids, (batch_size, state.ids.shape[0]))
    batch = batch.at[jnp.arange(batch_size), positions].set(tokens)

    logits = jax.vmap(partial(_prompt_logits, embed_logits, params, table))(batch)  # one batched forward
    values = _exact_objective(objective, logits, target)
    margins = margin(logits, target)
    best = jnp.argmax(values)  # NaN candidates: argmax may pick one, but NaN > value is False
    improve = values[best] > state.value
    active = (t < steps) & ~state.done
    accept = active & improve
    return _TokenState(
        ids=jnp.where(accept, batch[best], state.ids),
        value=jnp.where(accept, values[best], state.value),
        done=state.done | (accept & (margins[best] > 0)),
        steps_taken=state.steps_taken + active.astype(jnp.int32),
        key=key,  # a finished target's key no longer matters
    ), None


@partial(jax.jit, static_argnames=("embed_logits", "objective"))
def _token_init(embed_logits, objective, params, table, ids, targets, keys):
    logits = _prompt_logits(embed_logits, params, table, ids)

    def one(target, key):
        return _TokenState(ids, _exact_objective(objective, logits, target), margin(logits, target) > 0, jnp.int32(0), key)

    return jax.vmap(one)(targets, keys)


@partial(jax.jit, static_argnames=("embed_logits", "objective", "top_k", "batch_size", "length"))
def _token_chunk(embed_logits, objective, top_k, batch_size, length, params, table, editable, allowed, targets,
                 state, start, steps):
    def one(target, state):
        step = partial(_gcg_step, embed_logits, objective, top_k, batch_size, params, table, editable, allowed,
                       target, steps)
        state, _ = jax.lax.scan(step, state, start + jnp.arange(length, dtype=jnp.int32))
        return state

    return jax.vmap(one)(targets, state)


@partial(jax.jit, static_argnames=("embed_logits",))
def _evaluate_tokens(embed_logits, params, table, ids, targets):
    """The final, separate evaluation: exact margin and log-probability after each prompt."""
    logits = jax.vmap(partial(_prompt_logits, embed_logits, params, table))(ids)
    return margin(logits, targets), log_prob(logits, targets)


def _position_mask(editable, length: int) -> np.ndarray:
    if editable is None:
        return np.ones(length, bool)
    arr = np.asarray(editable)
    if arr.size == 0:
        raise ValueError("editable: expected at least one editable position, got none")
    if arr.dtype == bool:
        if arr.shape != (length,):
            raise ValueError(f"editable: expected a bool mask of shape ({length},) or positions, got shape {arr.shape}")
        mask = arr.copy()
    elif np.issubdtype(arr.dtype, np.integer) and arr.ndim <= 1:
        arr = arr.reshape(-1)
        if arr.size and (arr.min() < -length or arr.max() >= length):
            raise ValueError(f"editable: expected positions in 0..{length - 1}, got {arr.tolist()}")
        mask = np.zeros(length, bool)
        mask[arr] = True
    else:
        raise ValueError(f"editable: expected a bool mask of shape ({length},) or integer positions, "
                         f"got dtype {arr.dtype} shape {arr.shape}")
    if not mask.any():
        raise ValueError("editable: expected at least one editable position, got none")
    return mask


def token_search(
    embed_logits: Callable,
    params,
    embedding_table: Float[Array, "v d"],
    prompt_ids: Int[Array, " t"],
    targets,
    *,
    steps: int = 100,
    top_k: int = 64,
    batch_size: int = 128,
    editable=None,
    objective: str = "margin",
    seed=0,
    progress: bool = False,
    allowed_tokens=None,
) -> TokenResult:
    """Find prompts after which each target is the argmax: greedy coordinate gradient (GCG).

    GCG (Zou et al. 2023, "Universal and Transferable Adversarial Attacks on Aligned Language
    Models", arXiv:2307.15043, Algorithm 1), run per target (vmapped). Each step linearises
    the objective in the one-hot token matrix :math:`X` (embeddings :math:`XE`),

    .. math:: g = \\nabla_X \\tilde m_t(XE) = (\\nabla_{XE} \\tilde m_t) E^T,\\quad \\tilde m_t(z) = z_t - \\log \\sum_{j \\ne t} \\exp z_j

    (or :math:`\\log \\mathrm{softmax}(z)_t` for ``objective="log_prob"``), takes the
    ``top_k`` tokens with the largest gain :math:`g_{p,v}` at each editable position p,
    samples ``batch_size`` single-token substitutions (a uniform editable position, a
    uniform candidate there), evaluates all of them in one batched forward pass and moves
    to the best one if it improves the exact objective (the exact margin, or the
    log-probability). A target stops once it is reached (exact margin > 0); the others run
    on, and the loop ends early when every target is reached.

    Args:
        embed_logits: ``embed_logits(params, embeddings (T, d)) -> logits (C,)`` for the
            token after the prompt. Must be jittable; pass the same function object across
            calls to reuse the compiled search.
        params: the model's parameters (any pytree), passed unchanged.
        embedding_table: E, shape (V, d): row v embeds token v.
        prompt_ids: the initial prompt, integer ids in ``0..V-1``, shape (T,).
        targets: a class id or a 1-D array of ids in ``0..C-1``.
        steps: GCG steps per target.
        top_k: candidate tokens per position (capped at the number of allowed tokens).
        batch_size: substitutions evaluated per step.
        editable: positions that may change: None (all), a bool mask (T,) or int positions.
        objective: ``"margin"`` or ``"log_prob"``.
        seed: an int or a ``jax.random`` key for the sampling. Each target's key is folded
            in from its id, so a target's result does not depend on the batch.
        progress: draw a progress bar on stderr between chunks of steps.
        allowed_tokens: optional bool mask (V,) of tokens that may be substituted in
            (e.g. to exclude special tokens); tokens already in the prompt may stay.

    Returns:
        :class:`TokenResult`; ``margin``, ``log_prob`` and ``reached`` come from a separate
        final evaluation of ``embed_logits`` at ``ids``, in at least float32.

    Raises:
        ValueError: bad targets, prompt ids or embedding table (shape, dtype, range), bad
            ``editable``/``allowed_tokens``, ``steps``, ``top_k`` or ``batch_size`` < 1, an
            unknown objective, or ``embed_logits`` not returning logits of shape (C,).
    """
    _check_objective(objective)
    steps = _check_positive_int("steps", steps)
    top_k = _check_positive_int("top_k", top_k)
    batch_size = _check_positive_int("batch_size", batch_size)
    table = jnp.asarray(embedding_table)
    if table.ndim != 2 or not jnp.issubdtype(table.dtype, jnp.floating):
        raise ValueError(f"embedding_table: expected a floating array of shape (V, d), "
                         f"got shape {table.shape} dtype {table.dtype}")
    vocab = table.shape[0]
    ids = np.asarray(prompt_ids)
    if ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer) or ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"prompt_ids: expected a non-empty 1-D integer array (T,), got shape {ids.shape} dtype {ids.dtype}")
    if ids.min() < 0 or ids.max() >= vocab:
        raise ValueError(f"prompt_ids: expected ids in 0..{vocab - 1} (embedding_table has {vocab} rows), "
                         f"got {ids[(ids < 0) | (ids >= vocab)][:5].tolist()}")
    editable_mask = _position_mask(editable, ids.size)
    if allowed_tokens is None:
        allowed = np.ones(vocab, bool)
    else:
        allowed = np.asarray(allowed_tokens)
        if allowed.dtype != bool or allowed.shape != (vocab,):
            raise ValueError(f"allowed_tokens: expected a bool mask of shape ({vocab},), "
                             f"got shape {allowed.shape} dtype {allowed.dtype}")
        if not allowed.any():
            raise ValueError("allowed_tokens: expected at least one allowed token, got none")
    top_k = min(top_k, int(allowed.sum()))  # static: masked gains are -inf, never candidates
    ids = jnp.asarray(ids, jnp.int32)
    classes, _ = _logits_shape(embed_logits, "embed_logits(params, embedding_table[prompt_ids])", params,
                            jax.ShapeDtypeStruct((ids.shape[0], table.shape[1]), table.dtype))
    targets = jnp.asarray(_check_targets(targets, classes))
    key = _base_key(seed)

    state = _token_init(embed_logits, objective, params, table, ids, targets, _target_keys(key, targets))
    length = min(CHUNK, steps)
    bar = _Progress(progress, "gcg", steps)
    for start in range(0, steps, length):
        if bool(jnp.all(state.done)):
            break
        state = _token_chunk(embed_logits, objective, top_k, batch_size, length, params, table,
                             jnp.asarray(editable_mask), jnp.asarray(allowed), targets, state, jnp.int32(start),
                             jnp.int32(steps))
        bar.update(min(start + length, steps), f"reached {int(np.sum(np.asarray(state.done)))}/{targets.shape[0]} targets")
    bar.close()
    exact_margin, exact_log_prob = _evaluate_tokens(embed_logits, params, table, state.ids, targets)
    return TokenResult(state.ids, exact_margin, exact_log_prob, exact_margin > 0, state.steps_taken)
