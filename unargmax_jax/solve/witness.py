"""Rigorous lower bounds at given points, for a batch of tokens: the kernel that
re-proves a point (rounded witnesses, competitor sets at the best point so far)."""

from __future__ import annotations

from .. import bounds
from .._jit import kernel
from .context import DeviceHead


def _top_chunk(head: DeviceHead, ids, x, *, num_top, algorithm=None):
    """:func:`bounds.witness_bounds` of tokens ``ids`` at points ``x`` (B, d), with each
    token's ``num_top`` strongest rivals there; products under ``algorithm`` (None: the
    backend's)."""
    return bounds.witness_bounds(head.W, head.b, head.norms, ids, x, num_top=num_top, algorithm=algorithm)


witness_chunk = kernel(_top_chunk, static_argnames=("num_top", "algorithm"))
