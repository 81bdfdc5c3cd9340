"""Verdict codes and stage names: the vocabulary every other module speaks.

A token's verdict is one small integer (the report stores them as int8):

* ``ARGMAXABLE`` (1): a witness x in X proves m_i* > 0;
* ``UNARGMAXABLE`` (-1): a certificate lam proves m_i* <= 0;
* ``UNDECIDED`` (0): no proof either way yet, only the interval [lower, upper];
* ``SKIPPED`` (2): the user did not ask about the token (it still competes).
"""

from __future__ import annotations

ARGMAXABLE = 1
UNARGMAXABLE = -1
UNDECIDED = 0
SKIPPED = 2

NAMES = {ARGMAXABLE: "argmaxable", UNARGMAXABLE: "unargmaxable", UNDECIDED: "undecided", SKIPPED: "skipped"}
CODES = {name: code for code, name in NAMES.items()}
DECIDED = (ARGMAXABLE, UNARGMAXABLE)

# The solver's stages, in the order a check runs them; each report keeps its seconds.
STAGES = ("screen", "ascent", "pdhg", "basis", "rational")
# Resumable phases (``resume``): the screen runs in two passes (after an optional bfloat16
# first rung), each followed by a competitor-set pass and its least-squares certificates
# (the first only where those can decide).
PHASES = ("screen bf16", "screen", "top 1", "screen 2", "top", "ascent", "pdhg", "basis", "rational")
# A token's ``stage`` in a report: the stage that decided it, or how else it was settled.
TIE = "tie"  # an exact duplicate row and bias (decided by the twin rule, not a stage)
REUSED = "reused"  # carried over from a previous check's evidence (``monitor``)
NOT_SELECTED = "skipped"
NOT_DECIDED = "none"
