"""unargmax_jax: which tokens of a softmax head can be the argmax, with proofs.

Public API::

    from unargmax_jax import check, verify, load_head, head_from_flax, Box, Ball, Free, NormOutput, Report, Settings
    from unargmax_jax import ArgmaxableDense, Monitor
"""

from ._version import __version__ as __version__
from .domains import Ball as Ball
from .domains import Box as Box
from .domains import Free as Free
from .domains import NormOutput as NormOutput
from .engine import check as check
from .heads import head_from_flax as head_from_flax
from .heads import load_head as load_head
from .monitor import Monitor as Monitor
from .report import Report as Report
from .settings import Settings as Settings
from .verify import verify as verify


def __getattr__(name: str):
    # Imported on first use: flax.linen is not needed to check a head from the command line
    # (importing it costs about a second).
    if name == "ArgmaxableDense":
        from .prevention import ArgmaxableDense

        return ArgmaxableDense
    raise AttributeError(f"module 'unargmax_jax' has no attribute {name!r}")
