"""The ``unargmax`` command: ``check`` a head, ``verify`` a report.

Exit codes: 0 success; 1 the check found what ``--fail-on`` forbids, or verification
failed; 2 bad input or usage (one line ``unargmax: error: ...`` on stderr, no traceback,
no output written). Everything about the input (arguments, output path, head file,
domain) is validated before the engine runs, so an error from the engine itself is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

from . import domains as dom
from ._version import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_MAX_SEED = 2**32


class UsageError(Exception):
    """Bad input or usage: reported as one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as one line (the default prints the usage first)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _PipeSafeStdout:
    """stdout that survives its reader going away (``unargmax check ... | head``): the run
    goes on and writes its report; later output is discarded, as Python's docs advise, by
    pointing file descriptor 1 at /dev/null so the interpreter's final flush is quiet too."""

    def __init__(self, stream):
        self._stream = stream
        self._broken = False

    def _guard(self, call, *args):
        if self._broken:
            return None
        try:
            return call(*args)
        except BrokenPipeError:
            self._broken = True
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
            except (OSError, ValueError, AttributeError):  # no real descriptor (e.g. captured)
                pass
            return None

    def write(self, text):
        self._guard(self._stream.write, text)
        return len(text)

    def flush(self):
        self._guard(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="unargmax",
                                     description="Which tokens of a softmax head can be the argmax, with proofs.")
    parser.add_argument("--version", action="version", version=f"unargmax_jax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{check,verify,survey}")

    check = sub.add_parser("check", help="decide every token of a head and write a report")
    check.add_argument("head", nargs="?", help="head file (.npz, .safetensors, .safetensors.index.json, .gguf) or a directory holding model.safetensors or its index")
    check.add_argument("--example", action="store_true", help="use the bundled example head")
    _add_head_names(check)
    check.add_argument("--out", default="unargmax-out", help="output directory (default ./unargmax-out)")
    _add_check_options(check)
    check.add_argument("--tokens", metavar="IDS", help="check only these ids, e.g. 0-99,1234 (the rest are skipped)")
    check.add_argument("--tokens-regex", metavar="REGEX", help="check only tokens whose string matches (re.search)")
    check.add_argument("--script", metavar="NAME",
                       help="check only tokens written in this Unicode script, e.g. latin, cyrillic, han")
    check.add_argument("--ceiling", action="store_true",
                       help="also prove bounds on each checked token's largest softmax probability on the domain "
                            "(costs about --ceiling-steps passes over the head per token; combine with --tokens)")
    check.add_argument("--ceiling-steps", type=int, default=None,
                       help="ascent steps per token for --ceiling (default 300)")
    check.add_argument("--fail-on", choices=["unargmaxable", "undecided"], action="append", default=[],
                       help="exit 1 if any token has this verdict (repeatable)")
    check.add_argument("--verify", action="store_true", help="re-check the evidence independently afterwards")
    multi = check.add_argument_group("multi-host runs (jax.distributed)")
    multi.add_argument("--distributed", action="store_true",
                       help="split the tokens across the processes of a jax.distributed job: run the same command "
                            "on every host; process 0 writes the report")
    multi.add_argument("--coordinator", metavar="HOST:PORT",
                       help="process 0's address for the job (default: detected from the cluster, e.g. SLURM, "
                            "Cloud TPU); implies --distributed")
    multi.add_argument("--num-processes", type=int, metavar="N", help="processes in the job; implies --distributed")
    multi.add_argument("--process-id", type=int, metavar="I", help="this process's index 0..N-1; implies --distributed")

    verify = sub.add_parser("verify", help="re-check a report's witnesses and certificates against the weights")
    verify.add_argument("report_dir", help="directory holding report.json and certificates.npz")
    verify.add_argument("--weights", required=True, help="the head file the report is about")
    _add_head_names(verify)

    survey = sub.add_parser("survey", help="check many checkpoints one after another and tabulate them")
    survey.add_argument("list", help="text file with one head file or checkpoint directory per line (# comments)")
    survey.add_argument("--out", default="unargmax-survey", help="output directory (default ./unargmax-survey)")
    _add_check_options(survey)
    return parser


