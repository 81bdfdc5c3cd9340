"""What every stage of one check shares: the head on the device, its placement across
devices, the derived sizes and tolerances, the deadline and the progress line."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import domains as dom


def device_dtype():
    """float64 when JAX runs with x64 enabled, else float32."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def on_device(W: np.ndarray, dtype) -> jax.Array:
    """W on the default device; on CPU an aligned array of the right dtype is used in
    place (``may_alias``), so a large head is not held twice."""
    if W.dtype == np.dtype(dtype) and W.flags.c_contiguous and W.ctypes.data % 64 == 0:
        return jax.device_put(W, may_alias=True)
    return jnp.asarray(W, dtype)


def domain_on_device(domain: dom.Domain, dtype) -> dom.Domain:
    """The domain in the working dtype, rounded inwards so that every point the solver
    projects onto it lies in the user's (float64) domain; certificates absorb the
    difference in their rounding pad."""
    np_dtype = np.dtype(jnp.dtype(dtype).name)
    if isinstance(domain, dom.Box):
        lo = np.asarray(domain.lo, np.float64)
        hi = np.asarray(domain.hi, np.float64)
        lo_d = np.asarray(lo, np_dtype)
        hi_d = np.asarray(hi, np_dtype)
        lo_d = np.where(lo_d.astype(np.float64) < lo, np.nextafter(lo_d, np_dtype.type(np.inf)), lo_d)
        hi_d = np.where(hi_d.astype(np.float64) > hi, np.nextafter(hi_d, np_dtype.type(-np.inf)), hi_d)
        return dom.Box(jnp.asarray(lo_d, dtype), jnp.asarray(hi_d, dtype))
    centre = np.asarray(domain.center, np.float64)
    radius = float(domain.radius)
    slack = 16 * float(np.finfo(np_dtype).eps) * (radius + float(np.linalg.norm(centre)))
    return dom.Ball(jnp.asarray(centre, dtype), jnp.asarray(max(radius - slack, 0.0), dtype))
