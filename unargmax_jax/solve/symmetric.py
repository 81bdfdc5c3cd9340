r"""The screen's first pass over a whole head for about half the all-pairs product.

Margins do not change when every row loses the same vector, so the pass works with the
centred rows :math:`w'_j = w_j - \mu` (row mean; rounded, within a pad). The first pass
puts token t at :math:`x_t = c + s_t v_t`, :math:`v_t = P w'_t` (its whitened row,
scaled by :math:`s_t` to the boundary of a box of equal widths or a ball, centre c).
Rival r's centred logit there is

.. math:: z'_r(x_t) = \beta_r + s_t\,G_{rt},\quad \beta_r = b_r + w_r'^T c,\ G = W' P W'^T,

and G is symmetric (P is): each block :math:`G_{IJ} = (W'_I P) W_J'^T` is computed once and
read both ways, for the tokens of rows I (rivals J) and for those of columns J (rivals I).
Row block I is paired with every column at or after its own start, and the column
tokens' maxima are carried to later steps, so block I's tokens are final at step I: about
:math:`C^2 d / 2` multiply-adds for G instead of :math:`C^2 d` (plus :math:`3 C d^2` for W'P).

Rigour. :math:`\hat z_{rt}` differs from :math:`z'_r(x_t)` at the stored point by the
products' rounding (:func:`pad`, bounded with row norms and :math:`K_j = \||P||w'_j|\|
+ \|\hat Q_j\|`, whichever way the block was read), by :math:`w_r'^T e_t`, where
:math:`e_t` is the stored point's distance from :math:`c + s_t \hat v_t` (its rounding,
and for a float16 witness the float16 rounding too), at most
:math:`\max_j\|w'_j\|\,\|e_t\|`, and by the centring's rounding. The own logit is
evaluated at the stored point itself. A token is proved argmaxable when
:math:`\hat z_{tt} - \max_r \hat z_{rt}` exceeds the sum; the others go on to the
second pass like the plain pass's.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import bounds
from .. import domains as dom
from .._jit import kernel
from .context import Context, DeviceHead

GROUP = 32  # rows per group whose maximum the pass tracks (the rival is found in its group)


class Blocks(NamedTuple):
    """Block sizes: ``rows`` tokens per step, ``columns`` rivals per inner product, and
    ``group`` rows per tracked maximum (divides both)."""

    rows: int = 256
    columns: int = 1024
    group: int = GROUP


BLOCKS = Blocks()


class Rows(NamedTuple):
    """Per row, what its own block needs from every other block, and the head-wide maxima
    of the pad: computed once, in one pass before the blocks."""

    beta: jax.Array  # (C,) b_r + w_r'^T c
    scale: jax.Array  # (C,) s_r
    K: jax.Array  # (C,) || |P||w'_r| || + ||Q_r|| (a bound of rho ||w'_r|| for the first term, with
    # rho the largest row sum of |P|, sent 1899 of SmolLM2's tokens to the second pass, not 88)
    norm: jax.Array  # (C,) ||w'_r||
    n_max: jax.Array  # () max ||w'_r||; the other head-wide maxima of the pad below
    k_max: jax.Array
    beta_max: jax.Array
    b_max: jax.Array
    p_rowsum: jax.Array  # () largest row sum of |P|


class Carry(NamedTuple):
    """Each token's best rival so far from earlier row blocks (its logit estimate and the
    first row of the group holding it)."""

    value: jax.Array  # (C,)
    start: jax.Array  # (C,) int32


def uniform_half_width(domain: dom.Domain) -> float | None:
    """The box's single half-width (None unless every coordinate has the same one)."""
    if not isinstance(domain, dom.Box):
        return None
    width = np.ravel(np.asarray(domain.hi, np.float64) - np.asarray(domain.lo, np.float64))
    return float(width[0] / 2) if np.all(width == width[0]) else None


