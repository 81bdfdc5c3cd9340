"""Partial-run state on disk, so an interrupted check resumes where it stopped.

The engine works in phases (``PHASES``). At the start of each phase, and every
``every`` seconds inside the screening passes, it saves everything it knows (verdicts,
bounds, witnesses, certificates, competitor sets) together with the phase, the position
in the phase's token list and that list. A later run with the same key (head sha256,
settings, domain and token selection) loads the snapshot and continues from it; a phase
that was cut short is replayed from its saved start, so the final report is the one an
uninterrupted run gives. Snapshots are single ``.npz`` files (no pickle) replaced
atomically, so a kill at any moment leaves the previous snapshot intact.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

PHASES = ("screen", "screen 2", "top", "ascent", "pdhg", "rational")
FORMAT = "unargmax-partial/1"


def _pack(table: dict, prefix: str, dtype) -> dict:
    """A dict id -> 1-D sequence as CSR arrays ``prefix_ids``, ``prefix_offsets``, ``prefix_values``."""
    ids = np.array(sorted(table), np.int64)
    values = [np.asarray(table[int(i)], dtype).reshape(-1) for i in ids]
    offsets = np.cumsum([0] + [v.size for v in values]).astype(np.int64)
    flat = np.concatenate(values) if values else np.zeros(0, dtype)
    return {f"{prefix}_ids": ids, f"{prefix}_offsets": offsets, f"{prefix}_values": flat.astype(dtype)}


def _unpack(arrays: dict, prefix: str) -> dict:
    ids, offsets, values = arrays[f"{prefix}_ids"], arrays[f"{prefix}_offsets"], arrays[f"{prefix}_values"]
    return {int(i): values[offsets[r]:offsets[r + 1]] for r, i in enumerate(ids)}


class Checkpoint:
    """One run's snapshot file. ``key`` identifies the head, settings and selection."""

    def __init__(self, path: str | os.PathLike, key: str, *, every: float = 30.0):
        self.path = Path(path)
        self.key = key
        self.every = every
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every

    def save(self, phase: str, position: int, todo: np.ndarray, state: dict) -> None:
        from .report import _atomic_write

        d = state["witness"].shape[1]
        arrays = {
            "verdict": state["verdict"], "lower": state["lower"], "upper": state["upper"],
            "stage": np.asarray(state["stage"].tolist(), dtype=np.str_), "witness": state["witness"],
            "todo": np.asarray(todo, np.int64),
            **_pack(state["cert_support"], "cert_support", np.int64),
            **_pack(state["cert_weights"], "cert_weights", np.float64),
            **_pack({i: np.asarray(v, np.str_) for i, v in state["cert_rational"].items()}, "cert_rational", np.str_),
            **_pack(state["top"], "top", np.int64),
            **_pack(state["pdhg_support"], "pdhg_support", np.int64),
            **_pack({i: np.asarray(x).reshape(-1) for i, x in state["exact_witness"].items()}, "exact_witness", np.float64),
        }
        meta = {"format": FORMAT, "key": self.key, "phase": phase, "position": int(position), "dim": int(d),
                "seconds": {k: float(v) for k, v in state["seconds"].items()}}
        arrays["meta"] = np.asarray(json.dumps(meta))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path, lambda f: np.savez(f, **arrays))
        self.last = time.monotonic()

    def load(self) -> dict | None:
        """The saved snapshot for this key, or None (no file, another run's, or unreadable)."""
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            meta = json.loads(str(arrays.pop("meta")))
        except (OSError, ValueError, KeyError, EOFError):
            return None
        if meta.get("format") != FORMAT or meta.get("key") != self.key or meta.get("phase") not in PHASES:
            return None
        d = meta["dim"]
        return {
            "phase": meta["phase"], "position": meta["position"], "todo": arrays["todo"],
            "verdict": arrays["verdict"], "lower": arrays["lower"], "upper": arrays["upper"],
            "stage": arrays["stage"].astype(object), "witness": arrays["witness"],
            "cert_support": _unpack(arrays, "cert_support"), "cert_weights": _unpack(arrays, "cert_weights"),
            "cert_rational": {i: [str(v) for v in vals] for i, vals in _unpack(arrays, "cert_rational").items()},
            "top": _unpack(arrays, "top"), "pdhg_support": _unpack(arrays, "pdhg_support"),
            "exact_witness": {i: v.reshape(d) for i, v in _unpack(arrays, "exact_witness").items()},
            "seconds": meta["seconds"],
        }

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
