r"""SmolLM2-135M-Instruct as a compact Flax (linen) Llama: RMSNorm, GQA attention with RoPE, SwiGLU.

One block, for a sequence of hidden states :math:`h \in \mathbb{R}^{T \times d}`:

.. math:: h \leftarrow h + \mathrm{Attn}(\mathrm{RMS}(h)),\quad h \leftarrow h + W_d(\mathrm{silu}(W_g \mathrm{RMS}(h)) \odot W_u \mathrm{RMS}(h))

and the head is tied to the input embedding :math:`E \in \mathbb{R}^{V \times d}`:
:math:`z = E\,\mathrm{RMS}_{\gamma}(h_T)`. The 30 blocks run under ``nn.scan`` (parameters
stacked on a leading axis), so a forward pass compiles one block, not 30.

Q and K use Hugging Face's rotate-half RoPE (pairs ``(i, i + D/2)``); ``gguf_weights``
undoes llama.cpp's row permutation so the GGUF weights fit it.

The module-level functions from :func:`functions` are what the adversarial searches
need (pass the same function objects across calls to reuse compiled searches):
``embed_logits(params, embeddings (T, d)) -> (V,)``, ``hidden_logits(params, h (d,)) -> (V,)``,
``all_logits(params, ids (T,)) -> (T, V)``, ``final_hidden(params, embeddings) -> (T, d)``
and ``embedding_table(params) -> (V, d)``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from unargmax_jax._shapes import Array, Float, Int

from .gguf_weights import Config

HIGHEST = jax.lax.Precision.HIGHEST  # TPU/GPU would otherwise multiply float32 in bf16/TF32


def rms_norm(x: Float[Array, "... d"], weight: Float[Array, " d"], eps: float) -> Float[Array, "... d"]:
    """.. math:: \\mathrm{RMS}_\\gamma(x) = \\gamma \\odot x / \\sqrt{\\mathrm{mean}(x^2) + \\epsilon}

    Statistics in at least float32 (as HF's LlamaRMSNorm)."""
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    x32 = x.astype(dtype)
    scale = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (weight * (x32 * scale)).astype(x.dtype)


class RMSNorm(nn.Module):
    eps: float

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],))
        return rms_norm(x, weight, self.eps)


def rope_rotate_half(x: Float[Array, "t h k"], base: float) -> Float[Array, "t h k"]:
    """Rotate-half RoPE at positions 0..T-1: pairs ``(i, i + D/2)`` turn by :math:`t\\,b^{-2i/D}`.

    .. math:: x \\cos\\theta + \\mathrm{rot}(x) \\sin\\theta,\\quad \\mathrm{rot}(x_1, x_2) = (-x_2, x_1)
    """
    T, _, D = x.shape
    inv_freq = base ** (-jnp.arange(0, D, 2, dtype=jnp.float32) / D)  # (D/2,)
    angles = jnp.arange(T, dtype=jnp.float32)[:, None] * inv_freq[None, :]  # (T, D/2)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, None, :].astype(x.dtype)  # (T, 1, D)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * jnp.cos(angles) + jnp.concatenate([-x2, x1], axis=-1) * jnp.sin(angles)


def _dense(features: int, name: str):
    return nn.Dense(features, use_bias=False, precision=HIGHEST, name=name)


class Attention(nn.Module):
    """Causal grouped-query attention: ``heads`` query heads share ``kv_heads`` key/value heads."""

    config: Config

    @nn.compact
    def __call__(self, x: Float[Array, "t d"]) -> Float[Array, "t d"]:
        c = self.config
        T, D = x.shape[0], c.head_dim
        q = _dense(c.heads * D, "q")(x).reshape(T, c.heads, D)
        k = _dense(c.kv_heads * D, "k")(x).reshape(T, c.kv_heads, D)
        v = _dense(c.kv_heads * D, "v")(x).reshape(T, c.kv_heads, D)
        q, k = rope_rotate_half(q, c.rope_base), rope_rotate_half(k, c.rope_base)
        # Query head h reads key/value head h // (heads / kv_heads) (HF's repeat_kv).
        group = c.heads // c.kv_heads
        k, v = jnp.repeat(k, group, axis=1), jnp.repeat(v, group, axis=1)
        scores = jnp.einsum("thk,shk->hts", q, k, precision=HIGHEST) / jnp.sqrt(jnp.asarray(D, x.dtype))
        causal = jnp.tril(jnp.ones((T, T), bool))
        scores = jnp.where(causal[None], scores, -jnp.inf)  # every row keeps its diagonal: never all -inf
        weights = jax.nn.softmax(scores.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=-1).astype(x.dtype)
        out = jnp.einsum("hts,shk->thk", weights, v, precision=HIGHEST).reshape(T, c.heads * D)
        return _dense(c.dim, "o")(out)


