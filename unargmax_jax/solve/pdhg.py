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

from collections import deque
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import bounds
from .. import domains as dom
from .._jit import kernel
from .._memory import TRIM_INTERVAL, return_freed_memory
from .._shapes import Array, Float, Int
from ..resume import Phases
from ..verdicts import UNDECIDED
from . import basis
from .context import Context, DeviceHead, margins_floor_at_zero
from .evidence import Evidence, pending, record_certificate, record_witness, start_points

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

    .. math:: P(v) = \max(v - \theta, 0), \quad \sum_j \max(v_j - \theta, 0) = 1

    with :math:`\theta \in [\max v - 1, \max v]` found by bisection (a fixed number of
    halvings, to the dtype's resolution), then two of Michelot's (1986) steps
    :math:`\theta \leftarrow (\sum_{v_j \ge \theta} v_j - 1) / |\{j: v_j \ge \theta\}|`,
    which from below move monotonically to the exact :math:`\theta` once the support is
    found. O(k) per halving: the k^2 pairwise form this replaced materialised a (k, k)
    matrix per iteration and dominated PDHG's time at k = 514 (9.2 ms against 0.29 ms per
    iteration for a batch of 64 on 2 CPU cores); XLA sorts slowly on CPU.
    """
    top = jnp.max(v)

    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        above = jnp.sum(jnp.maximum(v - mid, 0.0)) >= 1.0  # theta >= mid
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    halvings = jnp.finfo(v.dtype).nmant + 8
    theta, _ = jax.lax.fori_loop(0, halvings, halve, (top - 1.0, top))
    for _ in range(2):
        support = v >= jnp.minimum(theta, top)  # never empty: it holds the largest entry
        theta = (jnp.sum(jnp.where(support, v, 0.0)) - 1.0) / jnp.sum(support)
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


class _Loop(NamedTuple):
    """PDHG's state between chunks of iterations (one token)."""

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


class _Best(NamedTuple):
    """The best bounds seen so far and the points that prove them (restarts move the iterate)."""

    x: Array
    lower: Array
    lam: Array
    upper: Array


class _Rules(NamedTuple):
    """The static and per-token constants of one solve."""

    domain: dom.Domain
    chunk: int
    tolerance: float
    decisive: float
    adaptive_step: bool
    eta_floor: Array
    scale: Array


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
    rules = _Rules(domain, chunk, tolerance, decisive, adaptive_step,
                   # Steps below 1/||A|| are always accepted, so the adaptive step can never stall.
                   eta_floor=0.95 / operator_norm(problem.A),
                   scale=jnp.linalg.norm(dom.extent(domain)) + jnp.max(jnp.abs(problem.c)) + jnp.finfo(dtype).tiny)
    x0 = dom.project(domain, x0)
    lam0 = project_simplex(lam0)
    g0, l0, u0 = _gap(problem, domain, x0, lam0)
    state = _Loop(x0, lam0, jnp.zeros_like(x0), jnp.zeros_like(lam0), jnp.zeros((), dtype),
                  jnp.asarray(rules.eta_floor, dtype), omega0.astype(dtype),
                  x0, lam0, g0, g0, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                  jnp.asarray(RUNNING, jnp.int32), l0, u0)
    limit = max_iterations if budget is None else jnp.minimum(budget, max_iterations)

    def tracked_round(carry):
        s, best = carry
        s_new, candidate = _round(problem, rules, s)
        return s_new, _Best(x=jnp.where(candidate.lower > best.lower, candidate.x, best.x),
                            lower=jnp.maximum(best.lower, candidate.lower),
                            lam=jnp.where(candidate.upper < best.upper, candidate.lam, best.lam),
                            upper=jnp.minimum(best.upper, candidate.upper))

    s, best = jax.lax.while_loop(lambda carry: (carry[0].status == RUNNING) & (carry[0].iterations < limit),
                                 tracked_round, (state, _Best(x0, l0, lam0, u0)))
    return PDHGResult(best.x, best.lam, s.omega, best.lower, best.upper, s.iterations,
                      _status(rules, best.lower, best.upper, best.upper - best.lower))


