"""Stage 1: cheap starting points that already prove most tokens argmaxable.

A token whose row points "outwards" wins at a point along its own direction. Rows of
trained heads share a large common component and are far from isotropic, so the
direction that wins is the whitened one, :math:`v_i = \\Sigma^{-1}(w_i - \\mu)` (row mean
and covariance): in whitened coordinates :math:`u_j = \\Sigma^{-1/2}(w_j - \\mu)` the
logit gap is :math:`(u_i - u_j)^T u_i`, positive for every j unless :math:`u_i` lies
inside the cloud. Points along :math:`v_i` and :math:`w_i` (scaled to touch the domain's
boundary) and the box vertex :math:`c + h \\odot \\mathrm{sign}(w_i)` decide almost every
token of real heads with one blocked all-pairs product each. The optional braid-reflect steps (after Grivas et
al., 2022) reflect x across the decision boundary of the strongest competitor.

A precision ladder (``Settings.bf16_screen``): the first pass can run first as one
bfloat16 product (``BF16_BF16_F32``) padded for it; a token whose margin clears that
larger pad is decided, and only the rest is screened again at full precision
(``Settings.dot_algorithm``). Every bound is rigorous either way, so verdicts do not
depend on the ladder; only the reported lower bounds of the tokens it decides do.
"""

from __future__ import annotations

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
from . import polish, symmetric
from .context import Context, DeviceHead, chunks
from .evidence import (
    Evidence,
    pending,
    record_certificate,
    record_witness,
    start_points,
)
from .witness import witness_chunk


def whitened_directions(rows: Float[Array, "n d"], mean: Float[Array, " d"],
                        precision: Float[Array, "d d"]) -> Float[Array, "n d"]:
    """:math:`v_i = P(w_i - \\mu)`, the direction along which row i wins in whitened coordinates."""
    return jnp.matmul(rows - mean, precision, precision=jax.lax.Precision.HIGHEST)


def starting_points(rows: Float[Array, "n d"], domain: dom.Domain,
                    directions: Float[Array, "n d"] | None = None) -> Float[Array, "n m d"]:
    """Candidate points per token: along ``directions`` (default its own row), along its own
    row, the matching box vertex, the centre."""
    tiny = jnp.finfo(rows.dtype).tiny
    directions = rows if directions is None else directions
    if isinstance(domain, dom.Box):
        centre = (domain.lo + domain.hi) / 2
        half = (domain.hi - domain.lo) / 2

        def along(v):
            return centre + half * v / jnp.maximum(jnp.max(jnp.abs(v), axis=1, keepdims=True), tiny)

        candidates = [along(directions), along(rows), centre + half * jnp.sign(rows),
                      jnp.broadcast_to(centre, rows.shape)]
    elif isinstance(domain, dom.Ball):
        def along(v):
            return domain.center + domain.radius * v / jnp.maximum(jnp.linalg.norm(v, axis=1, keepdims=True), tiny)

        candidates = [along(directions), along(rows), jnp.broadcast_to(domain.center, rows.shape)]
    else:
        raise TypeError(f"cannot screen on {type(domain).__name__}; resolve Free first")
    return dom.project(domain, jnp.stack(candidates, axis=1))


def braid_reflect(
    W: Float[Array, "c d"],
    b: Float[Array, " c"],
    ids: Int[Array, " n"],
    X: Float[Array, "n d"],
    domain: dom.Domain,
    *,
    steps: int,
) -> Float[Array, "n d"]:
    """Reflect each x across the boundary with its strongest competitor, ``steps`` times.

    .. math:: x \\leftarrow P_X\\big(x - 2\\,\\frac{(w_i - w_j)^T x + b_i - b_j}{\\|w_i - w_j\\|^2}(w_i - w_j)\\big)

    applied only while token i is not the argmax; the best point seen is returned.
    """
    spec = bounds.algorithm_spec(None, W.dtype)

    def margin_and_rival(x):
        rivals, z_own = bounds.rival_logits(W, b, ids, x, spec)  # (C, n): W read in place
        strongest = jnp.max(rivals, axis=0)
        return z_own - strongest, jnp.argmax(rivals == strongest[None, :], axis=0)

    def step(_, carry):
        x, best_x, best_m = carry
        m, j = margin_and_rival(x)
        improved = m > best_m
        best_x = jnp.where(improved[:, None], x, best_x)
        best_m = jnp.where(improved, m, best_m)
        direction = W[ids] - W[j]
        norm2 = jnp.maximum(jnp.sum(direction**2, axis=1), jnp.finfo(W.dtype).tiny)
        shift = 2 * (m / norm2)[:, None] * direction
        x = jnp.where((m <= 0)[:, None], dom.project(domain, x - shift), x)
        return x, best_x, best_m

    m0, _ = margin_and_rival(X)
    _, best_x, _ = jax.lax.fori_loop(0, steps, step, (X, X, m0))
    return best_x


