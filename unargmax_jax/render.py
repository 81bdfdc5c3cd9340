"""Readable renderings of a report: ``tokens.csv``, ``summary.md`` and ``margins.png``.

Pure functions from a :class:`~unargmax_jax.report.Report` to text or PNG bytes;
``Report.save`` writes them. They only read a report's attributes, so this module does
not import :mod:`unargmax_jax.report` (which imports it). matplotlib is optional (the
``plot`` extra) and imported only when a plot is drawn.
"""

from __future__ import annotations

import csv
import html
import io
import json
import threading

import numpy as np

from . import domains as dom
from .verdicts import ARGMAXABLE, DECIDED, NAMES, UNARGMAXABLE

CSV_COLUMNS = ("id", "token", "verdict", "lower", "upper", "stage", "ceiling_lower", "ceiling_upper")
_LISTED = 200  # unargmaxable tokens listed in summary.md, at most


def tokens_csv(report) -> str:
    """One row per token: ``id,token,verdict,lower,upper,stage,ceiling_lower,ceiling_upper``.

    Floats round-trip exactly; the ceiling columns are empty where no ceiling was computed.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    ceilings = {int(i): (repr(float(lo)), repr(float(hi)))
                for i, lo, hi in zip(report.ceiling_ids, report.ceiling_lower, report.ceiling_upper)}
    for i, (verdict, lower, upper, stage) in enumerate(zip(*report.token_columns())):
        text = report.token(i)
        writer.writerow((i, "" if text is None else text, verdict, repr(lower), repr(upper), stage,
                         *ceilings.get(i, ("", ""))))
    return buffer.getvalue()


def _code(text: str | None) -> str:
    """A token string for a Markdown table: escaped like repr, safe for ``|`` and backticks."""
    if text is None:
        return ""
    return "<code>" + html.escape(repr(text)[1:-1]).replace("|", "&#124;").replace("`", "&#96;") + "</code>"


def _number(value: float) -> str:
    return f"{value:.6g}" if np.isfinite(value) else ("inf" if value > 0 else "-inf")


def _interval(report, i: int) -> str:
    return f"[{_number(report.lower[i])}, {_number(report.upper[i])}]"


def closest_to_boundary(report, count: int) -> np.ndarray:
    """Decided tokens nearest the decision boundary: smallest |proved bound| on their side.

    An argmaxable token's distance is its lower bound (> 0), an unargmaxable one's the
    magnitude of its upper bound (<= 0).
    """
    decided = np.flatnonzero(np.isin(report.verdict, DECIDED))
    distance = np.where(report.verdict[decided] == ARGMAXABLE, report.lower[decided], -report.upper[decided])
    return decided[np.argsort(distance, kind="stable")[:count]]


def summary_markdown(report, *, closest: int = 20, plotted: bool = True) -> str:
    """A one-page Markdown summary of a report."""
    # The token column only when the head came with strings.
    columns = (" token |", "---|") if report.tokens is not None else ("", "")
    lines = _overview(report)
    lines += _unargmaxable_section(report, columns)
    lines += _closest_section(report, closest, columns)
    lines += _ceiling_section(report, closest, columns)
    lines += _ties_section(report)
    if report.notes:
        lines += ["", "## Notes", ""] + [f"* {note}" for note in report.notes]
    stage_times = ", ".join(f"{k} {v:.2f} s" for k, v in report.stage_seconds.items())
    lines += ["", "## Time", "", f"{report.seconds:.2f} s in all" + (f" ({stage_times})." if stage_times else ".")]
    lines += ["", "Margin bounds are plotted in `margins.png`." if plotted
              else "margins.png was skipped: matplotlib is not installed (pip install 'unargmax_jax[plot]')."]
    return "\n".join(lines) + "\n"


def _token_cell(report, i) -> str:
    return f" {_code(report.token(int(i)))} |" if report.tokens is not None else ""


def _overview(report) -> list[str]:
    """The summary's title, head and domain lines and the verdict counts."""
    head, counts = report.head, report.counts()
    model = head.get("source") or "(arrays passed in Python)"
    names = ", ".join(f"{k} `{head[k]}`" for k in ("weight_name", "bias_name") if head.get(k))
    lines = [
        "# unargmax report",
        "",
        f"* model: `{model}`" + (f" ({names})" if names else ""),
        f"* head: {head['classes']} classes x {head['dim']} features, {'with' if head['has_bias'] else 'no'} bias",
        f"* domain: `{dom.describe(report.domain)}`"
        + (f" (margins on `{json.dumps(report.solved_on)}`)" if report.solved_on else ""),
    ]
    if head.get("tokens_source"):
        lines.append(f"* token strings: `{head['tokens_source']}`")
    lines += ["", "| verdict | tokens |", "|---|---|"]
    lines += [f"| {name} | {counts[name]} |" for name in ("argmaxable", "unargmaxable", "undecided", "skipped")
              if counts[name] or name != "skipped"]
    stages, stage_counts = np.unique(report.stage[np.isin(report.verdict, DECIDED)], return_counts=True)
    if stages.size:
        lines += ["", "Decided by stage: " + ", ".join(f"{s} {n}" for s, n in zip(stages, stage_counts)) + "."]
    return lines


