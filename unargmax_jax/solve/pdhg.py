"""Stage 3: a restarted primal-dual hybrid gradient solver for one token's margin LP.

On the competitor rows S (rows scaled to unit norm, a diagonal preconditioner that
keeps the sign of every margin), with :math:`a_j = (w_i - w_j)/r_j`,
:math:`c_j = (b_i - b_j)/r_j`, it solves the saddle problem

.. math:: \\max_{x \\in X} \\min_{\\lambda \\in \\Delta} \\lambda^T (A x + c)

by :math:`x^+ = P_X(x + \\tau A^T \\lambda)`,
:math:`\\lambda^+ = P_\\Delta(\\lambda - \\sigma (A(2x^+ - x) + c))` with
:math:`\\tau\\sigma\\|A\\|^2 < 1` (Chambolle-Pock), plus the PDLP devices: restarts to
the average or current iterate when the duality gap has shrunk enough
(Applegate et al., 2021, section 3.2; here the gap is exact because X and the simplex
are bounded), and a primal weight :math:`\\omega` (:math:`\\tau = \\eta/\\omega`,
:math:`\\sigma = \\eta\\omega`) re-estimated at every restart.

Everything is for a single token; the engine ``vmap``s it over a chunk.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from .._shapes import Array, Float, Int

from .. import bounds
from .. import domains as dom

RUNNING, POSITIVE, NEGATIVE, CONVERGED = 0, 1, 2, 3
"""Per-token status: hit the iteration cap / margin on S proved > 0 / < 0 in floats /
gap below tolerance with a margin indistinguishable from 0."""


class Restricted(NamedTuple):
    """The scaled restricted problem of one token."""

    A: Float[Array, "k d"]
    c: Float[Array, " k"]
    row_scale: Float[Array, " k"]  # r_j; certificate weights are lam_j / r_j


class PDHGResult(NamedTuple):
    x: Float[Array, " d"]
    lam: Float[Array, " k"]  # on the scaled rows, in the simplex
    omega: Float[Array, ""]
    lower: Float[Array, ""]  # min_j (A x + c)_j  (scaled margin on S)
    upper: Float[Array, ""]  # lam^T c + sigma_X(A^T lam)
    iterations: Int[Array, ""]
    status: Int[Array, ""]


def restrict(w_own, b_own, rows, biases) -> Restricted:
    """Scale each row difference to unit length (a zero difference keeps scale 1)."""
    A = w_own - rows
    norms = jnp.linalg.norm(A, axis=1)
    row_scale = jnp.where(norms > 0, norms, 1.0)
    return Restricted(A / row_scale[:, None], (b_own - biases) / row_scale, row_scale)


def project_simplex(v: Float[Array, " k"]) -> Float[Array, " k"]:
    r"""Euclidean projection onto the probability simplex.

    .. math:: P(v) = \max(v - \theta, 0), \quad \theta = \max_j \frac{\sum_{i: v_i \ge v_j} v_i - 1}{|\{i: v_i \ge v_j\}|}

    (the largest prefix average of the sorted entries, Held et al., 1974), computed with
    k^2 comparisons instead of a sort, which XLA runs slowly on CPU for small k.
    """
    above = (v[None, :] >= v[:, None]).astype(v.dtype)  # above[j, i] = [v_i >= v_j]
    theta = jnp.max((jnp.matmul(above, v, precision=bounds.HIGHEST) - 1.0) / jnp.sum(above, axis=1))
    return jnp.maximum(v - theta, 0.0)


def operator_norm(A: Float[Array, "k d"], *, iterations: int = 30) -> Float[Array, ""]:
    """Upper estimate of :math:`\\|A\\|_2` by power iteration, inflated 5% for safety."""
    v = jnp.ones(A.shape[1], A.dtype) / jnp.sqrt(A.shape[1])

    def body(_, v):
        w = jnp.matmul(A.T, jnp.matmul(A, v, precision=bounds.HIGHEST), precision=bounds.HIGHEST)
        return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(A.dtype).tiny)

    v = jax.lax.fori_loop(0, iterations, body, v)
    estimate = jnp.linalg.norm(jnp.matmul(A, v, precision=bounds.HIGHEST))
    # Frobenius norm is a hard upper bound; never step past it.
    return jnp.minimum(jnp.maximum(1.05 * estimate, 1e-3 * jnp.linalg.norm(A)), jnp.linalg.norm(A)) + jnp.finfo(A.dtype).tiny


def primal_value(problem: Restricted, x) -> Float[Array, ""]:
    return jnp.min(jnp.matmul(problem.A, x, precision=bounds.HIGHEST) + problem.c)


def dual_value(problem: Restricted, lam, domain: dom.Domain) -> Float[Array, ""]:
    return jnp.dot(lam, problem.c) + dom.support(domain, jnp.matmul(lam, problem.A, precision=bounds.HIGHEST))


def solve(
    problem: Restricted,
    x0: Float[Array, " d"],
    lam0: Float[Array, " k"],
    omega0: Float[Array, ""],
    domain: dom.Domain,
    *,
    max_iterations: int,
    chunk: int = 32,
    tolerance: float,
    decisive: float,
    budget: Int[Array, ""] | None = None,
    adaptive_step: bool = False,
) -> PDHGResult:
    """Restarted PDHG on one token's restricted saddle problem.

    Stops when the margin's sign is clear on S (``lower`` or ``-upper`` above
    ``decisive`` times the problem's scale, far above rounding noise), when the duality
    gap falls below ``tolerance`` times the scale, or after ``min(max_iterations,
    budget)`` iterations (rounded up to a multiple of ``chunk``).

    Args:
        problem: scaled rows from :func:`restrict`.
        x0, lam0: warm start (lam0 is projected onto the simplex).
        omega0: initial primal weight (about 1 / domain radius).
        tolerance: relative gap at which a near-zero margin counts as converged.
        decisive: relative margin at which the sign counts as clear.
        budget: per-token iteration budget (traced; 0 makes a padding slot free).
        adaptive_step: PDLP's adaptive step size instead of the fixed safe step
            0.95 / ||A|| (off by default: on the margin LPs measured so far it costs
            more per iteration than it saves; see scripts/bench_lp.py --adaptive-step).
    """
    dtype = problem.A.dtype
    # Steps below 1/||A|| are always accepted, so the adaptive step can never stall.
    eta_floor = 0.95 / operator_norm(problem.A)
    scale = jnp.linalg.norm(dom.extent(domain)) + jnp.max(jnp.abs(problem.c)) + jnp.finfo(dtype).tiny
    x0 = dom.project(domain, x0)
    lam0 = project_simplex(lam0)

    def iterate(step_index, carry):
        x, lam, x_sum, lam_sum, weight, omega, eta = carry
        tau, sigma = eta / omega, eta * omega
        x_new = dom.project(domain, x + tau * jnp.matmul(lam, problem.A, precision=bounds.HIGHEST))
        extrapolated = 2 * x_new - x
        lam_new = project_simplex(lam - sigma * (jnp.matmul(problem.A, extrapolated, precision=bounds.HIGHEST) + problem.c))
        if not adaptive_step:
            return x_new, lam_new, x_sum + eta * x_new, lam_sum + eta * lam_new, weight + eta, omega, eta
        # PDLP's adaptive step (Applegate et al., 2021, section 3.1): accept if
        # eta <= ||dz||_omega^2 / (2 |dlam^T A dx|), then move eta towards that limit.
        dx, dlam = x_new - x, lam_new - lam
        interaction = 2 * jnp.abs(jnp.dot(dlam, jnp.matmul(problem.A, dx, precision=bounds.HIGHEST)))
        movement = omega * jnp.dot(dx, dx) + jnp.dot(dlam, dlam) / omega
        eta_limit = jnp.where(interaction > 0, movement / jnp.maximum(interaction, jnp.finfo(dtype).tiny), jnp.inf)
        accept = eta <= eta_limit
        k = (step_index + 1).astype(dtype)
        eta_next = jnp.minimum((1 - k ** -0.3) * eta_limit, (1 + k ** -0.6) * eta)
        eta_next = jnp.clip(eta_next, eta_floor, 1e3 * eta_floor)
        x = jnp.where(accept, x_new, x)
        lam = jnp.where(accept, lam_new, lam)
        w = jnp.where(accept, eta, 0.0)
        return x, lam, x_sum + w * x_new, lam_sum + w * lam_new, weight + w, omega, eta_next

    def gap(x, lam):
        lower = primal_value(problem, x)
        upper = dual_value(problem, lam, domain)
        return upper - lower, lower, upper

    class Loop(NamedTuple):
        x: Array
        lam: Array
        x_sum: Array
        lam_sum: Array
        count: Array  # total step weight in the current average
        eta: Array  # current step size
        omega: Array
        x_anchor: Array  # iterate at the last restart
        lam_anchor: Array
        gap_anchor: Array
        gap_previous: Array
        since_restart: Array
        iterations: Array
        status: Array
        lower: Array
        upper: Array

    g0, l0, u0 = gap(x0, lam0)
    state = Loop(x0, lam0, jnp.zeros_like(x0), jnp.zeros_like(lam0), jnp.zeros((), dtype),
                 jnp.asarray(eta_floor, dtype), omega0.astype(dtype),
                 x0, lam0, g0, g0, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                 jnp.asarray(RUNNING, jnp.int32), l0, u0)

    def status_of(lower, upper, gap_value):
        return jnp.where(lower > decisive * scale, POSITIVE,
                         jnp.where(upper < -decisive * scale, NEGATIVE,
                                   jnp.where(gap_value <= tolerance * scale, CONVERGED, RUNNING))).astype(jnp.int32)

    limit = max_iterations if budget is None else jnp.minimum(budget, max_iterations)

    def cond(s: Loop):
        return (s.status == RUNNING) & (s.iterations < limit)

    def body(s: Loop):
        x, lam, x_sum, lam_sum, count, omega, eta = jax.lax.fori_loop(
            s.iterations, s.iterations + chunk, iterate, (s.x, s.lam, s.x_sum, s.lam_sum, s.count, s.omega, s.eta))
        # Rounding in the weighted average can step just outside X: project it back.
        x_avg = dom.project(domain, jnp.where(count > 0, x_sum / jnp.maximum(count, jnp.finfo(dtype).tiny), x))
        lam_avg = jnp.where(count > 0, lam_sum / jnp.maximum(count, jnp.finfo(dtype).tiny), lam)
        gap_cur, lower_cur, upper_cur = gap(x, lam)
        gap_avg, lower_avg, upper_avg = gap(x_avg, lam_avg)
        use_avg = gap_avg < gap_cur
        x_c = jnp.where(use_avg, x_avg, x)
        lam_c = jnp.where(use_avg, lam_avg, lam)
        gap_c = jnp.minimum(gap_avg, gap_cur)
        # Best bounds seen so far: either iterate gives valid bounds on S.
        lower = jnp.maximum(s.lower, jnp.maximum(lower_cur, lower_avg))
        upper = jnp.minimum(s.upper, jnp.minimum(upper_cur, upper_avg))
        iterations = s.iterations + chunk
        since = s.since_restart + chunk
        restart = (gap_c <= 0.2 * s.gap_anchor) | ((gap_c <= 0.8 * s.gap_anchor) & (gap_c > s.gap_previous)) \
            | (since >= jnp.maximum(0.36 * iterations, 4 * chunk))
        dx = jnp.linalg.norm(x_c - s.x_anchor)
        dlam = jnp.linalg.norm(lam_c - s.lam_anchor)
        tiny = jnp.finfo(dtype).eps
        new_omega = jnp.where((dx > tiny) & (dlam > tiny), jnp.exp(0.5 * jnp.log(dlam / dx) + 0.5 * jnp.log(omega)), omega)
        # Keep the best point for the bounds even though the iterate restarts.
        x_keep = jnp.where(lower_avg > lower_cur, x_avg, x)
        lam_keep = jnp.where(upper_avg < upper_cur, lam_avg, lam)
        return Loop(
            x=jnp.where(restart, x_c, x),
            lam=jnp.where(restart, lam_c, lam),
            x_sum=jnp.where(restart, jnp.zeros_like(x_sum), x_sum),
            lam_sum=jnp.where(restart, jnp.zeros_like(lam_sum), lam_sum),
            count=jnp.where(restart, 0.0, count).astype(dtype),
            eta=eta,
            omega=jnp.where(restart, new_omega, omega),
            x_anchor=jnp.where(restart, x_c, s.x_anchor),
            lam_anchor=jnp.where(restart, lam_c, s.lam_anchor),
            gap_anchor=jnp.where(restart, gap_c, s.gap_anchor),
            gap_previous=gap_c,
            since_restart=jnp.where(restart, 0, since),
            iterations=iterations,
            status=status_of(lower, upper, upper - lower),
            lower=lower,
            upper=upper,
        ), x_keep, jnp.maximum(lower_cur, lower_avg), lam_keep, jnp.minimum(upper_cur, upper_avg)

    def tracked_body(carry):
        s, best_x, best_lower, best_lam, best_upper = carry
        s_new, x_keep, lower_keep, lam_keep, upper_keep = body(s)
        best_x = jnp.where(lower_keep > best_lower, x_keep, best_x)
        best_lower = jnp.maximum(best_lower, lower_keep)
        best_lam = jnp.where(upper_keep < best_upper, lam_keep, best_lam)
        best_upper = jnp.minimum(best_upper, upper_keep)
        return s_new, best_x, best_lower, best_lam, best_upper

    s, best_x, best_lower, best_lam, best_upper = jax.lax.while_loop(
        lambda carry: cond(carry[0]), tracked_body, (state, x0, l0, lam0, u0)
    )
    return PDHGResult(best_x, best_lam, s.omega, best_lower, best_upper, s.iterations,
                      status_of(best_lower, best_upper, best_upper - best_lower))