def _iterate(problem: Restricted, rules: _Rules, step_index, carry):
    """One Chambolle-Pock step, x first, lam at the extrapolated point; with the adaptive
    step it may be rejected (then only the step size changes)."""
    x, lam, x_sum, lam_sum, weight, omega, eta = carry
    tau, sigma = eta / omega, eta * omega
    x_new = dom.project(rules.domain, x + tau * jnp.matmul(lam, problem.A, precision=bounds.HIGHEST))
    extrapolated = 2 * x_new - x
    lam_new = project_simplex(lam - sigma * (jnp.matmul(problem.A, extrapolated, precision=bounds.HIGHEST) + problem.c))
    if not rules.adaptive_step:
        return x_new, lam_new, x_sum + eta * x_new, lam_sum + eta * lam_new, weight + eta, omega, eta
    dtype = problem.A.dtype
    # PDLP's adaptive step (Applegate et al., 2021, section 3.1): accept if
    # eta <= ||dz||_omega^2 / (2 |dlam^T A dx|), then move eta towards that limit.
    dx, dlam = x_new - x, lam_new - lam
    interaction = 2 * jnp.abs(jnp.dot(dlam, jnp.matmul(problem.A, dx, precision=bounds.HIGHEST)))
    movement = omega * jnp.dot(dx, dx) + jnp.dot(dlam, dlam) / omega
    eta_limit = jnp.where(interaction > 0, movement / jnp.maximum(interaction, jnp.finfo(dtype).tiny), jnp.inf)
    accept = eta <= eta_limit
    k = (step_index + 1).astype(dtype)
    eta_next = jnp.minimum((1 - k ** -0.3) * eta_limit, (1 + k ** -0.6) * eta)
    eta_next = jnp.clip(eta_next, rules.eta_floor, 1e3 * rules.eta_floor)
    x = jnp.where(accept, x_new, x)
    lam = jnp.where(accept, lam_new, lam)
    w = jnp.where(accept, eta, 0.0)
    return x, lam, x_sum + w * x_new, lam_sum + w * lam_new, weight + w, omega, eta_next


def _gap(problem: Restricted, domain: dom.Domain, x, lam):
    """(duality gap, lower bound at x, upper bound at lam) on the competitor rows."""
    lower = primal_value(problem, x)
    upper = dual_value(problem, lam, domain)
    return upper - lower, lower, upper


def _status(rules: _Rules, lower, upper, gap_value):
    return jnp.where(lower > rules.decisive * rules.scale, POSITIVE,
                     jnp.where(upper < -rules.decisive * rules.scale, NEGATIVE,
                               jnp.where(gap_value <= rules.tolerance * rules.scale, CONVERGED,
                                         RUNNING))).astype(jnp.int32)


def _round(problem: Restricted, rules: _Rules, s: _Loop) -> tuple[_Loop, _Best]:
    """A chunk of iterations, then the restart test: restart from the better of the
    current and the averaged iterate when the gap has shrunk enough since the last
    restart, re-estimating the primal weight. Returns the new state and this round's
    best bounds with their points."""
    dtype, domain = problem.A.dtype, rules.domain
    x, lam, x_sum, lam_sum, count, omega, eta = jax.lax.fori_loop(
        s.iterations, s.iterations + rules.chunk, lambda i, c: _iterate(problem, rules, i, c),
        (s.x, s.lam, s.x_sum, s.lam_sum, s.count, s.omega, s.eta))
    # Rounding in the weighted average can step just outside X: project it back.
    x_avg = dom.project(domain, jnp.where(count > 0, x_sum / jnp.maximum(count, jnp.finfo(dtype).tiny), x))
    lam_avg = jnp.where(count > 0, lam_sum / jnp.maximum(count, jnp.finfo(dtype).tiny), lam)
    gap_cur, lower_cur, upper_cur = _gap(problem, domain, x, lam)
    gap_avg, lower_avg, upper_avg = _gap(problem, domain, x_avg, lam_avg)
    use_avg = gap_avg < gap_cur
    x_c = jnp.where(use_avg, x_avg, x)
    lam_c = jnp.where(use_avg, lam_avg, lam)
    gap_c = jnp.minimum(gap_avg, gap_cur)
    # Best bounds seen so far: either iterate gives valid bounds on S.
    lower = jnp.maximum(s.lower, jnp.maximum(lower_cur, lower_avg))
    upper = jnp.minimum(s.upper, jnp.minimum(upper_cur, upper_avg))
    iterations = s.iterations + rules.chunk
    since = s.since_restart + rules.chunk
    restart = (gap_c <= 0.2 * s.gap_anchor) | ((gap_c <= 0.8 * s.gap_anchor) & (gap_c > s.gap_previous)) \
        | (since >= jnp.maximum(0.36 * iterations, 4 * rules.chunk))
    new_omega = _primal_weight(x_c - s.x_anchor, lam_c - s.lam_anchor, omega)
    state = _Loop(
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
        status=_status(rules, lower, upper, upper - lower),
        lower=lower,
        upper=upper,
    )
    # Keep the best point for the bounds even though the iterate restarts.
    return state, _Best(x=jnp.where(lower_avg > lower_cur, x_avg, x), lower=jnp.maximum(lower_cur, lower_avg),
                        lam=jnp.where(upper_avg < upper_cur, lam_avg, lam), upper=jnp.minimum(upper_cur, upper_avg))


