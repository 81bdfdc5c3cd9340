"""``jax.jit`` with the compiler options the package's kernels want on the backend that runs them.

On XLA:CPU a check's first run is partly compile time: its kernels (the symmetric pass,
the second screening pass, braid, the competitor sets, ascent, PDHG) took 4.1-4.8 s of
CPU to compile for SmolLM2's head, against 12-13 s for the whole compiled check. With
XLA:CPU's legacy loop emitters (``xla_cpu_use_fusion_emitters=false``) they take
2.9-3.1 s, and the kernels run as fast (SmolLM2's compiled check; PDHG on a trained head
with a bias, ``scripts/bench_lp.py --trained``: 10.1 s before, 10.5 s after, within this
machine's noise). The option is set per kernel, not through ``XLA_FLAGS``, so a user's
own JAX code is unaffected. It changes how loops and fusions are emitted, not the
arithmetic's precision (IEEE float32 operations, the same dot algorithms); the pads are
derived for any order of a sum, with or without fused multiply-adds, so they hold as
before. JAX releases or XLA builds that do not know the option compile as they always did.
"""

from __future__ import annotations

import functools
import threading

import jax

CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


@functools.cache
def _options_for(backend: str) -> tuple:
    """The options for ``backend`` that this JAX and XLA accept (tried once on a trivial kernel)."""
    if backend != "cpu":
        return ()
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(1.0).compile()
    except Exception:  # noqa: BLE001 - an older jax.jit (TypeError) or XLA (unknown option)
        return ()
    return tuple(CPU_OPTIONS.items())


_PROBE = threading.Lock()


def compiler_options() -> dict:
    """The options the package's kernels compile with on the default backend ({} for none)."""
    with _PROBE:  # the first call probes once, whichever thread makes it
        return dict(_options_for(jax.default_backend()))


class Kernel:
    """``jax.jit(fun, **jit_options)`` built at its first call or ``lower`` (the backend,
    and so the compiler options, are known only then; building it at import would start
    the backend before a user could configure it). Thread-safe: the background compile
    (:mod:`unargmax_jax.solve.warmup`) and the main thread may reach it first together,
    and both must share one compiled cache."""

    def __init__(self, fun, **jit_options):
        functools.update_wrapper(self, fun)
        self._fun, self._jit_options = fun, jit_options
        self._jitted = None
        self._lock = threading.Lock()

    def _built(self):
        if self._jitted is None:
            with self._lock:
                if self._jitted is None:
                    options = compiler_options()
                    extra = {"compiler_options": options} if options else {}
                    self._jitted = jax.jit(self._fun, **self._jit_options, **extra)
        return self._jitted

    def __call__(self, *args, **kwargs):
        return self._built()(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._built().lower(*args, **kwargs)

    def clear_cache(self) -> None:
        if self._jitted is not None:
            self._jitted.clear_cache()


def kernel(fun=None, **jit_options):
    """:class:`Kernel` of ``fun``; usable as ``kernel(f, static_argnames=...)`` or as a
    decorator, ``@kernel`` or ``@kernel(static_argnames=...)``."""
    if fun is None:
        return lambda f: Kernel(f, **jit_options)
    return Kernel(fun, **jit_options)
