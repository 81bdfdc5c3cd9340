"""What every ``unargmax`` command shares: exit codes, one-line errors, the output
directory check, stdout that survives a closed pipe, JAX's compile cache, the common
flags and their validation, and the :class:`~unargmax_jax.settings.Settings` they make.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from ..bounds import ALGORITHMS
from ..settings import Settings, settings_from

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_MAX_SEED = 2**32


class UsageError(Exception):
    """Bad input or usage: reported as one line with exit code 2."""


def error(err: BaseException) -> int:
    """Print ``err`` as one line ``unargmax: error: ...`` on stderr; return the usage exit code."""
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"unargmax: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def print_failures(result) -> None:
    """The tokens a verification rejected, and why (the first 20)."""
    failed = [int(i) for i in result.failed]
    shown = failed[:20]
    print(f"verification FAILED for {len(failed)} token(s): {shown}{' ...' if len(failed) > 20 else ''}")
    if -1 in result.reasons:
        print(f"  head: {result.reasons[-1]}")
    for token in shown:
        if token in result.reasons:
            print(f"  token {token}: {result.reasons[token]}")


def prepare_out_dir(path: str) -> Path:
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


class PipeSafeStdout:
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


def use_compile_cache(setting: str | None) -> None:
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


def add_check_options(parser: argparse.ArgumentParser) -> None:
    """The flags of ``check`` and ``survey`` that configure a check."""
    parser.add_argument("--domain", default="box:100",
                        help="box:R | box:LO,HI | ball:R | free | layernorm | rmsnorm (default box:100, i.e. "
                             "[-100, 100]^d); layernorm/rmsnorm: every output gamma * n + beta of the checkpoint's "
                             "final norm")
    parser.add_argument("--ties", choices=["strict", "first"], default="strict",
                        help="strict: exact duplicates are unargmaxable; first: lowest index wins a tie")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed for random starting points (default 0)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="tokens per screening batch (default 128 on CPU, 1024 on GPU/TPU)")
    parser.add_argument("--max-seconds", type=float,
                        help="per head: stop starting new work after this long; the rest stays undecided")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    parser.add_argument("--checkpoint-seconds", type=float, default=30.0,
                        help="save partial state to the output directory this often (at a stage's start or between "
                             "screening chunks), so an "
                             "interrupted run resumes when the same command is run again (default 30)")
    parser.add_argument("--no-background-compile", dest="background_compile", action="store_false",
                        help="compile the later stages when they start, not on a second thread during screening "
                             "(saves the compiler's memory, about 150 MB, during the screen; costs its time)")
    parser.add_argument("--compile-cache", metavar="DIR|off", default=None,
                        help="keep JAX's compiled kernels here so later runs skip compiling (default "
                             "$UNARGMAX_COMPILE_CACHE, else ~/.cache/unargmax_jax/xla; off: do not)")
    parser.add_argument("--dot-algorithm", choices=["auto", *sorted(ALGORITHMS)], default="auto",
                        help="the dot algorithm (jax.lax.DotAlgorithmPreset) every product a bound rests on runs "
                             "with, each padded for its own rounding; auto: the backend's (F32_F32_F32 on CPU and "
                             "GPU, BF16_BF16_F32_X6 on TPU, F64_F64_F64 with JAX_ENABLE_X64); recorded in the report")
    parser.add_argument("--bf16-screen", choices=["auto", "on", "off"], default="auto",
                        help="screen every token first with one bfloat16 pass under its own larger pad and redo "
                             "only what it leaves undecided at full precision (verdicts do not change); auto: on "
                             "for GPU and TPU, off on CPU (where XLA runs that pass as float32)")


def add_head_names(parser: argparse.ArgumentParser) -> None:
    """The flags that name a head file's weight and bias arrays."""
    parser.add_argument("--weight", help="array name of W (default W, else decoder_Wemb stored d x C)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--bias", help="array name of b (default b if present)")
    group.add_argument("--no-bias", action="store_true", help="ignore any bias in the file")


def validate_options(args: argparse.Namespace) -> None:
    """Refuse bad ``check`` or ``survey`` flags; fill in the defaults that depend on others.

    Raises:
        UsageError: a flag out of range, or flags that do not go together.
    """
    if args.command == "check" and args.example == bool(args.head):
        raise UsageError("give a head file or --example (exactly one)")
    if args.chunk_size is not None and args.chunk_size <= 0:
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
        _validate_distributed_options(args)


def _validate_distributed_options(args: argparse.Namespace) -> None:
    if args.coordinator is not None or args.num_processes is not None or args.process_id is not None:
        args.distributed = True
    if args.num_processes is not None and args.num_processes < 1:
        raise UsageError(f"--num-processes: expected a positive integer, got {args.num_processes}")
    if args.process_id is not None and not (0 <= args.process_id < (args.num_processes or float("inf"))):
        limit = f"0..{args.num_processes - 1}" if args.num_processes else "a non-negative integer"
        raise UsageError(f"--process-id: expected {limit}, got {args.process_id}")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The :class:`~unargmax_jax.settings.Settings` that the parsed (and validated) flags ask for."""
    return settings_from(ties=args.ties, seed=args.seed, chunk_size=args.chunk_size, max_seconds=args.max_seconds,
                         checkpoint_seconds=args.checkpoint_seconds, background_compile=args.background_compile,
                         dot_algorithm=None if args.dot_algorithm == "auto" else args.dot_algorithm,
                         bf16_screen={"auto": None, "on": True, "off": False}[args.bf16_screen])