def hashed_uniform(key: Int[Array, " 2"], ids: Int[Array, " n"], d: int) -> Float[Array, "n d"]:
    """A random point per token in [-1, 1)^d, keyed by (key, token id, coordinate), so
    chunking does not change it: a 32-bit integer hash (lowbias32) per entry. Elementwise
    integer ops compile in a fraction of a vmapped threefry's time (0.1 s against 0.6 s
    on 2 cores), and the screen's first run waits for that compile."""
    words = jnp.asarray(key).astype(jnp.uint32).reshape(-1)
    x = (ids.astype(jnp.uint32)[:, None] * jnp.uint32(d) + jnp.arange(d, dtype=jnp.uint32)[None]) ^ words[0]
    x = x * jnp.uint32(0x9E3779B1) + words[-1]
    for shift, multiplier in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x = (x ^ (x >> shift)) * jnp.uint32(multiplier)
    x = x ^ (x >> 16)
    return (x >> 8).astype(jnp.float32) * jnp.float32(2.0**-23) - 1.0  # 24 random bits, exact in float32


# ----------------------------------------------------------------------------- the stage
def _screen_chunk(head: DeviceHead, ids, domain, key, *, all_candidates, half=False, algorithm=None):
    """Best starting point per token: only "along its whitened row" in the first pass (it
    decides most tokens of real heads with one product), all candidates in the second.
    With ``half`` every candidate is rounded to float16 first (it stays in the box, see
    :func:`~unargmax_jax.solve.context.half_witnesses`), so the points evaluated are the
    points stored."""
    rows = head.W[ids]
    points = starting_points(rows, domain, whitened_directions(rows, head.mean, head.precision))
    if all_candidates:
        draw = hashed_uniform(key, ids, head.W.shape[1]).astype(head.W.dtype)
        extra = dom.project(domain, dom.extent(domain) * draw)
        points = jnp.concatenate([points, extra[:, None, :]], axis=1)
    else:
        points = points[:, :1]
    if half:
        points = points.astype(jnp.float16).astype(points.dtype)
    n, m, d = points.shape
    # All candidates in one product (separate products per candidate fuse badly on CPU).
    every = bounds.witness_bounds(head.W, head.b, head.norms, jnp.repeat(ids, m), points.reshape(n * m, d), num_top=0,
                                  algorithm=algorithm)
    best = jnp.argmax(every.lower.reshape(n, m), axis=1)
    x = jnp.take_along_axis(points, best[:, None, None], axis=1)[:, 0]
    witness = jax.tree_util.tree_map(
        lambda a: jnp.take_along_axis(a.reshape((n, m) + a.shape[1:]), best.reshape((n, 1) + (1,) * (a.ndim - 1)), axis=1)[:, 0],
        every)
    # The strongest competitor alone is a (weak) certificate: every token gets a finite U.
    # (argmax, not top_k's first column: gathering with top_k's output is slow on XLA:CPU)
    one = witness.rival[:, None]
    upper = bounds.certificate_bounds(head.W, head.b, domain, ids, one, jnp.ones(one.shape, head.W.dtype),
                                      algorithm=algorithm)
    return x, witness, one, upper


screen_chunk = kernel(_screen_chunk, static_argnames=("all_candidates", "half", "algorithm"))


