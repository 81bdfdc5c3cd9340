"""The Report type and its files: ``report.json`` and ``certificates.npz``.

``report.json`` (format ``unargmax-report/1``) holds one entry per token with its verdict,
the proved margin interval ``[lower, upper]`` and the stage that decided it.
``certificates.npz`` (plain arrays, no pickle) holds the evidence:

* ``witness_ids`` (n,), ``witnesses`` (n, d) float16, float32 or float64 (each point
  exact in the stored dtype): an x in X per argmaxable token,
* ``certificate_ids`` (m,), ``certificate_offsets`` (m + 1,), ``certificate_support``
  (nnz,), ``certificate_weights`` (nnz,) float64: a sparse lam >= 0 per unargmaxable
  token (CSR layout: token ``certificate_ids[r]`` uses entries
  ``offsets[r]:offsets[r + 1]``),
* ``certificate_rational`` (nnz,) str: the exact weight ``"p/q"`` where the certificate
  was proved in rational arithmetic (margin exactly 0), else ``""``,
* ``ceiling_ids`` (q,), ``ceiling_points`` (q, d): for tokens whose probability ceiling
  was computed, the point x attaining the lower bound (the upper bound's dual point is
  softmax(z(x))); the bounds themselves are each token's ``"ceiling"`` in report.json.

Every report is made by :func:`build_report` (or :func:`empty_report`), which gives
each field its one dtype; :mod:`unargmax_jax.render` turns a report into text and PNG.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from . import domains as dom
from . import render
from ._files import atomic_write
from .csr import Certificates
from .verdicts import CODES, DECIDED, NAMES, NOT_SELECTED, SKIPPED, UNARGMAXABLE

FORMAT = "unargmax-report/1"
VERDICT_NAMES = NAMES  # the names users and tests import from here
VERDICT_CODES = CODES
CERTIFICATE_FILE = "certificates.npz"
REPORT_FILE = "report.json"
TOKENS_FILE = "tokens.csv"
SUMMARY_FILE = "summary.md"
PLOT_FILE = "margins.png"


def head_sha256(W: np.ndarray, b: np.ndarray | None) -> str:
    """sha256 of the head as the engine sees it: float64 C-order W, then b if present."""
    digest = hashlib.sha256()
    digest.update(f"W{tuple(W.shape)}".encode())
    # Row blocks (no float64 copy of a large head), each hashed from its own buffer: a
    # tobytes() copy holds the GIL (3.4 s of a 20 s check on a GPU, from the hashing thread).
    for start in range(0, W.shape[0], 1024):
        digest.update(np.ascontiguousarray(W[start:start + 1024], dtype=np.float64))
    if b is not None:
        b = np.ascontiguousarray(b, dtype=np.float64)
        digest.update(f"b{b.shape}".encode())
        digest.update(b)
    return digest.hexdigest()


def head_record(W: np.ndarray, b: np.ndarray | None, sha256: str | None = None) -> dict:
    """A report's ``head`` entry for the head ``(W, b)``: shape, bias and :func:`head_sha256`
    (``sha256`` when the caller has it already)."""
    C, d = W.shape
    return {"classes": int(C), "dim": int(d), "has_bias": b is not None, "sha256": sha256 or head_sha256(W, b)}


@dataclasses.dataclass
class Report:
    """Per-token verdicts with their evidence. Arrays are indexed by token id.

    Attributes:
        head: ``classes``, ``dim``, ``has_bias``, ``sha256`` and optional ``source``,
            ``weight_name``, ``bias_name``.
        domain: the domain the user asked about.
        verdict: int8, 1 argmaxable, -1 unargmaxable, 0 undecided, 2 skipped (not selected).
        lower, upper: float64 proved bounds on the margin m_i* (on ``solved_on``).
        stage: the stage that decided each token.
        twins: token id -> other ids with a bit-identical row and bias.
        tokens: the token strings (None where unknown), or None.
        ceiling_ids, ceiling_lower, ceiling_upper, ceiling_points: proved bounds on the
            largest softmax probability of some tokens and the points attaining the lower
            bound (see :mod:`unargmax_jax.ceiling`); empty unless computed.
    """

    def add_ceilings(self, result) -> None:
        """Attach a :class:`~unargmax_jax.ceiling.Ceilings` (probabilities rounded outwards)."""
        self.ceiling_ids = np.asarray(result.ids, np.int64)
        self.ceiling_lower = np.nextafter(np.exp(np.asarray(result.log_lower, np.float64)), 0.0)
        upper = np.minimum(np.nextafter(np.exp(np.asarray(result.log_upper, np.float64)), np.inf), 1.0)
        # A proved-unargmaxable token never strictly wins, so some rival's logit is at least
        # its own everywhere: its probability is at most 1/2.
        capped = self.verdict[self.ceiling_ids] == UNARGMAXABLE
        self.ceiling_upper = np.where(capped, np.minimum(upper, 0.5), upper)
        self.ceiling_points = np.asarray(result.points, np.float64)

    def ceiling(self, i: int) -> tuple[float, float] | None:
        """Token i's proved ``(lower, upper)`` on its largest probability, if computed."""
        rows = np.flatnonzero(self.ceiling_ids == i)
        return (float(self.ceiling_lower[rows[0]]), float(self.ceiling_upper[rows[0]])) if rows.size else None

    head: dict
    domain: dom.Domain
    verdict: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    stage: np.ndarray
    twins: dict
    witness_ids: np.ndarray
    witnesses: np.ndarray
    certificate_ids: np.ndarray
    certificate_offsets: np.ndarray
    certificate_support: np.ndarray
    certificate_weights: np.ndarray
    certificate_rational: np.ndarray
    settings: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    stage_seconds: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)
    solved_on: dict | None = None
    tokens: list | None = None
    ceiling_ids: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    ceiling_lower: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))  # probabilities
    ceiling_upper: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    ceiling_points: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))

    # ----------------------------------------------------------------- queries
    def counts(self) -> dict:
        return {name: int(np.sum(self.verdict == code)) for code, name in VERDICT_NAMES.items()}

    def ids(self, verdict: str) -> np.ndarray:
        """Token ids with the given verdict name."""
        return np.flatnonzero(self.verdict == VERDICT_CODES[verdict])

    def witness(self, token: int) -> np.ndarray | None:
        rows = np.flatnonzero(self.witness_ids == token)
        return self.witnesses[rows[0]] if rows.size else None

    @property
    def certificates(self) -> Certificates:
        """The ``certificate_*`` fields as one :class:`~unargmax_jax.csr.Certificates` table."""
        return Certificates(self.certificate_ids, self.certificate_offsets, self.certificate_support,
                            self.certificate_weights, self.certificate_rational)

    def certificate(self, token: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(support ids, weights) of the token's certificate, or None."""
        return self.certificates.find(token)

    # --------------------------------------------------------------- rendering
    def token(self, i: int) -> str | None:
        """Token i's string, when the head came with a vocabulary."""
        return self.tokens[i] if self.tokens is not None and i < len(self.tokens) else None

    def label(self, i: int) -> str:
        """``"id 'string'"`` (the string repr-escaped), or just the id."""
        text = self.token(int(i))
        return f"{int(i)} {text!r}" if text is not None else str(int(i))

    def summary_table(self) -> str:
        counts = self.counts()
        head = self.head
        lines = [
            f"head: {head['classes']} classes x {head['dim']} features, "
            f"{'with' if head['has_bias'] else 'no'} bias",
            f"domain: {dom.describe(self.domain)}",
            f"  argmaxable    {counts['argmaxable']:>9}",
            f"  unargmaxable  {counts['unargmaxable']:>9}",
            f"  undecided     {counts['undecided']:>9}",
        ]
        if counts["skipped"]:
            lines.append(f"  skipped       {counts['skipped']:>9}  (not selected)")
        lines.append(f"  seconds       {self.seconds:>9.2f}")
        stages, stage_counts = np.unique(self.stage[np.isin(self.verdict, DECIDED)], return_counts=True)
        if stages.size:
            lines.append("decided by stage: " + ", ".join(f"{s} {n}" for s, n in zip(stages, stage_counts)))
        if self.twins:
            groups = sorted({tuple(sorted([i, *t])) for i, t in self.twins.items()})
            shown = "; ".join(" = ".join(str(i) for i in g) for g in groups[:10])
            lines.append(f"exact ties (identical row and bias): {shown}{' ...' if len(groups) > 10 else ''}")
        bad = self.ids("unargmaxable")
        if bad.size:
            shown = ", ".join(self.label(i) for i in bad[:20]) + (" ..." if bad.size > 20 else "")
            lines.append(f"unargmaxable: {shown}")
        return "\n".join(lines)

    def token_columns(self) -> tuple[list, list, list, list]:
        """Each token's verdict name, lower and upper bound (floats) and stage, as Python
        lists: whole columns converted at once (NumPy scalar by scalar took 0.2 s of
        writing a 49152-token report)."""
        return ([VERDICT_NAMES[v] for v in self.verdict.tolist()], np.asarray(self.lower, np.float64).tolist(),
                np.asarray(self.upper, np.float64).tolist(), [str(s) for s in self.stage.tolist()])

    def to_json(self) -> dict:
        ceilings = {int(i): [float(lo), float(hi)]
                    for i, lo, hi in zip(self.ceiling_ids, self.ceiling_lower, self.ceiling_upper)}
        tokens = []
        for i, (verdict, lower, upper, stage) in enumerate(zip(*self.token_columns())):
            entry = {"id": i, "verdict": verdict, "lower": _json_float(lower), "upper": _json_float(upper),
                     "stage": stage}
            if i in self.twins:
                entry["twins"] = [int(t) for t in self.twins[i]]
            text = self.token(i)
            if text is not None:
                entry["token"] = text
            if i in ceilings:
                entry["ceiling"] = ceilings[i]
            tokens.append(entry)
        return {
            "format": FORMAT,
            "head": self.head,
            "domain": dom.to_json(self.domain),
            "solved_on": self.solved_on,
            "settings": self.settings,
            "summary": {**self.counts(), "seconds": round(float(self.seconds), 4),
                        "stage_seconds": {k: round(float(v), 4) for k, v in self.stage_seconds.items()}},
            "notes": list(self.notes),
            "tokens": tokens,
        }

    # ---------------------------------------------------------------------- io
    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the report's files into ``out_dir``, each atomically.

        ``report.json`` and ``certificates.npz`` (the evidence), ``tokens.csv``,
        ``summary.md`` and, when matplotlib is installed, ``margins.png``. Everything is
        rendered before the first file is written, so a failure leaves no new file.
        """
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise ValueError(f"output path {out} exists and is not a directory")
        plot = render.margins_png(self)  # bytes, or None without matplotlib
        texts = {TOKENS_FILE: render.tokens_csv(self),
                 SUMMARY_FILE: render.summary_markdown(self, plotted=plot is not None),
                 REPORT_FILE: _json_text(self.to_json())}
        out.mkdir(parents=True, exist_ok=True)
        witnesses = np.asarray(self.witnesses)
        arrays = {
            "witness_ids": np.asarray(self.witness_ids, np.int64),
            # float16/float32 witnesses keep their dtype (exact); anything else is stored as float64
            "witnesses": (witnesses if witnesses.dtype in (np.float16, np.float32)
                          else witnesses.astype(np.float64)).reshape(-1, self.head["dim"]),
            "certificate_ids": np.asarray(self.certificate_ids, np.int64),
            "certificate_offsets": np.asarray(self.certificate_offsets, np.int64),
            "certificate_support": np.asarray(self.certificate_support, np.int64),
            "certificate_weights": np.asarray(self.certificate_weights, np.float64),
            "certificate_rational": np.asarray(self.certificate_rational, dtype=np.str_),
            "ceiling_ids": np.asarray(self.ceiling_ids, np.int64),
            "ceiling_points": np.asarray(self.ceiling_points, np.float64).reshape(-1, self.head["dim"]),
        }
        atomic_write(out / CERTIFICATE_FILE, lambda f: np.savez(f, **arrays))
        for name in (TOKENS_FILE, SUMMARY_FILE):
            atomic_write(out / name, lambda f, text=texts[name]: f.write(text.encode()))
        if plot is not None:
            atomic_write(out / PLOT_FILE, lambda f: f.write(plot))
        elif (out / PLOT_FILE).exists():
            (out / PLOT_FILE).unlink()  # a stale plot from an earlier report would mislead
        # report.json last: a directory holding it holds a complete report.
        atomic_write(out / REPORT_FILE, lambda f: f.write(texts[REPORT_FILE].encode()))
        return out

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> "Report":
        """Read a report directory written by :meth:`save`.

        Raises:
            ValueError: missing files, or a damaged or foreign report (naming the directory).
        """
        try:
            return cls._load(Path(out_dir))
        except (KeyError, TypeError, IndexError, AttributeError, zipfile.BadZipFile, EOFError) as err:
            raise ValueError(f"{out_dir}: damaged report ({type(err).__name__}: {err})") from None

    @classmethod
    def _load(cls, out: Path) -> "Report":
        try:
            data = json.loads((out / REPORT_FILE).read_text())
        except FileNotFoundError:
            raise ValueError(f"no {REPORT_FILE} in {out}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{out / REPORT_FILE} is not valid JSON: {err}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{out / REPORT_FILE}: expected format {FORMAT!r}")
        try:
            with np.load(out / CERTIFICATE_FILE, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except FileNotFoundError:
            raise ValueError(f"no {CERTIFICATE_FILE} in {out}") from None
        tokens = data["tokens"]
        C = data["head"]["classes"]
        if len(tokens) != C or [t["id"] for t in tokens] != list(range(C)):
            raise ValueError(f"{out / REPORT_FILE}: expected tokens 0..{C - 1} exactly once each")
        certificates = Certificates(*(arrays[f"certificate_{name}"] for name in Certificates._fields))
        ceilings = _ceilings_from(tokens, arrays, data["head"]["dim"])
        return build_report(
            head=data["head"],
            domain=dom.from_json(data["domain"]),
            verdict=[VERDICT_CODES[t["verdict"]] for t in tokens],
            lower=[_from_json_float(t["lower"]) for t in tokens],
            upper=[_from_json_float(t["upper"]) for t in tokens],
            stage=[t["stage"] for t in tokens],
            twins={t["id"]: t["twins"] for t in tokens if "twins" in t},
            witness_ids=arrays["witness_ids"],
            witnesses=arrays["witnesses"],
            certificates=certificates,
            settings=data.get("settings", {}),
            seconds=data["summary"].get("seconds", 0.0),
            stage_seconds=data["summary"].get("stage_seconds", {}),
            notes=data.get("notes", []),
            solved_on=data.get("solved_on"),
            tokens=[t.get("token") for t in tokens] if any("token" in t for t in tokens) else None,
            ceilings=ceilings,
        )


def build_report(*, head: dict, domain: dom.Domain, verdict, lower, upper, stage, twins: dict, witness_ids,
                 witnesses, certificates: Certificates, settings: dict, solved_on: dict | None = None,
                 tokens: list | None = None, ceilings: tuple | None = None, notes=(), seconds: float = 0.0,
                 stage_seconds: dict | None = None) -> Report:
    """A :class:`Report` from its parts, each converted to the dtype the report holds.

    Every place that makes a report (a check, a warm start, a merge of part reports, a
    report read back from disk or from another process) goes through here, so they all
    hold the same dtypes: verdict int8, bounds float64, stage and rational weights as the
    narrowest str arrays, ids and offsets int64, weights float64. Witnesses keep their
    dtype (each point is exact in it); arrays already of the right dtype are not copied.

    Args:
        head, domain, settings, solved_on, tokens, notes, seconds, stage_seconds: as the
            :class:`Report` attributes of the same names.
        verdict, lower, upper, stage: (C,) per-token arrays (or sequences).
        twins: token id -> ids of its exact duplicates.
        witness_ids, witnesses: (n,) ids and (n, d) points of the argmaxable tokens.
        certificates: the certificates of the unargmaxable tokens.
        ceilings: ``(ids, lower, upper, points)`` probability ceilings, or None (none).
    """
    table = Certificates(np.asarray(certificates.ids, np.int64), np.asarray(certificates.offsets, np.int64),
                         np.asarray(certificates.support, np.int64), np.asarray(certificates.weights, np.float64),
                         _strings(certificates.rational))
    extra = {}
    if ceilings is not None:
        ids, low, high, points = ceilings
        extra = dict(ceiling_ids=np.asarray(ids, np.int64), ceiling_lower=np.asarray(low, np.float64),
                     ceiling_upper=np.asarray(high, np.float64), ceiling_points=np.asarray(points, np.float64))
    return Report(
        head=dict(head), domain=domain, verdict=np.asarray(verdict, np.int8), lower=np.asarray(lower, np.float64),
        upper=np.asarray(upper, np.float64), stage=_strings(stage),
        twins={int(i): [int(j) for j in others] for i, others in twins.items()},
        witness_ids=np.asarray(witness_ids, np.int64), witnesses=np.asarray(witnesses),
        certificate_ids=table.ids, certificate_offsets=table.offsets, certificate_support=table.support,
        certificate_weights=table.weights, certificate_rational=table.rational, settings=dict(settings),
        seconds=float(seconds), stage_seconds=dict(stage_seconds or {}), notes=list(notes), solved_on=solved_on,
        tokens=tokens, **extra)


def empty_report(head: dict, domain: dom.Domain, settings: dict) -> Report:
    """A report on ``head`` with every token skipped and no evidence (to be filled in)."""
    C, d = head["classes"], head["dim"]
    return build_report(head=head, domain=domain, verdict=np.full(C, SKIPPED), lower=np.full(C, -np.inf),
                        upper=np.full(C, np.inf), stage=np.full(C, NOT_SELECTED), twins={},
                        witness_ids=np.zeros(0, np.int64), witnesses=np.zeros((0, d)),
                        certificates=Certificates.empty(), settings=settings)


def _strings(values) -> np.ndarray:
    """A str array as narrow as its longest entry, as ``np.array(list_of_str)`` makes it."""
    values = np.asarray(values, dtype=np.str_)
    width = int(np.char.str_len(values).max()) if values.size else 0
    return values.astype(f"<U{max(width, 1)}", copy=False)


def _ceilings_from(tokens: list, arrays: dict, d: int) -> tuple:
    """The ceilings of a loaded report, ``(ids, lower, upper, points)``: bounds from
    report.json, points from the npz."""
    ids = np.asarray(arrays.get("ceiling_ids", np.zeros(0, np.int64)), np.int64)
    points = np.asarray(arrays.get("ceiling_points", np.zeros((0, d))), np.float64).reshape(-1, d)
    if ids.size != points.shape[0] or any("ceiling" not in tokens[int(i)] for i in ids):
        raise ValueError("ceiling points and bounds do not match")
    return (ids, np.array([float(tokens[int(i)]["ceiling"][0]) for i in ids]),
            np.array([float(tokens[int(i)]["ceiling"][1]) for i in ids]), points)


def _json_text(data: dict) -> str:
    """``report.json``'s text: the header indented, one token per line. (With ``indent``
    json's pure-Python encoder wrote every field on a line of its own: 0.7 s for
    SmolLM2's 49152 tokens; a line per token comes from the C encoder.)"""
    tokens = data["tokens"]
    head = json.dumps({**data, "tokens": []}, indent=1, allow_nan=False)
    assert head.endswith('"tokens": []\n}')
    line = json.JSONEncoder(allow_nan=False, ensure_ascii=True).encode
    body = ",\n  ".join(line(token) for token in tokens)
    return head[:-len("[]\n}")] + ("[\n  " + body + "\n ]\n}" if tokens else "[]\n}")


def _json_float(value: float):
    """JSON has no infinities: store them as the strings "inf" / "-inf"."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        raise ValueError("NaN margin bound in report")
    return "inf" if value > 0 else "-inf"


def _from_json_float(value) -> float:
    return float(value)

