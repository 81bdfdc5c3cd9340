"""``python -m unargmax_jax ...``: the ``unargmax`` command."""

from .cli import run

if __name__ == "__main__":
    run()