class MLP(nn.Module):
    """SwiGLU: :math:`W_d(\\mathrm{silu}(W_g x) \\odot W_u x)`."""

    config: Config

    @nn.compact
    def __call__(self, x):
        c = self.config
        return _dense(c.dim, "down")(nn.silu(_dense(c.hidden, "gate")(x)) * _dense(c.hidden, "up")(x))


class Block(nn.Module):
    """Pre-norm residual block, written as a scan body ``(h, None) -> (h, None)``."""

    config: Config

    @nn.compact
    def __call__(self, h: Float[Array, "t d"], _):
        c = self.config
        h = h + Attention(c, name="attention")(RMSNorm(c.eps, name="attn_norm")(h))
        h = h + MLP(c, name="mlp")(RMSNorm(c.eps, name="ffn_norm")(h))
        return h, None


class SmolLM(nn.Module):
    """The whole network; ``method=`` selects what is computed (see the module docstring)."""

    config: Config

    def setup(self):
        c = self.config
        self.embed = nn.Embed(c.vocab, c.dim, name="embed")
        blocks = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=c.layers)
        self.blocks = blocks(c, name="blocks")
        self.final_norm = RMSNorm(c.eps, name="final_norm")

    def final_hidden(self, embeddings: Float[Array, "t d"]) -> Float[Array, "t d"]:
        """Hidden states after the last block, before the final norm."""
        h, _ = self.blocks(embeddings, None)
        return h

    def head(self, h: Float[Array, "... d"]) -> Float[Array, "... v"]:
        """Tied head after the final norm: :math:`z = E\\,\\mathrm{RMS}_\\gamma(h)`."""
        x = self.final_norm(h)
        return jnp.matmul(x, self.embed.embedding.T.astype(x.dtype), precision=HIGHEST)

    def embed_logits(self, embeddings: Float[Array, "t d"]) -> Float[Array, " v"]:
        """Next-token logits after a prompt given by its input embeddings."""
        return self.head(self.final_hidden(embeddings)[-1])

    def __call__(self, ids: Int[Array, " t"]) -> Float[Array, "t v"]:
        """Next-token logits at every position of a prompt of token ids."""
        return self.head(self.final_hidden(self.embed(ids)))


class Functions(NamedTuple):
    """Pure functions of ``(params, x)`` for one config: the searches' entry points."""

    embed_logits: Callable  # (params, (T, d) embeddings) -> (V,)
    hidden_logits: Callable  # (params, (d,) final hidden state before the norm) -> (V,)
    all_logits: Callable  # (params, (T,) ids) -> (T, V)
    final_hidden: Callable  # (params, (T, d) embeddings) -> (T, d)
    embedding_table: Callable  # params -> (V, d)


@lru_cache(maxsize=None)
def functions(config: Config) -> Functions:
    """The same function objects for the same config (so jitted searches compile once)."""
    module = SmolLM(config)

    def embed_logits(params, embeddings):
        return module.apply(params, embeddings, method=SmolLM.embed_logits)

    def hidden_logits(params, h):
        return module.apply(params, h, method=SmolLM.head)

    def all_logits(params, ids):
        return module.apply(params, ids)

    def final_hidden(params, embeddings):
        return module.apply(params, embeddings, method=SmolLM.final_hidden)

    def embedding_table(params):
        return params["params"]["embed"]["embedding"]

    return Functions(embed_logits, hidden_logits, all_logits, final_hidden, embedding_table)
