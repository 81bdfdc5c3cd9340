"""The pipeline of a check: validate, group exact twins, run the stages, assemble the report.

``check`` runs, for the rows still undecided after each stage (``solve/``):

1. ``screen``: candidate points per token, one blocked product per candidate;
2. ``ascent``: smoothed-margin ascent (optax) over the top-k competitors;
3. ``pdhg``: restarted PDHG rounds with row generation (fixed-capacity competitor
   sets refreshed from a full-head evaluation between rounds);
4. ``basis``: on a box, an optimal float64 basis per token (HiGHS with row generation,
   or the batched simplex from a nearby solved row's vertex), and the witness, float64
   certificate or exact (FLINT) certificate read off it; certificates are shared with
   every row they bound (groups of near-identical rows go first, before PDHG);
5. ``rational``: exact rational LP on a few candidate rows for margins that no
   floating-point bound can sign (exactly 0, e.g. rows inside the hull without bias).

Every verdict rests on a rigorous bound (``bounds``) or an exact computation
(``rational``); a token that no stage decides within the limits stays ``undecided``.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor

import jax.numpy as jnp
import numpy as np

from . import domains as dom
from .assemble import Problem, assemble
from .heads import aligned, validate_head
from .report import Report, head_sha256
from .resume import Checkpoint, Phases
from .settings import SCHEDULING_FIELDS, Settings, settings_from
from .solve import ascent, basis, pdhg, rational, screen
from .solve.context import device_dtype, half_witnesses, make_context
from .solve.evidence import Evidence, new_evidence, pending
from .solve.progress import Progress
from .solve.warmup import later_stage_warmup
from .twins import find_twins
from .verdicts import ARGMAXABLE, STAGES

# The stages in the order they run (``verdicts.STAGES``); each records into the same Evidence.
PIPELINE = tuple(zip(STAGES, (screen.run, ascent.run, pdhg.run, basis.run, rational.run)))


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
    start = time.monotonic()
    W_np, b_np = validate_head(W, b)
    if not isinstance(domain, (dom.Box, dom.Ball, dom.Free, dom.NormOutput)):
        raise TypeError(f"domain must be Box, Ball, Free or NormOutput, got {type(domain).__name__}")
    settings = settings_from(settings, **_explicit(ties=ties, seed=seed, chunk_size=chunk_size,
                                                   max_seconds=max_seconds), **options)
    user_domain = dom.validate(domain, W_np.shape[1])
    W_solve, b_solve, solve_domain, settings = _solver_coordinates(W_np, b_np, user_domain, settings)
    selected = selected_mask(tokens, W_np.shape[0])
    problem = _problem(W_solve, b_solve, solve_domain, settings.ties, selected)
    sha256 = _hash_in_background(W_np, b_np)
    saver = None if checkpoint is None else _checkpoint(checkpoint, sha256(), user_domain, problem, settings)
    deadline = start + settings.max_seconds if settings.max_seconds is not None else float("inf")
    reporter = Progress(progress)
    evidence = solve_rows(problem, settings, deadline=deadline, progress=reporter, checkpoint=saver,
                          exact_certificates_only=isinstance(user_domain, dom.Free))
    reporter.close()
    report = assemble(W_np, b_np, user_domain, problem, settings, evidence, selected, sha256=sha256())
    report.seconds = time.monotonic() - start
    report.stage_seconds = evidence.seconds
    report.notes.extend(_notes(user_domain, problem))
    return report


def _explicit(**values) -> dict:
    """The keyword arguments the caller gave (None: not given, the settings' value stands)."""
    return {name: value for name, value in values.items() if value is not None}

def selected_mask(tokens, C: int) -> np.ndarray:
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

def _solver_coordinates(W, b, domain: dom.Domain, settings: Settings):
    """``(W, b, domain, settings)`` as the stages solve them. A norm domain is solved in the
    norm's coordinates n (a ball; witnesses are points n); ``Free`` on a large box (with a
    bias) or a ball around 0 (without)."""
    if isinstance(domain, dom.NormOutput):
        W, b, solve_domain, exact = dom.norm_head(W, b, domain)
        if not exact:
            # A rounded transformed head: an exact certificate of its margin being 0 would
            # not be one for the norm's real outputs, so such tokens stay undecided.
            # Nor would a float64 verdict closer to 0 than the rounding: no basis stage.
            settings = settings._replace(rational_max_dim=0, basis_rounds=0)
        return aligned(W), b, solve_domain, settings
    if isinstance(domain, dom.Free):
        return W, b, dom.resolve_free(b is not None, W.shape[1], settings.free_box_radius), settings
    return W, b, domain, settings


def _problem(W, b, domain: dom.Domain, ties: str, selected: np.ndarray) -> Problem:
    """The rows to solve, after grouping bit-identical tokens."""
    C = W.shape[0]
    representative, inverse = find_twins(W, b)
    n_unique = representative.size
    if ties == "strict" or n_unique == C:
        # Solve on W itself (no copy). Every member of a strict tie is unargmaxable whatever
        # its row's own margin, so tied rows are not solved; as competitors of the other
        # tokens a duplicate row changes nothing.
        tied = np.bincount(inverse, minlength=n_unique)[inverse] > 1
        return Problem(W, b, domain, np.arange(C), np.arange(C), selected & ~tied, inverse)
    # ties="first": the lowest id of a group can win, against every row but its twins.
    wanted = np.zeros(n_unique, bool)
    wanted[inverse[selected]] = True
    return Problem(aligned(W[representative]), None if b is None else b[representative], domain, inverse,
                   representative, wanted, inverse)


def _hash_in_background(W: np.ndarray, b: np.ndarray | None):
    """:func:`head_sha256` of the stored head on a second thread (hashlib and NumPy's casts
    release the GIL, so it overlaps the check), computed once for the checkpoint's key and
    the report. Returns a function that waits for the digest."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unargmax-hash")
    digest = pool.submit(head_sha256, W, b)
    pool.shutdown(wait=False)
    return digest.result


def _checkpoint(path, sha256: str, user_domain: dom.Domain, problem: Problem, settings: Settings) -> Checkpoint:
    """The run's checkpoint file, keyed by the stored head (its ``sha256``), the settings
    that change results, the domain and the rows to decide."""
    identity = hashlib.sha256()
    identity.update(sha256.encode())
    run_settings = {k: v for k, v in settings._asdict().items() if k not in SCHEDULING_FIELDS}
    identity.update(json.dumps([run_settings, dom.to_json(user_domain), dom.to_json(problem.domain)], sort_keys=True,
                               default=str).encode())
    identity.update(np.packbits(problem.wanted).tobytes())
    return Checkpoint(path, identity.hexdigest(), every=settings.checkpoint_seconds)


def solve_rows(problem: Problem, settings: Settings, *, deadline: float, progress: Progress,
               checkpoint: Checkpoint | None, exact_certificates_only: bool) -> Evidence:
    """Run the stages, in order, on the wanted rows of ``problem``; returns their evidence."""
    W, b, domain = problem.W, problem.b, problem.domain
    U, d = W.shape
    if U == 1:
        return _lone_row(problem, settings)
    ctx = make_context(W, b, domain, settings, deadline=deadline, progress=progress,
                       exact_certificates_only=exact_certificates_only)
    evidence = new_evidence(problem.wanted, d, np.float16 if ctx.half else np.dtype(ctx.dtype))
    ctx = ctx._replace(warmup=later_stage_warmup(ctx, pending(evidence)))
    ctx.warmup.start()
    phases = Phases(checkpoint, evidence, progress)
    for name, run in PIPELINE:
        began = time.monotonic()
        run(ctx, evidence, phases)
        evidence.seconds[name] += time.monotonic() - began
    ctx.warmup.stop()
    return evidence


def _lone_row(problem: Problem, settings: Settings) -> Evidence:
    """A head of one row: it is the argmax everywhere."""
    d, dtype = problem.W.shape[1], device_dtype()
    half = settings.half_witnesses and half_witnesses(problem.domain, dtype)
    evidence = new_evidence(problem.wanted, d, np.float16 if half else np.dtype(dtype))
    evidence.verdict[0], evidence.lower[0], evidence.upper[0], evidence.stage[0] = ARGMAXABLE, np.inf, np.inf, "screen"
    evidence.witness[0] = np.asarray(dom.project(problem.domain, jnp.zeros(d)))
    return evidence


def _notes(user_domain: dom.Domain, problem: Problem) -> list[str]:
    """The report's notes on exact duplicates and on how the domain was solved."""
    notes = []
    duplicates = problem.inverse.size - int(problem.inverse.max(initial=-1)) - 1
    if duplicates:
        notes.append(f"{duplicates} token(s) duplicate another token's row and bias exactly")
    if isinstance(user_domain, dom.Free):
        notes.append("domain is all of R^d: only verdicts are meaningful; margins are on "
                     f"{dom.to_json(problem.domain)} (solved_on)")
    if isinstance(user_domain, dom.NormOutput):
        centred = " after centring (Pn)" if user_domain.kind == "layernorm" else ""
        notes.append(f"{user_domain.kind} output domain: solved on ||n|| <= sqrt(d) in the norm's coordinates; "
                     f"each witness is n{centred}, the feature vector is gamma * n + beta")
    return notes
