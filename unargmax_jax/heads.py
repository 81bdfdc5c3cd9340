"""Finding and validating a head (W, b) in the files users have.

A loader turns a file into a :class:`Head`: the weights ``W`` (C x d, one row per
token), an optional bias ``b`` (C,), the array names they came from and the file.

Supported formats (dispatch on the file name's ending, see ``_FORMATS``; a directory
stands for its ``model.safetensors``, ``model.safetensors.index.json`` or
``flax_model.msgpack``, else its only head file):

* ``.npz`` (NumPy archives, as written by ``np.savez``; the published tool's format).
  Read with ``allow_pickle=False`` only: an object array is refused, never unpickled.
  Array names and shapes are read from the ``.npy`` headers, so only W and b are loaded.
* ``.safetensors`` and sharded checkpoints (``*.safetensors.index.json``, whose
  ``weight_map`` names a shard file per tensor). Every header is checked against the file
  (sizes, offsets, dtypes) before anything is read; tensors are memory-mapped through
  ``safetensors.safe_open(..., framework="numpy")``, except bfloat16 and float8, read from
  the mapped bytes and upcast (exactly) to float32 a block of rows at a time.
* ``.msgpack`` Flax checkpoints (``flax.serialization``; plain data, no pickle) and, in
  Python, a Flax params pytree (:func:`head_from_flax`): a ``Dense`` kernel [d, C]
  (transposed) with its bias, or a tied ``nn.Embed`` embedding [C, d]. Leaves are named
  by their ``/``-joined path without ``params/`` (``lm_head/kernel``); a safetensors-style
  name (``lm_head.weight``) given as ``--weight`` means the same module.
* ``.gguf`` (llama.cpp), through the optional ``gguf`` package
  (``pip install 'unargmax_jax[gguf]'``): tensors are dequantised with
  ``gguf.quants.dequantize`` a block of rows at a time. GGUF lists dimensions fastest
  first, so a head stored as ``[d, C]`` is read as C x d; the rows are checked against the
  vocabulary size (``tokenizer.ggml.tokens``) when the file has one.

Adding a format means writing one class with the ``_ArrayFile`` interface (``entries``,
``read``, ``close`` and the default names) and registering its ending; the name
resolution (:func:`_select`) and validation (:func:`validate_head`) are shared.

Name resolution (the first name present wins; ``--weight``/``--bias`` override):

* npz: the weight is ``W`` (C x d), else the published tool's ``decoder_Wemb``, which its
  README documents as stored d x C and is transposed (unless a bias shows the file is
  already C x d). The bias is ``b``, or Marian's ``decoder_ff_logit_out_b`` next to
  ``decoder_Wemb``.
* safetensors (``SAFETENSORS_WEIGHT_NAMES``): an explicit head (``lm_head.weight``,
  GPT-NeoX's ``embed_out.weight``), then the input embeddings of models that tie them to
  the output (Llama ``model.embed_tokens``, GPT-2 ``transformer.wte``, BERT
  ``[bert.|model.]embeddings.word_embeddings``, T5/BART/Marian ``[model.]shared``,
  ``model.decoder.embed_tokens``), then BERT's masked-LM ``cls.predictions.decoder``. The
  bias is the head's own (``lm_head.bias``; ``cls.predictions.bias`` for BERT), else a
  Marian/BART ``final_logits_bias`` (stored (1, C)).
* gguf: ``output.weight`` (bias ``output.bias``), else the tied ``token_embd.weight``.

Token strings come from ``tokenizer.json`` or ``vocab.txt`` next to the weights, or GGUF
metadata (:mod:`unargmax_jax.vocab`); the final LayerNorm/RMSNorm parameters from the
names in ``NORM_NAMES``.

Biases stored as (1, C) or (C, 1) are flattened. An explicit name that is not in the file
is an error; when no weight is found, the error lists the file's 2-D arrays.

Values: float16, bfloat16 and float8 are upcast to float32 (exactly); float32 and float64
are kept; integers are converted to float64 (exactly: magnitudes above 2^53 are refused);
GGUF quantised blocks become the float32 values llama.cpp computes. Verdicts are about
these values.
"""

from __future__ import annotations

import gc
import json
import math
import os
import zipfile
from importlib import resources
from pathlib import Path
from typing import NamedTuple, Protocol

import ml_dtypes
import numpy as np

from . import vocab
from ._memory import return_freed_memory

DEFAULT_WEIGHT_NAMES = ("W", "decoder_Wemb")
DEFAULT_BIAS_NAMES = {"W": ("b",), "decoder_Wemb": ("b", "decoder_ff_logit_out_b")}
TRANSPOSED_WEIGHT_NAMES = ("decoder_Wemb",)

# safetensors: explicit heads first, then tied input embeddings, then BERT's MLM decoder
# (which HF drops from the file when it is tied, keeping only its bias).
_BERT_BIAS_NAMES = ("cls.predictions.bias", "cls.predictions.decoder.bias", "final_logits_bias")
SAFETENSORS_WEIGHT_NAMES = (
    "lm_head.weight",
    "embed_out.weight",
    "model.embed_tokens.weight",
    "transformer.wte.weight",
    "embeddings.word_embeddings.weight",
    "bert.embeddings.word_embeddings.weight",
    "model.embeddings.word_embeddings.weight",
    "shared.weight",
    "model.shared.weight",
    "model.decoder.embed_tokens.weight",
    "cls.predictions.decoder.weight",
)
SAFETENSORS_BIAS_NAMES = {
    "lm_head.weight": ("lm_head.bias", "final_logits_bias"),
    "embeddings.word_embeddings.weight": _BERT_BIAS_NAMES,
    "bert.embeddings.word_embeddings.weight": _BERT_BIAS_NAMES,
    "model.embeddings.word_embeddings.weight": _BERT_BIAS_NAMES,
    "cls.predictions.decoder.weight": _BERT_BIAS_NAMES,
}
SAFETENSORS_OTHER_BIAS_NAMES = ("final_logits_bias",)  # Marian/BART add it to any head's logits
GGUF_WEIGHT_NAMES = ("output.weight", "token_embd.weight")
GGUF_BIAS_NAMES = {"output.weight": ("output.bias",)}
DIRECTORY_FILE_NAMES = ("model.safetensors", "model.safetensors.index.json", "flax_model.msgpack")
# The final norm before the head: (gamma, beta) names, the first pair present wins.
NORM_NAMES = (
    ("model.norm.weight", "model.norm.bias"),  # Llama, Mistral, SmolLM, Qwen: RMSNorm
    ("transformer.ln_f.weight", "transformer.ln_f.bias"),  # GPT-2
    ("gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias"),
    ("model.decoder.final_layer_norm.weight", "model.decoder.final_layer_norm.bias"),  # OPT, BART
    ("model.final_layernorm.weight", "model.final_layernorm.bias"),
    ("cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias"),  # BERT MLM
    ("cls.predictions.transform.LayerNorm.gamma", "cls.predictions.transform.LayerNorm.beta"),
    ("output_norm.weight", "output_norm.bias"),  # GGUF
    ("model/norm/weight", "model/norm/bias"),  # Flax trees (HF Flax Llama, GPT-2, BERT)
    ("model/norm/scale", "model/norm/bias"),
    ("transformer/ln_f/scale", "transformer/ln_f/bias"),
    ("model/decoder/final_layer_norm/scale", "model/decoder/final_layer_norm/bias"),  # OPT
    ("cls/predictions/transform/LayerNorm/scale", "cls/predictions/transform/LayerNorm/bias"),
    ("lm_head/layer_norm/scale", "lm_head/layer_norm/bias"),  # RoBERTa MLM
)
_LAYERNORM_HINTS = ("ln_f", "layer_norm", "layernorm")
_EPS_KEYS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon")

