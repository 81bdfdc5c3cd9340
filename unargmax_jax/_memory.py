"""Giving freed memory back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import time


def _trim_function():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


_TRIM = _trim_function()


_last_trim = [float("-inf")]
# Seconds between heap trims inside a stage's loop (a trim walks every arena: 1.5 s of a
# 14 s SmolLM2 check when done per chunk).
TRIM_INTERVAL = 0.1


def return_freed_memory(*, min_interval: float = 0.0) -> None:
    """Ask glibc to hand freed heap pages back to the OS (a no-op without glibc).

    XLA frees each kernel's (batch x C) buffers back to malloc, and glibc keeps freed
    blocks of up to 32 MB in its per-thread arenas; over a long check those held-back
    blocks add up to more than the head itself. A trim walks every arena (a few ms), so
    callers in a loop pass ``min_interval``: skip it if the last one is that recent.
    """
    now = time.monotonic()
    if _TRIM is not None and now - _last_trim[0] >= min_interval:
        _TRIM(0)
        _last_trim[0] = now
