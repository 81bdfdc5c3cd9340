"""Heads that look trained, for tests and benchmarks: softmax regression fitted with optax.

Classes follow a Zipf law, as tokens in a vocabulary do; each class's features are
Gaussian around a class mean. Rare classes see few gradient steps, so their rows stay
small and their biases fall: they end up squeezed inside the hull of the frequent ones,
as rare tokens of real output layers do (with margins of every size, many tiny).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def trained_head(classes: int, dim: int, *, steps: int = 300, batch: int = 1024, zipf: float = 1.1,
                 learning_rate: float = 1e-2, bias: bool = True, seed: int = 0):
    """``(W, b)``: a float32 (classes, dim) head and (classes,) bias (None without ``bias``),
    after ``steps`` Adam steps of cross-entropy on Zipf-distributed classes."""
    rng = np.random.default_rng(seed)
    frequency = 1.0 / np.arange(1, classes + 1) ** zipf
    frequency /= frequency.sum()
    means = rng.standard_normal((classes, dim)).astype(np.float32) * np.float32(3 / np.sqrt(dim))
    params = (jnp.asarray(rng.standard_normal((classes, dim)).astype(np.float32) * 0.01), jnp.zeros(classes))
    optimiser = optax.adam(learning_rate)
    step = jax.jit(lambda p, s, x, y: _step(optimiser, bias, p, s, x, y))
    state = optimiser.init(params)
    for _ in range(steps):
        y = rng.choice(classes, size=batch, p=frequency)
        x = means[y] + rng.standard_normal((batch, dim)).astype(np.float32)
        params, state = step(params, state, jnp.asarray(x), jnp.asarray(y))
    W, b = (np.asarray(a, np.float32) for a in params)
    return W, (b if bias else None)


def _step(optimiser, bias: bool, params, state, x, y):
    def loss(params):
        W, b = params
        logits = x @ W.T + (b if bias else 0.0)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.grad(loss)(params)
    updates, state = optimiser.update(grads, state, params)
    return optax.apply_updates(params, updates), state
