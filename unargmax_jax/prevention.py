r"""A softmax head whose parametrisation makes every class argmaxable.

``ArgmaxableDense`` computes :math:`z = s\,\hat W x` (plus an optional bias) where the
rows :math:`\hat w_i = v_i / \|v_i\|_2` are unit vectors and :math:`s > 0` is a learned
scale.

Claim: with distinct rows and no bias, every class is the strict argmax somewhere in
any domain X that contains a ball :math:`\{\|x\| \le t\}` around 0 (the default box
[-100, 100]^d does). Proof: take :math:`x = t \hat w_i`. For j != i,
:math:`z_i - z_j = s t (1 - \hat w_j^T \hat w_i) > 0`, because two distinct unit vectors
have inner product < 1 (Cauchy-Schwarz, with equality only when they are the same
vector). With a bias the same x scaled by :math:`t \to \infty` gives
:math:`z_i - z_j = s t (1 - \hat w_j^T \hat w_i) + b_i - b_j > 0` for t large enough, so
on all of R^d every class stays argmaxable for any bias; on a bounded box a bias can
make a class lose, which is why ``use_bias`` is off by default.

Two columns of the kernel that point in exactly the same direction give identical rows,
an exact tie. That has probability zero under any continuous initialisation, and
``monitor`` counts it if training ever produces it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


class ArgmaxableDense(nn.Module):
    """Dense softmax head with unit-norm class rows and a positive scale (see module docs).

    Attributes:
        features: number of classes C.
        use_bias: add a bias (guarantee on R^d only; see the module docstring).
        scale_init: initial value of the scale s.
        precision: matmul precision.
    """

    features: int
    use_bias: bool = False
    scale_init: float = 1.0
    kernel_init: Any = nn.initializers.lecun_normal()
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        log_scale = self.param("log_scale", lambda key: jnp.log(jnp.asarray(self.scale_init, jnp.float32)))
        logits = jnp.matmul(x, self.unit_kernel(kernel), precision=self.precision) * jnp.exp(log_scale)
        if self.use_bias:
            logits = logits + self.param("bias", nn.initializers.zeros, (self.features,))
        return logits

    @staticmethod
    def unit_kernel(kernel):
        """Columns scaled to unit norm (a zero column stays zero rather than NaN)."""
        norms = jnp.linalg.norm(kernel, axis=0, keepdims=True)
        return kernel / jnp.maximum(norms, jnp.finfo(kernel.dtype).tiny)

    @staticmethod
    def head(params) -> tuple[jax.Array, jax.Array | None]:
        """``(W, b)`` of the head as ``check`` takes them: W (C, d) = s * unit kernel^T."""
        W = (ArgmaxableDense.unit_kernel(params["kernel"]) * jnp.exp(params["log_scale"])).T
        return W, params.get("bias")