def applies(ctx: Context, todo: np.ndarray, blocks: Blocks = BLOCKS) -> bool:
    """Whether the symmetric pass pays and holds: one device, an IEEE product (the pad is
    derived for it), most rows pending, a ball or a box of equal widths, a head of a few
    column blocks at least."""
    C = ctx.W.shape[0]
    spec = bounds.algorithm_spec(ctx.settings.dot_algorithm, ctx.dtype)
    shaped = isinstance(ctx.device_domain, dom.Ball) or uniform_half_width(ctx.device_domain) is not None
    # The pass costs about C^2 d / 2 + 3 C d^2 multiply-adds (the blocks of G; W'P and |W'||P|
    # for every row first, W'P again per block) against C^2 d + C d^2 for the plain pass:
    # 0.65 of it at C = 16 d, less above; at C = 4 d (a 16032 x 4096 head) no gain was measured.
    # It screens every row, so only when the pending ones cost more by the plain pass.
    return bool(ctx.settings.symmetric_screen and ctx.place.count == 1 and spec.ieee and shaped
                and C >= max(4 * blocks.columns, 16 * ctx.W.shape[1]) and todo.size >= C / 2 + 3 * ctx.W.shape[1])


def _centre(domain, d: int, dtype):
    """The domain's centre as a length-d vector."""
    centre = (domain.lo + domain.hi) / 2 if isinstance(domain, dom.Box) else domain.center
    return centre * jnp.ones(d, dtype)


def _points(Q, domain, scale=None):
    r"""The scale s (to the boundary) and the point :math:`x = P_X(c + s\hat Q)`;
    ``scale`` given: that s."""
    if scale is None:
        if isinstance(domain, dom.Box):
            size = jnp.max(jnp.abs(Q), axis=1)
            reach = jnp.ravel(domain.hi - domain.lo)[0] / 2  # equal widths (see applies)
        else:
            size, reach = jnp.linalg.norm(Q, axis=1), domain.radius
        # A row equal to the mean has Q = 0: its point is the centre (s = 0), not inf * 0.
        raw = reach / jnp.where(size > 0, size, 1)
        scale = jnp.where((size > 0) & jnp.isfinite(raw), raw, 0).astype(Q.dtype)
    return scale, dom.project(domain, _centre(domain, Q.shape[1], Q.dtype) + scale[:, None] * Q)


def _centred(head: DeviceHead, start, size: int):
    """Rows ``start`` to ``start + size`` less the row mean (the same bits wherever taken)."""
    return jax.lax.dynamic_slice_in_dim(head.W, start, size) - head.mean


def _block(C: int, B: int, index):
    """First row of row block ``index`` (the last one moved back to end at C)."""
    return jnp.minimum(index * B, C - B)


def _prepare_blocks(head: DeviceHead, domain, indices, *, blocks: Blocks, algorithm):
    """Per row of the row blocks ``indices``: its scale, K, norm and beta, shape (len, B) each."""
    W = head.W
    C, d = W.shape
    B = blocks.rows
    spec = bounds.algorithm_spec(algorithm, W.dtype)
    centre = _centre(domain, d, W.dtype)

    def one(index):
        rows = _centred(head, _block(C, B, index), B)
        Q = bounds.dot(rows, head.precision, spec)
        scale, _ = _points(Q, domain)
        kappa = jnp.linalg.norm(bounds.dot(jnp.abs(rows), jnp.abs(head.precision), spec), axis=1)
        beta = bounds.row_dot(rows, jnp.broadcast_to(centre, rows.shape), spec)
        return scale, kappa + jnp.linalg.norm(Q, axis=1), jnp.linalg.norm(rows, axis=1), beta

    return jax.lax.map(one, indices)


prepare_blocks = kernel(_prepare_blocks, static_argnames=("blocks", "algorithm"))


def _rows(head: DeviceHead, pieces, *, blocks: Blocks):
    """:class:`Rows` from the pieces of :func:`prepare_blocks`: tuples (scale, K, norm, beta),
    shape (piece, B) each, whose concatenation covers every row block (and repeats the last)."""
    W = head.W
    C = W.shape[0]
    B = blocks.rows
    count = blocks_for(C, blocks)
    scale, K, norm, beta = (jnp.concatenate(part)[:count] for part in zip(*pieces))
    ids = jax.vmap(lambda i: _block(C, B, i) + jnp.arange(B))(jnp.arange(count)).reshape(-1)

    def spread(a):
        return jnp.zeros(C, W.dtype).at[ids].set(a.reshape(-1))

    beta, K, norm = spread(beta) + head.b, spread(K), spread(norm)
    return Rows(beta, spread(scale), K, norm, jnp.max(norm), jnp.max(K), jnp.max(jnp.abs(beta)),
                jnp.max(jnp.abs(head.b)), jnp.max(jnp.sum(jnp.abs(head.precision), axis=1)))


