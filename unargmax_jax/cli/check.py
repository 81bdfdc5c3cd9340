"""``unargmax check``: decide every token of a head and write a report.

Everything about the input (arguments, output path, head file, domain) is validated
before the engine runs, so an error from the engine itself is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np

from .. import domains as dom
from .. import engine, render
from ..ceiling import ceilings
from ..distributed import gather_reports, initialize, token_share
from ..heads import NORM_NAMES, example_head_path
from ..heads.hub import load_model
from ..report import Report
from ..selection import describe, select
from ..settings import Settings
from ..verdicts import SKIPPED
from .common import (EXIT_FAILED, EXIT_OK, UsageError, error, prepare_out_dir, print_failures, settings_from_args,
                     validate_options)

# The package re-exports the function ``verify``, which shadows the module's name there;
# calling through the module lets a test replace ``verify`` on it.
_verify_module = importlib.import_module("..verify", __package__)

PARTIAL_FILE = ".unargmax-partial.npz"


def check_head(head, domain: dom.Domain, settings: Settings, *, selected=None, out=None, partial: str = PARTIAL_FILE,
               progress: bool = True) -> Report:
    """Run the engine on a loaded head; label the report with what was loaded.

    Args:
        head: a :class:`~unargmax_jax.heads.Head` (from :func:`~unargmax_jax.heads.load_head`).
        domain: the feature domain, validated for the head's width.
        settings: how the check runs.
        selected: the tokens to decide, as ids or a (C,) bool mask (default all).
        out: with a directory, partial state goes to ``out/<partial>`` as the run goes and
            a run of the same head and settings resumes from it.
        partial: the partial state's file name in ``out``.
        progress: print a progress line on stderr.

    Returns:
        The engine's :class:`~unargmax_jax.report.Report`, its ``head`` naming the source
        file and tensors, with the token strings and final norm where the file has them.
    """
    checkpoint = None if out is None else Path(out) / partial
    report = engine.check(head.W, head.b, domain, settings=settings, progress=progress, tokens=selected,
                          checkpoint=checkpoint)
    report.head.update(source=head.source, weight_name=head.weight_name, bias_name=head.bias_name)
    if head.tokens is not None:
        report.tokens = list(head.tokens)
        report.head["tokens_source"] = head.tokens_source
    if head.norm is not None:
        report.head["final_norm"] = {"kind": head.norm.kind, "names": list(head.norm.names)}
    return report


def describe_head(head) -> str:
    """One line naming what was loaded: file, tensors, vocabulary, final norm."""
    C, d = head.W.shape
    parts = [f"loaded {head.source}: W = {head.weight_name} ({C} x {d}), "
             + (f"b = {head.bias_name}" if head.bias_name else "no bias")]
    if head.tokens_source:
        parts.append(f"token strings from {head.tokens_source}")
    if head.norm is not None:
        parts.append(f"final norm {head.norm.kind} ({', '.join(head.norm.names)})")
    return "; ".join(parts)


def describe_fetch(record: dict) -> str:
    """One line saying where a model id's head came from: the cache, or what was fetched."""
    where = f"{record.get('model')} (commit {record.get('commit')})"
    if record.get("from_cache"):
        return f"{where}: from the local cache {record.get('local')}, no download"
    ranged = [f for f in record.get("files", []) if not f.get("whole")]
    how = f"; byte ranges of {', '.join(f['file'] for f in ranged)}" if ranged else ""
    return f"{where}: fetched {record.get('bytes_fetched')} bytes from {record.get('endpoint')}{how}"


def run_check(args: argparse.Namespace) -> int:
    """The ``check`` command: 0 done, 1 ``--fail-on`` hit or verification failed, 2 bad input."""
    # Every input problem surfaces here, before any work and before anything is written.
    try:
        head, hub_record, domain, out, selected = _inputs(args)
        process, processes = _join_job(args) if args.distributed else (0, 1)
        settings = settings_from_args(args)
    except (UsageError, ValueError, TypeError, OSError, RuntimeError) as err:  # HeadError is a ValueError
        return error(err)

    if process == 0:
        print(describe_head(head))
        if hub_record is not None:
            print(describe_fetch(hub_record))
    if selected is not None and process == 0:
        print(describe(selected, ids=args.tokens, regex=args.tokens_regex, script=args.script)
              + "; the rest are reported as skipped")
    if process == 0:
        render.import_matplotlib_in_background()  # for margins.png, while the check runs
    steps = args.ceiling_steps if args.ceiling else None
    if args.distributed:
        report, partial = _check_share(head, domain, settings, selected, out, process, processes,
                                       progress=not args.quiet, ceiling_steps=steps)
    else:
        report, partial = check_head(head, domain, settings, selected=selected, out=out,
                                     progress=not args.quiet), PARTIAL_FILE
        if steps is not None:
            _add_ceilings(report, head, domain, steps=steps, progress=not args.quiet)
    if hub_record is not None:
        report.head["hub"] = hub_record
    if process != 0:  # process 0 writes the merged report; the others only clean up
        (out / partial).unlink(missing_ok=True)
        print(f"process {process} of {processes}: done; process 0 writes the report")
        return _fail_on_status(report, args.fail_on, quiet=True)
    return _finish(report, head, args, out, partial)


