"""Orchestration: twins, chunks, stages, time limit and progress for a whole head.

``check`` runs, for the tokens still undecided after each stage:

1. ``screen``: candidate points per token, one blocked product per candidate;
2. ``ascent``: smoothed-margin ascent (optax) over the top-k competitors;
3. ``pdhg``: restarted PDHG rounds with row generation (fixed-capacity competitor
   sets refreshed from a full-head evaluation between rounds);
4. ``rational``: exact rational LP on a few candidate rows for margins that no
   floating-point bound can sign (exactly 0, e.g. rows inside the hull without bias).

Every verdict rests on a rigorous bound (``bounds``) or an exact computation
(``rational``); a token that no stage decides within the limits stays ``undecided``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from fractions import Fraction
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .solve import ascent as ascent_mod
from . import bounds
from .solve import pdhg, rational, screen
from ._memory import return_freed_memory
from ._warmup import Warmup
from . import domains as dom
from .report import Report, head_sha256
from .settings import SCHEDULING_FIELDS, Settings, settings_from
from .solve.context import device_dtype, domain_on_device, on_device
from .twins import find_twins

STAGES = ("screen", "ascent", "pdhg", "rational")
SKIPPED = 2  # the report's verdict code for a token the user did not select
# Below this many flops in the first screening pass (2 C^2 d: about a second on one CPU
# core) compiling the later stages in the background would not overlap anything.
WARMUP_MIN_FLOPS = 2e11
TRIM_INTERVAL = 0.1  # seconds between heap trims inside a stage's loop


class _Progress:
    """A one-line progress bar on stderr with a per-stage ETA; silent unless enabled, and
    silent for the first ``delay`` seconds so quick runs print nothing."""

    def __init__(self, enabled: bool, *, every: float = 0.5, delay: float = 2.0, width: int = 30):
        self.enabled = enabled
        self.every = every
        self.width = width
        self.stage = None
        self.shown = False
        self.start = self.stage_start = self.last = time.monotonic()
        self.delay = delay

    def update(self, stage: str, done: int, total: int):
        if not self.enabled or total == 0:
            return
        now = time.monotonic()
        if stage != self.stage:
            self.stage, self.stage_start = stage, now
        if now - self.start < self.delay or (now - self.last < self.every and done < total):
            return
        self.last, self.shown = now, True
        elapsed = now - self.stage_start
        eta = f"{(total - done) * elapsed / done:6.0f}s" if done else "     ?"
        filled = int(self.width * done / total)
        bar = "#" * filled + "-" * (self.width - filled)
        sys.stderr.write(f"\r{stage:>9} [{bar}] {done}/{total} tokens  {elapsed:5.0f}s  eta {eta} ")
        sys.stderr.flush()

    def note(self, message: str):
        if self.enabled:
            sys.stderr.write(("\n" if self.shown else "") + message + "\n")
            sys.stderr.flush()
            self.shown = False

    def close(self):
        if self.enabled and self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _half_witnesses(domain: dom.Domain, dtype) -> bool:
    """Whether witnesses can be kept as float16 points: float32 work on a box whose bounds
    are float16 numbers. Rounding to nearest is monotone, so it maps [lo, hi] into itself
    when lo and hi are representable: a rounded point is still in the domain."""
    if np.dtype(dtype) != np.float32 or not isinstance(domain, dom.Box):
        return False
    bounds = np.concatenate([np.ravel(np.asarray(domain.lo, np.float64)), np.ravel(np.asarray(domain.hi, np.float64))])
    with np.errstate(over="ignore"):
        return bool(np.all(np.isfinite(bounds.astype(np.float16))) and np.all(bounds.astype(np.float16) == bounds))


def _contains_origin(domain: dom.Domain) -> bool:
    if isinstance(domain, dom.Box):
        return bool(np.all(np.asarray(domain.lo) <= 0) and np.all(np.asarray(domain.hi) >= 0))
    return bool(np.linalg.norm(np.asarray(domain.center)) <= float(domain.radius))


class _Head(NamedTuple):
    W: jax.Array
    b: jax.Array
    norms: jax.Array
    mean: jax.Array  # row mean and regularised inverse row covariance (screen.whitening)
    precision: jax.Array


@partial(jax.jit, static_argnames=("all_candidates", "half"))
def _screen_chunk(head: _Head, ids, domain, key, *, all_candidates, half=False):
    """Best starting point per token: only "along its whitened row" in the first pass (it
    decides most tokens of real heads with one product), all candidates in the second.
    With ``half`` every candidate is rounded to float16 first (it stays in the box, see
    :func:`_half_witnesses`), so the points evaluated are the points stored."""
    rows = head.W[ids]
    points = screen.starting_points(rows, domain, screen.whitened_directions(rows, head.mean, head.precision))
    if all_candidates:
        # A random point per token, keyed by token id so chunking does not change it.
        d = head.W.shape[1]
        draw = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (d,), head.W.dtype, -1.0, 1.0))(ids)
        extra = dom.project(domain, dom.extent(domain) * draw)
        points = jnp.concatenate([points, extra[:, None, :]], axis=1)
    else:
        points = points[:, :1]
    if half:
        points = points.astype(jnp.float16).astype(points.dtype)
    n, m, d = points.shape
    # All candidates in one product (separate products per candidate fuse badly on CPU).
    every = bounds.witness_bounds(head.W, head.b, head.norms, jnp.repeat(ids, m), points.reshape(n * m, d), num_top=0)
    best = jnp.argmax(every.lower.reshape(n, m), axis=1)
    x = jnp.take_along_axis(points, best[:, None, None], axis=1)[:, 0]
    witness = jax.tree_util.tree_map(
        lambda a: jnp.take_along_axis(a.reshape((n, m) + a.shape[1:]), best.reshape((n, 1) + (1,) * (a.ndim - 1)), axis=1)[:, 0],
        every)
    # The strongest competitor alone is a (weak) certificate: every token gets a finite U.
    # (argmax, not top_k's first column: gathering with top_k's output is slow on XLA:CPU)
    one = witness.rival[:, None]
    upper = bounds.certificate_bounds(head.W, head.b, domain, ids, one, jnp.ones(one.shape, head.W.dtype))
    return x, witness, one, upper


@partial(jax.jit, static_argnames=("num_top",))
def _top_chunk(head: _Head, ids, x, *, num_top):
    return bounds.witness_bounds(head.W, head.b, head.norms, ids, x, num_top=num_top)


@partial(jax.jit, static_argnames=("num_top", "steps"))
def _braid_chunk(head: _Head, ids, x, domain, *, num_top, steps):
    x = screen.braid_reflect(head.W, head.b, ids, x, domain, steps=steps)
    return x, bounds.witness_bounds(head.W, head.b, head.norms, ids, x, num_top=num_top)


@partial(jax.jit, static_argnames=("steps", "learning_rate", "num_top"))
def _ascent_chunk(head: _Head, ids, support, x0, domain, *, steps, learning_rate, num_top):
    solve = partial(ascent_mod.margin_ascent, steps=steps, learning_rate=learning_rate)
    result = jax.vmap(solve, in_axes=(0, 0, 0, 0, 0, None))(
        head.W[ids], head.b[ids], head.W[support], head.b[support], x0, domain)
    witness = bounds.witness_bounds(head.W, head.b, head.norms, ids, result.x, num_top=num_top)
    upper = bounds.certificate_bounds(head.W, head.b, domain, ids, support, result.weights)
    return result.x, witness, result.weights, upper


@partial(jax.jit, static_argnames=("max_iterations", "tolerance", "decisive", "num_top", "adaptive_step"))
def _pdhg_chunk(head: _Head, ids, support, x0, lam0, omega0, budget, domain, *, max_iterations, tolerance, decisive,
                num_top, adaptive_step):
    problems = jax.vmap(pdhg.restrict)(head.W[ids], head.b[ids], head.W[support], head.b[support])
    solve = partial(pdhg.solve, max_iterations=max_iterations, tolerance=tolerance, decisive=decisive,
                    adaptive_step=adaptive_step)
    result = jax.vmap(lambda p, x, l, o, n: solve(p, x, l, o, domain, budget=n))(problems, x0, lam0, omega0, budget)
    weights = result.lam / problems.row_scale
    witness = bounds.witness_bounds(head.W, head.b, head.norms, ids, result.x, num_top=num_top)
    upper = bounds.certificate_bounds(head.W, head.b, domain, ids, support, weights)
    return result, witness, weights, upper


def _later_stage_warmup(settings, head, domain, key, place, dtype, U, d, k, B, hard_B, half, ascent_call,
                        pdhg_call) -> Warmup:
    """Compile jobs for the kernels the stages after the first screening pass call, with
    arguments of exactly the shapes, dtypes and placement of the real calls (so those find
    them compiled). Only worth a compiler thread when the first pass runs longer than
    compiling takes (about 2 C^2 d flops against a few seconds); otherwise no jobs."""
    if not settings.background_compile or 2.0 * U * U * d < WARMUP_MIN_FLOPS:
        return Warmup([])
    ids = place.split(np.zeros(hard_B, np.int64))
    support = place.split(np.zeros((hard_B, k), np.int32))
    x = place.split(np.zeros((hard_B, d)), dtype)
    lam = place.split(np.zeros((hard_B, k)), dtype)
    omega = place.split(np.ones(hard_B), dtype)
    budget = place.split(np.zeros(hard_B), jnp.int32)
    screen_ids = place.split(np.zeros(place.batch(max(1, B // 4)), np.int64))
    def pdhg_job(slots):
        def job():
            args = [place.split(np.zeros((slots,) + a.shape[1:], a.dtype)) for a in (ids, support, x, lam, omega, budget)]
            pdhg_call.func.lower(head, *args, domain, **pdhg_call.keywords).compile()
        return job

    jobs = [
        lambda: _screen_chunk.lower(head, screen_ids, domain, key, all_candidates=True, half=half).compile(),
        lambda: ascent_call.func.lower(head, ids, support, x, domain, **ascent_call.keywords).compile(),
        pdhg_job(hard_B),
    ]
    if half:
        jobs.append(lambda: _top_chunk.lower(head, ids, x, num_top=0).compile())
    tail = _pdhg_tail_slots(place, hard_B)
    if tail != hard_B:
        jobs.append(pdhg_job(tail))
    return Warmup(jobs)


def _pdhg_tail_slots(place, hard_B: int) -> int:
    """Batch size of PDHG's short tail (few tokens left): every slot of a vmapped loop costs time."""
    return place.batch(max(1, hard_B // 8))


def _refresh_support(top, support, lam, *, keep):
    """New competitor sets: rows carrying dual weight first, then the strongest at x,
    then the previous set (dict.fromkeys keeps the first occurrence, in order)."""
    k = support.shape[1]
    out = np.empty_like(support)
    for r in range(support.shape[0]):
        carried = support[r][lam[r] > keep]
        ordered = dict.fromkeys(int(j) for j in np.concatenate([carried, top[r], support[r]]))
        out[r] = list(ordered)[:k]
    return out


class _Placement:
    """Where arrays go: replicated (the head) or split along their first, token axis.

    With several local devices each batch of tokens is split across them (W replicated);
    every token's computation is independent, so XLA partitions the batched kernels
    without communication. With one device this is a plain ``jnp.asarray``.
    """

    def __init__(self, shard: bool):
        devices = jax.local_devices()
        self.count = len(devices) if shard else 1
        if self.count > 1:
            from jax.sharding import Mesh, NamedSharding, PartitionSpec

            mesh = Mesh(np.array(devices), ("tokens",))
            self._split = NamedSharding(mesh, PartitionSpec("tokens"))
            self._copy = NamedSharding(mesh, PartitionSpec())

    def batch(self, size: int) -> int:
        """``size`` rounded up to a multiple of the device count."""
        return -(-size // self.count) * self.count

    def split(self, array, dtype=None):
        array = jnp.asarray(array, dtype)
        return jax.device_put(array, self._split) if self.count > 1 else array

    def replicate(self, tree):
        return jax.device_put(tree, self._copy) if self.count > 1 else tree


def _chunks(ids: np.ndarray, size: int):
    """Fixed-size chunks (the last padded by repeating its first id) with a validity mask."""
    for start in range(0, ids.size, size):
        part = ids[start:start + size]
        valid = part.size
        if valid < size:
            part = np.concatenate([part, np.full(size - valid, part[0], part.dtype)])
        yield part, valid


def check(
    W,
    b=None,
    domain: dom.Domain = dom.Box(-100.0, 100.0),
    *,
    ties: str | None = None,
    seed: int | None = None,
    chunk_size: int | None = None,
    max_seconds: float | None = None,
    progress: bool = False,
    tokens=None,
    checkpoint=None,
    settings: Settings | None = None,
    **options,
) -> Report:
    """Decide, with proof, whether each token of the head ``z = W x + b`` can be the argmax on X.

    Args:
        W: weights, shape ``(C, d)``.
        b: optional bias, shape ``(C,)``.
        domain: ``Box`` (default ``[-100, 100]^d``), ``Ball`` or ``Free``.
        ties: ``"strict"`` (an exact duplicate row is unargmaxable) or ``"first"``
            (lowest index wins a tie, as ``jnp.argmax`` does).
        seed: PRNG seed for the random starting points.
        chunk_size: tokens per batch.
        max_seconds: stop starting new work after this long; the rest stays undecided.
        progress: print a progress line with an ETA on stderr.
        tokens: the tokens to decide, as ids or a boolean mask of shape ``(C,)`` (default
            all). Every row still competes; the others are reported as ``skipped``.
        checkpoint: a file for partial state (see :mod:`unargmax_jax.resume`): saved as
            the run goes, and resumed from when it holds a run of the same head,
            settings, domain and selection. The caller deletes it when done.
        settings: a :class:`~unargmax_jax.settings.Settings`; ``ties``, ``seed``,
            ``chunk_size``, ``max_seconds`` and ``options`` given here replace its fields.
        **options: further :class:`Settings` fields (``ascent_steps``, ``pdhg_iterations``, ...),
            kept for compatibility: prefer ``settings``.

    Returns:
        A :class:`~unargmax_jax.report.Report` with a verdict, proved bounds and evidence
        for every token.
    """
    from .heads import aligned, validate_head

    start = time.monotonic()
    W_np, b_np = validate_head(W, b)
    if not isinstance(domain, (dom.Box, dom.Ball, dom.Free, dom.NormOutput)):
        raise TypeError(f"domain must be Box, Ball, Free or NormOutput, got {type(domain).__name__}")
    settings = settings_from(settings, **_explicit(ties=ties, seed=seed, chunk_size=chunk_size,
                                                   max_seconds=max_seconds), **options)
    max_seconds = settings.max_seconds
    C, d = W_np.shape
    user_domain = dom.validate(domain, d)
    stored = W_np, b_np  # the report and any checkpoint name the head as stored
    if isinstance(user_domain, dom.NormOutput):
        # Solved in the norm's coordinates n: a ball, and the witnesses are points n.
        W_np, b_np, solve_domain, exact = dom.norm_head(W_np, b_np, user_domain)
        W_np = aligned(W_np)
        if not exact:
            # A rounded transformed head: an exact certificate of its margin being 0 would
            # not be one for the norm's real outputs, so such tokens stay undecided.
            settings = settings._replace(rational_max_dim=0)
    elif isinstance(user_domain, dom.Free):
        solve_domain = dom.resolve_free(b_np is not None, d, settings.free_box_radius)
    else:
        solve_domain = user_domain
    deadline = start + max_seconds if max_seconds is not None else float("inf")
    reporter = _Progress(progress)

    selected = _selected_mask(tokens, C)

    representative, inverse = find_twins(W_np, b_np)
    n_unique = representative.size
    tied = np.bincount(inverse, minlength=n_unique)[inverse] > 1
    if settings.ties == "strict" or n_unique == C:
        # Solve on W itself (no copy). Every member of a strict tie is unargmaxable whatever
        # its row's own margin, so tied rows are not solved; as competitors of the other
        # tokens a duplicate row changes nothing.
        W_solve, b_solve = W_np, b_np
        state_row, state_token = np.arange(C), np.arange(C)
        wanted = selected & ~tied
    else:
        # ties="first": the lowest id of a group can win, against every row but its twins.
        W_solve, b_solve = aligned(W_np[representative]), None if b_np is None else b_np[representative]
        state_row, state_token = inverse, representative
        wanted = np.zeros(n_unique, bool)
        wanted[inverse[selected]] = True

    saver = None
    if checkpoint is not None:
        from .resume import Checkpoint

        identity = hashlib.sha256()
        identity.update(head_sha256(*stored).encode())
        run_settings = {k: v for k, v in settings._asdict().items() if k not in SCHEDULING_FIELDS}
        identity.update(json.dumps([run_settings, dom.to_json(user_domain), dom.to_json(solve_domain)], sort_keys=True,
                                   default=str).encode())
        identity.update(np.packbits(wanted).tobytes())
        saver = Checkpoint(checkpoint, identity.hexdigest(), every=settings.checkpoint_seconds)
    state = _solve_unique(W_solve, b_solve, solve_domain, settings, deadline, reporter, wanted,
                          require_exact_certificates=isinstance(user_domain, dom.Free), checkpoint=saver)
    reporter.close()

    report = _assemble(*stored, user_domain, solve_domain, settings, state_row, state_token, inverse, state,
                       selected)
    report.seconds = time.monotonic() - start
    report.stage_seconds = state["seconds"]
    if n_unique < C:
        report.notes.append(f"{C - n_unique} token(s) duplicate another token's row and bias exactly")
    if isinstance(user_domain, dom.Free):
        report.notes.append("domain is all of R^d: only verdicts are meaningful; margins are on "
                            f"{dom.to_json(solve_domain)} (solved_on)")
    if isinstance(user_domain, dom.NormOutput):
        centred = " after centring (Pn)" if user_domain.kind == "layernorm" else ""
        report.notes.append(f"{user_domain.kind} output domain: solved on ||n|| <= sqrt(d) in the norm's coordinates; "
                            f"each witness is n{centred}, the feature vector is gamma * n + beta")
    return report


def _explicit(**values) -> dict:
    """The keyword arguments the caller gave (None: not given, the settings' value stands)."""
    return {name: value for name, value in values.items() if value is not None}


def _selected_mask(tokens, C: int) -> np.ndarray:
    """The tokens to decide as a (C,) bool mask, from ids or a mask (None: all)."""
    if tokens is None:
        return np.ones(C, bool)
    arr = np.asarray(tokens)
    if arr.dtype == bool:
        if arr.shape != (C,):
            raise ValueError(f"tokens: expected a boolean mask of shape ({C},), got shape {arr.shape}")
        mask = arr.copy()
    else:
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"tokens: expected a 1-D array of integer ids or a boolean mask, got {arr.dtype} shape {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= C):
            raise ValueError(f"tokens: ids must lie in 0..{C - 1}, got {int(arr.min())}..{int(arr.max())}")
        mask = np.zeros(C, bool)
        mask[arr.astype(np.int64)] = True
    if not mask.any():
        raise ValueError("tokens: the selection is empty; expected at least one token to check")
    return mask


def _solve_unique(W, b, domain, settings: Settings, deadline, reporter, wanted, *, require_exact_certificates,
                  checkpoint=None):
    """Run the stages on the ``wanted`` rows (never a row with a bit-identical twin); returns per-row evidence."""
    U, d = W.shape
    dtype = device_dtype()
    # Rows nobody asked about start with a verdict no stage treats as pending.
    verdict = np.where(wanted, 0, SKIPPED).astype(np.int8)
    lower = np.full(U, -np.inf)
    upper = np.full(U, np.inf)
    stage = np.array(["none"] * U, dtype=object)
    half = settings.half_witnesses and _half_witnesses(domain, dtype)
    # Device points are exact in the device dtype, or in float16 when ``half``; a witness
    # the table cannot hold exactly (from the rational stage, or a float32 point whose
    # float16 rounding loses its margin) is kept apart in ``exact_witness`` in float64.
    witness = np.zeros((U, d), np.float16 if half else np.dtype(dtype))
    exact_witness: dict[int, np.ndarray] = {}
    cert_support: dict[int, np.ndarray] = {}
    cert_weights: dict[int, np.ndarray] = {}
    cert_rational: dict[int, list] = {}
    seconds = {name: 0.0 for name in STAGES}
    if U == 1:
        verdict[0], lower[0], upper[0], stage[0] = 1, np.inf, np.inf, "screen"
        witness[0] = np.asarray(dom.project(domain, jnp.zeros(d)))
        return dict(verdict=verdict, lower=lower, upper=upper, stage=stage, witness=witness, exact_witness=exact_witness,
                    cert_support=cert_support, cert_weights=cert_weights, cert_rational=cert_rational, seconds=seconds)

    place = _Placement(settings.shard)
    mean, precision = screen.whitening(W)
    W_device = on_device(W, dtype)
    head = _Head(W_device, jnp.asarray(np.zeros(U) if b is None else b, dtype),
                 jnp.linalg.norm(W_device, axis=1), jnp.asarray(mean, dtype), jnp.asarray(precision, dtype))
    head = place.replicate(head)
    ddomain = place.replicate(domain_on_device(domain, dtype))
    k = settings.competitors or max(32, 2 * (d + 1))
    k = int(min(k, U - 1, 1024))
    B = place.batch(int(min(settings.chunk_size, U)))
    # Ascent and PDHG hold a (batch, k, d) block of competitor rows and a few arrays of its
    # size; the batch is capped so that stays within a quarter of the head (at least 16 MB),
    # which keeps a whole check's memory near the head plus its witness table.
    per_token = 4 * k * d * np.dtype(dtype).itemsize
    hard_B = int(min(B, max(1, max(W.nbytes // 4, 16 << 20) // per_token)))
    hard_B = place.batch(1 << (hard_B.bit_length() - 1))  # a power of two: few distinct compiled shapes
    top: dict[int, np.ndarray] = {}  # competitor candidates, kept only for undecided tokens
    pdhg_support: dict[int, np.ndarray] = {}  # PDHG's last competitor sets, for the exact stage
    key = jax.random.PRNGKey(settings.seed)
    extent = np.asarray(dom.extent(ddomain))
    state = dict(verdict=verdict, lower=lower, upper=upper, stage=stage, witness=witness, exact_witness=exact_witness,
                 cert_support=cert_support, cert_weights=cert_weights, cert_rational=cert_rational, top=top,
                 pdhg_support=pdhg_support, seconds=seconds)
    lr = float(0.05 * np.max(extent))  # ascent's step size
    eps = float(jnp.finfo(dtype).eps)
    tolerance = float(max(8 * (d + 4) * eps, 1e-6 if dtype == jnp.float32 else 1e-12))  # PDHG's
    decisive = float(64 * (d + 4) * eps)
    ascent_call = partial(_ascent_chunk, steps=settings.ascent_steps, learning_rate=lr, num_top=k)
    pdhg_call = partial(_pdhg_chunk, max_iterations=settings.pdhg_round_iterations, tolerance=tolerance,
                        decisive=decisive, num_top=k, adaptive_step=settings.pdhg_adaptive_step)
    warmup = _later_stage_warmup(settings, head, ddomain, key, place, dtype, U, d, k, B, hard_B, half,
                                 ascent_call, pdhg_call)
    snapshot = checkpoint.load() if checkpoint is not None else None
    if snapshot is not None:
        for name in ("verdict", "lower", "upper", "stage", "witness"):
            state[name][...] = snapshot[name]
        for name in ("exact_witness", "cert_support", "cert_weights", "cert_rational", "top", "pdhg_support",
                     "seconds"):
            state[name].update(snapshot[name])
        reporter.note(f"resuming a partial run at {snapshot['phase']} "
                      f"({int(np.sum(np.isin(verdict, (1, -1))))} token(s) already decided)")

    def begin(phase: str, todo: np.ndarray):
        """``(tokens, first chunk)`` of a phase, or None for a phase the snapshot has passed.

        A phase starts by saving a snapshot, so a run cut short inside it replays it from
        exactly this state.
        """
        nonlocal snapshot
        from .resume import PHASES

        if snapshot is not None:
            here, saved = PHASES.index(phase), PHASES.index(snapshot["phase"])
            if here < saved:
                return None
            if here == saved:
                todo, first, snapshot = snapshot["todo"], snapshot["position"], None
                return todo, first
        if checkpoint is not None:
            checkpoint.save(phase, 0, todo, state)
        return todo, 0

    def halved(ids, x, L):
        """Witness points rounded to float16 where that keeps a positive margin (re-proved
        at the rounded point), and which rows keep their float32 point: those whose margin
        rounding would lose, and undecided ones (the next stage warm-starts from them)."""
        rounded = x.astype(np.float16).astype(x.dtype)
        differs = np.any(rounded != x, axis=1)
        decided = differs & (L > 0)
        take = np.zeros_like(differs)
        rows = np.flatnonzero(decided)
        L = L.copy()
        for start in range(0, rows.size, hard_B):  # one batch shape for every stage: one compile
            part = rows[start:start + hard_B]
            padded = np.concatenate([part, np.full(hard_B - part.size, part[0])])
            L_rounded = np.asarray(_top_chunk(head, place.split(ids[padded]), place.split(rounded[padded], dtype),
                                              num_top=0).lower, np.float64)[:part.size]
            take[part] = L_rounded > 0
            L[part[take[part]]] = L_rounded[take[part]]
        return np.where(take[:, None], rounded, x), L, differs & ~take

    def start_points(ids):
        """The best point so far per token, at full precision (a later stage starts there)."""
        x = witness[ids].astype(dtype)
        for r, i in enumerate(ids):
            if int(i) in exact_witness:
                x[r] = exact_witness[int(i)]
        return x

    def record_witness(ids, valid, x, wb, name):
        x = np.asarray(x)
        L = np.asarray(wb.lower, np.float64)
        keep_wide = np.zeros(len(ids), bool)
        if half:
            x, L, keep_wide = halved(ids, x, L)
        ids, x, L, keep_wide = ids[:valid], x[:valid], L[:valid], keep_wide[:valid]
        improve = L > lower[ids]
        lower[ids] = np.where(improve, L, lower[ids])
        witness[ids[improve]] = x[improve]
        if half:
            for r in np.flatnonzero(improve):
                if keep_wide[r]:
                    exact_witness[int(ids[r])] = x[r].astype(np.float64)
                else:
                    exact_witness.pop(int(ids[r]), None)
        newly = (L > 0) & (verdict[ids] == 0)
        verdict[ids[newly]] = 1
        stage[ids[newly]] = name
        tops = np.asarray(wb.top)
        if tops.shape[1]:
            for r in np.flatnonzero(verdict[ids] == 0):
                top[int(ids[r])] = tops[r]

    def record_certificate(ids, valid, support, weights, U_rig, name):
        ids = ids[:valid]
        U_rig = np.asarray(U_rig, np.float64)[:valid]
        support = np.asarray(support)[:valid]
        weights = np.asarray(weights, np.float64)[:valid]
        for r, i in enumerate(ids):
            if U_rig[r] < upper[i]:
                upper[i] = U_rig[r]
                nz = weights[r] > 0
                cert_support[i] = support[r][nz]
                cert_weights[i] = weights[r][nz]
            if U_rig[r] <= 0 and verdict[i] == 0 and not require_exact_certificates:
                verdict[i] = -1
                stage[i] = name

    def pending():
        return np.flatnonzero(verdict == 0)

    # Stage 1: screening, a cheap pass over every token, then all candidates for the rest.
    t0 = time.monotonic()
    done = 0
    for all_candidates, name in ((False, "screen"), (True, "screen 2")):
        started = begin(name, np.flatnonzero(verdict == 0))
        if started is None:
            continue
        todo, first = started
        # The second pass tries ~5 points per token: fewer tokens per product keep its
        # memory (points x C logits) at the first pass's.
        size = place.batch(max(1, B // 4)) if all_candidates else B
        for n, (ids, valid) in enumerate(_chunks(todo, size)):
            if n < first:
                continue
            if time.monotonic() > deadline:
                break
            x, wb, one, U_one = _screen_chunk(head, place.split(ids), ddomain, key, all_candidates=all_candidates,
                                              half=half)
            if settings.braid_steps and all_candidates:
                x, wb = _braid_chunk(head, place.split(ids), x, ddomain, num_top=0, steps=settings.braid_steps)
            record_witness(ids, valid, x, wb, "screen")
            record_certificate(ids, valid, one, np.ones((len(ids), 1)), U_one, "screen")
            if np.any(verdict[ids[:valid]] == 0):
                warmup.start()  # some token needs the later stages: compile them meanwhile
            # Else glibc's arenas keep every freed (batch x C) block; a few times a second
            # bounds what they hold at a few blocks, for a fraction of a trim per chunk.
            return_freed_memory(min_interval=TRIM_INTERVAL)
            done += valid
            reporter.update(name, done, todo.size)
            if checkpoint is not None and checkpoint.due():
                checkpoint.save(name, n + 1, todo, state)
        done = 0
    return_freed_memory()
    # Competitor sets (top-k logits at the best point) only for tokens still undecided:
    # a top-k over C for every token would cost more than the screen itself.
    started = begin("top", np.flatnonzero(verdict == 0))
    todo = started[0] if started else np.zeros(0, np.int64)
    # Usually few tokens get here: a batch no larger than needed (a power of two, so few
    # compiled shapes) keeps top_k's (batch x C) buffers small.
    top_B = place.batch(int(min(B, 1 << max(3, int(todo.size - 1).bit_length()))))
    for ids, valid in _chunks(todo, top_B):
        if time.monotonic() > deadline:
            break
        x = start_points(ids)
        record_witness(ids, valid, x, _top_chunk(head, place.split(ids), place.split(x, dtype), num_top=k), "screen")
        return_freed_memory(min_interval=TRIM_INTERVAL)
    seconds["screen"] += time.monotonic() - t0

    # Stage 2: margin ascent.
    t0 = time.monotonic()
    started = begin("ascent", pending())
    todo = started[0] if started else np.zeros(0, np.int64)
    done = 0
    for ids, valid in _chunks(todo, hard_B):
        if time.monotonic() > deadline:
            break
        support = np.stack([top[int(i)] for i in ids])
        x, wb, weights, U_rig = ascent_call(head, place.split(ids), place.split(support),
                                            place.split(start_points(ids), dtype), ddomain)
        record_witness(ids, valid, x, wb, "ascent")
        record_certificate(ids, valid, support, weights, U_rig, "ascent")
        return_freed_memory(min_interval=TRIM_INTERVAL)
        done += valid
        reporter.update("ascent", done, todo.size)
    seconds["ascent"] += time.monotonic() - t0

    # Stage 3: PDHG with row generation. Slots of a fixed-size batch are refilled as
    # tokens finish, so one slow token never holds up a whole chunk.
    t0 = time.monotonic()
    omega_start = 1.0 / max(float(np.max(extent)), 1e-30)
    started = begin("pdhg", pending())
    queue = [int(i) for i in started[0]] if started else []
    total = len(queue)
    # Without a bias and with 0 inside X, x = 0 shows m* >= 0: no float certificate can
    # exist, so the exact stage (if d allows it) takes over after a short PDHG run. Only
    # on a box, though: the exact stage makes witnesses only there, so on a ball a token
    # with a small positive margin needs PDHG's whole budget to find one (a token whose
    # margin is 0 still leaves PDHG early, once it has converged).
    zero_floor = b is None and _contains_origin(domain)
    exact_available = d <= settings.rational_max_dim
    budget_per_token = settings.pdhg_iterations
    if zero_floor and exact_available and isinstance(domain, dom.Box):
        budget_per_token = min(budget_per_token, 2 * settings.pdhg_round_iterations)
    state_of: dict[int, tuple] = {}
    used = np.zeros(U, np.int64)
    active: list[int] = []
    finished = 0
    while (queue or active) and time.monotonic() <= deadline:
        while queue and len(active) < hard_B:
            active.append(int(queue.pop(0)))
        # A short tail runs in a smaller batch: every slot of a vmapped loop costs time.
        slots = hard_B if len(active) > hard_B // 8 else _pdhg_tail_slots(place, hard_B)
        ids = np.array(active + [active[0]] * (slots - len(active)), np.int64)
        valid = len(active)
        support = np.stack([state_of.get(i, (top[i],))[0] for i in ids])
        lam0 = np.stack([state_of[i][1] if i in state_of else np.full(k, 1.0 / k) for i in ids])
        omega0 = np.array([state_of[i][2] if i in state_of else omega_start for i in ids])
        budget = np.where(np.arange(slots) < valid, settings.pdhg_round_iterations, 0)
        result, wb, weights, U_rig = pdhg_call(
            head, place.split(ids), place.split(support), place.split(start_points(ids), dtype), place.split(lam0, dtype),
            place.split(omega0, dtype), place.split(budget, jnp.int32), ddomain)
        record_witness(ids, valid, result.x, wb, "pdhg")
        record_certificate(ids, valid, support, weights, U_rig, "pdhg")
        return_freed_memory(min_interval=TRIM_INTERVAL)
        lam = np.asarray(result.lam, np.float64)
        status = np.asarray(result.status)
        omega = np.asarray(result.omega, np.float64)
        iterations = np.asarray(result.iterations)
        tops = np.asarray(wb.top)
        new_support = _refresh_support(tops, support, lam, keep=1e-12)
        still = []
        for r in range(valid):
            i = int(ids[r])
            used[i] += max(int(iterations[r]), 32)  # a call that could not iterate still counts
            # A margin indistinguishable from 0 goes to the exact stage (which does its own
            # row generation) when d allows; otherwise PDHG goes on until the strongest
            # rows at x are all in the competitor set.
            stuck = status[r] == pdhg.CONVERGED and (
                exact_available or set(tops[r][: max(1, k // 4)].tolist()) <= set(support[r].tolist()))
            if verdict[i] != 0 or stuck or used[i] >= budget_per_token:
                finished += 1
                continue
            old = dict(zip(support[r].tolist(), lam[r].tolist()))
            state_of[i] = (new_support[r], np.array([old.get(int(j), 0.0) for j in new_support[r]]), omega[r])
            still.append(i)
        active = still
        reporter.update("pdhg", finished, total)
    seconds["pdhg"] += time.monotonic() - t0

    pdhg_support.update({i: s[0] for i, s in state_of.items()})

    # Stage 4: exact rational LP for what floats cannot sign.
    t0 = time.monotonic()
    started = begin("rational", pending())
    todo = started[0] if started else np.zeros(0, np.int64)
    if d <= settings.rational_max_dim:
        rational_deadline = min(deadline, time.monotonic() + settings.rational_seconds)
        # On R^d (and for the exact step on a ball) only g = 0 certificates are exact.
        lo_hi = dom.Free() if require_exact_certificates else domain
        for n, i in enumerate(todo):
            if time.monotonic() > rational_deadline:
                break
            # Heaviest certificate rows first: the exact stage tries them as a simplex.
            weights_i = cert_weights.get(int(i), np.zeros(0))
            candidates = [int(j) for j in np.asarray(cert_support.get(int(i), []))[np.argsort(-weights_i)]]
            for j in list(pdhg_support.get(int(i), [])) + list(top.get(int(i), [])):
                if j not in candidates and j != i:
                    candidates.append(int(j))
            candidates = candidates[: 2 * (d + 1) + 8]
            outcome = rational.certify(W, b, lo_hi, int(i), np.asarray(candidates, np.int64),
                                       deadline=rational_deadline, weights=np.sort(weights_i)[::-1])
            # The exact evidence replaces the float one, so the stored bound must be the one
            # it proves (not a tighter bound from a dropped float certificate: on R^d with a
            # bias those never decide, but can be below the exact value), rounded outwards.
            if outcome.verdict == -1:
                verdict[i], stage[i], upper[i] = -1, "rational", _float_at_least(outcome.value)
                cert_support[i] = outcome.support
                cert_weights[i] = np.array([float(w) for w in outcome.weights])
                cert_rational[i] = [f"{w.numerator}/{w.denominator}" for w in outcome.weights]
            elif outcome.verdict == 1:
                verdict[i], stage[i] = 1, "rational"
                lower[i] = -_float_at_least(-outcome.value)
                exact_witness[int(i)] = np.asarray(outcome.witness, np.float64)
            reporter.update("rational", n + 1, todo.size)
    if require_exact_certificates:
        # On R^d only exact g = 0 certificates count; float ones are dropped.
        for i in np.flatnonzero(verdict == 0):
            if i in cert_support and i not in cert_rational:
                upper[i] = np.inf
    seconds["rational"] += time.monotonic() - t0
    warmup.stop()
    return dict(verdict=verdict, lower=lower, upper=upper, stage=stage, witness=witness, exact_witness=exact_witness,
                cert_support=cert_support, cert_weights=cert_weights, cert_rational=cert_rational, seconds=seconds)


def _float_at_least(value) -> float:
    """The smallest float64 >= an exact rational (``float`` rounds to nearest)."""
    approx = float(value)
    return approx if Fraction(approx) >= value else float(np.nextafter(approx, np.inf))


def _compact_rows(table: np.ndarray, rows: np.ndarray, *, block: int = 4096) -> np.ndarray:
    """``table[rows]`` without a second copy of the table when ``rows`` is strictly increasing.

    Then ``rows[r] >= r``, so moving block by block towards the front never overwrites a
    row that is still to be read; the result is a view of ``table``'s first rows.
    """
    if rows.size and not np.all(np.diff(rows) > 0):
        return table[rows]
    for start in range(0, rows.size, block):
        part = rows[start:start + block]
        table[start:start + part.size] = table[part]
    return table[: rows.size]


def _assemble(W, b, user_domain, solve_domain, settings, state_row, state_token, inverse, state, selected) -> Report:
    """Map the solved rows' results to every token, adding tie certificates.

    ``state_row[i]`` is the solved row holding token i's results, ``state_token[u]`` the
    token id of solved row u; ``inverse`` groups bit-identical tokens.
    """
    C, d = W.shape
    verdict = state["verdict"][state_row].copy()
    lower = state["lower"][state_row].copy()
    upper = state["upper"][state_row].copy()
    stage = np.array(state["stage"][state_row], dtype=object)
    twins: dict[int, list[int]] = {}
    groups: dict[int, list[int]] = {}
    for i, u in enumerate(inverse):
        groups.setdefault(int(u), []).append(i)
    tie_certificate: dict[int, int] = {}
    for u, members in groups.items():
        if len(members) < 2:
            continue
        for i in members:
            twins[i] = [j for j in members if j != i]
        losers = members if settings.ties == "strict" else members[1:]
        for i in losers:
            verdict[i], stage[i], upper[i] = -1, "tie", 0.0
            lower[i] = min(lower[i], 0.0)
            tie_certificate[i] = members[0] if i != members[0] else members[1]
    # A token left out by the user is skipped even when a selected twin was decided.
    verdict[~selected] = SKIPPED
    lower[~selected], upper[~selected], stage[~selected] = -np.inf, np.inf, "skipped"
    witness_ids = np.flatnonzero(verdict == 1)
    witnesses = _compact_rows(state["witness"], state_row[witness_ids])
    exact = [(r, state["exact_witness"][int(state_row[i])]) for r, i in enumerate(witness_ids)
             if int(state_row[i]) in state["exact_witness"]]
    if exact:  # a wider table only when some point needs it (float32 if that holds them all)
        points = np.stack([x for _, x in exact])
        wide = np.float32 if np.array_equal(points.astype(np.float32), points) else np.float64
        witnesses = witnesses.astype(np.promote_types(witnesses.dtype, wide))
        for r, x in exact:
            witnesses[r] = x
    cert_ids, offsets, support, weights, rational_w = [], [0], [], [], []
    for i in np.flatnonzero(verdict == -1):
        if i in tie_certificate:
            s, w, r = [tie_certificate[i]], [1.0], ["1/1"]
        else:
            u = int(state_row[i])
            s = state_token[state["cert_support"][u]].tolist()
            w = state["cert_weights"][u].tolist()
            r = state["cert_rational"].get(u, [""] * len(s))
        cert_ids.append(int(i))
        support.extend(s)
        weights.extend(w)
        rational_w.extend(r)
        offsets.append(len(support))
    head = {"classes": int(C), "dim": int(d), "has_bias": b is not None, "sha256": head_sha256(W, b)}
    return Report(
        head=head,
        domain=user_domain,
        verdict=verdict.astype(np.int8),
        lower=lower,
        upper=upper,
        stage=np.array(stage.tolist(), dtype=np.str_),
        twins=twins,
        witness_ids=witness_ids.astype(np.int64),
        witnesses=witnesses,
        certificate_ids=np.asarray(cert_ids, np.int64),
        certificate_offsets=np.asarray(offsets, np.int64),
        certificate_support=np.asarray(support, np.int64),
        certificate_weights=np.asarray(weights, np.float64),
        certificate_rational=np.asarray(rational_w, dtype=np.str_),
        settings={k: v for k, v in settings._asdict().items()},
        solved_on=dom.to_json(solve_domain) if isinstance(user_domain, (dom.Free, dom.NormOutput)) else None,
    )