def _add_check_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domain", default="box:100",
                        help="box:R | box:LO,HI | ball:R | free | layernorm | rmsnorm (default box:100, i.e. "
                             "[-100, 100]^d); layernorm/rmsnorm: every output gamma * n + beta of the checkpoint's "
                             "final norm")
    parser.add_argument("--ties", choices=["strict", "first"], default="strict",
                        help="strict: exact duplicates are unargmaxable; first: lowest index wins a tie")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed for random starting points (default 0)")
    parser.add_argument("--chunk-size", type=int, default=128, help="tokens per batch (default 128)")
    parser.add_argument("--max-seconds", type=float,
                        help="per head: stop starting new work after this long; the rest stays undecided")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    parser.add_argument("--checkpoint-seconds", type=float, default=30.0,
                        help="save partial state to the output directory this often while screening, so an "
                             "interrupted run resumes when the same command is run again (default 30)")
    parser.add_argument("--no-background-compile", dest="background_compile", action="store_false",
                        help="compile the later stages when they start, not on a second thread during screening "
                             "(saves the compiler's memory, about 150 MB, during the screen; costs its time)")
    parser.add_argument("--compile-cache", metavar="DIR|off", default=None,
                        help="keep JAX's compiled kernels here so later runs skip compiling (default "
                             "$UNARGMAX_COMPILE_CACHE, else ~/.cache/unargmax_jax/xla; off: do not)")


def _add_head_names(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weight", help="array name of W (default W, else decoder_Wemb stored d x C)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--bias", help="array name of b (default b if present)")
    group.add_argument("--no-bias", action="store_true", help="ignore any bias in the file")


def _prepare_out_dir(path: str) -> Path:
    """Check that ``path`` can become the output directory, without creating anything."""
    out = Path(path)
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"output path {out} exists and is not a directory")
        if not os.access(out, os.W_OK | os.X_OK):
            raise UsageError(f"output directory {out} is not writable")
        return out
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"cannot create output directory {out}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create output directory {out}: {ancestor} is not writable")
    return out


def _check_options(args) -> None:
    if args.command == "check" and args.example == bool(args.head):
        raise UsageError("give a head file or --example (exactly one)")
    if args.chunk_size <= 0:
        raise UsageError(f"--chunk-size: expected a positive integer, got {args.chunk_size}")
    if args.max_seconds is not None and not (math.isfinite(args.max_seconds) and args.max_seconds >= 0):
        raise UsageError(f"--max-seconds: expected a finite number >= 0, got {args.max_seconds}")
    if args.command == "check" and args.ceiling_steps is not None and not args.ceiling:
        raise UsageError("--ceiling-steps applies only with --ceiling")
    if args.command == "check" and args.ceiling_steps is None:
        args.ceiling_steps = 300
    if args.command == "check" and args.ceiling_steps <= 0:
        raise UsageError(f"--ceiling-steps: expected a positive integer, got {args.ceiling_steps}")
    if not (math.isfinite(args.checkpoint_seconds) and args.checkpoint_seconds >= 0):
        raise UsageError(f"--checkpoint-seconds: expected a finite number >= 0, got {args.checkpoint_seconds}")
    if not 0 <= args.seed < _MAX_SEED:
        raise UsageError(f"--seed: expected an integer in [0, 2^32), got {args.seed}")
    if args.command == "check":
        _check_distributed_options(args)


def _check_distributed_options(args) -> None:
    if args.coordinator is not None or args.num_processes is not None or args.process_id is not None:
        args.distributed = True
    if args.num_processes is not None and args.num_processes < 1:
        raise UsageError(f"--num-processes: expected a positive integer, got {args.num_processes}")
    if args.process_id is not None and not (0 <= args.process_id < (args.num_processes or float("inf"))):
        limit = f"0..{args.num_processes - 1}" if args.num_processes else "a non-negative integer"
        raise UsageError(f"--process-id: expected {limit}, got {args.process_id}")


def _selection(args, head):
    if args.tokens is None and args.tokens_regex is None and args.script is None:
        return None
    from .selection import select

    return select(head.W.shape[0], head.tokens, ids=args.tokens, regex=args.tokens_regex, script=args.script)


PARTIAL_FILE = ".unargmax-partial.npz"


def _check_head(head, domain, args, selected=None, out=None, partial=PARTIAL_FILE):
    """Run the engine on a loaded head with the command-line settings; label the report.

    With ``out``, partial state goes to ``out/<partial>`` as the run goes and a run of the
    same head and settings resumes from it.
    """
    from .engine import check

    checkpoint = None if out is None else Path(out) / partial
    report = check(head.W, head.b, domain, ties=args.ties, seed=args.seed, chunk_size=args.chunk_size,
                   max_seconds=args.max_seconds, progress=not args.quiet, tokens=selected, checkpoint=checkpoint,
                   checkpoint_seconds=args.checkpoint_seconds,
                   background_compile=getattr(args, "background_compile", True))
    report.head.update(source=head.source, weight_name=head.weight_name, bias_name=head.bias_name)
    if head.tokens is not None:
        report.tokens = list(head.tokens)
        report.head["tokens_source"] = head.tokens_source
    if head.norm is not None:
        report.head["final_norm"] = {"kind": head.norm.kind, "names": list(head.norm.names)}
    return report


