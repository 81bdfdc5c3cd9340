"""Stage 4: optimal float64 bases for the rows PDHG leaves open, and proofs read off them.

For token i on a box, HiGHS's dual simplex solves the margin LP on competitor rows S,

.. math:: \\max_{x \\in [lo, hi],\\, t}\\; t \\;\\text{s.t.}\\;
          (w_i - w_j)^T x + b_i - b_j \\ge t \\quad (j \\in S),

with row generation against all C rows (rows violated at the optimum x join S), warm
started from the optimal basis of the nearest row solved so far, or from PDHG's point
and competitor set. Rows near a solved row go to the batched simplex of :mod:`.simplex`
first, started at that row's vertex. Every certificate found is tried on all undecided
rows (:func:`share_certificate`), and before PDHG one row of each group of nearly
identical rows is solved (:func:`decide_groups`). The solvers only find bases: every
verdict rests on this package's own bounds.

* t > 0: the vertex x is a witness, its margin bounded in float64 with a rounding pad
  and exactly on the rows float64 cannot settle (:func:`witness_lower`).
* t < 0: the row duals lam are a certificate; :func:`float_certificate_bound` bounds
  :math:`U(\\lambda) = b_i - \\lambda^T b + \\sigma(w_i - W^T \\lambda)` in float64 with a
  pad. Float32 iterates cannot sign a margin of -1e-4 on [-100, 100]^120 (their residual
  g alone costs ~1e-3); float64 duals of an optimal basis have g ~ 1e-16 |W|.
* |t| inside the float64 pad (margin exactly 0, e.g. a convex combination of rows in a
  head without bias): the basis's square system (active rows J, free coordinates F,
  :math:`W_{J,F}^T \\lambda = w_{i,F},\\ 1^T \\lambda = 1`) is solved exactly with FLINT
  (``python-flint``) on the dyadic values as integers, and U is evaluated exactly.

No bound here rests on a device product, so ``Settings.dot_algorithm`` does not apply:
the proofs are NumPy float64 (IEEE, padded by float64 :func:`~unargmax_jax.bounds.gamma`)
or exact. The head-dtype products (rows violated at x, the starting rows) only choose
rows; the float64 pass confirms that none is left.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import NamedTuple

import numpy as np

from .. import domains as dom
from ..resume import Phases
from ..verdicts import UNARGMAXABLE, UNDECIDED
from . import ball, polish, simplex
from .context import Context, bias64, box_bounds64, margins_floor_at_zero
from .evidence import Evidence, pending, start_points
from .exact_basis import exact_certificate
from .neighbours import NEAR, Vertices, near_duplicate_groups, nearest, share_certificate
from .rational import (candidate_rows, float_at_least, float_certificate_bound, keep_float64_witness,
                       keep_float_certificate, margins64, rows64, witness_lower)

class Basis(NamedTuple):
    """An optimal basis of one token's LP on rows S (float64, from HiGHS).

    Attributes:
        rows: (k,) competitor ids S.
        x: (d,) the optimal vertex; ``t``: its margin on S.
        lam: (k,) the row duals, >= 0 (a certificate's weights, before normalising).
        active: (k,) rows that are nonbasic (tight) in the basis: the support J.
        free: (d,) coordinates basic in the basis (strictly inside the box): F.
        complete: no row outside S beats the vertex (row generation converged).
    """

    rows: np.ndarray
    x: np.ndarray
    t: float
    lam: np.ndarray
    active: np.ndarray
    free: np.ndarray
    complete: bool


class _TokenLP:
    """One token's LP in HiGHS, grown row by row (each re-solve warm-starts from the last basis)."""

    def __init__(self, W, b64: np.ndarray, token: int, lo: np.ndarray, hi: np.ndarray):
        import highspy

        self._highspy = highspy
        self.W, self.b64, self.token = W, b64, token
        self.own = rows64(W, [token])[0]
        d = W.shape[1]
        # The core class: highspy.Highs's callback set-up prints a banner on stdout, and the
        # report's output (and anything piped from it) must not carry it.
        self.lp = getattr(highspy, "_Highs", highspy.Highs)()
        self.lp.setOptionValue("output_flag", False)
        # Each re-solve starts from the last optimal basis: presolve would throw it away.
        self.lp.setOptionValue("presolve", "off")
        for name in ("primal_feasibility_tolerance", "dual_feasibility_tolerance"):
            self.lp.setOptionValue(name, 1e-10)
        inf = highspy.kHighsInf
        self.lp.addVars(d + 1, np.r_[lo, -inf], np.r_[hi, inf])
        self.lp.changeColsCost(d + 1, np.arange(d + 1, dtype=np.int32), np.r_[np.zeros(d), -1.0])
        self.rows: list[int] = []

    def add(self, rows) -> None:
        """Constraints (w_i - w_j)^T x - t >= b_j - b_i for rows j."""
        rows = np.asarray(rows, np.int64)
        n, d = rows.size, self.W.shape[1]
        A = np.hstack([self.own - rows64(self.W, rows), -np.ones((n, 1))])
        self.lp.addRows(n, self.b64[rows] - self.b64[self.token], np.full(n, self._highspy.kHighsInf), n * (d + 1),
                        np.arange(n, dtype=np.int32) * (d + 1), np.tile(np.arange(d + 1, dtype=np.int32), n), A.ravel())
        self.rows.extend(int(j) for j in rows)

    def guess(self, x: np.ndarray, weights: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        """Start from the basis a near-optimal (x, lam) suggests (a crossover): coordinates
        strictly inside the box basic, the rest at their nearer bound, and the |F| + 1 rows
        of largest weight tight. The count is always right, and the simplex repairs the rest."""
        status = self._highspy.HighsBasisStatus
        width = hi - lo
        inside = (x > lo + 1e-4 * width) & (x < hi - 1e-4 * width)
        guess = self._highspy.HighsBasis()
        guess.col_status = [status.kBasic if f else (status.kLower if v - a <= c - v else status.kUpper)
                            for f, v, a, c in zip(inside, x, lo, hi)] + [status.kBasic]
        tight = set(np.argsort(-weights, kind="stable")[: int(inside.sum()) + 1].tolist())
        guess.row_status = [status.kLower if r in tight else status.kBasic for r in range(len(self.rows))]
        guess.valid = True
        self.lp.setBasis(guess)

    def solve(self, deadline: float = float("inf")):
        """(x, t, row duals, row tight, column basic) at the optimum, or None (also when the
        deadline passes first: HiGHS's own time limit stops it)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        self.lp.setOptionValue("time_limit", float(min(remaining, 1e30)))
        self.lp.run()
        if self.lp.getModelStatus() != self._highspy.HighsModelStatus.kOptimal:
            return None
        solution, basis = self.lp.getSolution(), self.lp.getBasis()
        values = np.asarray(solution.col_value, np.float64)
        basic = self._highspy.HighsBasisStatus.kBasic
        tight = np.array([s != basic for s in basis.row_status], bool)
        free = np.array([s == basic for s in basis.col_status[:-1]], bool)
        return values[:-1], float(values[-1]), np.abs(np.asarray(solution.row_dual, np.float64)), tight, free


def _violated(W, b64, token: int, x: np.ndarray, t: float, rows: list, *, exact: bool) -> np.ndarray:
    """Rows outside S whose margin at x is below t, most violated first. The float32 pass
    (the head's own dtype) finds them cheaply; the float64 pass confirms that none is left."""
    if exact:
        margins, magnitude = margins64(W, b64, token, x)
        slack = 1e-13 * magnitude
    else:
        z = np.asarray(W @ x.astype(W.dtype), np.float64) + b64
        margins = z[token] - z
        slack = 1e-5 * (np.abs(margins) + abs(t)) + 1e-30
    margins[token] = np.inf
    margins[rows] = np.inf
    violated = np.flatnonzero(margins < t - slack)
    return violated[np.argsort(margins[violated])]


def optimal_basis(W, b64: np.ndarray, token: int, lo: np.ndarray, hi: np.ndarray, start, *, rounds: int, grow: int,
                  deadline: float, x0: np.ndarray | None = None, weights0: np.ndarray | None = None) -> Basis | None:
    """Row generation from rows ``start``: solve on S, add the ``grow`` rows most violated
    at the vertex, until none is (``complete``), ``rounds`` runs out or the deadline passes.
    With an approximate optimum (``x0``, and ``weights0`` on ``start``) the first solve
    starts from the basis it suggests."""
    lp = _TokenLP(W, b64, token, lo, hi)
    lp.add(start)
    if x0 is not None and weights0 is not None:
        lp.guess(np.asarray(x0, np.float64), np.asarray(weights0, np.float64), lo, hi)
    for _ in range(rounds):
        solved = lp.solve(deadline)
        if solved is None:
            return None
        x, t, lam, tight, free = solved
        violated = _violated(W, b64, token, x, t, lp.rows, exact=False)
        if violated.size == 0:
            violated = _violated(W, b64, token, x, t, lp.rows, exact=True)
        if violated.size == 0 or time.monotonic() > deadline:
            return Basis(np.array(lp.rows), x, t, lam, tight, free, violated.size == 0)
        lp.add(violated[:grow])
    return Basis(np.array(lp.rows), x, t, lam, tight, free, False)


def refined_vertex(W, b64: np.ndarray, token: int, basis: Basis, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The basis's vertex re-solved in float64 from its square system (fixed coordinates at
    their bounds, the tight rows' margins equal), with one step of iterative refinement;
    HiGHS's own vertex is only as accurate as its tolerances."""
    J, F = basis.rows[basis.active], np.flatnonzero(basis.free)
    x = np.clip(basis.x, lo, hi)
    if J.size != F.size + 1:
        return x
    fixed = ~basis.free
    x[fixed] = np.where(np.abs(x[fixed] - lo[fixed]) <= np.abs(x[fixed] - hi[fixed]), lo[fixed], hi[fixed])
    A = rows64(W, [token])[0] - rows64(W, J)
    c = b64[token] - b64[J]
    M = np.hstack([A[:, F], -np.ones((J.size, 1))])
    rhs = -(c + A[:, fixed] @ x[fixed])
    try:
        y = np.linalg.solve(M, rhs)
        y += np.linalg.solve(M, rhs - M @ y)
    except np.linalg.LinAlgError:
        return np.clip(basis.x, lo, hi)
    x[F] = y[:-1]
    return np.clip(x, lo, hi)


# ----------------------------------------------------------------------------- the stage
def run(ctx: Context, evidence: Evidence, phases: Phases) -> None:
    """An optimal basis per row still open after PDHG (on the host: one row at a time, or one
    per core on a head without a bias), and the witness or certificate it gives; on a ball
    (and the norm domains) :mod:`.ball`."""
    todo = phases.todo("basis", pending(evidence))
    if not todo.size or not isinstance(ctx.domain, (dom.Box, dom.Ball)) or ctx.settings.basis_rounds <= 0:
        return
    b64 = bias64(ctx)
    if isinstance(ctx.domain, dom.Ball):
        for n, i in enumerate(todo):
            if ctx.expired():
                break
            ball.decide_row(ctx, evidence, int(i), b64)
            if evidence.verdict[i] == UNDECIDED and not ctx.expired():
                _decide_on_bounding_box(ctx, evidence, int(i), b64)
            ctx.progress.update("basis", n + 1, todo.size)
        return
    polish.run(ctx, evidence, todo, "basis")
    _solve_box_rows(ctx, evidence, todo[evidence.verdict[todo] == UNDECIDED], b64, *box_bounds64(ctx))


def _decide_on_bounding_box(ctx: Context, evidence: Evidence, i: int, b64) -> None:
    """Row i on a ball B(c, R) through box LPs. On ``[c - R, c + R]`` (around the ball), for
    the same lam :math:`U_{box} = \\lambda^T p + R\\|g\\|_1 \\ge U_{ball} = \\lambda^T p +
    R\\|g\\|_2`: a box certificate (float64 or exact) is one on the ball, and the box vertex
    is a witness where it lies in the ball. Else on the cube inside the ball, only for a
    witness. They decide what Newton's method on the ball cannot: an optimum inside the
    ball (g = 0 there, and the margin is the same on the ball, the box and R^d), such as
    the margin exactly 0 of a convex combination of rows, or an optimal face that reaches
    into the ball while the outer box's vertex lies outside it."""
    center, R = ball.center_radius(ctx)
    lo, hi = ball.bounding_box(center, R)
    found = _row_basis(ctx, evidence, i, b64, lo, hi)
    if found is None:
        return
    _prove(ctx, evidence, i, found, b64, lo, hi, inside=lambda x: ball.inside(x, center, R))
    if evidence.verdict[i] == UNDECIDED and found.t > 0 and not ctx.expired():
        lo, hi = ball.inscribed_box(center, R)
        found = _row_basis(ctx, evidence, i, b64, lo, hi)
        if found is not None and found.t > 0:
            _vertex_witness(ctx, evidence, i, found, b64, lo, hi, inside=lambda x: ball.inside(x, center, R))


def _solve_box_rows(ctx: Context, evidence: Evidence, todo: np.ndarray, b64, lo, hi) -> None:
    """Optimal bases for the rows ``todo``: HiGHS one row at a time, except rows near a row
    already solved here, which go to the batched simplex (:mod:`.simplex`) started from
    that row's optimal vertex (the neighbour's basis is almost right for them; from a
    point found by first-order iterations the simplex needs far more pivots than HiGHS).
    Every certificate found is tried on all undecided rows (:func:`share_certificate`).
    Without a bias (:func:`_hull_question`) the rows are solved independently, one per core."""
    if _hull_question(ctx):
        _solve_rows_in_parallel(ctx, evidence, todo, b64, lo, hi)
        return
    queue, vertices, tried = [int(i) for i in todo], Vertices(ctx, b64), set()
    while queue and not ctx.expired():
        queue = [i for i in queue if evidence.verdict[i] == UNDECIDED]
        ready = vertices.near([i for i in queue if i not in tried])
        if ready:
            tried.update(ready)
            _batched_simplex(ctx, evidence, {i: found.x for i, found in ready.items()}, b64, lo, hi, vertices)
        elif queue:
            i = queue.pop(0)
            found = _decide_row(ctx, evidence, i, b64, lo, hi, vertices.nearest_basis(i))
            if found is not None and found.complete:
                vertices.add(i, found)
            if evidence.verdict[i] == UNARGMAXABLE:
                share_certificate(ctx, evidence, i, b64, lo, hi)
        ctx.progress.update("basis", todo.size - len(queue), todo.size)


MAX_GROUPS = 32  # representatives solved before PDHG (HiGHS, up to a second each at d ~ 100)


def decide_groups(ctx: Context, evidence: Evidence) -> None:
    """Before PDHG, on a box: one representative per group of nearly identical undecided
    rows gets an optimal basis, and its certificate (if it is unargmaxable) is tried on
    every undecided row (:func:`share_certificate`). Groups of rare classes that training
    barely moved are common (thousands of rows within float32 rounding of each other in an
    OCR head); first-order iterations cannot separate their margins, one LP decides them all."""
    if (not isinstance(ctx.domain, dom.Box) or ctx.settings.basis_rounds <= 0 or ctx.exact_certificates_only
            or ctx.expired()):
        return
    if margins_floor_at_zero(ctx):
        # No float certificate can decide a row, so a shared one never does (regression:
        # Whisper's tied head spent its basis time on 32 representatives' LPs at d = 384,
        # for nothing).
        return
    b64 = bias64(ctx)
    groups = near_duplicate_groups(ctx.W, b64, pending(evidence))[:MAX_GROUPS]
    if not groups:
        return
    started = time.monotonic()
    lo, hi = box_bounds64(ctx)
    representatives = [int(g[0]) for g in groups]
    # With them, the rows that training moved a little away from a group: the
    # representative's vertex starts their simplex (after its certificate has decided
    # what it can).
    others = np.setdiff1d(pending(evidence), representatives)
    near = []
    if others.size:
        dist, _, norm = nearest(ctx, b64, others, representatives)
        near = others[dist <= NEAR * norm].tolist()
    _solve_box_rows(ctx, evidence, np.array(representatives + near, np.int64), b64, lo, hi)
    # Runs inside the PDHG stage's clock: book it to this stage.
    elapsed = time.monotonic() - started
    evidence.seconds["basis"] += elapsed
    evidence.seconds["pdhg"] -= elapsed


def _batched_simplex(ctx: Context, evidence: Evidence, starts: dict, b64, lo, hi, vertices: Vertices) -> None:
    """Optimal bases for the rows of ``starts`` (row -> starting point) from the batched
    simplex, proofs from them (or earlier, at any basis whose bound already signs the
    margin); each optimal vertex joins ``vertices``. Rows it does not finish stay open."""
    W, d = ctx.W, ctx.W.shape[1]

    def early(out: simplex.Outcome, margins: np.ndarray) -> bool:
        if evidence.verdict[out.token] != UNDECIDED:  # decided by a shared certificate
            return True
        margins = margins.copy()
        margins[out.token] = np.inf
        if out.t < 0 and not ctx.exact_certificates_only:
            support = out.rows[out.lam > 0]
            keep_float_certificate(evidence, out.token, "basis", support, out.lam[out.lam > 0],
                                   float_certificate_bound(W, b64, lo, hi, out.token, support, out.lam[out.lam > 0]))
        elif np.min(margins) > 0:
            lower = witness_lower(W, b64, out.token, out.x)
            if lower is not None and lower > 0:
                keep_float64_witness(evidence, out.token, "basis", out.x, lower)
        if evidence.verdict[out.token] == UNARGMAXABLE:
            share_certificate(ctx, evidence, out.token, b64, lo, hi)
        return evidence.verdict[out.token] != UNDECIDED

    def candidates(i: int) -> np.ndarray:
        # The rows strongest at the start: the tight rows of the neighbour's basis among them.
        z = np.asarray(W @ starts[i].astype(W.dtype), np.float64) + b64
        return np.argsort(-z, kind="stable")[: 2 * (d + 1) + 17]

    outcomes = simplex.solve(W, b64, deque(starts), candidates, lo, hi, batch_size=ctx.settings.chunk_size,
                             max_pivots=ctx.settings.simplex_pivots or 3 * (d + 1), decide=early, expired=ctx.expired,
                             wanted=lambda i: evidence.verdict[i] == UNDECIDED,
                             start_points=lambda ids: np.stack([starts[int(i)] for i in ids]))
    for out in outcomes:
        if evidence.verdict[out.token] != UNDECIDED or out.status != simplex.OPTIMAL:
            continue
        found = Basis(out.rows, out.x, out.t, out.lam, out.active, out.free, True)
        vertices.add(out.token, found)
        _prove(ctx, evidence, out.token, found, b64, lo, hi)
        if evidence.verdict[out.token] == UNARGMAXABLE:
            share_certificate(ctx, evidence, out.token, b64, lo, hi)


def _start_rows(ctx: Context, evidence: Evidence, i: int) -> list[int]:
    if _hull_question(ctx):
        return aligned_rows(ctx.W, i, 2 * ctx.W.shape[1])
    return candidate_rows(evidence, i, ctx.W.shape[1]) or aligned_rows(ctx.W, i, 1)


def _hull_question(ctx: Context) -> bool:
    """No bias, on a box around 0: token i is argmaxable iff w_i is a vertex of the rows'
    convex hull (margins scale with x), and its LP's tight rows are w_i's hull neighbours.
    The first-order stages' competitor sets are a poor start there (Whisper tiny.en: 2 of
    12 thin tokens solved within 20 s each from them, 12 of 12 in 3.7 s each from
    :func:`aligned_rows`), and so is a solved neighbour's basis (rows in a cloud of rare
    tokens are 1-2% apart, far relative to their margins: 8 of 12 in twice the time)."""
    return isinstance(ctx.domain, dom.Box) and margins_floor_at_zero(ctx)


def aligned_rows(W, token: int, k: int, *, block: int = 1 << 15) -> list[int]:
    """The k rows j != token of largest w_j^T w_token, largest first (in float32, a block of
    rows at a time: they only choose the LP's first rows)."""
    own = np.asarray(W[token], np.float32)
    z = np.concatenate([np.asarray(W[s:s + block], np.float32) @ own for s in range(0, W.shape[0], block)])
    z[token] = -np.inf
    k = min(k, W.shape[0] - 1)
    top = np.argpartition(-z, k - 1)[:k] if k > 0 else np.zeros(0, np.int64)
    return top[np.argsort(-z[top], kind="stable")].tolist()


def _start_weights(evidence: Evidence, i: int, start: list[int]) -> np.ndarray:
    """The best certificate's weights on the start rows (0 off its support)."""
    weights = dict(zip(np.asarray(evidence.cert_support.get(i, []), np.int64).tolist(),
                       np.asarray(evidence.cert_weights.get(i, []), np.float64).tolist()))
    return np.array([weights.get(j, 0.0) for j in start])


def _decide_row(ctx: Context, evidence: Evidence, i: int, b64, lo, hi, neighbour: Basis | None = None) -> Basis | None:
    """Row i's optimal basis (:func:`_row_basis`) and the proof read off it; returns the basis."""
    basis = _row_basis(ctx, evidence, i, b64, lo, hi, neighbour)
    if basis is not None:
        _prove(ctx, evidence, i, basis, b64, lo, hi)
    return basis


def _row_basis(ctx: Context, evidence: Evidence, i: int, b64, lo, hi, neighbour: Basis | None = None, *,
               seconds: float | None = None) -> Basis | None:
    """Row i's optimal basis from HiGHS, started from a near row's optimal basis (its rows,
    and the basis its vertex and weights suggest) when one is given, else from row i's own
    best point and certificate (or, without a bias, from its aligned rows alone), within
    ``seconds`` (default ``basis_token_seconds``)."""
    settings, W = ctx.settings, ctx.W
    if neighbour is not None:
        keep = neighbour.rows != i
        start, x0, weights0 = neighbour.rows[keep].tolist(), neighbour.x, neighbour.lam[keep]
    elif _hull_question(ctx):
        start, x0, weights0 = _start_rows(ctx, evidence, i), None, None
    else:
        start = _start_rows(ctx, evidence, i)
        x0, weights0 = start_points(ctx, evidence, np.array([i]))[0], _start_weights(evidence, i, start)
    deadline = min(ctx.deadline, time.monotonic() + (seconds or settings.basis_token_seconds))
    return optimal_basis(W, b64, i, lo, hi, start, rounds=settings.basis_rounds, grow=max(32, W.shape[1] // 2),
                         deadline=deadline, x0=x0, weights0=weights0)


def host_workers() -> int:
    """Cores this process may run on (HiGHS releases the GIL: one LP per core)."""
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return max(1, len(cores))


RETRY_FACTOR = 4  # a row whose LP ran out of time gets one more try, this many times longer


def _solve_rows_in_parallel(ctx: Context, evidence: Evidence, todo: np.ndarray, b64, lo, hi) -> None:
    """Rows whose LPs share nothing (a head without bias: :func:`_hull_question`): one HiGHS
    LP per core at a time, each proof read off in this thread as its basis arrives. A row
    whose LP runs out of ``basis_token_seconds`` (a wall-clock limit: a loaded machine
    reaches it sooner) is tried once more at the end with ``RETRY_FACTOR`` times as long."""
    limit = ctx.settings.basis_token_seconds
    queue, running, done, workers = deque((int(i), limit) for i in todo), {}, 0, host_workers()
    with ThreadPoolExecutor(workers) as pool:
        while queue or running:
            while queue and len(running) < workers and not ctx.expired():
                i, seconds = queue.popleft()
                if evidence.verdict[i] == UNDECIDED:
                    running[pool.submit(_row_basis, ctx, evidence, i, b64, lo, hi, seconds=seconds)] = (i, seconds)
                else:
                    done += 1
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                (i, seconds), found = running.pop(future), future.result()
                if found is None and seconds == limit and not ctx.expired():
                    queue.append((i, RETRY_FACTOR * limit))
                    continue
                if found is not None and evidence.verdict[i] == UNDECIDED:
                    _prove(ctx, evidence, i, found, b64, lo, hi)
                if evidence.verdict[i] == UNARGMAXABLE:
                    share_certificate(ctx, evidence, i, b64, lo, hi)
                done += 1
                ctx.progress.update("basis", done, todo.size)


def _vertex_witness(ctx: Context, evidence: Evidence, i: int, basis: Basis, b64, lo, hi, *, inside=None) -> bool:
    """Keep the basis's vertex (HiGHS's, or re-solved in float64) as a witness where its
    proved margin is > 0 (and ``inside(x)``); whether one was kept."""
    for x in (np.clip(basis.x, lo, hi), refined_vertex(ctx.W, b64, i, basis, lo, hi)):
        if inside is None or inside(x):
            lower = witness_lower(ctx.W, b64, i, x)
            if lower is not None and lower > 0:
                keep_float64_witness(evidence, i, "basis", x, lower)
                return True
    return False


def _prove(ctx: Context, evidence: Evidence, i: int, basis: Basis, b64, lo, hi, *, inside=None) -> None:
    """From an optimal basis: a witness from its vertex when t > 0 (and ``inside(x)``, for a
    domain within the box), else a float64 certificate from its weights, else an exact one
    from its square system."""
    W = ctx.W
    if basis.t > 0 and _vertex_witness(ctx, evidence, i, basis, b64, lo, hi, inside=inside):
        return
    support = basis.rows[basis.lam > 0]
    weights = basis.lam[basis.lam > 0]
    if not ctx.exact_certificates_only and support.size:
        keep_float_certificate(evidence, i, "basis", support, weights,
                               float_certificate_bound(W, b64, lo, hi, i, support, weights))
        if evidence.verdict[i] == UNARGMAXABLE:
            return
    exact = exact_certificate(W, b64, lo, hi, i, basis, free_only=ctx.exact_certificates_only)
    if exact is not None and evidence.verdict[i] == UNDECIDED:
        evidence.verdict[i], evidence.stage[i] = UNARGMAXABLE, "basis"
        evidence.upper[i] = float_at_least(exact.upper)
        evidence.cert_support[i] = exact.support
        evidence.cert_weights[i] = np.array([float(w) for w in exact.weights])
        evidence.cert_rational[i] = [f"{w.numerator}/{w.denominator}" for w in exact.weights]