rows_of_blocks = kernel(_rows, static_argnames=("blocks",))
PREPARE_PIECE = 32  # row blocks per call: a progress update every 32 B rows (3 d^2 B multiply-adds each)


def prepare(head: DeviceHead, domain, *, blocks: Blocks, algorithm, progress=None, expired=None) -> Rows | None:
    """What every row block needs from every other (:class:`Rows`), a piece of row blocks
    per call; ``progress(rows_done, rows)`` after each (at 128256 x 4096 on two CPU cores
    the pass takes about two minutes before the first block). None once ``expired()``
    says the check's time is up (checked after each piece)."""
    C = head.W.shape[0]
    count = blocks_for(C, blocks)
    pieces = []
    for first in range(0, count, PREPARE_PIECE):
        indices = np.minimum(np.arange(first, first + PREPARE_PIECE), count - 1)  # the last piece repeats a block
        pieces.append(prepare_blocks(head, domain, jax.device_put(indices.astype(np.int32)), blocks=blocks,
                                     algorithm=algorithm))
        if progress is not None or expired is not None:
            jax.block_until_ready(pieces[-1])
        if progress is not None:
            progress(min(C, (first + PREPARE_PIECE) * blocks.rows), C)
        if expired is not None and expired():
            return None
    return rows_of_blocks(head, pieces, blocks=blocks)


def pad(spec, d: int, dtype, *, n_max, k_max, beta_max, b_max, c_norm, p_rowsum, w_norm, K, q_norm, s, x_norm):
    r"""Bound on :math:`|\hat z_{rt} - z'_r(c + s_t\hat v_t)|` for every rival r at once
    (the module docstring's terms; the own logit's pad, the point's offset e and the
    centring excluded). The factor 1 + 8 g covers the rounding of the norms and of this sum,
    and K read from the first pass's W'P where a block's rounds differently (their distance
    is at most 2 g || |P||w'| ||, so K grows by at most 3 g)."""
    g = bounds.product_pad(d, dtype, spec, extra=8)
    D = g * (w_norm * k_max + n_max * K)
    value = s * (n_max * q_norm * (1 + g) + D) + beta_max
    total = s * D + g * value + g * (b_max + n_max * c_norm)
    flush = 16 * bounds.flush_pad(spec, dtype) * d * (1 + s) * (1 + n_max) * (
        1 + p_rowsum + c_norm + n_max + x_norm + k_max)
    return (1 + 8 * g) * total + flush + bounds.tiny_pad(4 * d, dtype)


