"""Partial-run state on disk, so an interrupted check resumes where it stopped.

The engine works in phases (``verdicts.PHASES``). Every ``every`` seconds, at the start
of a phase or between the screening passes' chunks, it saves everything it knows (verdicts,
bounds, witnesses, certificates, competitor sets) together with the phase, the position
in the phase's token list and that list. A later run with the same key (head sha256,
settings, domain and token selection) loads the snapshot and continues from it; a phase
that was cut short is replayed from its saved position, so the final report is the one an
uninterrupted run gives. Snapshots are single ``.npz`` files (no pickle) replaced
atomically, so a kill at any moment leaves the previous snapshot intact.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from ._files import atomic_write
from .csr import pack, unpack
from .solve.evidence import restore
from .verdicts import DECIDED, PHASES

FORMAT = "unargmax-partial/1"


def _pack(table: dict, prefix: str, dtype) -> dict:
    """A dict id -> 1-D sequence as CSR arrays ``prefix_ids``, ``prefix_offsets``, ``prefix_values``."""
    ids = np.array(sorted(table), np.int64)
    offsets, values = pack([table[int(i)] for i in ids], dtype)
    return {f"{prefix}_ids": ids, f"{prefix}_offsets": offsets, f"{prefix}_values": values}


def _unpack(arrays: dict, prefix: str) -> dict:
    rows = unpack(arrays[f"{prefix}_offsets"], arrays[f"{prefix}_values"])
    return {int(i): row for i, row in zip(arrays[f"{prefix}_ids"], rows)}


class Checkpoint:
    """One run's snapshot file. ``key`` identifies the head, settings and selection."""

    def __init__(self, path: str | os.PathLike, key: str, *, every: float = 30.0):
        self.path = Path(path)
        self.key = key
        self.every = every
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every

    def save(self, phase: str, position: int, todo: np.ndarray, evidence) -> None:
        """Save ``evidence`` (a :class:`~unargmax_jax.solve.evidence.Evidence`) at ``position`` of ``phase``."""
        d = evidence.witness.shape[1]
        arrays = {
            "verdict": evidence.verdict, "lower": evidence.lower, "upper": evidence.upper,
            "stage": np.asarray(evidence.stage.tolist(), dtype=np.str_), "witness": evidence.witness,
            "todo": np.asarray(todo, np.int64),
            **_pack(evidence.cert_support, "cert_support", np.int64),
            **_pack(evidence.cert_weights, "cert_weights", np.float64),
            **_pack({i: np.asarray(v, np.str_) for i, v in evidence.cert_rational.items()}, "cert_rational", np.str_),
            **_pack(evidence.top, "top", np.int64),
            **_pack(evidence.pdhg_support, "pdhg_support", np.int64),
            **_pack({i: np.asarray(x).reshape(-1) for i, x in evidence.exact_witness.items()}, "exact_witness",
                    np.float64),
        }
        meta = {"format": FORMAT, "key": self.key, "phase": phase, "position": int(position), "dim": int(d),
                "seconds": {k: float(v) for k, v in evidence.seconds.items()}}
        arrays["meta"] = np.asarray(json.dumps(meta))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, lambda f: np.savez(f, **arrays))
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


class Phases:
    """Where a run is in ``PHASES``, and the snapshot it resumes from (None: a fresh run).

    Every phase starts with :meth:`begin`, which saves a snapshot when one is due (a run
    cut short inside the phase replays from the latest snapshot) or, when resuming, skips
    the phases the snapshot has passed and hands back the saved phase's own token list.
    """

    def __init__(self, checkpoint: Checkpoint | None, evidence, progress):
        self.checkpoint = checkpoint
        self.evidence = evidence
        self.snapshot = checkpoint.load() if checkpoint is not None else None
        if self.snapshot is not None:
            restore(evidence, self.snapshot)
            decided = int(np.sum(np.isin(evidence.verdict, DECIDED)))
            progress.note(f"resuming a partial run at {self.snapshot['phase']} ({decided} token(s) already decided)")

    def begin(self, phase: str, todo: np.ndarray) -> tuple[np.ndarray, int] | None:
        """``(tokens, first chunk)`` of a phase, or None for a phase the snapshot has passed."""
        if self.snapshot is not None:
            here, saved = PHASES.index(phase), PHASES.index(self.snapshot["phase"])
            if here < saved:
                return None
            if here == saved:
                todo, first, self.snapshot = self.snapshot["todo"], self.snapshot["position"], None
                return todo, first
        # Saved only when due, as inside a phase: a snapshot of 50k certificates takes a
        # second, and a run cut short replays from the last one it has (the same report).
        self.save_position(phase, 0, todo)
        return todo, 0

    def todo(self, phase: str, todo: np.ndarray) -> np.ndarray:
        """The phase's tokens, for phases that always start from their beginning."""
        started = self.begin(phase, todo)
        return started[0] if started else np.zeros(0, np.int64)

    def save_position(self, phase: str, position: int, todo: np.ndarray) -> None:
        """Save the run inside a phase, when the checkpoint is due."""
        if self.checkpoint is not None and self.checkpoint.due():
            self.checkpoint.save(phase, position, todo, self.evidence)
