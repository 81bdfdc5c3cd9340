"""The ``unargmax`` command: ``check`` a head, ``verify`` a report.

Exit codes: 0 success; 1 the check found what ``--fail-on`` forbids, or verification
failed; 2 bad input or usage (one line on stderr, no traceback, no output written).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import domains as dom
from ._version import __version__


class UsageError(Exception):
    """Bad input or usage: reported as one line with exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unargmax", description="Which tokens of a softmax head can be the argmax, with proofs.")
    parser.add_argument("--version", action="version", version=f"unargmax_jax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="decide every token of a head and write a report")
    check.add_argument("head", nargs="?", help="head file (.npz)")
    check.add_argument("--example", action="store_true", help="use the bundled example head")
    check.add_argument("--weight", help="array name of W (default W, or decoder_Wemb stored d x C)")
    check.add_argument("--bias", help="array name of b (default b if present)")
    check.add_argument("--domain", default="box:100", help="box:R | box:LO,HI | ball:R | free (default box:100)")
    check.add_argument("--out", default="unargmax-out", help="output directory (default ./unargmax-out)")
    check.add_argument("--ties", choices=["strict", "first"], default="strict",
                       help="strict: exact duplicates are unargmaxable; first: lowest index wins a tie")
    check.add_argument("--fail-on", choices=["unargmaxable", "undecided"], action="append", default=[],
                       help="exit 1 if any token has this verdict (repeatable)")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--chunk-size", type=int, default=128, help="tokens per batch")
    check.add_argument("--max-seconds", type=float, help="stop starting new work after this long")
    check.add_argument("--verify", action="store_true", help="re-check the evidence independently afterwards")
    check.add_argument("--quiet", action="store_true", help="no progress line")

    verify = sub.add_parser("verify", help="re-check a report's witnesses and certificates")
    verify.add_argument("report_dir", help="directory holding report.json and certificates.npz")
    verify.add_argument("--weights", required=True, help="the head file the report is about")
    verify.add_argument("--weight", help="array name of W")
    verify.add_argument("--bias", help="array name of b")
    return parser


def _prepare_out_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} exists and is not a directory")
    parent = out if out.exists() else out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise UsageError(f"output directory {out} is not writable")
    return out


def _run_check(args) -> int:
    from .engine import check
    from .heads import example_head_path, load_head
    from .verify import verify

    if args.example == bool(args.head):
        raise UsageError("give a head file or --example (exactly one)")
    if args.chunk_size <= 0:
        raise UsageError(f"--chunk-size must be positive, got {args.chunk_size}")
    if args.max_seconds is not None and args.max_seconds < 0:
        raise UsageError(f"--max-seconds must be >= 0, got {args.max_seconds}")
    domain = dom.parse(args.domain)
    out = _prepare_out_dir(args.out)
    head = load_head(example_head_path() if args.example else args.head, weight=args.weight, bias=args.bias)
    report = check(head.W, head.b, domain, ties=args.ties, seed=args.seed, chunk_size=args.chunk_size,
                   max_seconds=args.max_seconds, progress=not args.quiet)
    report.head.update(source=head.source, weight_name=head.weight_name, bias_name=head.bias_name)
    print(report.summary_table())
    status = 0
    if args.verify:
        result = verify(report, head.W, head.b)
        if result.ok:
            print(f"verified {result.checked} decided tokens independently: all evidence holds")
        else:
            print(f"VERIFICATION FAILED for {len(result.failed)} token(s): {result.failed[:20].tolist()}")
            status = 1
    report.save(out)
    print(f"report written to {out}/report.json (evidence in {out}/certificates.npz)")
    counts = report.counts()
    for verdict in args.fail_on:
        if counts[verdict]:
            print(f"failing: {counts[verdict]} {verdict} token(s) (--fail-on {verdict})")
            status = 1
    return status


def _run_verify(args) -> int:
    from .heads import load_head
    from .report import Report
    from .verify import verify

    report = Report.load(args.report_dir)
    head = load_head(args.weights, weight=args.weight or report.head.get("weight_name"),
                     bias=args.bias or report.head.get("bias_name"))
    result = verify(report, head.W, head.b)
    if result.ok:
        print(f"verified {result.checked} decided tokens of {report.verdict.size}: all witnesses and certificates hold")
        return 0
    shown = result.failed[:20].tolist()
    print(f"verification FAILED for {len(result.failed)} token(s): {shown}{' ...' if len(result.failed) > 20 else ''}")
    for key in ([-1] if -1 in result.reasons else []) + shown:
        print(f"  {'head' if key == -1 else f'token {key}'}: {result.reasons[key]}")
    return 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _run_check(args)
        return _run_verify(args)
    except (UsageError, ValueError, OSError) as err:  # HeadError is a ValueError
        message = " ".join(str(err).split())
        print(f"unargmax: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

