"""``python -m unargmax_jax.cli ...``: the ``unargmax`` command."""

from . import run

if __name__ == "__main__":
    run()