def _step(head: DeviceHead, pre: Rows, carry: Carry, domain, index, *, blocks: Blocks, algorithm, half: bool):
    """Row block ``index``: bounds of its tokens at their points, and the carry for later blocks.

    Returns ``(carry, ids, (x, WitnessBounds, one, upper))`` for the block's rows, the
    tuple as :func:`unargmax_jax.solve.screen.screen_chunk` returns it."""
    C = head.W.shape[0]
    B, Bc, g = blocks
    dtype = head.W.dtype
    spec = bounds.algorithm_spec(algorithm, dtype)
    start = _block(C, B, index)
    ids = start + jnp.arange(B)
    Q = bounds.dot(_centred(head, start, B), head.precision, spec)
    s = jax.lax.dynamic_slice_in_dim(pre.scale, start, B)
    _, x = _points(Q, domain, s)
    beta_rows = jax.lax.dynamic_slice_in_dim(pre.beta, start, B)

    def body(k, state):
        best, best_start, carry = state
        first = jnp.minimum(start + k * Bc, C - Bc)
        G = bounds.dot(Q, _centred(head, first, Bc).T, spec)  # (B, Bc): G[t, r]
        same = ids[:, None] == (first + jnp.arange(Bc))[None, :]
        # The block's tokens t against the columns r: beta_r + s_t G_tr.
        z = jnp.where(same, -jnp.inf, jax.lax.dynamic_slice_in_dim(pre.beta, first, Bc)[None, :] + s[:, None] * G)
        grouped = jnp.max(z.reshape(B, Bc // g, g), axis=2)
        top = jnp.max(grouped, axis=1)
        best_start = jnp.where(top > best, first + g * jnp.argmax(grouped, axis=1), best_start)
        best = jnp.maximum(best, top)
        # The columns' tokens r against the block's rows t: beta_t + s_r G_tr.
        s_cols = jax.lax.dynamic_slice_in_dim(pre.scale, first, Bc)
        z = jnp.where(same, -jnp.inf, beta_rows[:, None] + s_cols[None, :] * G)
        grouped = jnp.max(z.reshape(B // g, g, Bc), axis=1)
        top = jnp.max(grouped, axis=0)
        old = jax.lax.dynamic_slice_in_dim(carry.value, first, Bc)
        old_start = jax.lax.dynamic_slice_in_dim(carry.start, first, Bc)
        new_start = jnp.where(top > old, start + g * jnp.argmax(grouped, axis=0), old_start)
        carry = Carry(jax.lax.dynamic_update_slice_in_dim(carry.value, jnp.maximum(old, top), first, 0),
                      jax.lax.dynamic_update_slice_in_dim(carry.start, new_start.astype(jnp.int32), first, 0))
        return best, best_start, carry

    before = Carry(jax.lax.dynamic_slice_in_dim(carry.value, start, B),
                   jax.lax.dynamic_slice_in_dim(carry.start, start, B))
    steps = (C - start + Bc - 1) // Bc
    best, best_start, carry = jax.lax.fori_loop(
        0, steps, body, (jnp.full(B, -jnp.inf, dtype), jnp.zeros(B, jnp.int32), carry))
    rival_start = jnp.where(before.value > best, before.start, best_start)
    strongest = jnp.maximum(before.value, best)
    return carry, ids, _bounds(head, pre, domain, ids, Q, s, x, strongest, rival_start,
                               group=g, spec=spec, half=half)


step = kernel(_step, static_argnames=("blocks", "algorithm", "half"), donate_argnums=(2,))


def _bounds(head: DeviceHead, pre: Rows, domain, ids, Q, s, x, strongest, rival_start, *, group, spec, half):
    """The block's lower bounds at x (or at x rounded to float16, where that still proves
    the token), its rival (the largest logit at the point within the tracked group) and
    that rival's single-row certificate."""
    W, b = head.W, head.b
    d = W.shape[1]
    dtype = W.dtype
    u = float(jnp.finfo(dtype).eps) / 2
    n_max = pre.n_max
    centre = _centre(domain, d, dtype)
    c_norm = jnp.linalg.norm(centre)
    w_norm = pre.norm[ids]
    # ||x - (c + s Q)||, measured (rounding and projection, and a scale from the first pass's
    # own product of W'P, which need not round as this block's does), plus that sum's rounding.
    g = bounds.product_pad(d, dtype, spec)
    q_norm = jnp.linalg.norm(Q, axis=1)
    offset = jnp.linalg.norm(x - (centre + s[:, None] * Q), axis=1) * (1 + 2 * g) + 16 * u * (c_norm + s * q_norm)
    common = pad(spec, d, dtype, n_max=n_max, k_max=pre.k_max, beta_max=pre.beta_max, b_max=pre.b_max,
                 c_norm=c_norm, p_rowsum=pre.p_rowsum, w_norm=w_norm, K=pre.K[ids], q_norm=q_norm, s=s,
                 x_norm=jnp.linalg.norm(x, axis=1))
    own_pad = bounds.product_pad(d, dtype, spec, extra=6)
    own_rows = W[ids] - head.mean

    def lower_at(point, offset):
        x_norm = jnp.linalg.norm(point, axis=1)
        own = bounds.row_dot(own_rows, point, spec) + b[ids]
        margin = own - strongest
        # The own logit's rounding, the rivals' offset e, the centring's rounding.
        total = own_pad * (w_norm * x_norm + jnp.abs(b[ids])) + common + n_max * offset * (1 + 4 * u) \
            + 2 * u * (w_norm + n_max) * x_norm
        lower = margin - total
        eps4 = 4 * float(jnp.finfo(dtype).eps)
        return jnp.where(lower > 0, lower * (1 - eps4), lower * (1 + eps4)), margin

    lower, margin = lower_at(x, offset)
    if half:
        rounded = x.astype(jnp.float16).astype(dtype)
        lower16, margin16 = lower_at(rounded, offset + jnp.linalg.norm(rounded - x, axis=1) * (1 + 2 * g))
        take = lower16 > 0
        x = jnp.where(take[:, None], rounded, x)
        lower, margin = jnp.where(take, lower16, lower), jnp.where(take, margin16, margin)
    group_rows = rival_start[:, None] + jnp.arange(group)[None, :]
    z = jnp.einsum("nkd,nd->nk", W[group_rows], x, precision=bounds._preset(spec)) + b[group_rows]
    z = jnp.where(group_rows == ids[:, None], -jnp.inf, z)
    rival = jnp.take_along_axis(group_rows, jnp.argmax(z, axis=1)[:, None], axis=1)[:, 0]
    one = rival[:, None]
    upper = bounds.certificate_bounds(W, b, domain, ids, one, jnp.ones(one.shape, dtype), algorithm=spec.name)
    wb = bounds.WitnessBounds(lower=lower, margin=margin, top=jnp.zeros((ids.shape[0], 0), jnp.int32), rival=rival)
    return x, wb, one, upper


def blocks_for(C: int, blocks: Blocks = BLOCKS) -> int:
    """How many row blocks cover C rows."""
    return -(-C // blocks.rows)


def work_done(C: int, blocks: Blocks, steps: int) -> float:
    """Fraction of the pass's products done after ``steps`` row blocks (block I pairs
    with the C - I B columns from its own start), for an honest progress line."""
    B = blocks.rows
    starts = np.minimum(np.arange(blocks_for(C, blocks)) * B, C - B)
    work = C - starts
    return float(work[:steps].sum() / work.sum())


def compile_ahead(ctx: Context, blocks: Blocks = BLOCKS) -> None:
    """Compile :func:`rows_of_blocks` and :func:`step` for this head with arguments of the
    real calls' shapes, dtypes and placement: the background compile's first job, so the
    compile overlaps the pre-pass on the main thread instead of following it."""
    C = ctx.W.shape[0]
    algorithm = ctx.settings.dot_algorithm

    def zeros_like(info):  # a placeholder on the device for each output a kernel's lowering names
        return jax.tree_util.tree_map(lambda a: jax.device_put(np.zeros(a.shape, a.dtype)), info)

    indices = jax.device_put(np.zeros(PREPARE_PIECE, np.int32))
    piece = zeros_like(prepare_blocks.lower(ctx.head, ctx.device_domain, indices, blocks=blocks,
                                            algorithm=algorithm).out_info)
    pieces = [piece] * -(-blocks_for(C, blocks) // PREPARE_PIECE)
    pre = zeros_like(rows_of_blocks.lower(ctx.head, pieces, blocks=blocks).compile().out_info)
    carry = Carry(jax.device_put(np.zeros(C, ctx.dtype)), jax.device_put(np.zeros(C, np.int32)))
    step.lower(ctx.head, pre, carry, ctx.device_domain, np.int32(0), blocks=blocks, algorithm=algorithm,
               half=ctx.half).compile()


def blocks_in_order(ctx: Context, blocks: Blocks = BLOCKS):
    """Yield ``(index, ids, found)`` per row block, in order (the device's ids and results);
    each block's kernel is dispatched before the previous block's results are handed on."""
    C = ctx.W.shape[0]
    algorithm = ctx.settings.dot_algorithm
    pre = prepare(ctx.head, ctx.device_domain, blocks=blocks, algorithm=algorithm, expired=ctx.expired,
                  progress=lambda done, total: ctx.progress.update("prepare", done, total))
    if pre is None:
        return
    # Made on the host (see Placement.split: eager kernels wait behind the background compile).
    carry = Carry(jax.device_put(np.full(C, -np.inf, ctx.dtype)), jax.device_put(np.zeros(C, np.int32)))
    for index in range(blocks_for(C, blocks)):
        if ctx.expired():
            return
        carry, ids, found = step(ctx.head, pre, carry, ctx.device_domain, np.int32(index), blocks=blocks,
                                 algorithm=algorithm, half=ctx.half)
        yield index, ids, found