_EXACT_INT_LIMIT = 2**53  # integers up to this magnitude are exact in float64
_CHUNK_ELEMENTS = 1 << 22  # upcast/dequantise 4M values (16 MB of float32) at a time
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit
_LISTED = 20  # 2-D arrays named in an error message, at most


class HeadError(ValueError):
    """A head file or array is unusable; the message names what and why."""


class HeadTypeError(HeadError, TypeError):
    """An array has a dtype that cannot be a head (strings, objects, complex, bool)."""


class Head(NamedTuple):
    """A softmax head read from a file.

    Attributes:
        W: (C, d) float32 or float64 weights, one row per token, C-contiguous.
        b: (C,) bias of the same dtype family, or None.
        weight_name: the array W came from.
        bias_name: the array b came from, or None.
        source: the file, or None for heads not read from a file.
        tokens: one string per row (None where the vocabulary has no entry), or None.
        tokens_source: the file or metadata key the strings came from.
        norm: the final LayerNorm/RMSNorm parameters, when the checkpoint has them.
    """

    W: np.ndarray
    b: np.ndarray | None
    weight_name: str
    bias_name: str | None
    source: str | None
    tokens: tuple | None = None
    tokens_source: str | None = None
    norm: "FinalNorm | None" = None


class FinalNorm(NamedTuple):
    """The network's last normalisation before the head: ``gamma * n + beta``.

    Attributes:
        kind: ``"layernorm"`` (n centred, ``||n||_2 < sqrt(d)``) or ``"rmsnorm"``.
        gamma: (d,) scale. beta: (d,) shift, or None.
        eps: the epsilon from the checkpoint's config or metadata, when found.
        names: the tensors read.
    """

    kind: str
    gamma: np.ndarray
    beta: np.ndarray | None
    eps: float | None
    names: tuple


# --------------------------------------------------------------------- validation
def _as_float(arr: np.ndarray, what: str, prefix: str) -> np.ndarray:
    """Exact conversion to float32 (half precision, float32) or float64 (float64, ints)."""
    dtype = arr.dtype
    if dtype.name == "bfloat16" or (dtype.kind == "f" and dtype.itemsize <= 4):
        return np.ascontiguousarray(arr, dtype=np.float32)
    if dtype.kind == "f" and dtype.itemsize == 8:
        return np.ascontiguousarray(arr, dtype=np.float64)
    if dtype.kind in "iu":
        if arr.size and (int(arr.max()) > _EXACT_INT_LIMIT or int(arr.min()) < -_EXACT_INT_LIMIT):
            raise HeadError(f"{prefix}expected integer {what} of magnitude at most 2^53 (exact in float64), "
                            f"got values beyond it; convert to float first")
        return np.ascontiguousarray(arr, dtype=np.float64)
    if dtype.kind == "f":
        raise HeadTypeError(f"{prefix}expected {what} as float16/bfloat16/float32/float64, got {dtype} "
                            f"(not exactly representable in float64)")
    hint = ""
    if dtype.kind == "V" and dtype.itemsize == 2:
        hint = " (numpy stores bfloat16 as opaque 2-byte values: save float32 instead)"
    raise HeadTypeError(f"{prefix}expected real floating-point or integer {what}, got dtype {dtype}{hint}")


_ALIGNMENT = 64  # XLA:CPU uses a host buffer in place (no device copy) only at this alignment


def aligned(arr: np.ndarray) -> np.ndarray:
    """``arr`` as a C-contiguous array whose data starts on a 64-byte boundary (a copy only if needed)."""
    if arr.flags.c_contiguous and arr.ctypes.data % _ALIGNMENT == 0:
        return arr
    raw = np.empty(arr.nbytes + _ALIGNMENT, np.uint8)
    start = (-raw.ctypes.data) % _ALIGNMENT
    out = raw[start:start + arr.nbytes].view(arr.dtype).reshape(arr.shape)
    out[...] = arr
    return out


