r"""Token search: greedy coordinate gradient (GCG) over the token ids of a prompt, per target (vmapped).

Zou et al. 2023, "Universal and Transferable Adversarial Attacks on Aligned Language
Models", arXiv:2307.15043, Algorithm 1. One GCG step (:func:`_gcg_step`) is three named
pieces: the top-k candidate tokens per position by linearised gain
(:func:`_candidate_tokens`), a batch of sampled single-token substitutions
(:func:`_sample_substitutions`), and the move to the best of them if it improves the exact
objective (:func:`_accept_best`).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._shapes import Array, Bool, Float, Int
from ._common import (CHUNK, _base_key, _check_objective, _check_positive_int, _check_targets, _logits_shape,
                      _Progress, _target_keys)
from ._objectives import _exact_objective, _smooth_objective, log_prob, margin

HIGHEST = jax.lax.Precision.HIGHEST


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


class _TokenState(NamedTuple):
    ids: Int[Array, " t"]
    value: Float[Array, ""]  # exact objective of ids
    done: Bool[Array, ""]  # reached: the target is the strict argmax after ids
    steps_taken: Int[Array, ""]
    key: Array


# ------------------------------------------------------------------ validation
def _check_gcg_settings(objective, steps, top_k, batch_size) -> tuple[int, int, int]:
    """The scalar options, checked in the order the errors are reported."""
    _check_objective(objective)
    steps = _check_positive_int("steps", steps)
    top_k = _check_positive_int("top_k", top_k)
    batch_size = _check_positive_int("batch_size", batch_size)
    return steps, top_k, batch_size


def _check_table(embedding_table) -> Array:
    table = jnp.asarray(embedding_table)
    if table.ndim != 2 or not jnp.issubdtype(table.dtype, jnp.floating):
        raise ValueError(f"embedding_table: expected a floating array of shape (V, d), "
                         f"got shape {table.shape} dtype {table.dtype}")
    return table


def _check_prompt_ids(prompt_ids, vocab: int) -> np.ndarray:
    ids = np.asarray(prompt_ids)
    if ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer) or ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"prompt_ids: expected a non-empty 1-D integer array (T,), got shape {ids.shape} dtype {ids.dtype}")
    if ids.min() < 0 or ids.max() >= vocab:
        raise ValueError(f"prompt_ids: expected ids in 0..{vocab - 1} (embedding_table has {vocab} rows), "
                         f"got {ids[(ids < 0) | (ids >= vocab)][:5].tolist()}")
    return ids


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


def _token_mask(allowed_tokens, vocab: int) -> np.ndarray:
    if allowed_tokens is None:
        return np.ones(vocab, bool)
    allowed = np.asarray(allowed_tokens)
    if allowed.dtype != bool or allowed.shape != (vocab,):
        raise ValueError(f"allowed_tokens: expected a bool mask of shape ({vocab},), "
                         f"got shape {allowed.shape} dtype {allowed.dtype}")
    if not allowed.any():
        raise ValueError("allowed_tokens: expected at least one allowed token, got none")
    return allowed


def _check_prompt(embedding_table, prompt_ids, editable, allowed_tokens):
    """The table (V, d), the prompt ids (T,), and the editable (T,) and allowed (V,) masks."""
    table = _check_table(embedding_table)
    vocab = table.shape[0]
    ids = _check_prompt_ids(prompt_ids, vocab)
    editable_mask = _position_mask(editable, ids.size)
    allowed = _token_mask(allowed_tokens, vocab)
    return table, ids, editable_mask, allowed


# ------------------------------------------------------------------ kernels
def _prompt_logits(embed_logits, params, table, ids):
    return embed_logits(params, table[ids])


def _candidate_tokens(grad, table, editable, allowed, top_k: int):
    """The ``top_k`` tokens per position (T, k) with the largest linearised gain; none at fixed positions."""
    # Linearised gain of swapping position p to token v: grad_p . e_v (ascent on the objective).
    dtype = jnp.promote_types(table.dtype, jnp.float32)
    gain = jnp.matmul(grad.astype(dtype), table.T.astype(dtype), precision=HIGHEST)
    gain = jnp.where(editable[:, None] & allowed[None, :], gain, -jnp.inf)
    _, candidates = jax.lax.top_k(gain, top_k)  # (T, k)
    return candidates


def _sample_substitutions(key_position, key_choice, ids, candidates, editable, batch_size: int):
    """``batch_size`` prompts (B, T), each ``ids`` with one uniform editable position set to a
    uniform candidate there."""
    top_k = candidates.shape[1]
    positions = jax.random.categorical(key_position, jnp.where(editable, 0.0, -jnp.inf), shape=(batch_size,))
    choices = jax.random.randint(key_choice, (batch_size,), 0, top_k)
    tokens = candidates[positions, choices]
    batch = jnp.broadcast_to(ids, (batch_size, ids.shape[0]))
    return batch.at[jnp.arange(batch_size), positions].set(tokens)


def _accept_best(objective, target, steps, state, t, key, batch, logits):
    """Move to the best prompt of the batch if it improves the exact objective (and the target
    is still running)."""
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
    )


def _gcg_step(embed_logits, objective, top_k, batch_size, params, table, editable, allowed, target, steps, state, t):
    """One GCG step for one target (Zou et al. 2023, Algorithm 1, with one substitution kept
    only if it improves the exact objective)."""

    def smooth(embeddings):
        # The gradient w.r.t. the one-hot matrix of one_hot @ E is (d loss / d embeddings) @ E^T.
        return _smooth_objective(objective, embed_logits(params, embeddings), target, 1.0)

    grad = jax.grad(smooth)(table[state.ids])
    candidates = _candidate_tokens(grad, table, editable, allowed, top_k)
    key, key_position, key_choice = jax.random.split(state.key, 3)
    batch = _sample_substitutions(key_position, key_choice, state.ids, candidates, editable, batch_size)
    logits = jax.vmap(partial(_prompt_logits, embed_logits, params, table))(batch)  # one batched forward
    return _accept_best(objective, target, steps, state, t, key, batch, logits), None


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


# ------------------------------------------------------------------ driver
def _run_gcg(embed_logits, objective, params, table, editable_mask, allowed, targets, state, *, steps: int,
             top_k: int, batch_size: int, progress: bool) -> _TokenState:
    """GCG steps in jitted chunks of at most :data:`CHUNK`, stopping early once every target is reached."""
    editable, allowed = jnp.asarray(editable_mask), jnp.asarray(allowed)
    length = min(CHUNK, steps)
    bar = _Progress(progress, "gcg", steps)
    for start in range(0, steps, length):
        if bool(jnp.all(state.done)):
            break
        state = _token_chunk(embed_logits, objective, top_k, batch_size, length, params, table, editable, allowed,
                             targets, state, jnp.int32(start), jnp.int32(steps))
        bar.update(min(start + length, steps), f"reached {int(np.sum(np.asarray(state.done)))}/{targets.shape[0]} targets")
    bar.close()
    return state


def token_search(embed_logits: Callable, params, embedding_table: Float[Array, "v d"], prompt_ids: Int[Array, " t"],
                 targets, *, steps: int = 100, top_k: int = 64, batch_size: int = 128, editable=None,
                 objective: str = "margin", seed=0, progress: bool = False, allowed_tokens=None) -> TokenResult:
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
    steps, top_k, batch_size = _check_gcg_settings(objective, steps, top_k, batch_size)
    table, ids, editable_mask, allowed = _check_prompt(embedding_table, prompt_ids, editable, allowed_tokens)
    top_k = min(top_k, int(allowed.sum()))  # static: masked gains are -inf, never candidates
    ids = jnp.asarray(ids, jnp.int32)
    classes, _ = _logits_shape(embed_logits, "embed_logits(params, embedding_table[prompt_ids])", params,
                               jax.ShapeDtypeStruct((ids.shape[0], table.shape[1]), table.dtype))
    targets = jnp.asarray(_check_targets(targets, classes))
    key = _base_key(seed)

    state = _token_init(embed_logits, objective, params, table, ids, targets, _target_keys(key, targets))
    state = _run_gcg(embed_logits, objective, params, table, editable_mask, allowed, targets, state, steps=steps,
                     top_k=top_k, batch_size=batch_size, progress=progress)
    exact_margin, exact_log_prob = _evaluate_tokens(embed_logits, params, table, state.ids, targets)
    return TokenResult(state.ids, exact_margin, exact_log_prob, exact_margin > 0, state.steps_taken)
