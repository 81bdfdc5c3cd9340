"""Rigorous margin bounds for a chunk of tokens: L(x) from witnesses, U(lam) from certificates.

For token i, any x in X gives :math:`L_i(x) = \\min_{j \\ne i} z_i(x) - z_j(x) \\le m_i^*` and
any lam >= 0 with sum s > 0 gives
:math:`s\\,m_i^* \\le U_i(\\lambda) = s b_i - \\lambda^T b + \\sigma_X(s w_i - W^T \\lambda)`.
Both are computed in floating point and then padded by a bound on their rounding
error (DESIGN.md section 6, :math:`\\gamma_n = n u / (1 - n u)`), so ``L_rig > 0``
proves argmaxable and ``U_rig <= 0`` proves unargmaxable. The bounds hold for any
summation order. Every gamma carries two extra units so that rounding the user's
weights to the working dtype (float64 weights checked in float32) is covered too: the
bounds are about the stored values.

Every product a bound rests on runs with an explicit dot algorithm
(``jax.lax.DotAlgorithmPreset``, :data:`ALGORITHMS`) and is padded for that algorithm,
not for IEEE float32: on TPU ``Precision.HIGHEST`` is six bfloat16 passes and on recent
GPUs the default is TF32. :func:`backend_algorithm` picks one per backend; the check
records it in its settings (``dot_algorithm``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from ._shapes import Array, Float, Int

from . import domains as dom

HIGHEST = jax.lax.Precision.HIGHEST
_BF16_UNIT = 2.0 ** -7  # bfloat16: 8 significant bits; eps, so truncation is covered too
_TF32_UNIT = 2.0 ** -10  # TF32: 11 significant bits


class DotAlgorithm(NamedTuple):
    """How a product runs: each input split into ``parts`` numbers of a narrow format,
    the part products ``pairs`` (i, j) formed exactly and summed in float32.

    ``unit`` is the narrow format's eps (0 when the inputs are used as they are): a part
    is within ``unit`` (relative) of what it rounds, by round-to-nearest or by truncation.
    ``ieee``: the product is the working dtype's IEEE dot, padded by :func:`gamma` alone.
    ``preset``: the ``DotAlgorithmPreset`` requested (None: ``name``); a more accurate
    preset than ``name`` under ``name``'s pad is still rigorous (see :func:`algorithm_spec`).
    """

    name: str
    parts: int
    unit: float
    pairs: tuple
    ieee: bool = False
    preset: str | None = None


def _pairs(parts: int, passes: int) -> tuple:
    """The ``passes`` most significant part products (i + j smallest first), as XLA forms them."""
    every = sorted(((i, j) for i in range(parts) for j in range(parts)), key=lambda p: (p[0] + p[1], p))
    return tuple(every[:passes])


ALGORITHMS = {
    "F32_F32_F32": DotAlgorithm("F32_F32_F32", 1, 0.0, ((0, 0),), ieee=True),
    "F64_F64_F64": DotAlgorithm("F64_F64_F64", 1, 0.0, ((0, 0),), ieee=True),
    "BF16_BF16_F32": DotAlgorithm("BF16_BF16_F32", 1, _BF16_UNIT, _pairs(1, 1)),
    "BF16_BF16_F32_X3": DotAlgorithm("BF16_BF16_F32_X3", 2, _BF16_UNIT, _pairs(2, 3)),
    "BF16_BF16_F32_X6": DotAlgorithm("BF16_BF16_F32_X6", 3, _BF16_UNIT, _pairs(3, 6)),
    "BF16_BF16_F32_X9": DotAlgorithm("BF16_BF16_F32_X9", 3, _BF16_UNIT, _pairs(3, 9)),
    "TF32_TF32_F32": DotAlgorithm("TF32_TF32_F32", 1, _TF32_UNIT, _pairs(1, 1)),
    "TF32_TF32_F32_X3": DotAlgorithm("TF32_TF32_F32_X3", 2, _TF32_UNIT, _pairs(2, 3)),
}
"""Every dot algorithm a bound may run with, by ``DotAlgorithmPreset`` name."""

# The full-precision algorithm per backend. XLA:CPU accepts F32_F32_F32, BF16_BF16_F32,
# _X3 and _X6 (it computes all four as float32) and refuses _X9 and TF32; on GPU an
# explicit F32_F32_F32 keeps TF32 out; on TPU six bfloat16 passes are what HIGHEST runs.
# On CPU every float32 algorithm requests the F32_F32_F32 preset under its own pad:
# XLA:CPU computes the bfloat16 presets in float32 anyway, and (jaxlib 0.10.2) requesting
# BF16_BF16_F32 for some shapes aborts the process in its YNN emitter.
CPU_BACKENDS = ("cpu",)
BACKEND_ALGORITHMS = {"cpu": "F32_F32_F32", "gpu": "F32_F32_F32", "cuda": "F32_F32_F32", "rocm": "F32_F32_F32",
                      "tpu": "BF16_BF16_F32_X6"}
FAST_ALGORITHM = "BF16_BF16_F32"  # the screen's first, one-pass bfloat16 rung


def backend_algorithm(platform: str | None = None, dtype=jnp.float32) -> str:
    """The dot algorithm bounds use on ``platform`` (default: JAX's default backend).

    float64 work always uses ``F64_F64_F64``; a backend not listed gets ``F32_F32_F32``,
    which it either runs or refuses (an error, never a silent TF32 or bfloat16 product).
    """
    if jnp.dtype(dtype) == jnp.float64:
        return "F64_F64_F64"
    return BACKEND_ALGORITHMS.get(platform or jax.default_backend(), "F32_F32_F32")


def algorithm_spec(name: str | None, dtype=jnp.float32) -> DotAlgorithm:
    """The :class:`DotAlgorithm` called ``name`` (None: :func:`backend_algorithm`).

    Raises:
        ValueError: an unknown name, or one that does not fit ``dtype``.
    """
    name = backend_algorithm(dtype=dtype) if name is None else name
    if name not in ALGORITHMS:
        raise ValueError(f"unknown dot algorithm {name!r}; expected one of {sorted(ALGORITHMS)}")
    if (name == "F64_F64_F64") != (jnp.dtype(dtype) == jnp.float64):
        raise ValueError(f"dot algorithm {name} does not fit {jnp.dtype(dtype).name} work; "
                         f"expected {backend_algorithm(dtype=dtype)}")
    spec = ALGORITHMS[name]
    if jax.default_backend() in CPU_BACKENDS and name != "F64_F64_F64":
        # IEEE float32 is at least as accurate as every float32 algorithm: its error is
        # within gamma_n |x|^T|y|, which every pad of dot_error contains.
        return spec._replace(preset="F32_F32_F32")
    return spec._replace(preset=name)


def gamma(n: int, dtype) -> float:
    """:math:`\\gamma_n = n u / (1 - n u)`, doubled so the pad's own rounding is covered."""
    u = float(jnp.finfo(dtype).eps) / 2
    return 2.0 * n * u / (1.0 - n * u)


def tiny_pad(n: int, dtype) -> float:
    """Absolute pad for underflow (XLA on CPU may flush subnormals to zero)."""
    return 4.0 * (n + 4) * float(jnp.finfo(dtype).tiny)


def dot_error(n: int, dtype, algorithm: DotAlgorithm) -> float:
    r"""Relative error bound :math:`\epsilon` of an n-term product under ``algorithm``:
    :math:`|\hat s - x^T y| \le \epsilon\,|x|^T|y|` (plus :func:`flush_pad`).

    Splitting :math:`x = \sum_{k<K} p_k + r` with unit u gives :math:`|p_k| \le (1+u)u^k|x|`
    and :math:`|r| \le u^K|x|`. Part products are exact in float32 (8 + 8 or 11 + 11 bits),
    so the error is the dropped part products and residuals,
    :math:`E = \sum_{(i,j)\notin S}(1+u)^2u^{i+j} + u^K(2+u^K)`, plus float32 summation of
    the :math:`n|S|` kept terms in any order, :math:`\gamma_{n|S|}\sum_{(i,j)\in S}(1+u)^2u^{i+j}`.
    (E is a constant, enlarged by :math:`2^{-16}` for its own rounding.) IEEE (u = 0, one
    pair) gives :math:`\gamma_n` exactly.
    """
    u, K, kept = algorithm.unit, algorithm.parts, set(algorithm.pairs)
    size = [(1 + u) ** 2 * u ** (i + j) for i in range(K) for j in range(K)]
    index = [(i, j) for i in range(K) for j in range(K)]
    dropped = sum(s for s, p in zip(size, index) if p not in kept) + u ** K * (2 + u ** K)
    terms = sum(s for s, p in zip(size, index) if p in kept)
    accumulate = jnp.float64 if algorithm.name == "F64_F64_F64" else jnp.float32
    if algorithm.ieee:
        return gamma(n, dtype)
    return dropped * (1 + 2.0 ** -16) + gamma(n * len(kept), accumulate) * terms


def product_pad(n: int, dtype, algorithm: DotAlgorithm, extra: int = 0) -> float:
    r"""The relative pad of a value that is one n-term product followed by ``extra`` roundings.

    IEEE: :math:`\gamma_{n+e}` as before. Otherwise :math:`(1+\epsilon)(1+\gamma_e) - 1`
    (Higham, Lemma 3.3, keeps the IEEE case the larger), divided by :math:`1-\epsilon` so
    that it may multiply a magnitude computed by the same algorithm (which is at most a
    factor :math:`1-\epsilon` below the true one).
    """
    if algorithm.ieee:
        return gamma(n + extra, dtype)
    eps = dot_error(n, dtype, algorithm)
    return ((1 + eps) * (1 + gamma(extra, dtype)) - 1) / (1 - eps)


def flush_pad(algorithm: DotAlgorithm, dtype) -> float:
    r"""Absolute error per unit of :math:`\|x\|_1 + \|y\|_1` from inputs and parts below the
    normal range: flushed to zero (as XLA may) each moves by at most the smallest normal
    number; at most 2K of them touch one product term."""
    return 4.0 * algorithm.parts * float(jnp.finfo(dtype).tiny)


def dot(a, b, algorithm: DotAlgorithm):
    """``a @ b`` under ``algorithm`` (its ``DotAlgorithmPreset``)."""
    return jnp.matmul(a, b, precision=_preset(algorithm))


def row_dot(a, b, algorithm: DotAlgorithm):
    """Row-wise products :math:`a_r^T b_r` under ``algorithm``."""
    return jnp.einsum("nd,nd->n", a, b, precision=_preset(algorithm))


def _preset(algorithm: DotAlgorithm):
    return getattr(jax.lax.DotAlgorithmPreset, algorithm.preset or algorithm.name)


class WitnessBounds(NamedTuple):
    """Full-head evaluation of a chunk of witnesses."""

    lower: Float[Array, " b"]  # rigorous lower bound on the margin at x
    margin: Float[Array, " b"]  # floating-point margin at x (unpadded)
    top: Int[Array, "b k"]  # the k strongest competitors at x (ids into the head)
    rival: Int[Array, " b"]  # the strongest competitor at x


def logits(W: Float[Array, "c d"], b: Float[Array, " c"], X: Float[Array, "n d"], *,
           algorithm: str | None = None) -> Float[Array, "n c"]:
    """:math:`z(x) = W x + b` for a batch of points, one product under ``algorithm``
    (default :func:`backend_algorithm`)."""
    return dot(X, W.T, algorithm_spec(algorithm, W.dtype)) + b


def rival_logits(W, b, ids, X, algorithm: DotAlgorithm):
    """(C, n) logits with each token's own entry set to -inf, and the (n,) own logits.

    In (C, n) layout, W X^T: XLA:CPU reads W in place, where X W^T with a reduction along
    C copies W transposed on every call (a head-sized transient; a third of the speed).
    The mask is a comparison with a row iota rather than a scatter, so XLA fuses it into
    the reductions that follow instead of writing a masked copy of the block. The own
    logit is its own small product: gathering it from the block would make XLA write the
    block out before reducing it. (The two round differently; the pad covers each.)
    """
    Z = dot(W, X.T, algorithm) + b[:, None]
    own = jnp.arange(W.shape[0])[:, None] == ids[None, :]
    z_own = row_dot(W[ids], X, algorithm) + b[ids]
    return jnp.where(own, -jnp.inf, Z), z_own


RIVAL_BLOCKS = (32, 24, 16, 8)
"""Row-block sizes :func:`strongest_rival` may use: the largest that divides C."""


def rival_block(C: int) -> int | None:
    """The row block for :func:`strongest_rival` (None: C has no divisor in RIVAL_BLOCKS)."""
    return next((size for size in RIVAL_BLOCKS if C % size == 0 and C > size), None)


def _block_logits(W, b, ids, X, blocks, size: int, algorithm: DotAlgorithm):
    """(n, size) logits of row block ``blocks[r]`` at point r, token r's own row at -inf."""
    rows = blocks[:, None] * size + jnp.arange(size)[None, :]
    z = jnp.einsum("nkd,nd->nk", W[rows], X, precision=_preset(algorithm)) + b[rows]
    return jnp.where(rows == ids[:, None], -jnp.inf, z), rows


def strongest_rival(W, b, ids, X, algorithm: DotAlgorithm, size: int):
    r""":math:`\max_{j \ne i} z_j(x)` and a row attaining it, for each (token i, point x).

    The product is reduced to per-block maxima of ``size`` rows (C divisible by it)
    without masking the own row: XLA:CPU fuses that reduction into the product, at about
    1.2x the speed of a masked max followed by an argmax. Only the own row's block is then
    recomputed without it, and the winning block once more to name the row: two
    (n, size, d) products. Every logit is some rounding of the same sum, within the pad.
    """
    C, n = W.shape[0], X.shape[0]
    # (C, n) layout: the reduction runs along the product's rows, which XLA:CPU fuses.
    Z = dot(W, X.T, algorithm) + b[:, None]
    maxima = jnp.max(Z.reshape(C // size, size, n), axis=1).T
    own_block = ids // size
    z_own_block, _ = _block_logits(W, b, ids, X, own_block, size, algorithm)
    maxima = jnp.where(jnp.arange(C // size)[None, :] == own_block[:, None], jnp.max(z_own_block, axis=1)[:, None],
                       maxima)
    strongest = jnp.max(maxima, axis=1)
    best = jnp.argmax(maxima == strongest[:, None], axis=1)
    z_best, rows = _block_logits(W, b, ids, X, best, size, algorithm)
    return strongest, jnp.take_along_axis(rows, jnp.argmax(z_best, axis=1)[:, None], axis=1)[:, 0]


def witness_bounds(
    W: Float[Array, "c d"],
    b: Float[Array, " c"],
    row_norms: Float[Array, " c"],
    ids: Int[Array, " n"],
    X: Float[Array, "n d"],
    *,
    num_top: int,
    algorithm: str | None = None,
) -> WitnessBounds:
    r"""Rigorous :math:`L_i(x_i)` for each (token, point) pair against all C rows.

    The rounding pad bounds every row at once with
    :math:`|w_j|^T |x| \le \max_j \|w_j\|_2 \|x\|_2`: it costs one reduction instead
    of a second product, and tokens it cannot settle go on to later stages. Its
    coefficient is :func:`product_pad` of ``algorithm`` (d terms, then the bias, the
    difference and the weights' rounding), plus :func:`flush_pad` with
    :math:`\|v\|_1 \le \sqrt d\,\|v\|_2`.

    Args:
        W, b: the head (b zeros when the head has no bias).
        row_norms: :math:`\|w_j\|_2` for every row.
        ids: token ids of the chunk.
        X: one point per token.
        num_top: how many strongest competitors to return per token (0 for none).
        algorithm: a name of :data:`ALGORITHMS` (default :func:`backend_algorithm`).
    """
    dtype = W.dtype
    d = W.shape[1]
    spec = algorithm_spec(algorithm, dtype)
    size = rival_block(W.shape[0]) if num_top == 0 else None
    if size is None:
        rivals, z_own = rival_logits(W, b, ids, X, spec)
        # A max reduction, then the first row attaining it: XLA:CPU vectorises both, while
        # its (value, index) argmax reduction runs about 4x slower than the max alone.
        strongest = jnp.max(rivals, axis=0)
        rival = jnp.argmax(rivals == strongest[None, :], axis=0)
    else:
        strongest, rival = strongest_rival(W, b, ids, X, spec, size)
        z_own = row_dot(W[ids], X, spec) + b[ids]
    x_norm = jnp.linalg.norm(X, axis=1)
    max_norm = jnp.max(row_norms)
    scale = (row_norms[ids] + max_norm) * x_norm + jnp.abs(b[ids]) + jnp.max(jnp.abs(b))
    flush = 2 * flush_pad(spec, dtype) * d ** 0.5 * (x_norm + max_norm)
    pad = product_pad(d, dtype, spec, extra=6) * scale + flush + tiny_pad(d * len(spec.pairs), dtype)
    margin = z_own - strongest
    lower = margin - pad
    # fl(a - b) - pad > 0 implies a - b > pad (subtraction keeps the sign); round the pad
    # subtraction down to keep lower a lower bound.
    lower = jnp.where(lower > 0, lower * (1 - 4 * float(jnp.finfo(dtype).eps)), lower * (1 + 4 * float(jnp.finfo(dtype).eps)))
    top = jax.lax.top_k(rivals.T, num_top)[1] if num_top else jnp.zeros((ids.shape[0], 0), jnp.int32)
    return WitnessBounds(lower=lower, margin=margin, top=top, rival=rival)


def certificate_bound(
    W: Float[Array, "c d"],
    b: Float[Array, " c"],
    domain: dom.Domain,
    token: Int[Array, ""],
    support: Int[Array, " k"],
    weights: Float[Array, " k"],
    *,
    algorithm: str | None = None,
) -> Float[Array, ""]:
    """Rigorous upper bound on :math:`m_i^*` from one sparse certificate (single token).

    Returns :math:`U_{rig} / s`, rounded so that its sign is that of :math:`U_{rig}`
    (``+inf`` if the weights are all zero). Entries of ``support`` equal to ``token``
    must carry zero weight (the caller masks them). The k-term products
    :math:`\\lambda^T W_S` and :math:`\\lambda^T b_S` run under ``algorithm`` and are padded
    by its :func:`product_pad` and :func:`flush_pad`; the support function is sums only.
    """
    dtype = W.dtype
    d = W.shape[1]
    k = support.shape[0]
    spec = algorithm_spec(algorithm, dtype)
    weights = jnp.maximum(weights, 0.0)
    total = jnp.sum(weights)
    rows = W[support]
    w_own = W[token]
    coef = product_pad(k, dtype, spec, extra=4)
    g = total * w_own - dot(weights, rows, spec)
    g_err = coef * (total * jnp.abs(w_own) + dot(weights, jnp.abs(rows), spec))
    bias_part = total * b[token] - dot(weights, b[support], spec)
    bias_err = coef * (total * jnp.abs(b[token]) + dot(weights, jnp.abs(b[support]), spec))
    sigma = dom.support(domain, g)
    ext = dom.extent(domain)
    if isinstance(domain, dom.Box):
        sigma_err = gamma(d + 2, dtype) * jnp.sum(jnp.abs(g) * ext)
    else:
        sigma_err = gamma(d + 4, dtype) * (jnp.sum(jnp.abs(g * domain.center)) + domain.radius * jnp.linalg.norm(g))
    # Flushed inputs: each moves a term of g_c by at most tiny times the other factor.
    flush = 2 * flush_pad(spec, dtype) * (total * (jnp.sum(ext) + 1) + jnp.sum(jnp.abs(rows) * ext)
                                          + jnp.sum(jnp.abs(b[support])))
    pad = bias_err + jnp.sum(g_err * ext) + sigma_err + gamma(d + 4, dtype) * (jnp.abs(bias_part) + jnp.abs(sigma))
    upper = bias_part + sigma + pad + flush + tiny_pad((d + k) * len(spec.pairs), dtype)
    # Dividing by total keeps the sign; the 1 + 4u factor keeps it an upper bound.
    u4 = 4 * float(jnp.finfo(dtype).eps)
    normalised = upper / jnp.maximum(total, jnp.finfo(dtype).tiny)
    normalised = jnp.where(normalised > 0, normalised * (1 + u4), normalised * (1 - u4))
    return jnp.where(total > 0, normalised, jnp.inf)


def certificate_bounds(W, b, domain, tokens, supports, weights, *, algorithm: str | None = None):
    """Batched :func:`certificate_bound` over tokens (W, b, domain shared)."""
    one = functools.partial(certificate_bound, algorithm=algorithm)
    return jax.vmap(one, in_axes=(None, None, None, 0, 0, 0))(W, b, domain, tokens, supports, weights)