def _unargmaxable_section(report, columns) -> list[str]:
    bad = report.ids("unargmaxable")
    lines = ["", f"## Unargmaxable tokens ({bad.size})", ""]
    if not bad.size:
        return lines + ["None: every decided token can be the argmax on this domain."]
    lines += [f"| id |{columns[0]} upper bound | stage |", f"|---|{columns[1]}---|---|"]
    lines += [f"| {i} |{_token_cell(report, i)} {_number(report.upper[i])} | {report.stage[i]} |"
              for i in bad[:_LISTED]]
    if bad.size > _LISTED:
        lines.append(f"\n... and {bad.size - _LISTED} more (all in tokens.csv).")
    return lines


def _closest_section(report, closest: int, columns) -> list[str]:
    near = closest_to_boundary(report, closest)
    if not near.size:
        return []
    return ["", f"## Closest to the boundary ({near.size})", "",
            f"| id |{columns[0]} verdict | proved margin interval |", f"|---|{columns[1]}---|---|"] + [
        f"| {i} |{_token_cell(report, i)} {NAMES[int(report.verdict[i])]} | {_interval(report, int(i))} |"
        for i in near]


def _ceiling_section(report, closest: int, columns) -> list[str]:
    if not report.ceiling_ids.size:
        return []
    order = np.argsort(report.ceiling_upper, kind="stable")[:closest]
    lines = ["", f"## Lowest probability ceilings ({order.size} of {report.ceiling_ids.size} computed)", "",
             "The largest softmax probability each token can reach on the domain, proved to lie in the interval.",
             "", f"| id |{columns[0]} verdict | ceiling |", f"|---|{columns[1]}---|---|"]
    return lines + [f"| {report.ceiling_ids[r]} |{_token_cell(report, report.ceiling_ids[r])} "
                    f"{NAMES[int(report.verdict[report.ceiling_ids[r]])]} | "
                    f"[{report.ceiling_lower[r]:.6g}, {report.ceiling_upper[r]:.6g}] |" for r in order]


def _ties_section(report) -> list[str]:
    if not report.twins:
        return []
    groups = sorted({tuple(sorted([i, *t])) for i, t in report.twins.items()})
    lines = ["", f"## Exact ties ({len(groups)} group(s) of identical row and bias)", ""]
    lines += ["* " + " = ".join(f"{i} {_code(report.token(i))}".rstrip() for i in g) for g in groups[:50]]
    if len(groups) > 50:
        lines.append(f"* ... and {len(groups) - 50} more")
    return lines


def _symlog_edges(values: np.ndarray, linthresh: float, bins: int) -> np.ndarray:
    """Histogram edges evenly spaced on a symmetric log axis."""
    t = np.sign(values) * np.log10(1 + np.abs(values) / linthresh)
    lo, hi = float(t.min()), float(t.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    return np.sign(edges) * linthresh * (10 ** np.abs(edges) - 1)


def import_matplotlib_in_background() -> None:
    """Import what :func:`margins_png` needs on a daemon thread (about 0.3 s of imports):
    started before a long check, whose kernels leave the interpreter idle, the report's
    plot finds it imported (the import lock makes it wait for the thread if need be)."""
    def load():
        try:
            import matplotlib

            matplotlib.use("Agg")
            from matplotlib.backends import backend_agg  # noqa: F401
            from matplotlib.figure import Figure  # noqa: F401
        except Exception:  # noqa: BLE001 - margins_png itself handles a missing or broken matplotlib
            return

    threading.Thread(target=load, name="unargmax-matplotlib", daemon=True).start()


def margins_png(report, *, bins: int = 60) -> bytes | None:
    """A histogram of the proved margin bounds as PNG bytes, or None without matplotlib.

    Argmaxable tokens contribute their lower bound (> 0), unargmaxable ones their upper
    bound (<= 0), on a symmetric log axis; undecided and skipped tokens are left out.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return None
    good = report.lower[report.verdict == ARGMAXABLE]
    bad = report.upper[report.verdict == UNARGMAXABLE]
    good, bad = good[np.isfinite(good)], bad[np.isfinite(bad)]
    figure = Figure(figsize=(8, 4.5), dpi=100)
    ax = figure.subplots()
    values = np.concatenate([good, bad])
    if values.size:
        nonzero = np.abs(values[values != 0])
        linthresh = float(np.percentile(nonzero, 1)) if nonzero.size else 1.0
        edges = _symlog_edges(values, linthresh, bins)
        # One filled step patch per series (``stairs``), not one rectangle per bin (``hist``),
        # and fixed margins instead of tight_layout's extra draw: 2.5x faster to render.
        good_counts, bad_counts = np.histogram(good, edges)[0], np.histogram(bad, edges)[0]
        ax.stairs(good_counts, edges, fill=True, color="tab:blue", label=f"argmaxable ({good.size}): lower bound")
        ax.stairs(bad_counts, edges, fill=True, color="tab:red", label=f"unargmaxable ({bad.size}): upper bound")
        ax.set_xscale("symlog", linthresh=linthresh)
        if (good_counts + bad_counts).max() > 100:
            ax.set_yscale("log")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("proved bound on the argmax margin m*")
    ax.set_ylabel("tokens")
    head = report.head
    ax.set_title(f"{head['classes']} x {head['dim']} head, domain {dom.describe(report.domain)}",
                 fontsize=10)
    ax.legend(loc="upper left", fontsize=9)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.92)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
