"""The one-line progress bar a long check prints on stderr."""

from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress bar on stderr with a per-stage ETA; silent unless enabled, and
    silent for the first ``delay`` seconds so quick runs print nothing.

    The ETA is the rate since the stage's first update: the first chunk of a stage also
    compiles its kernels, and counting it would inflate the estimate for the whole stage."""

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
            self.rate_start, self.rate_done = now, done
        if now - self.start < self.delay or (now - self.last < self.every and done < total):
            return
        self.last, self.shown = now, True
        elapsed = now - self.stage_start
        measured = done - self.rate_done
        eta = f"{(total - done) * (now - self.rate_start) / measured:6.0f}s" if measured > 0 else "     ?"
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