def _describe_head(head) -> str:
    """One line naming what was loaded: file, tensors, vocabulary, final norm."""
    C, d = head.W.shape
    parts = [f"loaded {head.source}: W = {head.weight_name} ({C} x {d}), "
             + (f"b = {head.bias_name}" if head.bias_name else "no bias")]
    if head.tokens_source:
        parts.append(f"token strings from {head.tokens_source}")
    if head.norm is not None:
        parts.append(f"final norm {head.norm.kind} ({', '.join(head.norm.names)})")
    return "; ".join(parts)


def _add_ceilings(report, head, domain, args) -> None:
    from .ceiling import ceilings

    ids = np.flatnonzero(report.verdict != 2)
    starts = np.stack([np.asarray(report.witness(int(i)), np.float64) if report.witness(int(i)) is not None else np.zeros(head.W.shape[1])
                       for i in ids])
    starts = np.clip(starts, *_box_limits(domain)) if isinstance(domain, dom.Box) else starts
    if not args.quiet:
        print(f"bounding the probability ceilings of {ids.size} token(s) ...", file=sys.stderr)
    report.add_ceilings(ceilings(head.W, head.b, domain, tokens=ids, steps=args.ceiling_steps, starts=starts))


def _norm_domain(head, kind: str):
    """``--domain layernorm|rmsnorm``: the outputs of the checkpoint's final norm."""
    from .heads import NORM_NAMES

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


def _box_limits(domain):
    return np.asarray(domain.lo, np.float64), np.asarray(domain.hi, np.float64)


def _run_check(args) -> int:
    from .heads import example_head_path, load_head
    from .verify import verify

    # Every input problem surfaces here, before any work and before anything is written.
    try:
        _check_options(args)
        norm_kind = args.domain.strip().lower()
        domain = None if norm_kind in dom.NORM_KINDS else dom.parse(args.domain)
        out = _prepare_out_dir(args.out)
        head = load_head(example_head_path() if args.example else args.head,
                         weight=args.weight, bias=args.bias, no_bias=args.no_bias)
        domain = _norm_domain(head, norm_kind) if domain is None else domain
        dom.validate(domain, head.W.shape[1])
        selected = _selection(args, head)
        if args.ceiling and isinstance(domain, dom.Free):
            raise UsageError("--ceiling needs a bounded --domain (box or ball): on all of R^d every argmaxable "
                             "token reaches probability 1")
        process, processes = _join_job(args) if args.distributed else (0, 1)
    except (UsageError, ValueError, TypeError, OSError, RuntimeError) as err:  # HeadError is a ValueError
        return _error(err)

    if process == 0:
        print(_describe_head(head))
    if selected is not None and process == 0:
        from .selection import describe

        print(describe(selected, ids=args.tokens, regex=args.tokens_regex, script=args.script)
              + "; the rest are reported as skipped")
    if args.distributed:
        report, partial = _check_share(head, domain, args, selected, out, process, processes)
    else:
        report, partial = _check_head(head, domain, args, selected, out=out), PARTIAL_FILE
        if args.ceiling:
            _add_ceilings(report, head, domain, args)
    if process != 0:  # process 0 writes the merged report; the others only clean up
        (out / partial).unlink(missing_ok=True)
        print(f"process {process} of {processes}: done; process 0 writes the report")
        return _fail_on_status(report, args, quiet=True)
    print(report.summary_table())
    status = EXIT_OK
    if args.verify:
        result = verify(report, head.W, head.b)
        if result.ok:
            print(f"verified {result.checked} decided tokens independently: all evidence holds")
        else:
            _print_failures(result)
            status = EXIT_FAILED
    try:
        report.save(out)
    except (ValueError, OSError) as err:
        return _error(err)
    (out / partial).unlink(missing_ok=True)  # the run is complete
    print(f"report written to {out}: report.json, certificates.npz (evidence), tokens.csv, summary.md"
          + (", margins.png" if (out / "margins.png").exists() else ""))
    return max(status, _fail_on_status(report, args))


