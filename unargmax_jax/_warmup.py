"""Compile kernels ahead of their first use, in a background thread.

The later stages of a check (screen 2, ascent, PDHG) each compile a kernel of a few
hundred milliseconds to seconds the first time they run. Their shapes are fixed before
screening starts, so they can be compiled while the screen's products run: on an
accelerator the host is idle then, and on a CPU the compiler takes one thread while the
matrix products use the rest. ``jit(f).lower(*args).compile()`` fills the same cache
that a later call ``f(*args)`` with arguments of the same shapes, dtypes and shardings
looks in, so that call does not compile again.
"""

from __future__ import annotations

import threading
from typing import Callable


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
