"""Feature domains X: where the input of the head may lie.

Each domain is a NamedTuple of arrays (so it is a pytree and passes through ``jit``
and ``vmap``) with three operations used by the solver:

* ``project(domain, x)``: Euclidean projection onto X,
* ``support(domain, g)``: the support function :math:`\\sigma_X(g) = \\sup_{x \\in X} g^T x`,
* ``extent(domain)``: per-coordinate :math:`\\max_{x \\in X} |x_k|`, used to pad rounding errors.

``Free`` is all of R^d; the engine resolves it to a bounded stand-in (see
``resolve_free``) because, without a bias, every argmax region is a cone and the verdict
on any ball around 0 equals the verdict on R^d.

``NormOutput`` is what a final LayerNorm/RMSNorm can output; the engine solves it as a
ball in the normalised coordinates n (see ``norm_head``).
"""

from __future__ import annotations

from typing import NamedTuple, Union

import jax.numpy as jnp
import numpy as np


class Box(NamedTuple):
    """Axis-aligned box ``lo <= x <= hi`` (scalars or per-coordinate arrays)."""

    lo: object = -100.0
    hi: object = 100.0


class Ball(NamedTuple):
    """Euclidean ball ``||x - center||_2 <= radius`` (center scalar or per-coordinate)."""

    center: object = 0.0
    radius: object = 1.0


class Free(NamedTuple):
    """All of R^d: only the sign of the margin is meaningful."""


class NormOutput(NamedTuple):
    r"""The outputs of a final LayerNorm or RMSNorm: :math:`x = \gamma \odot n + \beta`.

    RMSNorm gives every n with :math:`\|n\|_2 < \sqrt d` (the norm's epsilon keeps it
    below, and every smaller radius is reached by scaling the input); LayerNorm gives the
    same n restricted to :math:`\mathbf 1^T n = 0`. ``kind`` is ``"layernorm"`` or
    ``"rmsnorm"``; ``gamma`` and ``beta`` are scalars or ``(d,)`` arrays (``beta`` None
    means no shift, as ``load_head`` reports for RMSNorm).
    """

    kind: str = "rmsnorm"
    gamma: object = 1.0
    beta: object = 0.0


NORM_KINDS = ("layernorm", "rmsnorm")

Domain = Union[Box, Ball, Free, NormOutput]


def _check_finite(name: str, value) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"domain {name} must be finite, got {value!r}")
    return arr


def validate(domain: Domain, dim: int) -> Domain:
    """Broadcast a domain's parameters to shape ``(dim,)`` float64 and check them.

    Raises:
        TypeError: if ``domain`` is not a Box, Ball or Free.
        ValueError: on wrong shapes, non-finite values, ``lo > hi`` or a negative radius.
    """
    if isinstance(domain, Box):
        lo = _check_finite("lo", domain.lo)
        hi = _check_finite("hi", domain.hi)
        for name, arr in (("lo", lo), ("hi", hi)):
            if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != dim):
                raise ValueError(f"Box.{name} must be a scalar or have shape ({dim},), got shape {arr.shape}")
        lo = np.broadcast_to(lo, (dim,)).copy()
        hi = np.broadcast_to(hi, (dim,)).copy()
        if np.any(lo > hi):
            raise ValueError("Box needs lo <= hi in every coordinate")
        return Box(lo, hi)
    if isinstance(domain, Ball):
        center = _check_finite("center", domain.center)
        radius = float(_check_finite("radius", domain.radius))
        if center.ndim > 1 or (center.ndim == 1 and center.shape[0] != dim):
            raise ValueError(f"Ball.center must be a scalar or have shape ({dim},), got shape {center.shape}")
        if radius < 0:
            raise ValueError(f"Ball.radius must be >= 0, got {radius}")
        return Ball(np.broadcast_to(center, (dim,)).copy(), np.float64(radius))
    if isinstance(domain, Free):
        return domain
    if isinstance(domain, NormOutput):
        if domain.kind not in NORM_KINDS:
            raise ValueError(f"NormOutput.kind must be one of {NORM_KINDS}, got {domain.kind!r}")
        params = []
        for name in ("gamma", "beta"):
            value = getattr(domain, name)
            # beta None: a norm without a shift (RMSNorm; FinalNorm.beta is None for it).
            arr = _check_finite(name, 0.0 if name == "beta" and value is None else value)
            if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != dim):
                raise ValueError(f"NormOutput.{name} must be a scalar or have shape ({dim},), got shape {arr.shape}")
            params.append(np.broadcast_to(arr, (dim,)).copy())
        return NormOutput(domain.kind, *params)
    raise TypeError(f"domain must be Box, Ball, Free or NormOutput, got {type(domain).__name__}")


