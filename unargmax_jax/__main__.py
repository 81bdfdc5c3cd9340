"""``python -m unargmax_jax ...``: the ``unargmax`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