def _fail_on_status(report, args, quiet: bool = False) -> int:
    counts, status = report.counts(), EXIT_OK
    for verdict in dict.fromkeys(args.fail_on):
        if counts[verdict]:
            if not quiet:
                print(f"failing: {counts[verdict]} {verdict} token(s) (--fail-on {verdict})")
            status = EXIT_FAILED
    return status


def _join_job(args) -> tuple[int, int]:
    from .distributed import initialize

    process, processes = initialize(args.coordinator, args.num_processes, args.process_id)
    print(f"process {process} of {processes} in the distributed job", file=sys.stderr)
    return process, processes


def _check_share(head, domain, args, selected, out, process: int, processes: int):
    """Decide this process's share of the tokens, then merge every process's part (all get it)."""
    from .distributed import gather_reports, token_share

    share = token_share(np.ones(head.W.shape[0], bool) if selected is None else selected, process, processes)
    partial = f".unargmax-partial-{process}-of-{processes}.npz"
    part = None
    if share.any():
        part = _check_head(head, domain, args, share, out=out, partial=partial)
        if args.ceiling:
            _add_ceilings(part, head, domain, args)
    report = gather_reports(part)
    if head.tokens is not None:
        report.tokens = list(head.tokens)
    return report, partial


def _load_report(directory: str):
    from .report import Report

    try:
        return Report.load(directory)
    except (ValueError, OSError) as err:
        raise UsageError(str(err)) from None
    except (KeyError, TypeError, IndexError, AttributeError, zipfile.BadZipFile, EOFError) as err:
        # Report.load reads fields without checking them one by one: a damaged file lands here.
        raise UsageError(f"{directory}: not a readable unargmax report ({type(err).__name__}: {err})") from None


def _run_verify(args) -> int:
    from .heads import load_head
    from .verify import verify

    try:
        report = _load_report(args.report_dir)
        weight = args.weight or report.head.get("weight_name")
        bias, no_bias = args.bias, args.no_bias
        if bias is None and not no_bias:
            # Read the head the way the report was made: its bias array, or none at all.
            no_bias = report.head.get("has_bias") is False
            bias = None if no_bias else report.head.get("bias_name")
        head = load_head(args.weights, weight=weight, bias=bias, no_bias=no_bias)
    except (UsageError, ValueError, TypeError, OSError) as err:
        return _error(err)

    result = verify(report, head.W, head.b)
    if result.ok:
        undecided = report.counts()["undecided"]
        note = f" ({undecided} undecided token(s) carry no evidence)" if undecided else ""
        print(f"verified {result.checked} tokens: all witnesses and certificates hold{note}")
        return EXIT_OK
    _print_failures(result)
    return EXIT_FAILED


def _print_failures(result) -> None:
    failed = [int(i) for i in result.failed]
    shown = failed[:20]
    print(f"verification FAILED for {len(failed)} token(s): {shown}{' ...' if len(failed) > 20 else ''}")
    if -1 in result.reasons:
        print(f"  head: {result.reasons[-1]}")
    for token in shown:
        if token in result.reasons:
            print(f"  token {token}: {result.reasons[token]}")


def _error(err: BaseException) -> int:
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"unargmax: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _use_compile_cache(setting: str | None) -> None:
    """Point JAX's persistent compilation cache at a directory, unless it is off or the
    caller configured one already. A check compiles a few kernels per head shape (seconds
    on CPU); with the cache a second run on the same shapes skips that."""
    import jax

    setting = setting or os.environ.get("UNARGMAX_COMPILE_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "unargmax_jax" / "xla")
    if setting.lower() == "off" or jax.config.jax_compilation_cache_dir:
        return
    try:
        Path(setting).mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # an unwritable cache is no reason to fail a check
    jax.config.update("jax_compilation_cache_dir", setting)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def main(argv: list[str] | None = None) -> int:
    """Run the ``unargmax`` command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: usage errors (2), --help and --version (0)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    stdout, sys.stdout = sys.stdout, _PipeSafeStdout(sys.stdout)
    try:
        if args.command in ("check", "survey"):
            _use_compile_cache(args.compile_cache)
        if args.command == "check":
            return _run_check(args)
        if args.command == "survey":
            from .survey import run_survey

            return run_survey(args)
        return _run_verify(args)
    except KeyboardInterrupt:
        print("unargmax: interrupted; run the same command again to resume from the last saved state",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        sys.stdout.flush()
        sys.stdout = stdout


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
