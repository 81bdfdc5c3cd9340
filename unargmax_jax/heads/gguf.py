"""llama.cpp ``.gguf`` files, through the optional ``gguf`` package (``pip install 'unargmax_jax[gguf]'``).

A model split with llama.cpp's ``gguf-split`` (``*-00001-of-0000N.gguf``) is read whole from
any of its shards: the tensors of every shard, the metadata and vocabulary of the first.

Tensors are dequantised with ``gguf.quants.dequantize`` a block of rows at a time. GGUF
lists dimensions fastest first, so a head stored as ``[d, C]`` is read as C x d; the rows
are checked against the vocabulary size (``tokenizer.ggml.tokens``) when the file has one.

(``import gguf`` below is the third-party package: imports are absolute.)
"""

from __future__ import annotations

import gc
import re
from pathlib import Path

import numpy as np

from . import vocab
from .._memory import return_freed_memory
from ._gguf_header import GgufHeader, read_header
from .formats import _Entry, _Format, _row_blocks
from .names import GGUF_BIAS_NAMES, GGUF_WEIGHT_NAMES
from .validate import HeadError, aligned_empty

# What a damaged GGUF file makes the gguf reader raise (it parses untrusted bytes).
_GGUF_READ_ERRORS = (ValueError, KeyError, IndexError, TypeError, OverflowError, OSError)
_GGUF_UNQUANTISED = ("F64", "I8", "I16", "I32", "I64")  # typed arrays already; gguf only converts floats


# llama.cpp's gguf-split names shard i of n PREFIX-0000i-of-0000n.gguf (numbered from 1).
_SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<number>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


def _split_paths(path: Path) -> list[Path]:
    """Every shard of a gguf-split model, given any one of them (else just ``path``)."""
    match = _SPLIT_NAME.match(path.name)
    if match is None:
        return [path]
    count, number = int(match["count"]), int(match["number"])
    if not 1 <= number <= count:
        raise HeadError(f"{path}: expected a shard number between 1 and {count} in a gguf-split name, got {number}")
    shards = [path.with_name(f"{match['prefix']}-{i:05d}-of-{count:05d}{path.suffix}") for i in range(1, count + 1)]
    missing = [shard.name for shard in shards if not shard.is_file()]
    if missing:
        raise HeadError(f"{path}: shard {number} of a {count}-file gguf-split model; expected all shards next to it, "
                        f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    return shards


def _open_reader(path: Path) -> GgufHeader:
    try:
        return read_header(path)
    except _GGUF_READ_ERRORS as err:
        raise HeadError(f"{path}: not a readable GGUF file ({type(err).__name__}: {err})") from None


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
        self._readers = [_open_reader(shard) for shard in _split_paths(path)]
        self._fields = self._readers[0].fields  # the first shard holds the metadata and the vocabulary
        tokens = self._fields.get("tokenizer.ggml.tokens")
        self.vocab_size = len(tokens) if isinstance(tokens, list) else None
        self._tensors = {}
        for shard in self._readers:
            for tensor in shard.tensors:
                if tensor.name in self._tensors:
                    raise HeadError(f"{path}: tensor {tensor.name!r} is in more than one shard of the split")
                self._tensors[tensor.name] = tensor
        # GGUF lists dimensions fastest first: a [d, C] head is C rows of d values.
        self.entries = {name: _Entry(tuple(int(v) for v in reversed(tensor.shape)), None)
                        for name, tensor in self._tensors.items()}

    def read(self, name: str) -> np.ndarray:
        tensor, shape = self._tensors[name], self.entries[name].shape
        kind = tensor.tensor_type.name
        # Into 64-byte aligned memory: validation would copy the head once more otherwise.
        if kind in _GGUF_UNQUANTISED:
            out = aligned_empty(tensor.data.shape, tensor.data.dtype)
            out[...] = tensor.data
            return out.reshape(shape)
        width = shape[-1] if shape else 1
        rows = tensor.data.reshape(-1, tensor.data.shape[-1]) if tensor.data.ndim else tensor.data.reshape(1, 1)
        out = aligned_empty((rows.shape[0], width), np.float32)
        for start, stop in _row_blocks((rows.shape[0], width)):
            try:
                out[start:stop] = self._dequantize(rows[start:stop], tensor.tensor_type)
            except NotImplementedError:
                raise HeadError(f"{self.path}: tensor {name!r} is stored as {kind}, which the installed gguf package "
                                f"cannot dequantise (expected F32, F16, BF16 or a type gguf.quants supports; "
                                f"try pip install -U gguf)") from None
            except (ValueError, TypeError) as err:
                raise HeadError(f"{self.path}: tensor {name!r} ({kind}, shape {shape}) is unreadable ({err})") from None
        return out.reshape(shape)

    def vocabulary(self) -> tuple[list | None, str | None]:
        tokens = vocab.gguf_tokens(self._fields)
        return (tokens, f"{self.path} (tokenizer.ggml.tokens)") if tokens else (None, None)

    def _scalar(self, key: str):
        value = self._fields.get(key)
        if key == "general.architecture":
            return value if isinstance(value, str) else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

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
        # The metadata holds every token and merge string: for a real vocabulary that is
        # more memory than one might expect. Drop it and hand the freed heap back to the OS
        # so the check that follows does not carry it.
        self._fields = self._tensors = self._readers = None
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