def _inputs(args: argparse.Namespace):
    """The head, domain, output directory and token selection the flags name, all checked."""
    validate_options(args)
    norm_kind = args.domain.strip().lower()
    domain = None if norm_kind in dom.NORM_KINDS else dom.parse(args.domain)
    out = prepare_out_dir(args.out)
    head, hub_record = load_model(str(example_head_path()) if args.example else args.head, weight=args.weight,
                                  bias=args.bias, no_bias=args.no_bias, progress=not args.quiet)
    domain = norm_domain(head, norm_kind) if domain is None else domain
    dom.validate(domain, head.W.shape[1])
    selected = _selection(args, head)
    if args.ceiling and isinstance(domain, dom.Free):
        raise UsageError("--ceiling needs a bounded --domain (box or ball): on all of R^d every argmaxable "
                         "token reaches probability 1")
    return head, hub_record, domain, out, selected


def _finish(report: Report, head, args: argparse.Namespace, out: Path, partial: str) -> int:
    """Print the summary, verify if asked, write the report and drop the partial state."""
    print(report.summary_table())
    status = EXIT_OK
    if args.verify:
        result = _verify_module.verify(report, head.W, head.b)
        if result.ok:
            print(f"verified {result.checked} decided tokens independently: all evidence holds")
        else:
            print_failures(result)
            status = EXIT_FAILED
    try:
        report.save(out)
    except (ValueError, OSError) as err:
        return error(err)
    (out / partial).unlink(missing_ok=True)  # the run is complete
    print(f"report written to {out}: report.json, certificates.npz (evidence), tokens.csv, summary.md"
          + (", margins.png" if (out / "margins.png").exists() else ""))
    return max(status, _fail_on_status(report, args.fail_on))


def _selection(args: argparse.Namespace, head):
    if args.tokens is None and args.tokens_regex is None and args.script is None:
        return None
    return select(head.W.shape[0], head.tokens, ids=args.tokens, regex=args.tokens_regex, script=args.script)


def _add_ceilings(report: Report, head, domain: dom.Domain, *, steps: int, progress: bool) -> None:
    ids = np.flatnonzero(report.verdict != SKIPPED)
    starts = np.stack([np.asarray(report.witness(int(i)), np.float64) if report.witness(int(i)) is not None else np.zeros(head.W.shape[1])
                       for i in ids])
    starts = np.clip(starts, *_box_limits(domain)) if isinstance(domain, dom.Box) else starts
    if progress:
        print(f"bounding the probability ceilings of {ids.size} token(s) ...", file=sys.stderr)
    report.add_ceilings(ceilings(head.W, head.b, domain, tokens=ids, steps=steps, starts=starts))


def norm_domain(head, kind: str) -> dom.NormOutput:
    """``--domain layernorm|rmsnorm``: the outputs of the checkpoint's final norm."""
    if head.norm is None:
        raise UsageError(f"--domain {kind} needs the final norm's scale (and shift) from the checkpoint, but "
                         f"{head.source} has none under the known names (for example "
                         f"{', '.join(str(n[0]) for n in NORM_NAMES[:3])})")
    d = head.W.shape[1]
    if np.shape(head.norm.gamma) not in ((), (d,)):
        raise UsageError(f"{head.source}: final norm {head.norm.names[0]} has shape {np.shape(head.norm.gamma)}, "
                         f"expected ({d},) to match the head")
    beta = 0.0 if head.norm.beta is None else head.norm.beta
    return dom.NormOutput(kind, head.norm.gamma, beta)


def _box_limits(domain: dom.Box):
    return np.asarray(domain.lo, np.float64), np.asarray(domain.hi, np.float64)


def _fail_on_status(report: Report, fail_on: list[str], quiet: bool = False) -> int:
    counts, status = report.counts(), EXIT_OK
    for verdict in dict.fromkeys(fail_on):
        if counts[verdict]:
            if not quiet:
                print(f"failing: {counts[verdict]} {verdict} token(s) (--fail-on {verdict})")
            status = EXIT_FAILED
    return status


def _join_job(args: argparse.Namespace) -> tuple[int, int]:
    process, processes = initialize(args.coordinator, args.num_processes, args.process_id)
    print(f"process {process} of {processes} in the distributed job", file=sys.stderr)
    return process, processes


def _check_share(head, domain: dom.Domain, settings: Settings, selected, out: Path, process: int, processes: int, *,
                 progress: bool, ceiling_steps: int | None):
    """Decide this process's share of the tokens, then merge every process's part (all get it)."""
    share = token_share(np.ones(head.W.shape[0], bool) if selected is None else selected, process, processes)
    partial = f".unargmax-partial-{process}-of-{processes}.npz"
    part = None
    if share.any():
        part = check_head(head, domain, settings, selected=share, out=out, partial=partial, progress=progress)
        if ceiling_steps is not None:
            _add_ceilings(part, head, domain, steps=ceiling_steps, progress=progress)
    report = gather_reports(part)
    if head.tokens is not None:
        report.tokens = list(head.tokens)
    return report, partial