def norm_head(W: np.ndarray, b: np.ndarray | None, domain: NormOutput, *, block: int = 4096):
    r"""The head in the norm's coordinates n, and the ball n ranges over.

    With :math:`x = \gamma \odot n + \beta`, :math:`Wx + b = W'n + b'` for
    :math:`W' = W\,\mathrm{diag}(\gamma)` and :math:`b' = b + W\beta`. For LayerNorm the
    rows of W' are also centred: then :math:`W'n = W'Pn` with P the centring projector,
    so the verdicts on the ball :math:`\|n\|_2 \le \sqrt d` equal those on its centred
    disc, and a witness m stands for the normalised vector :math:`Pm`. The open ball the
    norm reaches and the closed one have the same verdicts (a strict margin survives a
    small shrink), so the engine solves the closed ball.

    Computed in float64 row blocks. An RMSNorm without shift gives W' exactly: stored in
    float64 when W is float32 (a float32 product fits), in W's dtype when every gamma is a
    power of two. Otherwise the centring and :math:`W\beta` round at about
    :math:`10^{-16}` relative, far below the rounding pads of every float verdict, and W'
    is stored in W's dtype; exact (rational) certificates then do not apply.

    Args:
        W, b: the head as stored; ``domain``: a validated :class:`NormOutput`.

    Returns:
        ``(W', b', Ball(0, sqrt(d)), exact)``; ``b'`` is None when b is None and beta is
        0; ``exact`` tells whether W' and b' are the exact transformed head.
    """
    C, d = W.shape
    gamma = np.asarray(domain.gamma, np.float64)
    beta = np.asarray(domain.beta, np.float64)
    power_of_two = bool(np.all(np.frexp(np.abs(gamma))[0] == 0.5))
    narrow = W.dtype == np.float32 and bool(np.all(gamma.astype(np.float32) == gamma))
    exact = domain.kind == "rmsnorm" and not np.any(beta) and (power_of_two or narrow)
    out = np.empty(W.shape, np.float64 if exact and not power_of_two else W.dtype)
    bias = None if b is None and not np.any(beta) else np.zeros(C)
    for start in range(0, C, block):
        rows = np.asarray(W[start:start + block], np.float64)
        scaled = rows * gamma
        if domain.kind == "layernorm":
            scaled -= scaled.mean(axis=1, keepdims=True)
        out[start:start + block] = scaled
        if bias is not None:
            bias[start:start + block] = rows @ beta + (0.0 if b is None else np.asarray(b[start:start + block], np.float64))
    return out, bias, Ball(np.zeros(d), np.float64(np.sqrt(d))), exact


def resolve_free(has_bias: bool, dim: int, free_box_radius: float) -> Domain:
    """The bounded domain on which a ``Free`` check is solved.

    Without bias, margins are positively homogeneous, so the unit ball gives the same
    verdicts as R^d. With bias, witnesses are searched in a large box (a witness there is a
    witness on R^d); certificates on R^d need ``w_i = sum_j lam_j w_j`` exactly, which the
    rational stage checks.
    """
    if has_bias:
        return validate(Box(-free_box_radius, free_box_radius), dim)
    return validate(Ball(0.0, 1.0), dim)


def contains_origin(domain: Domain) -> bool:
    """Whether 0 lies in the box or ball (a head without bias then has every margin >= 0)."""
    if isinstance(domain, Box):
        return bool(np.all(np.asarray(domain.lo) <= 0) and np.all(np.asarray(domain.hi) >= 0))
    return bool(np.linalg.norm(np.asarray(domain.center)) <= float(domain.radius))


def project(domain: Domain, x):
    """Euclidean projection of ``x`` (shape ``[..., d]``) onto the domain."""
    if isinstance(domain, Box):
        return jnp.clip(x, domain.lo, domain.hi)
    if isinstance(domain, Ball):
        offset = x - domain.center
        norm = jnp.linalg.norm(offset, axis=-1, keepdims=True)
        scale = jnp.minimum(1.0, domain.radius / jnp.maximum(norm, jnp.finfo(x.dtype).tiny))
        return domain.center + offset * scale
    raise TypeError(f"cannot project onto {type(domain).__name__}; resolve Free first")


