"""``python -m unargmax_jax.cli ...``: the ``unargmax`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
