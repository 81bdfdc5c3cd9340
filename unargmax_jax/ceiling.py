r"""Probability ceilings: how much probability a token can ever get, with a proved interval.

:math:`p_i^* = \max_{x \in X} \mathrm{softmax}(Wx + b)_i`. Since
:math:`\log p_i(x) = z_i(x) - \mathrm{lse}(z(x))` is concave in x, projected gradient
ascent (optax Adam, batched over tokens with ``vmap``) approaches :math:`x^*`, and

* any x gives the lower bound :math:`\log p_i(x)`;
* any :math:`\nu \ge 0` with :math:`s = \sum_j \nu_j > 0` gives the upper bound
  :math:`\sigma_X(w_i - W^T\nu/s) + b_i - \nu^T b/s - H(\nu)/s - \log s`, with
  :math:`H(\nu) = -\sum_j \nu_j \log \nu_j`, because
  :math:`\mathrm{lse}(z) \ge (\nu^T z + H(\nu))/s + \log s` (Gibbs' inequality). At
  :math:`\nu = \mathrm{softmax}(z(x^*))` the bound is tight.

Both are evaluated in the device dtype and padded by bounds on their rounding error. The
report stores x per token; the dual point is ``softmax(z(x))``, so the independent
checker can recompute both bounds from x alone. An unargmaxable token has
:math:`p_i^* \le 1/2` (some rival's logit is at least its own everywhere), and
``Report.add_ceilings`` caps the upper bound of proved-unargmaxable tokens there. The
pads are float32 rounding bounds; with ``jax_enable_x64`` the intervals are much tighter.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import domains as dom
from .bounds import algorithm_spec, dot, flush_pad, gamma, product_pad, tiny_pad
from .heads import validate_head
from .solve.context import device_dtype, domain_on_device


class Ceilings(NamedTuple):
    """Per-token proved bounds on :math:`\\log p_i^*` and the points they come from."""

    ids: np.ndarray  # (n,) token ids
    log_lower: np.ndarray  # (n,) log p_i(x) at the stored point, rounded down
    log_upper: np.ndarray  # (n,) the dual bound at nu = softmax(z(x)), rounded up
    points: np.ndarray  # (n, d) the points x

    @property
    def lower(self) -> np.ndarray:
        return np.exp(self.log_lower)

    @property
    def upper(self) -> np.ndarray:
        return np.minimum(np.exp(self.log_upper), 1.0)


def log_prob_bounds(W, b, domain: dom.Domain, token, x):
    """Rigorous ``(lower, upper)`` on :math:`\\log p^*` for one token from one point x."""
    dtype = W.dtype
    C, d = W.shape
    # Every product runs under the backend's dot algorithm, padded for it (bounds.product_pad):
    # on TPU that is a multi-pass bfloat16 product, never covered by the float32 gamma alone.
    algorithm = algorithm_spec(None, dtype)
    z = dot(W, x, algorithm) + b
    # |computed z_j - z_j| <= pad * (|w_j|.|x| + |b_j|) <= E for every j.
    E = product_pad(d, dtype, algorithm, extra=2) * (jnp.max(jnp.linalg.norm(W, axis=1)) * jnp.linalg.norm(x)
                                                     + jnp.max(jnp.abs(b))) \
        + flush_pad(algorithm, dtype) * (jnp.max(jnp.sum(jnp.abs(W), axis=1)) + jnp.sum(jnp.abs(x)))
    top = jnp.max(z)
    log_sum = jnp.log(jnp.sum(jnp.exp(z - top)))
    lse = top + log_sum
    # The sum of exponentials has relative error <= gamma_{C+2}, so its log is off by about
    # that much in absolute terms; the few roundings after it are relative to the values.
    lse_err = gamma(C + 8, dtype) + gamma(8, dtype) * (jnp.abs(lse) + jnp.abs(top) + jnp.abs(log_sum) + jnp.abs(z[token]))
    lower = z[token] - lse - 2 * E - lse_err - tiny_pad(C, dtype)

    nu = jnp.exp(z - top)  # any nonnegative weights will do; these are softmax up to scale
    s = jnp.sum(nu)
    g = W[token] - dot(nu, W, algorithm) / s
    g_err = product_pad(C, dtype, algorithm, extra=8) * (jnp.abs(W[token]) + dot(nu, jnp.abs(W), algorithm) / s) \
        + flush_pad(algorithm, dtype) * (jnp.sum(nu) + jnp.sum(jnp.abs(W), axis=0)) / s
    sigma = dom.support(domain, g)
    sigma_err = gamma(d + 4, dtype) * (jnp.sum(jnp.abs(g) * dom.extent(domain)) + jnp.sum(g_err * dom.extent(domain)))
    if isinstance(domain, dom.Ball):
        sigma_err = sigma_err + gamma(d + 4, dtype) * domain.radius * jnp.linalg.norm(g_err)
    safe = jnp.where(nu > 0, nu, 1.0)
    nu_log_nu = jnp.sum(jnp.where(nu > 0, nu * jnp.log(safe), 0.0))  # -H(nu)
    bias_term = dot(nu, b, algorithm) / s
    rest = b[token] - bias_term + nu_log_nu / s - jnp.log(s)
    rest_err = product_pad(C, dtype, algorithm, extra=8) * (jnp.abs(b[token]) + dot(nu, jnp.abs(b), algorithm) / s
                                      + jnp.sum(jnp.abs(nu * jnp.log(safe))) / s + jnp.abs(jnp.log(s)) + 1.0)
    upper = sigma + rest + sigma_err + rest_err + tiny_pad(C + d, dtype) \
        + flush_pad(algorithm, dtype) * (jnp.sum(nu) + jnp.sum(jnp.abs(b))) / s
    return jnp.minimum(lower, 0.0), jnp.minimum(upper, 0.0)  # log p <= 0


def _ascend(W, b, domain, token, x0, *, steps, learning_rate):
    """Projected Adam on log p_token(x) from x0; returns the best point seen."""

    def objective(x):
        z = jnp.matmul(W, x, precision=jax.lax.Precision.HIGHEST) + b  # the search only; bounds pad their own
        return -(z[token] - jax.nn.logsumexp(z))

    optimiser = optax.adam(learning_rate)

    def step(carry, _):
        x, state, best_x, best_f = carry
        f, grad = jax.value_and_grad(objective)(x)
        better = f < best_f
        best_x = jnp.where(better, x, best_x)
        best_f = jnp.where(better, f, best_f)
        updates, state = optimiser.update(grad, state)
        x = dom.project(domain, optax.apply_updates(x, updates))
        return (x, state, best_x, best_f), None

    init = (x0, optimiser.init(x0), x0, objective(x0))
    (x, _, best_x, best_f), _ = jax.lax.scan(step, init, None, length=steps)
    return jnp.where(objective(x) < best_f, x, best_x)


@partial(jax.jit, static_argnames=("steps", "learning_rate"))
def _chunk(W, b, domain, ids, x0, *, steps, learning_rate):
    X = jax.vmap(partial(_ascend, W, b, domain, steps=steps, learning_rate=learning_rate))(ids, x0)
    lower, upper = jax.vmap(partial(log_prob_bounds, W, b, domain))(ids, X)
    return X, lower, upper


def ceilings(W, b=None, domain: dom.Domain = dom.Box(-100.0, 100.0), *, tokens=None, steps: int = 300,
             chunk_size: int = 64, starts=None) -> Ceilings:
    """Proved intervals on each token's largest attainable softmax probability on X.

    Args:
        W, b: the head (C x d, optional bias).
        domain: a Box, Ball or NormOutput (on all of R^d the ceiling is 1 for every argmaxable
            token); for NormOutput the points are the norm's n.
        tokens: ids to bound (default all). Each costs ``steps`` passes over all C rows.
        steps: projected Adam steps per token.
        chunk_size: tokens per batch.
        starts: optional (n, d) starting points (e.g. a report's witnesses).

    Returns:
        :class:`Ceilings` with ``log_lower <= log p_i^* <= log_upper``.
    """
    W_np, b_np = validate_head(W, b)
    C, d = W_np.shape
    domain = dom.validate(domain, d)
    if isinstance(domain, dom.NormOutput):  # points are then the norm's n (see domains.norm_head)
        W_np, b_np, domain, _ = dom.norm_head(W_np, b_np, domain)
    if isinstance(domain, dom.Free):
        raise ValueError("ceilings need a bounded domain (Box or Ball); on R^d they are 1 for every argmaxable token")
    ids = np.arange(C) if tokens is None else np.asarray(tokens, np.int64).reshape(-1)
    if ids.size == 0 or ids.min() < 0 or ids.max() >= C:
        raise ValueError(f"tokens: expected ids in 0..{C - 1}")
    dtype = device_dtype()
    Wd = jnp.asarray(W_np, dtype)
    bd = jnp.asarray(np.zeros(C) if b_np is None else b_np, dtype)
    ddomain = domain_on_device(domain, dtype)
    if starts is None:
        starts = np.asarray(dom.project(ddomain, jnp.asarray(W_np[ids], dtype) * dom.extent(ddomain) /
                                        jnp.maximum(jnp.max(jnp.abs(jnp.asarray(W_np[ids], dtype)), axis=1, keepdims=True), 1e-30)))
    lr = float(0.05 * np.max(np.asarray(dom.extent(ddomain))))
    points, lows, ups = [], [], []
    for start in range(0, ids.size, chunk_size):
        part = ids[start:start + chunk_size]
        x0 = np.asarray(starts[start:start + chunk_size])
        pad = chunk_size - part.size
        if pad:  # fixed shapes: one compilation
            part = np.concatenate([part, np.full(pad, part[0])])
            x0 = np.concatenate([x0, np.repeat(x0[:1], pad, axis=0)])
        X, lo, up = _chunk(Wd, bd, ddomain, jnp.asarray(part), jnp.asarray(x0, dtype), steps=steps, learning_rate=lr)
        keep = chunk_size - pad
        points.append(np.asarray(X, np.float64)[:keep])
        lows.append(np.asarray(lo, np.float64)[:keep])
        ups.append(np.asarray(up, np.float64)[:keep])
    return Ceilings(ids, np.concatenate(lows), np.concatenate(ups), np.concatenate(points))