def support(domain: Domain, g):
    """Support function :math:`\\sigma_X(g)` over the last axis of ``g``."""
    if isinstance(domain, Box):
        return jnp.sum(jnp.maximum(g * domain.lo, g * domain.hi), axis=-1)
    if isinstance(domain, Ball):
        return jnp.sum(g * domain.center, axis=-1) + domain.radius * jnp.linalg.norm(g, axis=-1)
    raise TypeError(f"no finite support function for {type(domain).__name__}")


def extent(domain: Domain):
    """Per-coordinate :math:`\\max_{x \\in X} |x_k|` (shape ``(d,)``)."""
    if isinstance(domain, Box):
        return jnp.maximum(jnp.abs(domain.lo), jnp.abs(domain.hi))
    if isinstance(domain, Ball):
        return jnp.abs(domain.center) + domain.radius
    raise TypeError(f"{type(domain).__name__} is unbounded")


def to_json(domain: Domain) -> dict:
    """A JSON-ready description; per-coordinate values are lists, uniform ones scalars."""

    def compact(arr):
        arr = np.asarray(arr, dtype=np.float64)
        if arr.ndim == 1 and arr.size and np.all(arr == arr[0]):
            return float(arr[0])
        return arr.tolist() if arr.ndim else float(arr)

    if isinstance(domain, Box):
        return {"kind": "box", "lo": compact(domain.lo), "hi": compact(domain.hi)}
    if isinstance(domain, Ball):
        return {"kind": "ball", "center": compact(domain.center), "radius": float(domain.radius)}
    if isinstance(domain, Free):
        return {"kind": "free"}
    if isinstance(domain, NormOutput):
        return {"kind": domain.kind, "gamma": compact(domain.gamma), "beta": compact(domain.beta)}
    raise TypeError(f"unknown domain {type(domain).__name__}")


def describe(domain: Domain) -> str:
    """A one-line description for people: the JSON form, with a norm's parameters summarised."""
    import json

    if isinstance(domain, NormOutput):
        parts = []
        for name in ("gamma", "beta"):
            arr = np.atleast_1d(np.asarray(getattr(domain, name), np.float64))
            parts.append(f"{name} {arr[0]:g}" if np.all(arr == arr[0])
                         else f"{name} {arr.size} values in [{arr.min():.4g}, {arr.max():.4g}]")
        return f"{domain.kind} output gamma * n + beta, ||n|| < sqrt(d) ({'; '.join(parts)})"
    return json.dumps(to_json(domain))


def from_json(data: dict) -> Domain:
    """Inverse of :func:`to_json` (parameters not yet broadcast; call :func:`validate`)."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "box":
        return Box(data["lo"], data["hi"])
    if kind == "ball":
        return Ball(data["center"], data["radius"])
    if kind == "free":
        return Free()
    if kind in NORM_KINDS:
        return NormOutput(kind, data["gamma"], data["beta"])
    raise ValueError(f"unknown domain description {data!r}; expected kind box, ball, free, layernorm or rmsnorm")


def parse(spec: str) -> Domain:
    """Parse a CLI domain spec: ``box:R``, ``box:LO,HI``, ``ball:R`` or ``free``."""
    text = spec.strip().lower()
    kind, _, args = text.partition(":")
    try:
        numbers = [float(part) for part in args.split(",")] if args else []
    except ValueError:
        raise ValueError(f"bad domain {spec!r}: expected box:R, box:LO,HI, ball:R or free") from None
    if kind == "free" and not numbers:
        return Free()
    if kind == "box" and len(numbers) == 1 and numbers[0] > 0:
        return Box(-numbers[0], numbers[0])
    if kind == "box" and len(numbers) == 2 and numbers[0] <= numbers[1]:
        return Box(numbers[0], numbers[1])
    if kind == "ball" and len(numbers) == 1 and numbers[0] >= 0:
        return Ball(0.0, numbers[0])
    raise ValueError(f"bad domain {spec!r}: expected box:R (R > 0), box:LO,HI (LO <= HI), ball:R or free")
