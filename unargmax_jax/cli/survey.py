"""``unargmax survey``: check many checkpoints one after another and tabulate them.

The list file holds one head file, checkpoint directory or Hugging Face model id
(``org/name[@revision]``, ``hf://org/name``) per line (blank lines and ``#`` comments are
ignored; relative paths are relative to the list file, and a line that names no such path
but reads as ``org/name`` is a model id). Each head's report goes to ``OUT/NNN-name/``,
with its partial state saved there every ``--checkpoint-seconds`` (a survey run again
resumes the head it was cut in); ``OUT/survey.csv`` and ``OUT/survey.md`` are rewritten
after every head, so an interrupted survey still leaves a table of what finished. The
table has one row per model, as in the published study: model, C, d, bias, the verdict
counts, seconds and the first unargmaxable token strings. ``--domain layernorm|rmsnorm``
takes each checkpoint's own final norm. A head that cannot be loaded or checked is
recorded with its error and skipped.
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
from ..heads.hub import PREFIX, load_model, parse_model_id
from ..settings import Settings
from .check import PARTIAL_FILE, check_head, norm_domain
from .common import EXIT_FAILED, EXIT_OK, UsageError, error, prepare_out_dir, settings_from_args, validate_options

COLUMNS = ("model", "C", "d", "bias", "argmaxable", "unargmaxable", "undecided", "seconds",
           "unargmaxable_tokens", "status", "source")
_HEADINGS = {"unargmaxable_tokens": "first unargmaxable tokens"}  # Markdown headings that differ from the CSV's
_SHOWN_TOKENS = 10  # unargmaxable token strings quoted per model in the tables


def read_list(path: Path) -> list[str]:
    """The checkpoints named in a survey list file: paths (made absolute) and model ids."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the survey list ({err})") from None
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(_entry(line, path.parent))
    if not entries:
        raise ValueError(f"{path}: expected one checkpoint path or model id per line, found none")
    return entries


def _entry(line: str, base: Path) -> str:
    """A list line as a path relative to ``base`` when one exists there, else a model id, else a path."""
    entry = Path(line).expanduser()
    entry = entry if entry.is_absolute() else base / entry
    if line.startswith(PREFIX) or (not entry.exists() and parse_model_id(line) is not None):
        return line
    return str(entry)


def _model_name(entry: str) -> str:
    """The model's name in the table: ``org/name[@revision]``, or the file's (its directory's for ``model.*``)."""
    model = parse_model_id(entry)
    if model is not None:
        return model.repo + ("" if model.revision == "main" else f"@{model.revision}")
    path = Path(entry)
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
    """The survey table as CSV, one row per model."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def survey_markdown(rows: list[dict], domain: str) -> str:
    """The survey table as Markdown, with a line of totals above it."""
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    done = [r for r in rows if r["status"] == "ok"]
    lines = [
        "# unargmax survey",
        "",
        f"{len(rows)} head(s), {len(done)} checked, {len(rows) - len(done)} failed; domain `{domain}`; "
        f"{sum(1 for r in done if r['unargmaxable'])} with unargmaxable tokens.",
        "",
        "| " + " | ".join(_HEADINGS.get(c, c) for c in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _survey_one(entry: str, domain: dom.Domain | str, settings: Settings, report_dir: Path, *,
                progress: bool) -> dict:
    """Check one head and save its report to ``report_dir``; its table row (an error is its status).

    ``domain`` is a domain, or ``"layernorm"``/``"rmsnorm"``: the head's own final norm.
    Partial state goes to ``report_dir`` as the check runs, so a cut survey resumes here.
    """
    row = dict.fromkeys(COLUMNS, "")
    row.update(model=_model_name(entry), source=entry)
    start = time.monotonic()
    try:
        head, record = load_model(entry, progress=progress)
        head_domain = norm_domain(head, domain) if isinstance(domain, str) else domain
        dom.validate(head_domain, head.W.shape[1])
        report_dir.mkdir(parents=True, exist_ok=True)
        report = check_head(head, head_domain, settings, out=report_dir, progress=progress)
        if record is not None:
            report.head["hub"] = record
            row["source"] = f"{PREFIX}{record['repo']}@{record['commit']}"
        report.save(report_dir)
        (report_dir / PARTIAL_FILE).unlink(missing_ok=True)  # the head is done
    except (UsageError, ValueError, TypeError, OSError) as err:  # HeadError is a ValueError
        row.update(status="error: " + " ".join(str(err).split()), seconds=round(time.monotonic() - start, 2))
        return row
    counts = report.counts()
    row.update(C=report.head["classes"], d=report.head["dim"], bias="yes" if report.head["has_bias"] else "no",
               argmaxable=counts["argmaxable"], unargmaxable=counts["unargmaxable"], undecided=counts["undecided"],
               seconds=round(report.seconds, 2), status="ok", unargmaxable_tokens=_token_list(report))
    return row


def _domain(text: str) -> dom.Domain | str:
    """``--domain``: a parsed domain, or the name of a norm whose outputs each head is checked on."""
    kind = text.strip().lower()
    return kind if kind in dom.NORM_KINDS else dom.parse(text)


def run_survey(args: argparse.Namespace) -> int:
    """The ``survey`` command: 0 when every head was checked, 1 when some failed, 2 on bad usage."""
    try:
        validate_options(args)
        domain = _domain(args.domain)
        out = prepare_out_dir(args.out)
        entries = read_list(Path(args.list))
        settings = settings_from_args(args)
    except (UsageError, ValueError, OSError) as err:
        return error(err)

    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for n, entry in enumerate(entries, 1):
        print(f"[{n}/{len(entries)}] {entry}", file=sys.stderr)
        row = _survey_one(entry, domain, settings, out / f"{n:03d}-{_slug(_model_name(entry))}",
                          progress=not args.quiet)
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
