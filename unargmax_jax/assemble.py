"""From the solved rows' evidence to a per-token :class:`~unargmax_jax.report.Report`.

The stages solve rows (``Problem``); a report speaks of tokens. Assembly maps each
token to its row, applies the tie rule to groups of bit-identical tokens (every member
is unargmaxable under ``ties="strict"``, all but the lowest id under ``"first"``, each
with its twin as a one-row certificate), marks unselected tokens skipped and gathers
the witnesses and certificates of the decided ones.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import domains as dom
from .csr import Certificates
from .report import Report, build_report, head_record
from .settings import Settings
from .solve.evidence import Evidence
from .verdicts import ARGMAXABLE, NOT_SELECTED, SKIPPED, TIE, UNARGMAXABLE


class Problem(NamedTuple):
    """What the stages solve: rows in the solver's coordinates, the domain there, and how
    solved rows map back to tokens.

    Attributes:
        W, b: the solved rows (U, d), (U,) or None: the head itself, or (``ties="first"``)
            one row per group of exact twins, or (a norm domain) the head in the norm's
            coordinates.
        domain: the domain solved on (a box or ball).
        row_of: (C,) the solved row holding each token's results.
        token_of: (U,) the token id of each solved row.
        wanted: (U,) the rows to decide (selected, and not settled by the tie rule).
        inverse: (C,) each token's group of bit-identical tokens.
    """

    W: np.ndarray
    b: np.ndarray | None
    domain: dom.Domain
    row_of: np.ndarray
    token_of: np.ndarray
    wanted: np.ndarray
    inverse: np.ndarray


class _Tokens(NamedTuple):
    """Per-token verdicts and bounds (C,), and the twin tables."""

    verdict: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    stage: np.ndarray
    twins: dict  # token -> its twins
    tie_certificate: dict  # token settled by the tie rule -> the twin that beats it


def assemble(W, b, user_domain: dom.Domain, problem: Problem, settings: Settings, evidence: Evidence,
             selected: np.ndarray, *, sha256: str | None = None) -> Report:
    """The report on the stored head ``(W, b)`` (its ``sha256`` if already computed) and the user's domain."""
    C, d = W.shape
    tokens = _apply_tie_rule(problem, evidence, settings.ties)
    # A token left out by the user is skipped even when a selected twin was decided.
    tokens.verdict[~selected] = SKIPPED
    tokens.lower[~selected], tokens.upper[~selected], tokens.stage[~selected] = -np.inf, np.inf, NOT_SELECTED
    witness_ids = np.flatnonzero(tokens.verdict == ARGMAXABLE)
    return build_report(
        head=head_record(W, b, sha256), domain=user_domain, verdict=tokens.verdict, lower=tokens.lower, upper=tokens.upper,
        stage=tokens.stage, twins=tokens.twins, witness_ids=witness_ids,
        witnesses=_witnesses(problem, evidence, witness_ids),
        certificates=Certificates.from_rows(_certificate_rows(problem, evidence, tokens)),
        settings=settings._asdict(),
        solved_on=dom.to_json(problem.domain) if isinstance(user_domain, (dom.Free, dom.NormOutput)) else None,
    )


def _apply_tie_rule(problem: Problem, evidence: Evidence, ties: str) -> _Tokens:
    """Each token's row results, with every group of bit-identical tokens settled by the tie rule."""
    row = problem.row_of
    tokens = _Tokens(evidence.verdict[row].copy(), evidence.lower[row].copy(), evidence.upper[row].copy(),
                     np.array(evidence.stage[row], dtype=object), {}, {})
    groups: dict[int, list[int]] = {}
    for i, u in enumerate(problem.inverse):
        groups.setdefault(int(u), []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        for i in members:
            tokens.twins[i] = [j for j in members if j != i]
        for i in members if ties == "strict" else members[1:]:
            tokens.verdict[i], tokens.stage[i], tokens.upper[i] = UNARGMAXABLE, TIE, 0.0
            tokens.lower[i] = min(tokens.lower[i], 0.0)
            tokens.tie_certificate[i] = members[0] if i != members[0] else members[1]
    return tokens


def _witnesses(problem: Problem, evidence: Evidence, witness_ids: np.ndarray) -> np.ndarray:
    """The witness table of the argmaxable tokens, in the narrowest dtype that holds every
    point exactly (the rows' table is compacted in place: no second copy of it)."""
    rows = problem.row_of[witness_ids]
    witnesses = compact_rows(evidence.witness, rows)
    exact = [(r, evidence.exact_witness[int(u)]) for r, u in enumerate(rows) if int(u) in evidence.exact_witness]
    if exact:  # a wider table only when some point needs it (float32 if that holds them all)
        points = np.stack([x for _, x in exact])
        wide = np.float32 if np.array_equal(points.astype(np.float32), points) else np.float64
        witnesses = witnesses.astype(np.promote_types(witnesses.dtype, wide))
        for r, x in exact:
            witnesses[r] = x
    return witnesses


def _certificate_rows(problem: Problem, evidence: Evidence, tokens: _Tokens):
    """``(token, support, weights, rational)`` of each unargmaxable token's certificate,
    with support rows named by token id (a tie's certificate is its twin, weight 1)."""
    for i in np.flatnonzero(tokens.verdict == UNARGMAXABLE):
        if i in tokens.tie_certificate:
            yield int(i), [tokens.tie_certificate[i]], [1.0], ["1/1"]
            continue
        u = int(problem.row_of[i])
        support = problem.token_of[evidence.cert_support[u]].tolist()
        yield int(i), support, evidence.cert_weights[u].tolist(), evidence.cert_rational.get(u, [""] * len(support))


def compact_rows(table: np.ndarray, rows: np.ndarray, *, block: int = 4096) -> np.ndarray:
    """``table[rows]`` without a second copy of the table when ``rows`` is strictly increasing.

    Then ``rows[r] >= r``, so moving block by block towards the front never overwrites a
    row that is still to be read; the result is a view of ``table``'s first rows.
    """
    if rows.size and not np.all(np.diff(rows) > 0):
        return table[rows]
    for start in range(0, rows.size, block):
        part = rows[start:start + block]
        table[start:start + part.size] = table[part]
    return table[: rows.size]