def _as_array(value, what: str, prefix: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as err:  # ragged nested lists and the like
        raise HeadError(f"{prefix}expected {what} as an array, got {type(value).__name__} ({err})") from None


def _check_finite_rows(W: np.ndarray, prefix: str, *, block: int = 4096) -> None:
    """Raise on the first non-finite weight; row blocks, so no (C, d) mask of a large head."""
    first, count = None, 0
    for start in range(0, W.shape[0], block):
        bad = ~np.isfinite(W[start:start + block])
        if first is None and bad.any():
            r, c = (int(v) for v in np.argwhere(bad)[0])
            first = (start + r, c)
        if first is not None:
            count += int(np.count_nonzero(bad))
    if first is not None:
        r, c = first
        raise HeadError(f"{prefix}expected finite weights, got {W[r, c]} at (row {r}, column {c})"
                        f"{f' and {count - 1} more non-finite entries' if count > 1 else ''}")


def validate_head(W, b=None, *, where: str = "") -> tuple[np.ndarray, np.ndarray | None]:
    """Check the shapes and values of a head; return it as float arrays.

    ``W`` must be 2-D (C x d, C >= 1, d >= 1), real (float16, bfloat16, float32, float64
    or integer) and finite; ``b`` None or 1-D of length C, real and finite. float16 and
    bfloat16 become float32, integers float64 (both exact); float32/float64 are kept.

    Args:
        W: weights, array-like of shape (C, d).
        b: optional bias, array-like of shape (C,).
        where: prefix for messages, e.g. the file and array names.

    Returns:
        ``(W, b)`` as C-contiguous float32/float64 arrays (``b`` None if not given); W
        starts on a 64-byte boundary (copied there if it did not).

    Raises:
        HeadTypeError: a dtype that is not real numbers (also a ``TypeError``).
        HeadError: wrong rank or length, an empty head, non-finite values (a ``ValueError``).
    """
    prefix = f"{where}: " if where else ""
    W = _as_array(W, "weights", prefix)
    if W.ndim != 2:
        raise HeadError(f"{prefix}expected 2-D weights (classes x features), got shape {W.shape}")
    if W.shape[0] == 0 or W.shape[1] == 0:
        raise HeadError(f"{prefix}expected at least one class and one feature, got shape {W.shape}")
    W = _as_float(W, "weights", prefix)
    _check_finite_rows(W, prefix)
    W = aligned(W)  # so the engine can hand it to XLA without a copy
    if b is None:
        return W, None
    b = _as_array(b, "bias", prefix)
    if b.ndim != 1 or b.shape[0] != W.shape[0]:
        raise HeadError(f"{prefix}expected a bias of shape ({W.shape[0]},) to match the weights {W.shape}, got shape {b.shape}")
    b = _as_float(b, "bias", prefix)
    bad = np.flatnonzero(~np.isfinite(b))
    if bad.size:
        i = int(bad[0])
        raise HeadError(f"{prefix}expected a finite bias, got {b[i]} at index {i}"
                        f"{f' and {bad.size - 1} more non-finite entries' if bad.size > 1 else ''}")
    return W, b


# ------------------------------------------------------------------ file formats
class _Entry(NamedTuple):
    shape: tuple | None  # None: unknown until read
    dtype: np.dtype | None


class _ArrayFile(Protocol):
    """What a format provides: the arrays' names, shapes and dtypes, reading one, and the
    names to look for (``weight_names`` in order; ``bias_names[weight]``, else
    ``other_bias_names``; ``transposed_names``: weights stored d x C)."""

    path: Path
    entries: dict[str, _Entry]
    noun: str
    weight_names: tuple[str, ...]
    bias_names: dict[str, tuple[str, ...]]
    other_bias_names: tuple[str, ...]
    transposed_names: tuple[str, ...]

    def read(self, name: str) -> np.ndarray: ...

    def check_rows(self, name: str, W: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class _Format:
    """Defaults shared by the formats: no transposed names, rows taken as they come."""

    noun = "tensor"
    choose = "choose one with --weight NAME"
    bias_names: dict[str, tuple[str, ...]] = {}
    other_bias_names: tuple[str, ...] = ()
    transposed_names: tuple[str, ...] = ()

    def check_rows(self, name: str, W: np.ndarray) -> np.ndarray:
        return W

    def vocabulary(self) -> tuple[list | None, str | None]:
        """Token strings from the tokenizer files next to the weights."""
        try:
            return vocab.read_vocabulary(self.path.parent)
        except (MemoryError, RecursionError):  # absurd ids or nesting in a damaged tokenizer.json
            return None, None

    def norm_eps(self) -> float | None:
        """The norm's epsilon from a ``config.json`` next to the weights."""
        try:
            config = json.loads((self.path.parent / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        value = next((config[k] for k in _EPS_KEYS if isinstance(config, dict) and k in config), None)
        return float(value) if isinstance(value, (int, float)) else None

    def close(self) -> None:
        pass


class _NpzFile(_Format):
    """An ``.npz`` archive, opened without pickle; shapes come from the ``.npy`` headers."""

    noun = "array"
    weight_names = DEFAULT_WEIGHT_NAMES
    bias_names = DEFAULT_BIAS_NAMES
    other_bias_names = ("b",)
    transposed_names = TRANSPOSED_WEIGHT_NAMES

    def __init__(self, path: Path):
        self.path = path
        try:
            self._archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, NotImplementedError) as err:
            # NumPy reads a file that is neither a zip nor an .npy header as a pickle and,
            # refused, suggests allow_pickle=True: never repeat that advice.
            why = "neither a zip archive of .npy arrays nor an .npy array" if "allow_pickle" in str(err) else err
            raise HeadError(f"{path}: not a readable .npz file ({why})") from None
        if not isinstance(self._archive, np.lib.npyio.NpzFile):  # a bare .npy renamed .npz
            raise HeadError(f"{path}: not a readable .npz file (a single .npy array, not an archive)")
        self.entries = {name: self._header(name) for name in self._archive.files}

    def _header(self, name: str) -> _Entry:
        try:
            with self._archive.zip.open(f"{name}.npy") as handle:
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
                else:  # version 3.0 has no public header reader; read() will tell
                    return _Entry(None, None)
            return _Entry(tuple(shape), dtype)
        except (KeyError, OSError, ValueError, zipfile.BadZipFile, EOFError, NotImplementedError):
            return _Entry(None, None)  # not an .npy member or a damaged header: read() reports it

    def read(self, name: str) -> np.ndarray:
        dtype = self.entries[name].dtype
        if dtype is not None and dtype.hasobject:
            raise HeadError(f"{self.path}: array {name!r} contains pickled object arrays; refusing to unpickle")
        try:
            value = self._archive[name]
        except ValueError as err:
            if "pickle" in str(err).lower():
                raise HeadError(f"{self.path}: array {name!r} contains pickled object arrays; refusing to unpickle") from None
            raise HeadError(f"{self.path}: array {name!r} is unreadable ({err})") from None
        except (OSError, zipfile.BadZipFile, EOFError, NotImplementedError) as err:
            raise HeadError(f"{self.path}: array {name!r} is unreadable ({err})") from None
        if not isinstance(value, np.ndarray):
            raise HeadError(f"{self.path}: member {name!r} is not a NumPy array")
        return value

    def close(self) -> None:
        self._archive.close()


# safetensors dtype tag -> how the bytes are stored. BF16 and F8 are read from the mapped
# bytes (numpy has no such dtypes; older safetensors cannot hand them to numpy).
_SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_RAW_DTYPES = ("BF16", "F8_E4M3", "F8_E5M2")


class _TensorInfo(NamedTuple):
    dtype: str  # the safetensors tag
    shape: tuple
    begin: int  # byte offsets in the data region
    end: int


def _safetensors_entry(path: Path, name: str, info, data_size: int) -> _TensorInfo:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise HeadError(f"{where}: expected a header entry with dtype, shape and data_offsets, got {str(info)[:80]}")
    tag, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if tag not in _SAFETENSORS_DTYPES:
        raise HeadError(f"{where}: expected a dtype among {', '.join(_SAFETENSORS_DTYPES)}, got {tag!r}")
    if not (isinstance(shape, list) and all(type(v) is int and v >= 0 for v in shape)):
        raise HeadError(f"{where}: expected a shape of non-negative integers, got {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(v) is int for v in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise HeadError(f"{where}: expected data_offsets [begin, end] with 0 <= begin <= end, got {offsets!r}")
    begin, end = offsets
    needed = math.prod(shape) * _SAFETENSORS_DTYPES[tag].itemsize
    if end - begin != needed:
        raise HeadError(f"{where}: expected {needed} bytes for shape {tuple(shape)} of {tag}, "
                        f"got data_offsets {offsets} ({end - begin} bytes)")
    if end > data_size:
        raise HeadError(f"{where}: expected its bytes [{begin}, {end}) in the data region, "
                        f"got a file with only {data_size} bytes of data (truncated?)")
    return _TensorInfo(tag, tuple(shape), begin, end)


def _safetensors_header(path: Path) -> tuple[dict[str, _TensorInfo], int]:
    """Parse and check a safetensors header; return the tensors and where the data starts.

    Layout: an 8-byte little-endian length n, n bytes of JSON (name -> dtype, shape,
    data_offsets; plus an optional ``__metadata__``), then the data region, which the
    tensors cover exactly, without gaps or overlaps (as the safetensors library demands).
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise HeadError(f"{path}: expected a safetensors file (an 8-byte header length, then a JSON header), "
                                f"got {size} bytes")
            n = int.from_bytes(prefix, "little")
            if n > min(size - 8, _SAFETENSORS_MAX_HEADER):
                raise HeadError(f"{path}: expected a header length of at most {min(size - 8, _SAFETENSORS_MAX_HEADER)} "
                                f"bytes (file size {size}), got {n}: truncated, or not a safetensors file")
            raw = handle.read(n)
    except OSError as err:
        raise HeadError(f"{path}: unreadable ({err})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HeadError(f"{path}: expected a JSON header of {n} bytes, got unparseable text ({err})") from None
    if not isinstance(header, dict):
        raise HeadError(f"{path}: expected a JSON object as header, got {type(header).__name__}")
    data_size = size - 8 - n
    tensors = {name: _safetensors_entry(path, name, info, data_size)
               for name, info in header.items() if name != "__metadata__"}
    position, previous = 0, None
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin != position:
            after = f"right after tensor {previous!r}" if previous else "at the start of the data"
            raise HeadError(f"{path}: tensor {name!r}: expected its bytes to start at {position} ({after}), "
                            f"got {info.begin}: the header's offsets overlap or leave a gap")
        position, previous = info.end, name
    if position != data_size:
        raise HeadError(f"{path}: expected the tensors to cover all {data_size} bytes of data, "
                        f"got {position} covered (bytes after the last tensor)")
    return tensors, 8 + n


class _SafetensorsFile(_Format):
    """One ``.safetensors`` file: header checked here, tensors memory-mapped."""

    weight_names = SAFETENSORS_WEIGHT_NAMES
    bias_names = SAFETENSORS_BIAS_NAMES
    other_bias_names = SAFETENSORS_OTHER_BIAS_NAMES

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        self.path = path
        self._tensors, self._data_start = _safetensors_header(path)
        self.entries = {name: _Entry(info.shape, _SAFETENSORS_DTYPES[info.dtype]) for name, info in self._tensors.items()}
        self._errors = (SafetensorError, OSError, ValueError, TypeError)
        try:  # the library checks the header too, and maps the file
            self._handle = safe_open(str(path), framework="numpy")
        except self._errors as err:
            raise HeadError(f"{path}: rejected by the safetensors library ({err})") from None

    def read(self, name: str) -> np.ndarray:
        info = self._tensors[name]
        try:
            if info.dtype in _RAW_DTYPES:
                return self._read_raw(info)
            if info.dtype == "F16" and info.shape:  # upcast a block of rows at a time
                part = self._handle.get_slice(name)
                out = np.empty(info.shape, np.float32)
                for start, stop in _row_blocks(info.shape):
                    out[start:stop] = part[start:stop]
                return out
            return self._handle.get_tensor(name)
        except self._errors as err:
            raise HeadError(f"{self.path}: tensor {name!r} ({info.dtype}, shape {info.shape}) is unreadable ({err})") from None

    def _read_raw(self, info: _TensorInfo) -> np.ndarray:
        """bfloat16 -> float32 is exact: its 16 bits are the top half of the float32."""
        out = np.empty(info.shape, np.float32)
        count = out.size
        if count == 0:
            return out
        stored = np.memmap(self.path, dtype=np.uint16 if info.dtype == "BF16" else np.uint8, mode="r",
                           offset=self._data_start + info.begin, shape=(count,))
        flat = out.reshape(-1)
        for start in range(0, count, _CHUNK_ELEMENTS):
            block = stored[start:start + _CHUNK_ELEMENTS]
            if info.dtype == "BF16":
                flat[start:start + _CHUNK_ELEMENTS] = (block.astype("<u4") << 16).view("<f4")
            else:
                flat[start:start + _CHUNK_ELEMENTS] = block.view(_SAFETENSORS_DTYPES[info.dtype])
        del stored
        return out

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None and hasattr(handle, "__exit__"):
            handle.__exit__(None, None, None)


class _SafetensorsIndex(_Format):
    """A sharded checkpoint: ``*.safetensors.index.json`` maps each tensor to a shard file."""

    weight_names = SAFETENSORS_WEIGHT_NAMES
    bias_names = SAFETENSORS_BIAS_NAMES
    other_bias_names = SAFETENSORS_OTHER_BIAS_NAMES

    def __init__(self, path: Path):
        self.path = path
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise HeadError(f"{path}: expected a JSON index of shards, got unparseable text ({err})") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not (isinstance(weight_map, dict)
                and all(isinstance(shard, str) for shard in weight_map.values())):
            raise HeadError(f'{path}: expected a JSON object with a "weight_map" from tensor names to shard files, '
                            f"got {str(index)[:80]}")
        self._shards: dict[str, _SafetensorsFile] = {}
        self._holder: dict[str, _SafetensorsFile] = {}
        try:
            for name, shard in weight_map.items():
                if shard not in self._shards:
                    self._shards[shard] = _SafetensorsFile(self._shard_path(name, shard))
                if name not in self._shards[shard].entries:
                    raise HeadError(f"{path}: tensor {name!r}: expected it in shard {shard!r}, "
                                    f"which holds no tensor of that name")
                self._holder[name] = self._shards[shard]
        except HeadError:
            self.close()
            raise
        self.entries = {name: holder.entries[name] for name, holder in self._holder.items()}

    def _shard_path(self, name: str, shard: str) -> Path:
        relative = Path(shard)
        if not relative.parts or relative.is_absolute() or ".." in relative.parts:
            raise HeadError(f"{self.path}: tensor {name!r}: expected a shard file next to the index, got {shard!r}")
        full = self.path.parent / relative
        if not full.is_file():
            raise HeadError(f"{self.path}: tensor {name!r}: expected its shard at {full}, which does not exist")
        return full

    def read(self, name: str) -> np.ndarray:
        return self._holder[name].read(name)

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()


# What a damaged GGUF file makes the gguf reader raise (it parses untrusted bytes).
_GGUF_READ_ERRORS = (ValueError, KeyError, IndexError, TypeError, OverflowError, OSError)
_GGUF_UNQUANTISED = ("F64", "I8", "I16", "I32", "I64")  # typed arrays already; gguf only converts floats


class _GgufFile(_Format):
    """A llama.cpp ``.gguf`` file, through the optional ``gguf`` package (memory-mapped)."""

    weight_names = GGUF_WEIGHT_NAMES
    bias_names = GGUF_BIAS_NAMES

    def __init__(self, path: Path):
        self.path = path
        try:
            import gguf
            import gguf.quants
        except ImportError:
            raise HeadError(f"{path}: reading GGUF files needs the gguf package: "
                            f"pip install 'unargmax_jax[gguf]'") from None
        self._dequantize = gguf.quants.dequantize
        try:
            reader = gguf.GGUFReader(path, "r")
            tokens = reader.get_field("tokenizer.ggml.tokens")
            self.vocab_size = len(tokens.data) if tokens is not None else None
        except _GGUF_READ_ERRORS as err:
            raise HeadError(f"{path}: not a readable GGUF file ({type(err).__name__}: {err})") from None
        self._reader = reader
        self._tensors = {tensor.name: tensor for tensor in reader.tensors}
        # GGUF lists dimensions fastest first: a [d, C] head is C rows of d values.
        self.entries = {tensor.name: _Entry(tuple(int(v) for v in reversed(tensor.shape.tolist())), None)
                        for tensor in reader.tensors}

    def read(self, name: str) -> np.ndarray:
        tensor, shape = self._tensors[name], self.entries[name].shape
        kind = tensor.tensor_type.name
        if kind in _GGUF_UNQUANTISED:
            return np.array(tensor.data).reshape(shape)
        width = shape[-1] if shape else 1
        rows = tensor.data.reshape(-1, tensor.data.shape[-1]) if tensor.data.ndim else tensor.data.reshape(1, 1)
        out = np.empty((rows.shape[0], width), np.float32)
        step = max(1, _CHUNK_ELEMENTS // max(width, 1))
        for start in range(0, rows.shape[0], step):
            try:
                out[start:start + step] = self._dequantize(rows[start:start + step], tensor.tensor_type)
            except NotImplementedError:
                raise HeadError(f"{self.path}: tensor {name!r} is stored as {kind}, which the installed gguf package "
                                f"cannot dequantise (expected F32, F16, BF16 or a type gguf.quants supports; "
                                f"try pip install -U gguf)") from None
            except (ValueError, TypeError) as err:
                raise HeadError(f"{self.path}: tensor {name!r} ({kind}, shape {shape}) is unreadable ({err})") from None
        return out.reshape(shape)

    def vocabulary(self) -> tuple[list | None, str | None]:
        tokens = vocab.gguf_tokens(self._reader)
        return (tokens, f"{self.path} (tokenizer.ggml.tokens)") if tokens else (None, None)

    def _scalar(self, key: str):
        field = self._reader.get_field(key)
        if field is None or not len(field.data):
            return None
        value = field.parts[field.data[0]]
        if key == "general.architecture":
            return bytes(value).decode("utf-8", errors="replace")
        return float(value[0]) if len(value) == 1 else None

    def norm_eps(self) -> float | None:
        try:
            arch = self._scalar("general.architecture")
            for key in ("layer_norm_rms_epsilon", "layer_norm_epsilon"):
                value = self._scalar(f"{arch}.attention.{key}") if arch else None
                if value is not None:
                    return value
        except _GGUF_READ_ERRORS:
            pass
        return None

    def close(self) -> None:
        # The reader holds a NumPy view per metadata item (every token and merge string):
        # for a real vocabulary that is more memory than the head. Drop it and hand the
        # freed heap back to the OS so the check that follows does not carry it.
        self._reader = self._tensors = None
        gc.collect()
        return_freed_memory()

    def check_rows(self, name: str, W: np.ndarray) -> np.ndarray:
        """A head has one row per token of ``tokenizer.ggml.tokens``, when the file lists them."""
        count = self.vocab_size
        if count is None or W.ndim != 2 or W.shape[0] == count:
            return W
        if W.shape[1] == count:  # stored the other way round
            return W.T
        raise HeadError(f"{self.path}: tensor {name!r}: expected {count} rows (one per token in tokenizer.ggml.tokens), "
                        f"got shape {W.shape}")


# Flax modules whose kernel/embedding is the head, most specific first; then tied embeddings.
# ``embed_out`` is GPT-NeoX's head; ``decoder`` is the untied MLM decoder of BERT/RoBERTa
# (a tied one has no params of its own: HF applies it with the embedding's kernel).
FLAX_HEAD_MODULES = ("lm_head", "head", "output", "logits", "classifier", "embed_out", "decoder")
FLAX_EMBED_MODULES = ("embed_tokens", "wte", "embedding", "word_embeddings", "token_embd", "tok_embeddings",
                      "embed", "shared")
# Embedding tables of positions, token types or segments are never the vocabulary.
_FLAX_NOT_VOCABULARY = ("pos", "wpe", "type", "segment")
# Hugging Face Flax models keep some heads' biases outside the layer: Bart/Marian/Pegasus
# add ``final_logits_bias`` (1, C) to any head; BERT's and RoBERTa's MLM heads tied to
# ``word_embeddings`` have ``cls/predictions/bias`` and ``lm_head/bias``.
FLAX_OTHER_BIAS_NAMES = ("final_logits_bias",)
FLAX_TIED_BIAS_NAMES = ("cls/predictions/bias", "lm_head/bias")
_TRANSPOSED_NOTE = " (transposed)"


def _leaf_kind(name: str) -> str:
    return name.rsplit("/", 1)[-1]


class _FlaxTree(_Format):
    """A Flax params pytree (nested dicts of arrays), its leaves named by ``/``-joined paths.

    A ``Dense`` head stores ``kernel`` as [d, C] (transposed here), with ``bias`` [C]; a
    tied ``nn.Embed`` used with ``attend`` stores ``embedding`` as [C, d], no bias.
    """

    noun = "array"

    def __init__(self, params, path: Path, *, from_file: bool = True):
        from flax.core import meta, unfreeze
        from flax.traverse_util import flatten_dict

        self.path, self._from_file = path, from_file
        if not from_file:
            self.choose = "choose one with path=..."
        tree = unfreeze(params)  # also FrozenDicts nested in plain dicts
        if not isinstance(tree, dict):
            raise HeadError(f"{path}: expected a Flax params tree (nested dicts of arrays), got {type(params).__name__}")
        if isinstance(tree.get("params"), dict):  # the whole variables dict, maybe with other collections
            tree = tree["params"]
        # Keys of a damaged or foreign file need not be strings: name leaves by str(key)
        # (and unbox leaf by leaf: jax's tree functions cannot sort mixed keys).
        leaves = {"/".join(map(str, key)): value.unbox() if isinstance(value, meta.AxisMetadata) else value
                  for key, value in flatten_dict(tree).items()}
        self._leaves = {name: value for name, value in leaves.items()
                        if isinstance(value, np.ndarray) or hasattr(value, "__array__") and hasattr(value, "shape")}
        self.entries = {name: _Entry(tuple(int(n) for n in value.shape), None) for name, value in self._leaves.items()}
        heads = [n for n, e in self.entries.items() if _is_matrix(e.shape) and _leaf_kind(n) in ("kernel", "embedding")]
        self.weight_names = tuple(sorted(heads, key=self._preference))
        self.transposed_names = tuple(n for n in heads if _leaf_kind(n) == "kernel")
        self.bias_names = {n: self._bias_candidates(n) for n in heads}

    def _bias_candidates(self, name: str) -> tuple[str, ...]:
        module = name[: -len(_leaf_kind(name))]  # "lm_head/" (or "" for a bare layer)
        if _leaf_kind(name) == "kernel":
            own = (module + "bias",)
            if module.endswith("decoder/"):  # BERT/RoBERTa keep the decoder's bias one level up
                own += (module[: -len("decoder/")] + "bias",)
            return own + FLAX_OTHER_BIAS_NAMES
        if name.endswith("embeddings/word_embeddings/embedding"):
            tied = tuple(n for n in FLAX_TIED_BIAS_NAMES
                         if not (n == "lm_head/bias" and "lm_head/kernel" in self.entries))
            return tied + FLAX_OTHER_BIAS_NAMES
        return FLAX_OTHER_BIAS_NAMES

    def _preference(self, name: str):
        """Sort key: a head module name (``FLAX_HEAD_MODULES``, then ``*_lm_head``), an
        embedding name (``FLAX_EMBED_MODULES``, then any ``*emb*`` table that is not of
        positions or token types), then any other Dense kernel, then any other embedding;
        more classes first within a rank."""
        modules = name.split("/")[:-1]
        module = modules[-1].lower() if modules else ""
        kernel = _leaf_kind(name) == "kernel"
        shape = self.entries[name].shape
        classes = shape[1] if kernel else shape[0]
        vocabulary_like = not any(word in module for word in _FLAX_NOT_VOCABULARY)
        if module in FLAX_HEAD_MODULES:
            rank = (0, FLAX_HEAD_MODULES.index(module))
        elif module.endswith("_lm_head"):
            rank = (1, 0)
        elif module in FLAX_EMBED_MODULES and vocabulary_like:
            rank = (2, FLAX_EMBED_MODULES.index(module))
        elif not kernel and vocabulary_like and "emb" in module:
            rank = (3, 0)
        else:
            rank = (4, 0) if kernel else (5, 0)
        return (*rank, -classes, name)

    def read(self, name: str) -> np.ndarray:
        return np.asarray(self._leaves[name])

    def vocabulary(self) -> tuple[list | None, str | None]:
        return super().vocabulary() if self._from_file else (None, None)

    def norm_eps(self) -> float | None:
        return super().norm_eps() if self._from_file else None  # no config.json beside a pytree

    def resolve(self, name: str | None, kinds: tuple[str, ...]) -> str | None:
        """The leaf an explicit name means: a leaf, a module holding one of ``kinds``,
        with or without ``params/`` and a ``(transposed)`` note, or a safetensors-style
        name (``lm_head.weight`` is ``lm_head/kernel``)."""
        if name is None:
            return None
        name = name.strip()
        name = name[: -len(_TRANSPOSED_NOTE)] if name.endswith(_TRANSPOSED_NOTE) else name
        name = name.strip("/")
        spellings = [name]
        if name.startswith("params/"):
            spellings.append(name[len("params/"):])
        if "." in name and "/" not in name:
            dotted = name.replace(".", "/")
            spellings.append(dotted.rsplit("/", 1)[0] if _leaf_kind(dotted) == "weight" else dotted)
        for spelling in spellings:
            for leaf in (spelling, *(f"{spelling}/{kind}" if spelling else kind for kind in kinds)):
                if leaf in self.entries:
                    return leaf
        return name


class _MsgpackFile(_FlaxTree):
    """A Flax checkpoint serialised with ``flax.serialization`` (e.g. HF ``flax_model.msgpack``).

    msgpack carries plain data only; nothing is unpickled.
    """

    def __init__(self, path: Path):
        from flax.serialization import msgpack_restore

        try:
            params = msgpack_restore(path.read_bytes())
        except OSError as err:
            raise HeadError(f"{path}: unreadable ({err})") from None
        except Exception as err:  # msgpack raises its own types on damaged bytes
            raise HeadError(f"{path}: not a readable Flax msgpack file ({type(err).__name__}: {err})") from None
        super().__init__(params, path)


def _flax_weight_name(source: _FlaxTree, path: str | None) -> str | None:
    """Resolve a module path (``lm_head``, ``params/model/embed_tokens``, ``lm_head/kernel``) to a leaf."""
    leaf = source.resolve(path, ("kernel", "embedding"))
    if leaf is None or leaf in source.entries:
        return leaf
    raise HeadError(f"{source.path}: no Dense kernel or Embed embedding at {leaf!r}; "
                    f"2-D leaves: {_describe(source.entries, _is_matrix)}")


def head_from_flax(params, *, path: str | None = None, bias: bool = True) -> Head:
    """The head of a Flax model from its params pytree.

    Finds a ``Dense`` layer (``kernel`` [d, C], optional ``bias`` [C]; ``W = kernel.T``)
    or a tied ``nn.Embed`` (``embedding`` [C, d], used with ``attend``; no bias). Without
    ``path``, a module named (in this order) ``lm_head``, ``head``, ``output``,
    ``logits``, ``classifier``, ``embed_out`` or ``decoder`` wins, then embedding-like
    names (``embed_tokens``, ``wte``, ``embedding``, ``word_embeddings``, ``token_embd``,
    ...; never position or token-type tables), then the Dense kernel with the most
    classes. Hugging Face Flax biases kept outside the layer (``final_logits_bias``,
    ``cls/predictions/bias``) are used too.

    .. math:: z = W x + b, \\quad W = \\text{kernel}^\\top \\text{ or } W = \\text{embedding}

    Args:
        params: ``variables["params"]`` or the whole variables dict (dicts or FrozenDict).
        path: the module (``"lm_head"``, ``"params/model/embed_tokens"``) or leaf to use.
        bias: use the head's bias when it has one.

    Returns:
        A :class:`Head`; ``weight_name`` is the leaf's path (``"lm_head/kernel"``, without
        ``params/``: pass it back as ``path``), ``source`` is None. Tokens are None; the
        final norm is found by the HF Flax names in ``NORM_NAMES`` (``eps`` None).

    Raises:
        HeadError: not a dict tree, no such module, no kernel or embedding at all (the
            message lists the 2-D leaves and their shapes), or a head
            :func:`validate_head` rejects.
    """
    source = _FlaxTree(params, Path("<flax params>"), from_file=False)
    weight = _flax_weight_name(source, path)
    head = _select(source, weight, None, not bias, with_tokens=False)
    return head._replace(source=None)


def _row_blocks(shape: tuple):
    """``(start, stop)`` blocks of rows of about ``_CHUNK_ELEMENTS`` values."""
    step = max(1, _CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
    return ((start, min(start + step, shape[0])) for start in range(0, shape[0], step))


# File name ending -> format (an ending is matched case-insensitively).
_FORMATS: dict[str, type] = {".npz": _NpzFile, ".safetensors": _SafetensorsFile,
                             ".safetensors.index.json": _SafetensorsIndex, ".gguf": _GgufFile,
                             ".msgpack": _MsgpackFile}


# --------------------------------------------------------------- name resolution
def _is_matrix(shape: tuple) -> bool:
    return len(shape) == 2


def _is_vector(shape: tuple) -> bool:
    return len(shape) == 1 or (len(shape) == 2 and 1 in shape)


def _describe(entries: dict[str, _Entry], keep) -> str:
    """``['a', 'b'] (shapes (3, 2), (4, 2))`` for the readable arrays whose shape passes ``keep``."""
    found = [(name, e.shape) for name, e in entries.items()
             if e.shape is not None and keep(e.shape) and not (e.dtype is not None and e.dtype.hasobject)]
    if not found:
        return "none"
    more = f" and {len(found) - _LISTED} more" if len(found) > _LISTED else ""
    found = found[:_LISTED]
    return f"{[name for name, _ in found]} (shapes {', '.join(str(shape) for _, shape in found)}){more}"


def _flatten_bias(b: np.ndarray, C: int) -> np.ndarray:
    """Accept the (1, C) and (C, 1) layouts of the published tool and Marian."""
    if b.ndim == 2 and C in b.shape and 1 in b.shape:
        return b.reshape(-1)
    return b


def _select(source: _ArrayFile, weight: str | None, bias: str | None, no_bias: bool, with_tokens: bool = True) -> Head:
    """Resolve the weight and bias names, read them, fix their layout, validate."""
    path, entries, noun = source.path, source.entries, source.noun
    if weight is None:
        weight = next((n for n in source.weight_names if n in entries), None)
        if weight is None:
            wanted = f"named {' or '.join(source.weight_names)}" if source.weight_names else "to use as the head"
            raise HeadError(f"{path}: no weight {noun} {wanted}; "
                            f"2-D {noun}s in the file: {_describe(entries, _is_matrix)} ({source.choose})")
    elif weight not in entries:
        raise HeadError(f"{path}: no {noun} named {weight!r}; 2-D {noun}s in the file: {_describe(entries, _is_matrix)}")
    if no_bias:
        if bias is not None:
            raise HeadError(f"{path}: give a bias name or no bias, not both")
    elif bias is None:
        bias = next((n for n in source.bias_names.get(weight, source.other_bias_names) if n in entries), None)
    elif bias not in entries:
        raise HeadError(f"{path}: no bias {noun} named {bias!r}; vectors in the file: {_describe(entries, _is_vector)}")

    W = source.read(weight)
    b = source.read(bias) if bias is not None else None
    if weight in source.transposed_names and W.ndim == 2:
        # Published layout: d x C. Only a bias as long as the rows (and not the columns)
        # shows that this file stores C x d instead.
        bias_length = b.size if b is not None and _is_vector(b.shape) else None
        stored_c_by_d = bias_length == W.shape[0] != W.shape[1]
        if not stored_c_by_d:
            W = W.T
    W = source.check_rows(weight, W)
    if b is not None and W.ndim == 2:
        b = _flatten_bias(b, W.shape[0])
    where = f"{path} [{weight}{', ' + bias if bias else ''}]"
    W, b = validate_head(W, b, where=where)
    tokens, tokens_source = source.vocabulary() if with_tokens else (None, None)
    tokens = vocab.fit(tokens, W.shape[0])
    return Head(W, b, weight, bias, str(path), tokens, tokens_source if tokens else None,
                _final_norm(source, W.shape[1]))


def _final_norm(source: _ArrayFile, d: int) -> FinalNorm | None:
    """The first of ``NORM_NAMES`` in the file whose gamma is a (d,) vector, else None."""
    for gamma_name, beta_name in NORM_NAMES:
        if gamma_name not in source.entries:
            continue
        # A (d,) vector (stored (1, d) by some converters); a matrix that happens to hold d
        # values is not a norm.
        if not all(source.entries[n].shape is not None and _is_vector(source.entries[n].shape)
                   for n in (gamma_name, beta_name) if n in source.entries):
            return None
        try:
            gamma = np.asarray(source.read(gamma_name), np.float64).reshape(-1)
            beta = np.asarray(source.read(beta_name), np.float64).reshape(-1) if beta_name in source.entries else None
        except (HeadError, TypeError, ValueError):  # e.g. a complex leaf in a Flax tree
            return None
        if gamma.shape != (d,) or (beta is not None and beta.shape != (d,)):
            return None
        if not np.all(np.isfinite(gamma)) or (beta is not None and not np.all(np.isfinite(beta))):
            return None
        layernorm = beta is not None or any(h in gamma_name.lower() for h in _LAYERNORM_HINTS)
        names = (gamma_name,) + ((beta_name,) if beta is not None else ())
        return FinalNorm("layernorm" if layernorm else "rmsnorm", gamma, beta, source.norm_eps(), names)
    return None


def _format_of(path: Path) -> type | None:
    name = path.name.lower()
    return next((opener for ending, opener in _FORMATS.items() if name.endswith(ending)), None)


def _head_file_in(directory: Path) -> Path:
    """The first of ``DIRECTORY_FILE_NAMES`` present, else the only index or head file."""
    for name in DIRECTORY_FILE_NAMES:
        if (directory / name).is_file():
            return directory / name
    try:
        found = sorted(p for p in directory.iterdir() if p.is_file() and _format_of(p) is not None)
    except OSError as err:
        raise HeadError(f"{directory}: unreadable directory ({err})") from None
    indexes = [p for p in found if p.name.lower().endswith(".safetensors.index.json")]
    if len(indexes) == 1:
        return indexes[0]
    if len(found) == 1:
        return found[0]
    what = f"several: {[p.name for p in found]}; name one" if found else "none"
    raise HeadError(f"{directory}: is a directory; expected {' or '.join(DIRECTORY_FILE_NAMES)} in it, "
                    f"or a single head file ({', '.join(_FORMATS)}), found {what}")


def load_head(path: str | os.PathLike, *, weight: str | None = None, bias: str | None = None,
              no_bias: bool = False, tokens: bool = True) -> Head:
    """Load a head from a file, finding the weight and bias arrays by name.

    Args:
        path: a head file: ``.npz``, ``.safetensors``, ``.safetensors.index.json``
            (sharded), ``.gguf`` (needs the ``gguf`` extra) or a Flax ``.msgpack``; or a
            directory holding ``model.safetensors``, ``model.safetensors.index.json`` or
            ``flax_model.msgpack`` (else a single head file).
        weight: name of W; default: the first of the format's names present (npz: ``W``,
            else ``decoder_Wemb``, stored d x C; safetensors: ``SAFETENSORS_WEIGHT_NAMES``;
            gguf: ``output.weight``, else ``token_embd.weight``; msgpack: as
            :func:`head_from_flax`, which also takes a module path such as ``lm_head``).
        bias: name of b; default: the weight's own bias if present (npz ``b``, or
            ``decoder_ff_logit_out_b`` next to ``decoder_Wemb``; safetensors
            ``lm_head.bias``, ``cls.predictions.bias``, else ``final_logits_bias``; gguf
            ``output.bias``). An explicit name must exist. (1, C) and (C, 1) arrays are
            flattened.
        no_bias: ignore any bias in the file (the head is ``z = W x``).
        tokens: look for token strings (``tokenizer.json`` or ``vocab.txt`` next to the
            file, GGUF metadata); a missing or damaged vocabulary leaves ``tokens`` None.

    Returns:
        A :class:`Head` with validated float arrays; ``weight_name``/``bias_name`` say
        which arrays were used, ``source`` the file read.

    Raises:
        HeadError: a missing or unreadable file, an unsupported suffix, a damaged header,
            a missing array name, a pickled array, a GGUF file without the ``gguf``
            package, or a head that :func:`validate_head` rejects; the message names the
            file (and the array, when one is at fault).
    """
    path = Path(path)
    if not path.exists():
        raise HeadError(f"{path}: no such file")
    if path.is_dir():
        path = _head_file_in(path)
    opener = _format_of(path)
    if opener is None:
        raise HeadError(f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; supported: {', '.join(_FORMATS)}")
    source = opener(path)
    try:
        if isinstance(source, _FlaxTree):
            weight = _flax_weight_name(source, weight)
            bias = source.resolve(bias, ("bias",))
        return _select(source, weight, bias, no_bias, tokens)
    finally:
        source.close()


def example_head_path() -> Path:
    """The bundled example head ``unargmax_jax/data/example_head.npz`` (``unargmax check --example``).

    60 tokens, 3 features, a bias; see ``scripts/make_example_head.py`` for what is planted.
    """
    path = Path(str(resources.files("unargmax_jax") / "data" / "example_head.npz"))
    if not path.is_file():
        raise HeadError(f"the bundled example head is missing ({path}); reinstall unargmax_jax")
    return path
