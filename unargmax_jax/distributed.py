"""Checks split across the processes of a ``jax.distributed`` job (several hosts).

Each process decides an interleaved share of the selected tokens on its own local
devices (token k of the selection goes to process ``k % process_count``, so clusters of
hard tokens spread evenly); every row of W still competes everywhere. The part reports
then travel through JAX's own cross-process collectives (no shared filesystem needed) and
are merged into the report a single process would have written:

* each token's verdict, bounds, stage and evidence come from the one part that decided it;
* the head, domain and settings must agree between parts (else the merge refuses);
* ``seconds`` and each stage's seconds are the slowest process's.

With one process (``jax.distributed`` not initialised) :func:`check_distributed` is
:func:`unargmax_jax.check` itself.
"""

from __future__ import annotations

import io
import json
from typing import Sequence

import jax
import numpy as np

from . import domains as dom
from .csr import Certificates
from .engine import check, selected_mask
from .heads import validate_head
from .report import Report, build_report
from .settings import Settings
from .verdicts import SKIPPED

__all__ = ["check_distributed", "gather_reports", "initialize", "merge_reports", "token_share"]

# Collective transfers go in pieces of this many bytes: one compiled gather serves any
# report size, and no process holds a padded copy of everything at once.
_PIECE_BYTES = 16 << 20


