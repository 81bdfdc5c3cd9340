"""``unargmax survey``: check many checkpoints one after another and tabulate them.

The list file holds one head file or checkpoint directory per line (blank lines and
``#`` comments are ignored; relative paths are relative to the list file). Each head's
report goes to ``OUT/NN-name/``; ``OUT/survey.csv`` and ``OUT/survey.md`` are rewritten
after every head, so an interrupted survey still leaves a table of what finished. A
head that cannot be loaded or checked is recorded with its error and skipped.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
import time
from pathlib import Path

from .. import domains as dom
from .._files import atomic_write
from ..heads import load_head
from ..settings import Settings
from .check import check_head
from .common import EXIT_FAILED, EXIT_OK, UsageError, error, prepare_out_dir, settings_from_args, validate_options

COLUMNS = ("model", "path", "classes", "dim", "bias", "argmaxable", "unargmaxable", "undecided",
           "seconds", "status", "unargmaxable_tokens")
_SHOWN_TOKENS = 10  # unargmaxable token strings quoted per model in the tables


def read_list(path: Path) -> list[Path]:
    """The checkpoint paths named in a survey list file."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the survey list ({err})") from None
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entry = Path(line).expanduser()
            entries.append(entry if entry.is_absolute() else path.parent / entry)
    if not entries:
        raise ValueError(f"{path}: expected one checkpoint path per line, found none")
    return entries


def _model_name(path: Path) -> str:
    name = path.name
    for suffix in (".safetensors.index.json", ".safetensors", ".gguf", ".npz", ".msgpack"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name in ("model", "flax_model") and path.parent.name:
        name = path.parent.name
    return name or "model"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def _token_list(report) -> str:
    bad = report.ids("unargmaxable")
    tokens = report.tokens
    shown = [repr(tokens[i]) if tokens is not None and tokens[i] is not None else str(int(i))
             for i in bad[:_SHOWN_TOKENS]]
    return " ".join(shown) + (f" (+{bad.size - _SHOWN_TOKENS})" if bad.size > _SHOWN_TOKENS else "")


def survey_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def survey_markdown(rows: list[dict], domain: str) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    done = [r for r in rows if r["status"] == "ok"]
    lines = [
        "# unargmax survey",
        "",
        f"{len(rows)} head(s), {len(done)} checked, {len(rows) - len(done)} failed; domain `{domain}`; "
        f"{sum(1 for r in done if r['unargmaxable'])} with unargmaxable tokens.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _survey_one(path: Path, domain: dom.Domain, settings: Settings, report_dir: Path, *, progress: bool) -> dict:
    """Check one head and save its report to ``report_dir``; its table row (an error is its status)."""
    row = dict.fromkeys(COLUMNS, "")
    row.update(model=_model_name(path), path=str(path))
    start = time.monotonic()
    try:
        head = load_head(path)
        dom.validate(domain, head.W.shape[1])
        report = check_head(head, domain, settings, progress=progress)
        report.save(report_dir)
    except (ValueError, TypeError, OSError) as err:  # HeadError is a ValueError
        row.update(status="error: " + " ".join(str(err).split()), seconds=round(time.monotonic() - start, 2))
    else:
        counts = report.counts()
        row.update(classes=report.head["classes"], dim=report.head["dim"],
                   bias="yes" if report.head["has_bias"] else "no", argmaxable=counts["argmaxable"],
                   unargmaxable=counts["unargmaxable"], undecided=counts["undecided"],
                   seconds=round(report.seconds, 2), status="ok", unargmaxable_tokens=_token_list(report))
    return row


def run_survey(args: argparse.Namespace) -> int:
    """The ``survey`` command: 0 when every head was checked, 1 when some failed, 2 on bad usage."""
    try:
        validate_options(args)
        domain = dom.parse(args.domain)
        out = prepare_out_dir(args.out)
        entries = read_list(Path(args.list))
        settings = settings_from_args(args)
    except (UsageError, ValueError, OSError) as err:
        return error(err)

    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for n, path in enumerate(entries, 1):
        print(f"[{n}/{len(entries)}] {path}", file=sys.stderr)
        row = _survey_one(path, domain, settings, out / f"{n:03d}-{_slug(_model_name(path))}", progress=not args.quiet)
        rows.append(row)
        text_csv, text_md = survey_csv(rows), survey_markdown(rows, args.domain)
        atomic_write(out / "survey.csv", lambda f: f.write(text_csv.encode()))
        atomic_write(out / "survey.md", lambda f: f.write(text_md.encode()))
        print(f"  {row['status'] if row['status'] != 'ok' else 'ok: ' + str(row['unargmaxable']) + ' unargmaxable'}",
              file=sys.stderr)
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"surveyed {len(rows)} head(s): {len(rows) - failed} checked, {failed} failed; "
          f"table in {out / 'survey.md'} and {out / 'survey.csv'}")
    return EXIT_FAILED if failed else EXIT_OK
