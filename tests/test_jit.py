"""The package's kernels: jax.jit with per-kernel compiler options, and no eager kernels
from moving host arrays to the device."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unargmax_jax import _jit
from unargmax_jax.solve.context import Placement


def _scaled_sum(x, *, power):
    return jnp.sum(x**power, axis=-1)


def _compiles(function) -> list[str]:
    """Names of the XLA compilations ``function()`` triggers."""
    names = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        function()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return names


def test_a_kernel_computes_what_jit_computes_under_vmap_and_static_arguments():
    kernel = _jit.kernel(_scaled_sum, static_argnames=("power",))
    x = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    expected = np.sum(x.astype(np.float64) ** 3, axis=-1)
    np.testing.assert_allclose(np.asarray(kernel(x, power=3)), expected, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.vmap(lambda r: kernel(r, power=3))(x)), expected, rtol=1e-5)
    # lower().compile() fills the cache the call then finds: no second compile.
    kernel.clear_cache()
    kernel.lower(x, power=2).compile()
    assert "jit(_scaled_sum)" not in _compiles(lambda: kernel(x, power=2).block_until_ready())
    assert kernel.__name__ == "_scaled_sum" and kernel.__doc__ == _scaled_sum.__doc__


def test_decorator_forms():
    @_jit.kernel
    def double(x):
        return 2 * x

    @_jit.kernel(static_argnames=("k",))
    def shift(x, *, k):
        return x + k

    assert float(double(1.5)) == 3.0 and float(shift(1.0, k=2)) == 3.0


def test_on_cpu_the_kernels_get_the_legacy_emitters_when_this_jax_accepts_them(monkeypatch):
    if jax.default_backend() != "cpu":
        pytest.skip("the option is for XLA:CPU")
    assert _jit.compiler_options() == _jit.CPU_OPTIONS  # this JAX and XLA know it
    seen = []
    real_jit = jax.jit
    monkeypatch.setattr(_jit.jax, "jit", lambda fun, **kw: seen.append(kw) or real_jit(fun, **kw))
    kernel = _jit.kernel(_scaled_sum, static_argnames=("power",))
    assert float(kernel(np.ones(3, np.float32), power=2)) == 3.0
    assert seen == [{"static_argnames": ("power",), "compiler_options": _jit.CPU_OPTIONS}]


def test_an_older_jax_or_xla_compiles_without_options(monkeypatch):
    # jax.jit without compiler_options (a TypeError) or an XLA that does not know the
    # option: the probe says so and the kernels compile as plain jax.jit.
    real_jit = jax.jit

    def old_jit(fun, **kw):
        if "compiler_options" in kw:
            raise TypeError("jit() got an unexpected keyword argument 'compiler_options'")
        return real_jit(fun, **kw)

    _jit._options_for.cache_clear()
    monkeypatch.setattr(_jit.jax, "jit", old_jit)
    try:
        assert _jit.compiler_options() == {}
        kernel = _jit.kernel(_scaled_sum, static_argnames=("power",))
        assert float(kernel(np.ones(4, np.float32), power=2)) == 4.0
    finally:
        _jit._options_for.cache_clear()


def test_threads_reaching_a_new_kernel_together_build_one_jit(monkeypatch):
    built = []
    real_jit = jax.jit
    gate = threading.Barrier(4)

    def slow_jit(fun, **kw):
        built.append(fun)
        return real_jit(fun, **kw)

    monkeypatch.setattr(_jit.jax, "jit", slow_jit)
    kernel = _jit.kernel(_scaled_sum, static_argnames=("power",))
    results = []

    def call():
        gate.wait()
        results.append(float(kernel(np.full(2, 3.0, np.float32), power=2)))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [18.0] * 4
    assert built.count(_scaled_sum) == 1


@pytest.mark.parametrize("array, dtype", [
    (np.arange(37, dtype=np.int64), None),  # token ids: int32 on the device without x64
    (np.linspace(-3, 3, 41 * 3).reshape(41, 3).astype(np.float16), np.float32),  # float16 witnesses
    (np.linspace(0, 1, 43), np.float32),
])
def test_placement_moves_host_arrays_without_compiling_a_kernel(array, dtype):
    # Regression: jnp.asarray of a host array (or a cast on the device) compiled an eager
    # kernel per shape; mid-screen one waited up to a second behind the background compile.
    place = Placement(shard=False)
    out = []
    assert _compiles(lambda: out.append(place.split(array, dtype))) == []
    expected = jnp.asarray(array, dtype)
    assert out[0].dtype == expected.dtype and out[0].shape == expected.shape
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(expected))