def _primal_weight(dx, dlam, omega):
    """PDLP's primal weight update: the geometric mean of omega and ||dlam|| / ||dx||
    since the last restart (unchanged when either did not move)."""
    dx, dlam = jnp.linalg.norm(dx), jnp.linalg.norm(dlam)
    tiny = jnp.finfo(omega.dtype).eps
    return jnp.where((dx > tiny) & (dlam > tiny), jnp.exp(0.5 * jnp.log(dlam / dx) + 0.5 * jnp.log(omega)), omega)


# ----------------------------------------------------------------------------- the stage
def _pdhg_chunk(head: DeviceHead, ids, support, x0, lam0, omega0, budget, domain, *, max_iterations, tolerance,
               decisive, num_top, adaptive_step, algorithm=None):
    """:func:`solve` for a batch of tokens on their competitor rows ``support`` (B, k), warm
    started at (x0, lam0, omega0), each for at most ``budget`` iterations; with the rigorous
    bounds of the final point and weights and each token's strongest rivals at that point.

    Only those bounds decide a token, so only their products run under ``algorithm``
    (padded for it; None: the backend's). The iterations' products and the bounds on S
    that steer their stopping rule (:func:`_gap`, unpadded) are heuristics: HIGHEST."""
    problems = jax.vmap(restrict)(head.W[ids], head.b[ids], head.W[support], head.b[support])
    run_one = partial(solve, max_iterations=max_iterations, tolerance=tolerance, decisive=decisive,
                      adaptive_step=adaptive_step)
    result = jax.vmap(lambda p, x, l, o, n: run_one(p, x, l, o, domain, budget=n))(problems, x0, lam0, omega0, budget)
    weights = result.lam / problems.row_scale
    witness = bounds.witness_bounds(head.W, head.b, head.norms, ids, result.x, num_top=num_top, algorithm=algorithm)
    upper = bounds.certificate_bounds(head.W, head.b, domain, ids, support, weights, algorithm=algorithm)
    return result, witness, weights, upper


pdhg_chunk = kernel(_pdhg_chunk, static_argnames=("max_iterations", "tolerance", "decisive", "num_top", "adaptive_step",
                                                   "algorithm"))


def batch_kernel(ctx: Context):
    """:func:`pdhg_chunk` with this run's static arguments (the warm-up compiles the same)."""
    return partial(pdhg_chunk, max_iterations=ctx.settings.pdhg_round_iterations, tolerance=ctx.tolerance,
                   decisive=ctx.decisive, num_top=ctx.competitors, adaptive_step=ctx.settings.pdhg_adaptive_step,
                   algorithm=ctx.settings.dot_algorithm)


# Below this many flops per full-width round (its two products per iteration), a smaller
# kernel for the tail saves less time than compiling it takes (seconds on a CPU).
TAIL_MIN_FLOPS = 1e10


