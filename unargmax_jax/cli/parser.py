"""The ``unargmax`` command line: its argparse parser."""

from __future__ import annotations

import argparse

from .._version import __version__
from .common import EXIT_USAGE, add_check_options, add_head_names


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as one line (the default prints the usage first)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``unargmax {check,verify,survey}``."""
    parser = _Parser(prog="unargmax", description="Which tokens of a softmax head can be the argmax, with proofs.")
    parser.add_argument("--version", action="version", version=f"unargmax_jax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{check,verify,survey}")
    _add_check_command(sub)

    verify = sub.add_parser("verify", help="re-check a report's witnesses and certificates against the weights")
    verify.add_argument("report_dir", help="directory holding report.json and certificates.npz")
    verify.add_argument("--weights", required=True, help="the head file (or model id) the report is about")
    add_head_names(verify)

    survey = sub.add_parser("survey", help="check many checkpoints one after another and tabulate them")
    survey.add_argument("list", help="text file with one head file, checkpoint directory or model id per line (# comments)")
    survey.add_argument("--out", default="unargmax-survey", help="output directory (default ./unargmax-survey)")
    add_check_options(survey)
    return parser


def _add_check_command(sub) -> None:
    check = sub.add_parser("check", help="decide every token of a head and write a report")
    check.add_argument("head", nargs="?", help="head file (.npz, .safetensors, .safetensors.index.json, .gguf, .msgpack, .onnx, PyTorch .bin/.pt/.pth, "
                            "CTranslate2 or Marian .bin), a directory holding "
                            "model.safetensors or its index, or a Hugging Face model id org/name[@revision] "
                            "(also hf://org/name; needs the [hub] extra unless cached)")
    check.add_argument("--example", action="store_true", help="use the bundled example head")
    add_head_names(check)
    check.add_argument("--out", default="unargmax-out", help="output directory (default ./unargmax-out)")
    add_check_options(check)
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