def token_share(selected: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """Process ``process_index``'s tokens: every ``process_count``-th selected token.

    Args:
        selected: (C,) bool mask of the tokens to decide.
    Returns:
        (C,) bool mask, disjoint across processes, covering ``selected``.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must lie in 0..{process_count - 1}, got {process_index}")
    share = np.zeros_like(selected, dtype=bool)
    share[np.flatnonzero(selected)[process_index::process_count]] = True
    return share


def _same(parts: Sequence[Report], what: str, value) -> None:
    first = value(parts[0])
    for k, part in enumerate(parts[1:], 1):
        if value(part) != first:
            raise ValueError(f"cannot merge part reports: part {k} has a different {what} from part 0 "
                             f"({value(part)!r} vs {first!r}); expected parts of one check")


def merge_reports(parts: Sequence[Report]) -> Report:
    """One report from part reports of the same check that decided disjoint token sets.

    A token skipped by every part stays skipped. Raises ValueError when the parts are of
    different heads, domains or settings, or when two parts both decided a token.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("cannot merge part reports: expected at least one part, got none")
    _same(parts, "head (sha256)", lambda r: r.head["sha256"])
    _same(parts, "head shape", lambda r: (r.head["classes"], r.head["dim"]))
    _same(parts, "domain", lambda r: json.dumps(dom.to_json(r.domain), sort_keys=True))
    _same(parts, "settings", lambda r: json.dumps(r.settings, sort_keys=True, default=str))
    owner = _owners(parts)
    base = parts[0]
    verdict, lower, upper = base.verdict.copy(), base.lower.copy(), base.upper.copy()
    stage = base.stage.astype(object)
    for k, part in enumerate(parts):
        mine = owner == k
        verdict[mine], lower[mine], upper[mine], stage[mine] = (part.verdict[mine], part.lower[mine],
                                                                part.upper[mine], part.stage[mine])
    witness_ids, witnesses = _merged_witnesses(parts, owner)
    notes = list(dict.fromkeys(note for part in parts for note in part.notes))
    notes.append(f"checked by {len(parts)} processes, each deciding an interleaved share of the tokens")
    stages = {name for part in parts for name in part.stage_seconds}
    return build_report(
        head=base.head, domain=base.domain, verdict=verdict, lower=lower, upper=upper, stage=stage,
        twins={i: list(t) for part in parts for i, t in part.twins.items()},
        witness_ids=witness_ids, witnesses=witnesses,
        # Certificates in token order, as one process would list them.
        certificates=Certificates.concat([part.certificates.take(_owned(owner, part.certificate_ids, k))
                                          for k, part in enumerate(parts)]).sorted_by_id(),
        settings=base.settings, seconds=max(part.seconds for part in parts),
        stage_seconds={name: max(part.stage_seconds.get(name, 0.0) for part in parts) for name in sorted(stages)},
        notes=notes, solved_on=base.solved_on, tokens=base.tokens, ceilings=_merged_ceilings(parts, owner))


def _owners(parts: Sequence[Report]) -> np.ndarray:
    """(C,) the part that decided each token (-1: none); ValueError when two parts did."""
    owner = np.full(parts[0].head["classes"], -1, np.int64)
    for k, part in enumerate(parts):
        mine = part.verdict != SKIPPED
        clash = mine & (owner >= 0)
        if clash.any():
            raise ValueError(f"cannot merge part reports: token {int(np.flatnonzero(clash)[0])} was decided by both "
                             f"part {int(owner[clash][0])} and part {k}; expected disjoint token shares")
        owner[mine] = k
    return owner


def _owned(owner: np.ndarray, ids, k: int) -> np.ndarray:
    """Which of the token ``ids`` part ``k`` decided."""
    return owner[np.asarray(ids, np.int64)] == k


def _merged_witnesses(parts: Sequence[Report], owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each part's witnesses of its own tokens, in token order, in one dtype that holds them all."""
    d = parts[0].head["dim"]
    ids, points = [], []
    for k, part in enumerate(parts):
        keep = _owned(owner, part.witness_ids, k)
        ids.append(part.witness_ids[keep])
        points.append(np.asarray(part.witnesses).reshape(-1, d)[keep])
    ids = np.concatenate(ids)
    order = np.argsort(ids, kind="stable")
    dtype = np.result_type(*(w.dtype for w in points))
    return ids[order], np.concatenate([w.astype(dtype) for w in points])[order]


def _merged_ceilings(parts: Sequence[Report], owner: np.ndarray) -> tuple:
    """Each part's ceilings of its own tokens, part after part: ``(ids, lower, upper, points)``."""
    d = parts[0].head["dim"]
    keeps = [_owned(owner, part.ceiling_ids, k) for k, part in enumerate(parts)]
    return (np.concatenate([part.ceiling_ids[keep] for part, keep in zip(parts, keeps)]),
            np.concatenate([part.ceiling_lower[keep] for part, keep in zip(parts, keeps)]),
            np.concatenate([part.ceiling_upper[keep] for part, keep in zip(parts, keeps)]),
            np.concatenate([np.asarray(part.ceiling_points).reshape(-1, d)[keep] for part, keep in zip(parts, keeps)]))


# ------------------------------------------------------------------ transport
_ARRAY_FIELDS = ("verdict", "lower", "upper", "stage", "witness_ids", "witnesses", "certificate_ids",
                 "certificate_offsets", "certificate_support", "certificate_weights", "certificate_rational",
                 "ceiling_ids", "ceiling_lower", "ceiling_upper", "ceiling_points")


def encode_report(report: Report) -> bytes:
    """A report as bytes: an npz of its arrays plus its metadata as JSON (no pickle)."""
    meta = {"head": report.head, "domain": dom.to_json(report.domain), "settings": report.settings,
            "seconds": report.seconds, "stage_seconds": report.stage_seconds, "notes": report.notes,
            "solved_on": report.solved_on, "twins": {str(i): list(map(int, t)) for i, t in report.twins.items()}}
    arrays = {name: np.asarray(getattr(report, name)) for name in _ARRAY_FIELDS}
    arrays["stage"] = arrays["stage"].astype(np.str_)
    arrays["certificate_rational"] = arrays["certificate_rational"].astype(np.str_)
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(json.dumps(meta, default=float).encode(), np.uint8), **arrays)
    return buffer.getvalue()


def decode_report(payload: bytes) -> Report:
    """Inverse of :func:`encode_report` (token strings are not carried)."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    certificates = Certificates(*(arrays.pop(f"certificate_{name}") for name in Certificates._fields))
    ceilings = tuple(arrays.pop(f"ceiling_{name}") for name in ("ids", "lower", "upper", "points"))
    return build_report(head=meta["head"], domain=dom.from_json(meta["domain"]), settings=meta["settings"],
                        seconds=meta["seconds"], stage_seconds=meta["stage_seconds"], notes=meta["notes"],
                        solved_on=meta["solved_on"], twins={int(i): t for i, t in meta["twins"].items()},
                        certificates=certificates, ceilings=ceilings, **arrays)


def gather_bytes(payload: bytes) -> list[bytes]:
    """Every process's ``payload``, in process order, on every process (a collective)."""
    from jax.experimental.multihost_utils import process_allgather

    if jax.process_count() == 1:
        return [payload]
    sizes = process_allgather(np.array([len(payload)], np.int64)).reshape(-1)
    longest = int(sizes.max())
    data = np.frombuffer(payload, np.uint8)
    pieces = []
    for start in range(0, max(longest, 1), _PIECE_BYTES):
        piece = np.zeros(_PIECE_BYTES, np.uint8)  # one shape for every piece: compiled once
        chunk = data[start:start + _PIECE_BYTES]
        piece[:chunk.size] = chunk
        pieces.append(process_allgather(piece))  # (processes, piece)
    joined = np.concatenate(pieces, axis=1)
    return [joined[p, :int(n)].tobytes() for p, n in enumerate(sizes)]


def check_distributed(W, b=None, domain: dom.Domain = dom.Box(-100.0, 100.0), *, tokens=None, checkpoint=None,
                      settings: Settings | None = None, **options) -> Report:
    """:func:`unargmax_jax.check` with the tokens split across the processes of a
    ``jax.distributed`` job; every process gets the merged report.

    Call ``jax.distributed.initialize(...)`` first, then this with the same head and
    arguments on every process. ``checkpoint`` is each process's own partial-state file
    (give each process a different path, or a path on a host-local disk); a killed job
    restarted with the same process count resumes from them. ``settings`` and ``options``
    go to :func:`unargmax_jax.check` on every process.
    """
    W_np, b_np = validate_head(W, b)
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return check(W_np, b_np, domain, tokens=tokens, checkpoint=checkpoint, settings=settings, **options)
    share = token_share(selected_mask(tokens, W_np.shape[0]), index, count)
    # A process with no share (fewer selected tokens than processes) sends nothing.
    part = (check(W_np, b_np, domain, tokens=share, checkpoint=checkpoint, settings=settings, **options)
            if share.any() else None)
    return gather_reports(part)


def gather_reports(part: Report | None) -> Report:
    """Merge every process's part report (None: this process decided nothing); a collective."""
    payloads = gather_bytes(b"" if part is None else encode_report(part))
    merged = merge_reports([decode_report(p) for p in payloads if p])
    if part is not None and part.tokens is not None:
        merged.tokens = part.tokens
    return merged


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> tuple[int, int]:
    """Join the ``jax.distributed`` job (arguments left None are detected from the cluster
    environment, as :func:`jax.distributed.initialize` does); return (index, count)."""
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    except (RuntimeError, ValueError) as err:
        message = " ".join(str(err).split())
        raise RuntimeError(f"could not join the distributed job (coordinator {coordinator or 'auto-detected'}, "
                           f"{num_processes or '?'} processes, process id {process_id if process_id is not None else '?'}): "
                           f"{message}") from None
    return jax.process_index(), jax.process_count()