def tail_slots(ctx: Context) -> int:
    """Batch size of PDHG's short tail (few tokens left): every slot of a vmapped loop costs
    time, so the tail gets its own smaller kernel once a full-width round is expensive."""
    n = ctx.hard_batch
    if 4.0 * n * ctx.competitors * ctx.W.shape[1] * ctx.settings.pdhg_round_iterations < TAIL_MIN_FLOPS:
        return n
    return ctx.place.batch(max(1, n // 8))


def refresh_support(top, support, lam, *, keep):
    """New competitor sets: rows carrying dual weight first, then the strongest at x,
    then the previous set (dict.fromkeys keeps the first occurrence, in order)."""
    k = support.shape[1]
    out = np.empty_like(support)
    for r in range(support.shape[0]):
        carried = support[r][lam[r] > keep]
        ordered = dict.fromkeys(int(j) for j in np.concatenate([carried, top[r], support[r]]))
        out[r] = list(ordered)[:k]
    return out


class _Warm(NamedTuple):
    """A token's PDHG state between rounds: its competitor set, weights on it, primal weight."""

    support: np.ndarray
    lam: np.ndarray
    omega: float


def _token_budget(ctx: Context) -> int:
    """PDHG iterations per token. Without a bias and with 0 inside X, x = 0 shows m* >= 0:
    no float certificate can exist, so the exact stage (if d allows it) takes over after a
    short PDHG run. Only on a box, though: the exact stage makes witnesses only there, so
    on a ball a token with a small positive margin needs PDHG's whole budget to find one
    (a token whose margin is 0 still leaves PDHG early, once it has converged). On R^d
    (``exact_certificates_only``) PDHG's float certificates prove nothing, so there too it
    only gets a short run before the basis stage."""
    settings = ctx.settings
    zero_floor = margins_floor_at_zero(ctx)
    exact_later = (zero_floor and _exact_available(ctx)) or (ctx.exact_certificates_only and settings.basis_rounds > 0)
    if isinstance(ctx.domain, dom.Box) and exact_later:
        return min(settings.pdhg_iterations, 2 * settings.pdhg_round_iterations)
    return settings.pdhg_iterations


def _exact_available(ctx: Context) -> bool:
    """Whether a later stage decides margins of exactly 0: the basis stage on a box (any d),
    the rational stage for d <= ``rational_max_dim``."""
    return isinstance(ctx.domain, dom.Box) or ctx.W.shape[1] <= ctx.settings.rational_max_dim


def run(ctx: Context, evidence: Evidence, phases: Phases) -> None:
    """PDHG rounds with row generation. Slots of a fixed-size batch are refilled as tokens
    finish, so one slow token never holds up a whole batch; between rounds each token's
    competitor set takes in the strongest rows at its point."""
    basis.decide_groups(ctx, evidence)
    if ctx.settings.pdhg_iterations <= 0:
        return
    queue = deque(int(i) for i in phases.todo("pdhg", pending(evidence)))
    total, finished = len(queue), 0
    warm: dict[int, _Warm] = {}
    used = np.zeros(ctx.W.shape[0], np.int64)
    budget = _token_budget(ctx)
    kernel = batch_kernel(ctx)
    active: list[int] = []
    while (queue or active) and not ctx.expired():
        while queue and len(active) < ctx.hard_batch:
            active.append(queue.popleft())
        ids, support, lam0, omega0, rounds = _batch(ctx, evidence, active, warm)
        result, wb, weights, upper = kernel(
            ctx.head, *(ctx.place.split(a) for a in (ids, support)),
            *(ctx.place.split(a, ctx.dtype) for a in (start_points(ctx, evidence, ids), lam0, omega0)),
            ctx.place.split(rounds, jnp.int32), ctx.device_domain)
        record_witness(ctx, evidence, ids, len(active), result.x, wb, "pdhg")
        record_certificate(ctx, evidence, ids, len(active), support, weights, upper, "pdhg")
        return_freed_memory(min_interval=TRIM_INTERVAL)
        still = _carry_over(ctx, evidence, ids[:len(active)], support, result, np.asarray(wb.top), used, budget, warm)
        finished += len(active) - len(still)
        active = still
        ctx.progress.update("pdhg", finished, total)
    evidence.pdhg_support.update({i: w.support for i, w in warm.items()})


def _batch(ctx: Context, evidence: Evidence, active: list[int], warm: dict):
    """The next round's fixed-size batch: active tokens, padded by repeating the first
    (with no iterations), each starting from its warm state or its competitor set."""
    k = ctx.competitors
    # A short tail runs in a smaller batch: every slot of a vmapped loop costs time.
    slots = ctx.hard_batch if len(active) > ctx.hard_batch // 8 else tail_slots(ctx)
    ids = np.array(active + [active[0]] * (slots - len(active)), np.int64)
    omega_start = 1.0 / max(float(np.max(ctx.extent)), 1e-30)
    support = np.stack([warm[i].support if i in warm else evidence.top[i] for i in ids])
    lam0 = np.stack([warm[i].lam if i in warm else np.full(k, 1.0 / k) for i in ids])
    omega0 = np.array([warm[i].omega if i in warm else omega_start for i in ids])
    rounds = np.where(np.arange(slots) < len(active), ctx.settings.pdhg_round_iterations, 0)
    return ids, support, lam0, omega0, rounds


def _carry_over(ctx: Context, evidence: Evidence, ids, support, result, tops, used, budget: int, warm: dict) -> list:
    """The tokens of a round that go on to the next, with their new warm states.

    A token stops when decided, out of iterations, or converged to a margin
    indistinguishable from 0: that goes to the exact stage (which does its own row
    generation) when d allows; otherwise PDHG goes on until the strongest rows at x are all
    in the competitor set."""
    k = ctx.competitors
    lam = np.asarray(result.lam, np.float64)
    status, omega = np.asarray(result.status), np.asarray(result.omega, np.float64)
    iterations = np.asarray(result.iterations)
    new_support = refresh_support(tops, support, lam, keep=1e-12)
    still = []
    for r, i in enumerate(int(i) for i in ids):
        used[i] += max(int(iterations[r]), 32)  # a call that could not iterate still counts
        stuck = status[r] == CONVERGED and (
            _exact_available(ctx) or set(tops[r][: max(1, k // 4)].tolist()) <= set(support[r].tolist()))
        if evidence.verdict[i] != UNDECIDED or stuck or used[i] >= budget:
            continue
        old = dict(zip(support[r].tolist(), lam[r].tolist()))
        warm[i] = _Warm(new_support[r], np.array([old.get(int(j), 0.0) for j in new_support[r]]), omega[r])
        still.append(i)
    return still
