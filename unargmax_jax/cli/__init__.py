"""The ``unargmax`` command: ``check`` a head, ``verify`` a report, ``survey`` many heads.

Exit codes: 0 success; 1 the check found what ``--fail-on`` forbids, or verification
failed; 2 bad input or usage (one line ``unargmax: error: ...`` on stderr, no traceback,
no output written). Everything about the input (arguments, output path, head file,
domain) is validated before the engine runs, so an error from the engine itself is a
bug and keeps its traceback.

Library use: :func:`check_head` runs a check on a loaded head as the command does.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

from .check import PARTIAL_FILE as PARTIAL_FILE
from .check import check_head as check_head
from .check import run_check
from .common import EXIT_FAILED as EXIT_FAILED
from .common import EXIT_INTERRUPTED as EXIT_INTERRUPTED
from .common import EXIT_OK as EXIT_OK
from .common import EXIT_USAGE as EXIT_USAGE
from .common import PipeSafeStdout, use_compile_cache
from .common import UsageError as UsageError
from .parser import build_parser
from .survey import run_survey
from .verify import run_verify


def main(argv: list[str] | None = None) -> int:
    """Run the ``unargmax`` command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: usage errors (2), --help and --version (0)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    stdout, sys.stdout = sys.stdout, PipeSafeStdout(sys.stdout)
    try:
        if args.command in ("check", "survey"):
            use_compile_cache(args.compile_cache)
        if args.command == "check":
            return run_check(args)
        if args.command == "survey":
            return run_survey(args)
        return run_verify(args)
    except KeyboardInterrupt:
        print("unargmax: interrupted; run the same command again to resume from the last saved state",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        sys.stdout.flush()
        sys.stdout = stdout


def run() -> NoReturn:
    """The process entry point (``unargmax``, ``python -m unargmax_jax``): :func:`main`,
    then :func:`exit_now` with its code."""
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` once its output is out: streams flushed, logging shut
    down, but without the interpreter's teardown, where JAX frees every compiled kernel
    and device buffer one by one (0.3-0.5 s after a SmolLM2 check, on every run). Every
    file the command writes is closed (and renamed into place) before it returns. A
    process of a multi-process run exits normally: it leaves the coordinator at exit."""
    jax = sys.modules.get("jax")
    if jax is not None and getattr(jax.distributed, "is_initialized", lambda: False)():
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)
