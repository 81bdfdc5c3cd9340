"""Stage 2: differentiable margin ascent over a top-k competitor set.

Maximises the smoothed margin

.. math:: f_\\tau(x) = z_i(x) - \\tau \\log \\sum_{j \\in S} \\exp(z_j(x) / \\tau)

over X with Adam and projection, annealing :math:`\\tau` geometrically. The softmax
weights :math:`\\lambda = \\mathrm{softmax}(z_S(x)/\\tau)` are dual iterates of the saddle
problem of DESIGN.md section 2, so their running average is a certificate candidate.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import bounds
from .. import domains as dom
from .._jit import kernel
from .._memory import TRIM_INTERVAL, return_freed_memory
from .._shapes import Array, Float
from ..resume import Phases
from .context import Context, DeviceHead, chunks
from .evidence import Evidence, pending, record_certificate, record_witness, start_points


class AscentResult(NamedTuple):
    x: Float[Array, " d"]  # best point seen (by hard margin over S)
    margin: Float[Array, ""]  # hard margin over S at x
    weights: Float[Array, " k"]  # averaged softmax weights over S (sum 1)


def margin_ascent(
    w_own: Float[Array, " d"],
    b_own: Float[Array, ""],
    rows: Float[Array, "k d"],
    biases: Float[Array, " k"],
    x0: Float[Array, " d"],
    domain: dom.Domain,
    *,
    steps: int,
    learning_rate: float,
) -> AscentResult:
    """Projected Adam on the smoothed margin for one token against rows S.

    The temperature runs from 10% to 1e-5 of the token's logit-gap scale; weights are
    averaged over the second half of the run, where the temperature is small.
    """
    dtype = rows.dtype
    diffs = w_own - rows
    extent_norm = jnp.linalg.norm(dom.extent(domain))
    scale = jnp.max(jnp.linalg.norm(diffs, axis=1)) * extent_norm + jnp.max(jnp.abs(b_own - biases))
    scale = jnp.maximum(scale, jnp.finfo(dtype).tiny)
    schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=1e-3)
    optimiser = optax.adam(schedule)

    # A heuristic iterate: no bound rests on these products (the stage re-proves the point
    # and the weights with bounds.witness_bounds / certificate_bounds under the check's dot
    # algorithm), so they keep the default HIGHEST precision.
    def gaps(x):
        return jnp.matmul(diffs, x, precision=bounds.HIGHEST) + (b_own - biases)

    def smoothed(x, tau):
        # z_i - tau * logsumexp(z_S / tau) written on the gaps z_i - z_j for stability.
        return tau * jax.nn.logsumexp(-gaps(x) / tau) * -1.0

    def step(t, carry):
        x, state, best_x, best_m, weight_sum = carry
        tau = scale * 0.1 * (1e-4) ** (t / steps)
        grad = jax.grad(smoothed)(x, tau)
        updates, state = optimiser.update(-grad, state, x)
        x = dom.project(domain, optax.apply_updates(x, updates))
        g = gaps(x)
        margin = jnp.min(g)
        better = margin > best_m
        best_x = jnp.where(better, x, best_x)
        best_m = jnp.where(better, margin, best_m)
        lam = jax.nn.softmax(-g / tau)
        weight_sum = weight_sum + jnp.where(t >= steps // 2, lam, 0.0)
        return x, state, best_x, best_m, weight_sum

    x0 = dom.project(domain, x0)
    init = (x0, optimiser.init(x0), x0, jnp.min(gaps(x0)), jnp.zeros(rows.shape[0], dtype))
    _, _, best_x, best_m, weight_sum = jax.lax.fori_loop(0, steps, step, init)
    return AscentResult(best_x, best_m, weight_sum / jnp.maximum(jnp.sum(weight_sum), jnp.finfo(dtype).tiny))



# ----------------------------------------------------------------------------- the stage
def _ascent_chunk(head: DeviceHead, ids, support, x0, domain, *, steps, learning_rate, num_top, algorithm=None):
    """:func:`margin_ascent` for a batch of tokens against their competitor rows ``support``
    (B, k), with the rigorous bounds of its point and of its averaged weights (their
    products under ``algorithm``, padded for it; None: the backend's)."""
    solve = partial(margin_ascent, steps=steps, learning_rate=learning_rate)
    result = jax.vmap(solve, in_axes=(0, 0, 0, 0, 0, None))(
        head.W[ids], head.b[ids], head.W[support], head.b[support], x0, domain)
    witness = bounds.witness_bounds(head.W, head.b, head.norms, ids, result.x, num_top=num_top, algorithm=algorithm)
    upper = bounds.certificate_bounds(head.W, head.b, domain, ids, support, result.weights, algorithm=algorithm)
    return result.x, witness, result.weights, upper


ascent_chunk = kernel(_ascent_chunk, static_argnames=("steps", "learning_rate", "num_top", "algorithm"))


def batch_kernel(ctx: Context):
    """:func:`ascent_chunk` with this run's static arguments (the warm-up compiles the same)."""
    return partial(ascent_chunk, steps=ctx.settings.ascent_steps, learning_rate=ctx.learning_rate,
                   num_top=ctx.competitors, algorithm=ctx.settings.dot_algorithm)


def run(ctx: Context, evidence: Evidence, phases: Phases) -> None:
    """Margin ascent from each pending row's best point, against its competitor set."""
    todo = phases.todo("ascent", pending(evidence))
    kernel = batch_kernel(ctx)
    done = 0
    for ids, valid in chunks(todo, ctx.hard_batch):
        if ctx.expired():
            break
        support = np.stack([evidence.top[int(i)] for i in ids])
        x, wb, weights, upper = kernel(ctx.head, ctx.place.split(ids), ctx.place.split(support),
                                       ctx.place.split(start_points(ctx, evidence, ids), ctx.dtype),
                                       ctx.device_domain)
        record_witness(ctx, evidence, ids, valid, x, wb, "ascent")
        record_certificate(ctx, evidence, ids, valid, support, weights, upper, "ascent")
        return_freed_memory(min_interval=TRIM_INTERVAL)
        done += valid
        ctx.progress.update("ascent", done, todo.size)
