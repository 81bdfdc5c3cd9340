"""Compile kernels ahead of their first use, in a background thread.

The later stages of a check (screen 2, ascent, PDHG) each compile a kernel of a few
hundred milliseconds to seconds the first time they run. Their shapes are fixed before
screening starts, so they are compiled from the check's start: while the host does
single-threaded work (the twins, whitening, the first pass's own compile) a second core
is free, and later on an accelerator the host is idle, on a CPU the compiler takes one
thread while the matrix products use the rest. ``jit(f).lower(*args).compile()`` fills the same cache
that a later call ``f(*args)`` with arguments of the same shapes, dtypes and shardings
looks in, so that call does not compile again.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from . import ascent, pdhg, screen, symmetric
from .context import Context
from .witness import witness_chunk

# Below this many flops in the first screening pass (2 C^2 d: about a second on one CPU
# core) compiling the later stages in the background would not overlap anything.
WARMUP_MIN_FLOPS = 2e11


class Warmup:
    """Run compile jobs once, in order, on a background thread.

    A job that fails only means its kernel compiles when it is first called, so failures
    are swallowed here (the real call raises any real error).
    """

    def __init__(self, jobs: list[Callable[[], object]]):
        self._jobs = list(jobs)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        if self._thread is None and self._jobs:
            self._thread = threading.Thread(target=self._run, name="unargmax-warmup", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        for job in self._jobs:
            if self._stopping.is_set():
                return
            try:
                job()
            except Exception:  # noqa: BLE001 - see the class docstring
                pass

    def stop(self) -> None:
        """Skip the jobs not yet begun and wait for the one running (a compile cannot be
        interrupted, and left running it would compete with what the process does next)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()


def later_stage_warmup(ctx: Context, todo: np.ndarray) -> Warmup:
    """Compile jobs for the kernels the stages after the first screening pass call, with
    arguments of exactly the shapes, dtypes and placement of the real calls (so those find
    them compiled), in the order the check first needs them: the symmetric first pass's
    step (while the main thread runs its pre-pass; ``todo``: the rows the first pass will
    screen), the float16 witness re-proof (during the first pass), the competitor sets, the
    second pass and braid, ascent, PDHG.
    Only worth a compiler thread when the first pass runs longer than compiling takes
    (about 2 C^2 d flops against a few seconds); otherwise no jobs."""
    U, d = ctx.W.shape
    if not ctx.settings.background_compile or 2.0 * U * U * d < WARMUP_MIN_FLOPS:
        return Warmup([])
    place, n, k, algorithm = ctx.place, ctx.hard_batch, ctx.competitors, ctx.settings.dot_algorithm

    def split(shape, dtype):
        return place.split(np.zeros(shape, dtype))

    ids, x = split(n, np.int64), split((n, d), ctx.dtype)
    jobs = []
    if not ctx.settings.bf16_screen and symmetric.applies(ctx, todo):
        jobs.append(lambda: symmetric.compile_ahead(ctx))
    if ctx.half:
        jobs.append(lambda: witness_chunk.lower(ctx.head, ids, x, num_top=0, algorithm=algorithm).compile())
    top = screen.competitor_batch(ctx)
    jobs.append(lambda: witness_chunk.lower(ctx.head, split(top, np.int64), split((top, d), ctx.dtype), num_top=k,
                                            algorithm=algorithm).compile())
    second = screen.second_pass_batch(ctx)
    jobs.append(lambda: screen.screen_chunk.lower(ctx.head, split(second, np.int64), ctx.device_domain, ctx.key,
                                                  all_candidates=True, half=ctx.half, algorithm=algorithm).compile())
    if ctx.settings.braid_steps:
        jobs.append(lambda: screen.braid_chunk.lower(ctx.head, split(second, np.int64), split((second, d), ctx.dtype),
                                                     ctx.device_domain, num_top=0, steps=ctx.settings.braid_steps,
                                                     algorithm=algorithm).compile())
    ascent_call = ascent.batch_kernel(ctx)
    jobs.append(lambda: ascent_call.func.lower(ctx.head, ids, split((n, k), np.int32), x, ctx.device_domain,
                                               **ascent_call.keywords).compile())
    jobs.append(_pdhg_job(ctx, n))
    tail = pdhg.tail_slots(ctx)
    if tail != n:
        jobs.append(_pdhg_job(ctx, tail))
    return Warmup(jobs)


def _pdhg_job(ctx: Context, slots: int) -> Callable[[], object]:
    """Compile PDHG's batch kernel for ``slots`` tokens."""
    call = pdhg.batch_kernel(ctx)
    d, k, place = ctx.W.shape[1], ctx.competitors, ctx.place

    def job():
        # ids, support, x, lam, omega, budget: the real call's shapes, dtypes and placement
        zeros = (np.zeros(slots, np.int64), np.zeros((slots, k), np.int32), np.zeros((slots, d), ctx.dtype),
                 np.zeros((slots, k), ctx.dtype), np.zeros(slots, ctx.dtype), np.zeros(slots, np.int32))
        call.func.lower(ctx.head, *(place.split(z) for z in zeros), ctx.device_domain, **call.keywords).compile()

    return job
