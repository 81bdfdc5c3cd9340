"""What every stage of one check shares: the head on the device, its placement across
devices, the derived sizes and tolerances, the deadline and the progress line.

:func:`make_context` derives every size, tolerance and step from the
:class:`~unargmax_jax.settings.Settings` and the head's shape, in one place.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .. import domains as dom
from ..settings import Settings, for_backend
from . import whitening
from .progress import Progress


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


def half_witnesses(domain: dom.Domain, dtype) -> bool:
    """Whether witnesses can be kept as float16 points: float32 work on a box whose bounds
    are float16 numbers. Rounding to nearest is monotone, so it maps [lo, hi] into itself
    when lo and hi are representable: a rounded point is still in the domain."""
    if np.dtype(dtype) != np.float32 or not isinstance(domain, dom.Box):
        return False
    bounds = np.concatenate([np.ravel(np.asarray(domain.lo, np.float64)), np.ravel(np.asarray(domain.hi, np.float64))])
    with np.errstate(over="ignore"):
        return bool(np.all(np.isfinite(bounds.astype(np.float16))) and np.all(bounds.astype(np.float16) == bounds))


class DeviceHead(NamedTuple):
    """The head as every kernel reads it: on the device(s), in the working dtype."""

    W: jax.Array
    b: jax.Array
    norms: jax.Array
    mean: jax.Array  # row mean and regularised inverse row covariance (whitening.py)
    precision: jax.Array


class Placement:
    """Where arrays go: replicated (the head) or split along their first, token axis.

    With several local devices each batch of tokens is split across them (W replicated);
    every token's computation is independent, so XLA partitions the batched kernels
    without communication. With one device this is a plain ``jnp.asarray``.
    """

    def __init__(self, shard: bool):
        devices = jax.local_devices()
        self.count = len(devices) if shard else 1
        if self.count > 1:
            mesh = Mesh(np.array(devices), ("tokens",))
            self._split = NamedSharding(mesh, PartitionSpec("tokens"))
            self._copy = NamedSharding(mesh, PartitionSpec())

    def batch(self, size: int) -> int:
        """``size`` rounded up to a multiple of the device count."""
        return -(-size // self.count) * self.count

    def split(self, array, dtype=None):
        if isinstance(array, jax.Array):
            array = jnp.asarray(array, dtype)
        else:
            # Cast on the host and transfer with device_put: jnp.asarray of a host array, or a
            # cast on the device, is an eager kernel to compile per shape, and one waits behind
            # the background compile (up to a second mid-screen on two CPU cores).
            array = np.asarray(array, dtype)
        return jax.device_put(array, self._split if self.count > 1 else None)

    def replicate(self, tree):
        return jax.device_put(tree, self._copy) if self.count > 1 else tree


def chunks(ids: np.ndarray, size: int):
    """Fixed-size chunks (the last padded by repeating its first id) with a validity mask."""
    for start in range(0, ids.size, size):
        part = ids[start:start + size]
        valid = part.size
        if valid < size:
            part = np.concatenate([part, np.full(size - valid, part[0], part.dtype)])
        yield part, valid


class Context(NamedTuple):
    """One check's fixed inputs and derived parameters, read by every stage.

    Attributes:
        settings: the run's :class:`~unargmax_jax.settings.Settings`.
        W, b: the solved rows on the host, (U, d) and (U,) or None.
        domain: the domain solved on, as the user's float64 values (certificates use it).
        head: the head on the device(s); ``device_domain``: the domain in the working
            dtype, rounded inwards.
        place: where batches go (one device, or split over all local devices).
        dtype: the working dtype (float32, or float64 under x64).
        half: witnesses are stored as float16 points (see :func:`half_witnesses`).
        competitors: k, the size of each token's competitor set.
        batch: tokens per screening batch; ``hard_batch``: per ascent/PDHG batch, capped so
            its (batch, k, d) blocks stay within a quarter of the head (power of two).
        key: PRNG key of the screen's random points.
        extent: the domain's half-widths (box) or radius, per coordinate.
        learning_rate: ascent's step size, 5% of the largest extent.
        tolerance, decisive: PDHG's convergence tolerance and the gap below which its
            verdict can no longer change (both a few ulps times d).
        deadline: ``time.monotonic()`` after which no new work starts.
        progress: the progress line.
        exact_certificates_only: on R^d only exact (g = 0) certificates count.
        warmup: the background compile of the later stages (set by the engine).
    """

    settings: Settings
    W: np.ndarray
    b: np.ndarray | None
    domain: dom.Domain
    head: DeviceHead
    device_domain: dom.Domain
    place: Placement
    dtype: object
    half: bool
    competitors: int
    batch: int
    hard_batch: int
    key: jax.Array
    extent: np.ndarray
    learning_rate: float
    tolerance: float
    decisive: float
    deadline: float
    progress: Progress
    exact_certificates_only: bool
    warmup: object = None

    def expired(self) -> bool:
        return time.monotonic() > self.deadline


def make_context(W: np.ndarray, b: np.ndarray | None, domain: dom.Domain, settings: Settings, *, deadline: float,
                 progress: Progress, exact_certificates_only: bool, whiten_on_device: bool | None = None) -> Context:
    """Put the head on the device(s) and derive the run's sizes and tolerances from ``settings``.

    The rows' whitening (:mod:`.whitening`) is estimated on the host for a CPU backend and
    on the device holding the head otherwise (``whiten_on_device`` overrides).
    """
    U, d = W.shape
    dtype = device_dtype()
    settings = for_backend(settings)  # the dot algorithm and the bf16 rung, if not yet chosen
    place = Placement(settings.shard)
    W_device = on_device(W, dtype)
    if whiten_on_device is None:
        whiten_on_device = jax.default_backend() != "cpu"
    mean, precision = whitening.on_device(W_device) if whiten_on_device else whitening.on_host(W)
    head = DeviceHead(W_device, jnp.asarray(np.zeros(U) if b is None else b, dtype),
                      jnp.linalg.norm(W_device, axis=1), jnp.asarray(mean, dtype), jnp.asarray(precision, dtype))
    device_domain = place.replicate(domain_on_device(domain, dtype))
    k = settings.competitors or max(32, 2 * (d + 1))
    k = int(min(k, U - 1, 1024))
    batch = place.batch(int(min(settings.chunk_size, U, _logits_cap(U, dtype))))
    extent = np.asarray(dom.extent(device_domain))
    eps = float(jnp.finfo(dtype).eps)
    return Context(
        settings=settings, W=W, b=b, domain=domain, head=place.replicate(head), device_domain=device_domain,
        place=place, dtype=dtype, half=settings.half_witnesses and half_witnesses(domain, dtype), competitors=k,
        batch=batch, hard_batch=_hard_batch(W, k, batch, dtype, place), key=jax.random.PRNGKey(settings.seed),
        extent=extent, learning_rate=float(0.05 * np.max(extent)),
        tolerance=float(max(8 * (d + 4) * eps, 1e-6 if dtype == jnp.float32 else 1e-12)),
        decisive=float(64 * (d + 4) * eps), deadline=deadline, progress=progress,
        exact_certificates_only=exact_certificates_only)


def _logits_cap(U: int, dtype) -> int:
    """Tokens whose (tokens x U) logits fill at most 1/16 of a device's memory, where the
    device reports it (GPU, TPU); else no cap (CPU: the chunk size stands)."""
    stats = jax.local_devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    limit = (stats or {}).get("bytes_limit")
    if not limit:
        return U
    return max(1, int(limit) // (16 * U * jnp.dtype(dtype).itemsize))


def _hard_batch(W: np.ndarray, k: int, batch: int, dtype, place: Placement) -> int:
    """Ascent and PDHG hold a (batch, k, d) block of competitor rows and a few arrays of
    its size; the batch is capped so that stays within a quarter of the head (at least
    16 MB), which keeps a whole check's memory near the head plus its witness table."""
    per_token = 4 * k * W.shape[1] * np.dtype(dtype).itemsize
    hard = int(min(batch, max(1, max(W.nbytes // 4, 16 << 20) // per_token)))
    return place.batch(1 << (hard.bit_length() - 1))  # a power of two: few distinct compiled shapes


def margins_floor_at_zero(ctx: Context) -> bool:
    """No bias and a domain holding x = 0, where every logit is 0: every margin is >= 0,
    so no float certificate can decide a row (only exact ones show a margin of 0)."""
    return ctx.b is None and dom.contains_origin(ctx.domain)


def bias64(ctx: Context) -> np.ndarray:
    """The bias in float64 (zeros without one), for the host stages' float64 bounds."""
    return np.zeros(ctx.W.shape[0]) if ctx.b is None else np.asarray(ctx.b, np.float64)


def box_bounds64(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """The box domain's (lo, hi) as float64 arrays of length d."""
    d = ctx.W.shape[1]
    return tuple(np.broadcast_to(np.asarray(v, np.float64), (d,)).copy() for v in (ctx.domain.lo, ctx.domain.hi))
