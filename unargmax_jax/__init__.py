"""unargmax_jax: which tokens of a softmax head can be the argmax, with proofs.

Public API::

    from unargmax_jax import check, verify, load_head, Box, Ball, Free, Report
"""

from ._version import __version__ as __version__
from .domains import Ball as Ball
from .domains import Box as Box
from .domains import Free as Free
from .engine import check as check
from .heads import load_head as load_head
from .report import Report as Report
from .verify import verify as verify