def _braid_chunk(head: DeviceHead, ids, x, domain, *, num_top, steps, algorithm=None):
    x = braid_reflect(head.W, head.b, ids, x, domain, steps=steps)
    return x, bounds.witness_bounds(head.W, head.b, head.norms, ids, x, num_top=num_top, algorithm=algorithm)


braid_chunk = kernel(_braid_chunk, static_argnames=("num_top", "steps", "algorithm"))


def second_pass_batch(ctx: Context) -> int:
    """The second pass tries ~5 points per token: fewer tokens per product keep its
    memory (points x C logits) at the first pass's."""
    return ctx.place.batch(max(1, ctx.batch // 4))


COMPETITOR_BATCH = 32


def competitor_batch(ctx: Context) -> int:
    """Tokens per competitor-set kernel: usually few tokens get there, and a small batch
    keeps top_k's (batch x C) buffers small; one size, so the background compile
    (:mod:`.warmup`) knows it before screening starts (with thousands of tokens pending
    a larger batch would save about a third of this stage's products, and cost a compile)."""
    return ctx.place.batch(min(ctx.batch, COMPETITOR_BATCH))


def run(ctx: Context, evidence: Evidence, phases: Phases) -> None:
    """Screen every pending row: its whitened row first (after a bfloat16 rung, when the
    settings ask for one), then every candidate for the rest; before the second pass and
    after it, the competitor sets (top-k at the best point) of the rows still undecided
    and their least-squares certificates (:mod:`.polish`)."""
    full = ctx.settings.dot_algorithm
    passes = (((False, "screen bf16", bounds.FAST_ALGORITHM),) if ctx.settings.bf16_screen else ()) + (
        (False, "screen", full), (True, "screen 2", full))
    for all_candidates, name, algorithm in passes:
        if all_candidates and polish.applies(ctx):
            # Before the second pass too: a row that a mixture of its rivals at the first
            # pass's point dominates (a merged, planted or re-initialised token) is decided
            # in milliseconds of host work, where the second pass and braid would evaluate
            # the whole head about twenty times for it first.
            _rivals_and_certificates(ctx, evidence, phases, "top 1")
        started = phases.begin(name, pending(evidence))
        if started is not None:
            _screen_pass(ctx, evidence, phases, name, *started, all_candidates=all_candidates, algorithm=algorithm)
    return_freed_memory()
    _rivals_and_certificates(ctx, evidence, phases, "top")


def _rivals_and_certificates(ctx: Context, evidence: Evidence, phases: Phases, phase: str) -> None:
    """The pending rows' competitor sets (top-k at their best point), then their
    least-squares certificates (:mod:`.polish`): rows a mixture of their rivals dominates
    are decided before any iterative stage. Inside ``phase``: a run resumed later must not
    polish again (from the polished certificates' rows it can find other bounds:
    regression, resume not identical)."""
    todo = phases.todo(phase, pending(evidence))
    _competitor_sets(ctx, evidence, todo)
    polish.run(ctx, evidence, todo, "screen")


def _screen_pass(ctx: Context, evidence: Evidence, phases: Phases, name: str, todo, first: int, *,
                 all_candidates: bool, algorithm: str) -> None:
    """One pass over ``todo``'s chunks from chunk ``first``. Each chunk's kernel is
    dispatched before the previous chunk's results are recorded, so the host's
    bookkeeping overlaps the device's product instead of following it."""
    size = second_pass_batch(ctx) if all_candidates else ctx.batch
    rung = algorithm != ctx.settings.dot_algorithm  # the bfloat16 rung: full precision follows
    if not (all_candidates or rung) and first == 0 and symmetric.applies(ctx, todo):
        finished = _symmetric_pass(ctx, evidence, name, todo)
        left = todo[evidence.verdict[todo] == UNDECIDED]
        # The second pass tries the same point first (and four more): the plain pass, one
        # point per token, pays only for many tokens, not a kernel's compile for a few.
        todo = left if not finished or 100 * left.size > todo.size else left[:0]
    done = 0

    def dispatch(ids):
        found = screen_chunk(ctx.head, ctx.place.split(ids), ctx.device_domain, ctx.key,
                             all_candidates=all_candidates, half=ctx.half, algorithm=algorithm)
        if ctx.settings.braid_steps and all_candidates:
            x, wb = braid_chunk(ctx.head, ctx.place.split(ids), found[0], ctx.device_domain, num_top=0,
                                steps=ctx.settings.braid_steps, algorithm=algorithm)
            found = (x, wb) + found[2:]
        return found

    def record(n, ids, valid, found):
        nonlocal done
        _record_chunk(ctx, evidence, ids, valid, found)
        done += valid
        ctx.progress.update(name, done, todo.size)
        phases.save_position(name, n + 1, todo)

    in_flight = None
    for n, (ids, valid) in enumerate(chunks(todo, size)):
        if n < first:
            continue
        if ctx.expired():
            break
        found = dispatch(ids)
        if in_flight is not None:
            record(*in_flight)
        in_flight = (n, ids, valid, found)
    if in_flight is not None:
        record(*in_flight)


def _record_chunk(ctx: Context, evidence: Evidence, ids, valid: int, found) -> None:
    """A screened chunk's points and single-rival certificates into ``evidence``."""
    x, wb, one, U_one = found
    record_witness(ctx, evidence, ids, valid, x, wb, "screen")
    record_certificate(ctx, evidence, ids, valid, one, np.ones((len(ids), 1)), U_one, "screen")
    # glibc's arenas keep every freed (batch x C) block; a few times a second bounds
    # what they hold at a few blocks, for a fraction of a trim per chunk.
    return_freed_memory(min_interval=TRIM_INTERVAL)


def _symmetric_pass(ctx: Context, evidence: Evidence, name: str, todo) -> bool:
    """The first pass by :mod:`.symmetric`, over every row block, recording the pending
    rows of each; it stops after four blocks if its pad has left open most of their
    tokens whose margin estimate is positive (its pad is wider than the plain pass's, and
    d u grows with d). It saves no position inside the pass (the carried column maxima
    are not in a snapshot): a run cut short replays the pass from its start. Returns
    whether it screened every row block."""
    C = ctx.W.shape[0]
    wanted = np.zeros(C, bool)
    wanted[todo] = True
    seen = np.zeros(C, bool)
    lost = [0, 0]  # tokens with a positive margin estimate whose pad left them open; all with one

    def record(index, ids, found):
        ids = np.asarray(ids)
        margin, lower = np.asarray(found[1].margin), np.asarray(found[1].lower)
        lost[0] += int(np.sum((margin > 0) & (lower <= 0)))
        lost[1] += int(np.sum(margin > 0))
        keep = np.flatnonzero(wanted[ids] & ~seen[ids])  # the last block overlaps the one before
        seen[ids] = True
        if keep.size:
            found = jax.tree_util.tree_map(lambda a: np.asarray(a)[keep], found)
            _record_chunk(ctx, evidence, ids[keep], keep.size, found)
        share = symmetric.work_done(C, symmetric.BLOCKS, index + 1)
        ctx.progress.update(name, round(share * todo.size), todo.size)

    in_flight = None
    for found in symmetric.blocks_in_order(ctx):
        if in_flight is not None:
            record(*in_flight)
            if in_flight[0] >= 3 and 2 * lost[0] > lost[1]:
                return False  # its pad is too wide for this head: the plain pass does the rest
        in_flight = found
    if in_flight is not None:
        record(*in_flight)
    return not ctx.expired()


def _competitor_sets(ctx: Context, evidence: Evidence, todo) -> None:
    """Competitor sets (top-k logits at the best point) only for rows still undecided: a
    top-k over C for every token would cost more than the screen itself."""
    size = competitor_batch(ctx)
    for ids, valid in chunks(todo, size):
        if ctx.expired():
            break
        x = start_points(ctx, evidence, ids)
        record_witness(ctx, evidence, ids, valid, x,
                       witness_chunk(ctx.head, ctx.place.split(ids), ctx.place.split(x, ctx.dtype),
                                     num_top=ctx.competitors, algorithm=ctx.settings.dot_algorithm), "screen")
        return_freed_memory(min_interval=TRIM_INTERVAL)
