"""Ragged rows in CSR layout, and the sparse certificate table of a report.

A list of 1-D rows is stored as two flat arrays: ``values`` (all rows one after the
other) and ``offsets`` (n + 1,), row r being ``values[offsets[r]:offsets[r + 1]]``. The
report's certificates (``certificates.npz``), the resume snapshots and the part reports
of a distributed check all use this layout. Plain NumPy: nothing here touches a device.
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np


def pack(rows: Sequence, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Rows (anything ``np.asarray`` flattens to 1-D) as CSR arrays.

    Args:
        rows: the rows, in order.
        dtype: the dtype of ``values``.
    Returns:
        ``(offsets, values)``: (n + 1,) int64 and (nnz,) ``dtype``.
    """
    values = [np.asarray(row, dtype).reshape(-1) for row in rows]
    offsets = np.cumsum([0] + [v.size for v in values]).astype(np.int64)
    flat = np.concatenate(values) if values else np.zeros(0, dtype)
    return offsets, flat.astype(dtype)


def unpack(offsets, values) -> list[np.ndarray]:
    """Inverse of :func:`pack`: row r is ``values[offsets[r]:offsets[r + 1]]`` (views)."""
    offsets = np.asarray(offsets, np.int64)
    return [values[offsets[r]:offsets[r + 1]] for r in range(offsets.size - 1)]


def _entries(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The flat entry indices of ``rows`` (in that order) and the offsets they get."""
    starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    entries = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1], dtype=np.int64)
    return entries, new_offsets


class Certificates(NamedTuple):
    """Sparse certificates lam >= 0, one row per unargmaxable token (CSR layout).

    Token ``ids[r]`` uses the entries ``offsets[r]:offsets[r + 1]`` of ``support`` (the
    rival ids j), ``weights`` (lam_j) and ``rational`` (lam_j exactly as ``"p/q"`` where
    the certificate was proved in rational arithmetic, else ``""``).

    Attributes:
        ids: (m,) int64 token ids, in table order (not necessarily sorted).
        offsets: (m + 1,) int64.
        support: (nnz,) int64.
        weights: (nnz,) float64.
        rational: (nnz,) str.
    """

    ids: np.ndarray
    offsets: np.ndarray
    support: np.ndarray
    weights: np.ndarray
    rational: np.ndarray

    @classmethod
    def empty(cls) -> "Certificates":
        """A table with no rows."""
        return cls(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0),
                   np.zeros(0, np.str_))

    @classmethod
    def from_rows(cls, rows: Iterable) -> "Certificates":
        """A table from ``(token_id, support_ids, weights, rational_strings)`` rows, in that order.

        ``rational_strings`` may be None: no exact weights (``""`` for every entry).
        """
        ids, supports, weights, rationals = [], [], [], []
        for token, support, weight, rational in rows:
            support = np.asarray(support, np.int64).reshape(-1)
            ids.append(int(token))
            supports.append(support)
            weights.append(weight)
            rationals.append([""] * support.size if rational is None else rational)
        offsets, support = pack(supports, np.int64)
        return cls(np.asarray(ids, np.int64), offsets, support, pack(weights, np.float64)[1],
                   pack(rationals, np.str_)[1])

    def row(self, r: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """Row r as ``(token_id, support, weights, rational)`` (views into the table)."""
        start, stop = self.offsets[r], self.offsets[r + 1]
        return int(self.ids[r]), self.support[start:stop], self.weights[start:stop], self.rational[start:stop]

    def rows(self) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Every row, in table order, as :meth:`row` gives it."""
        return (self.row(r) for r in range(self.ids.size))

    def find(self, token: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``(support, weights)`` of the first row of ``token``, or None."""
        rows = np.flatnonzero(self.ids == token)
        return self.row(rows[0])[1:3] if rows.size else None

    def take(self, rows) -> "Certificates":
        """The rows picked by a (m,) bool mask or by row indices (in that order)."""
        rows = np.asarray(rows)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64).reshape(-1)
        entries, offsets = _entries(np.asarray(self.offsets, np.int64), rows)
        return Certificates(np.asarray(self.ids, np.int64)[rows], offsets, self.support[entries],
                            self.weights[entries], self.rational[entries])

    @staticmethod
    def concat(tables: Sequence["Certificates"]) -> "Certificates":
        """The rows of every table, one table after the other."""
        tables = [Certificates.empty(), *tables]  # dtypes even when no table is given
        sizes = np.cumsum([0] + [t.support.size for t in tables[:-1]])
        offsets = np.concatenate([[0], *(np.asarray(t.offsets[1:], np.int64) + s for t, s in zip(tables, sizes))])
        return Certificates(np.concatenate([np.asarray(t.ids, np.int64) for t in tables]), offsets.astype(np.int64),
                            *(np.concatenate([getattr(t, name) for t in tables])
                              for name in ("support", "weights", "rational")))

    def sorted_by_id(self) -> "Certificates":
        """The rows in increasing token id (a stable sort: equal ids keep their order)."""
        return self.take(np.argsort(np.asarray(self.ids, np.int64), kind="stable"))
