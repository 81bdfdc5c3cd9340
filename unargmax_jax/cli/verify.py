"""``unargmax verify``: re-check a report's witnesses and certificates against the weights."""

from __future__ import annotations

import argparse
import importlib
import zipfile

from ..heads.hub import load_model
from ..report import Report
from .common import EXIT_FAILED, EXIT_OK, UsageError, error, print_failures

# The package re-exports the function ``verify``, which shadows the module's name there;
# calling through the module lets a test replace ``verify`` on it.
_verify_module = importlib.import_module("..verify", __package__)


def load_report(directory: str) -> Report:
    """The report saved in ``directory``.

    Raises:
        UsageError: the directory holds no report, or a damaged one.
    """
    try:
        return Report.load(directory)
    except (ValueError, OSError) as err:
        raise UsageError(str(err)) from None
    except (KeyError, TypeError, IndexError, AttributeError, zipfile.BadZipFile, EOFError) as err:
        # Report.load reads fields without checking them one by one: a damaged file lands here.
        raise UsageError(f"{directory}: not a readable unargmax report ({type(err).__name__}: {err})") from None


def run_verify(args: argparse.Namespace) -> int:
    """The ``verify`` command: 0 when all evidence holds, 1 when some fails, 2 on bad input."""
    try:
        report = load_report(args.report_dir)
        weight = args.weight or report.head.get("weight_name")
        bias, no_bias = args.bias, args.no_bias
        if bias is None and not no_bias:
            # Read the head the way the report was made: its bias array, or none at all.
            no_bias = report.head.get("has_bias") is False
            bias = None if no_bias else report.head.get("bias_name")
        head, _ = load_model(args.weights, weight=weight, bias=bias, no_bias=no_bias)
    except (UsageError, ValueError, TypeError, OSError) as err:
        return error(err)

    result = _verify_module.verify(report, head.W, head.b)
    if result.ok:
        undecided = report.counts()["undecided"]
        note = f" ({undecided} undecided token(s) carry no evidence)" if undecided else ""
        print(f"verified {result.checked} tokens: all witnesses and certificates hold{note}")
        return EXIT_OK
    print_failures(result)
    return EXIT_FAILED
