r"""A direct float64 NumPy evaluation of the GGUF weights, written apart from the Flax model.

It works on the tensors exactly as stored in the GGUF file (``y = W x`` with W of shape
(out, in)), loops over layers and heads with explicit causal attention, and applies RoPE
the way llama.cpp does for the llama architecture (``LLAMA_ROPE_TYPE_NORM``): adjacent
pairs ``(2i, 2i + 1)`` of each head turn by :math:`t\,b^{-2i/D}`. The Flax model instead
un-permutes the q/k rows and uses rotate-half RoPE, so agreement checks the permutation.
"""

from __future__ import annotations

import numpy as np

from .gguf_weights import GgufModel


def _rms(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """:math:`\\gamma \\odot x / \\sqrt{\\mathrm{mean}(x^2) + \\epsilon}` per row."""
    return weight * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def _rope_adjacent(x: np.ndarray, base: float) -> np.ndarray:
    """Vectors x (T, heads, D) at positions 0..T-1: turn each adjacent pair (x_{2i}, x_{2i+1}) by t b^{-2i/D}."""
    T, _, D = x.shape
    theta = np.arange(T)[:, None, None] * base ** (-2.0 * np.arange(D // 2) / D)[None, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * np.cos(theta) - odd * np.sin(theta)
    out[..., 1::2] = even * np.sin(theta) + odd * np.cos(theta)
    return out


def _linear(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """:math:`x W^T` for W stored (out, in). ``np.einsum`` without ``optimize`` sums in its own
    loops, not BLAS: a multi-threaded BLAS on a busy 2-core machine spends most of the time
    of these small products waiting for its threads."""
    return np.einsum("ti,oi->to", x, weight)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def final_hidden(model: GgufModel, embeddings: np.ndarray) -> np.ndarray:
    """Hidden states (T, d) after the last block, before ``output_norm``, in float64."""
    c, t = model.config, model.tensors
    D = c.dim // c.heads
    h = np.array(embeddings, np.float64)
    T = h.shape[0]
    for layer in range(c.layers):
        w = {name: t[f"blk.{layer}.{name}.weight"].astype(np.float64)
             for name in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
                          "ffn_up", "ffn_down")}
        x = _rms(h, w["attn_norm"], c.eps)
        q = _rope_adjacent(_linear(x, w["attn_q"]).reshape(T, c.heads, D), c.rope_base)
        k = _rope_adjacent(_linear(x, w["attn_k"]).reshape(T, c.kv_heads, D), c.rope_base)
        v = _linear(x, w["attn_v"]).reshape(T, c.kv_heads, D)
        attended = np.zeros((T, c.heads * D))
        for head in range(c.heads):
            kv = head * c.kv_heads // c.heads  # llama.cpp: kv head = head / (heads / kv_heads)
            for query in range(T):
                # Keys 0..query only: causal. Plain sums, not BLAS: thousands of tiny
                # products are slower through a multi-threaded BLAS than without it.
                scores = np.sum(k[:query + 1, kv] * q[query, head], axis=-1) / np.sqrt(D)
                p = np.exp(scores - scores.max())
                p /= p.sum()
                attended[query, head * D:(head + 1) * D] = np.sum(p[:, None] * v[:query + 1, kv], axis=0)
        h = h + _linear(attended, w["attn_output"])
        x = _rms(h, w["ffn_norm"], c.eps)
        h = h + _linear(_silu(_linear(x, w["ffn_gate"])) * _linear(x, w["ffn_up"]), w["ffn_down"])
    return h


def next_token_logits(model: GgufModel, ids) -> np.ndarray:
    """Float64 logits (V,) of the token after the prompt ``ids``: tied head after the final norm."""
    E = model.tensors["token_embd.weight"].astype(np.float64)
    h = final_hidden(model, E[np.asarray(ids)])[-1]
    x = _rms(h, model.tensors["output_norm.weight"].astype(np.float64), model.config.eps)
    return _linear(x[None], E)[0]
