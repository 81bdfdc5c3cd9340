"""Test-wide settings."""

import os

# The CLI keeps JAX's compiled kernels in ~/.cache by default; tests leave no trace
# there (tests of the cache itself pass --compile-cache explicitly).
os.environ.setdefault("UNARGMAX_COMPILE_CACHE", "off")
