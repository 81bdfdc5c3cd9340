"""Test-wide settings."""

import atexit
import os
import shutil
import tempfile

# The CLI keeps JAX's compiled kernels in ~/.cache by default. Tests leave no trace there,
# but share one cache for the session, so that CLI subprocesses checking heads of the same
# shapes do not each compile the same kernels again (tests of the cache itself pass
# --compile-cache, or set the variable, explicitly).
if "UNARGMAX_COMPILE_CACHE" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="unargmax-test-xla-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["UNARGMAX_COMPILE_CACHE"] = _CACHE
