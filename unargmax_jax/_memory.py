"""Giving freed memory back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util


def _trim_function():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


_TRIM = _trim_function()


def return_freed_memory() -> None:
    """Ask glibc to hand freed heap pages back to the OS (a no-op without glibc).

    XLA frees each kernel's (batch x C) buffers back to malloc, and glibc keeps freed
    blocks of up to 32 MB in its per-thread arenas; over a long check those held-back
    blocks add up to more than the head itself.
    """
    if _TRIM is not None:
        _TRIM(0)
