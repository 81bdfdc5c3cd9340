"""Loading a head from a path: the format registry, directories, the bundled example."""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from .ctranslate2 import _Ctranslate2File
from .flax import _MsgpackFile
from .formats import _Format
from .gguf import _GgufFile
from .head import Head
from .marian import _MarianBinFile
from .names import DIRECTORY_FILE_NAMES
from .npz import _NpzFile
from .onnx import _OnnxFile
from .pytorch import _TorchFile
from .safetensors import _SafetensorsFile, _SafetensorsIndex
from .select import _select
from .validate import HeadError



def _open_bin(path: Path) -> _Format:
    """A ``.bin`` by its first bytes: a PyTorch zip (``PK``) or legacy pickle (``0x80``), a Marian
    binary (uint64 file version 1), else a CTranslate2 ``model.bin`` (uint32 binary version)."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(8)
    except OSError as err:
        raise HeadError(f"{path}: unreadable ({err})") from None
    if start[:2] == b"PK" or start[:1] == b"\x80":
        return _TorchFile(path)
    if len(start) == 8 and int.from_bytes(start, "little") == 1:
        return _MarianBinFile(path)
    if len(start) >= 4 and 1 <= int.from_bytes(start[:4], "little") <= 6:
        return _Ctranslate2File(path)
    raise HeadError(f"{path}: expected a .bin that is a PyTorch zip checkpoint, a Marian binary model or a "
                    f"CTranslate2 model.bin (binary version 1 to 6), got a file starting with {start[:8]!r}")


# File name ending -> format (an ending is matched case-insensitively). A new format is a
# new module with a ``_Format`` subclass, and its ending here.
_FORMATS: dict[str, Callable[[Path], _Format]] = {
    ".npz": _NpzFile, ".safetensors": _SafetensorsFile, ".safetensors.index.json": _SafetensorsIndex,
    ".gguf": _GgufFile, ".msgpack": _MsgpackFile, ".pt": _TorchFile, ".pth": _TorchFile, ".bin": _open_bin,
}


def _format_of(path: Path) -> type | None:
    name = path.name.lower()
    return next((opener for ending, opener in _FORMATS.items() if name.endswith(ending)), None)


_FORMATS[".onnx"] = _OnnxFile  # heads/onnx.py: the MatMul/Gemm that makes the graph's logits


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
    # A .bin beside one other head file is most likely not a head (training_args.bin, a lexical shortlist).
    named = [p for p in found if not p.name.lower().endswith(".bin")]
    if len(named) == 1:
        return named[0]
    what = f"several: {[p.name for p in found]}; name one" if found else "none"
    raise HeadError(f"{directory}: is a directory; expected {' or '.join(DIRECTORY_FILE_NAMES)} in it, "
                    f"or a single head file ({', '.join(_FORMATS)}), found {what}")


def load_head(path: str | os.PathLike, *, weight: str | None = None, bias: str | None = None,
              no_bias: bool = False, tokens: bool = True) -> Head:
    """Load a head from a file, finding the weight and bias arrays by name.

    Args:
        path: a head file: ``.npz``, ``.safetensors``, ``.safetensors.index.json``
            (sharded), ``.gguf`` (needs the ``gguf`` extra; a gguf-split shard stands for
            the whole model), a Flax ``.msgpack``, a PyTorch zip checkpoint (``.pt``,
            ``.pth``, ``pytorch_model.bin``), a CTranslate2 ``model.bin`` or a Marian
            binary ``.bin``; or a directory holding ``model.safetensors``,
            ``model.safetensors.index.json``, ``flax_model.msgpack``, ``pytorch_model.bin``
            or ``model.bin`` (else a single head file).
        weight: name of W; default: the first of the format's names present (npz: ``W``,
            else ``decoder_Wemb``, stored d x C; safetensors: ``SAFETENSORS_WEIGHT_NAMES``;
            gguf: ``output.weight``, else ``token_embd.weight``; msgpack: as
            :func:`head_from_flax`, which also takes a module path such as ``lm_head``;
            PyTorch, CTranslate2, Marian: see :mod:`unargmax_jax.heads`).
        bias: name of b; default: the weight's own bias if present (npz ``b``, or
            ``decoder_ff_logit_out_b`` next to ``decoder_Wemb``; safetensors
            ``lm_head.bias``, ``cls.predictions.bias``, else ``final_logits_bias``; gguf
            ``output.bias``; CTranslate2 ``decoder/projection/bias``; Marian
            ``decoder_ff_logit_out_b``). An explicit name must exist. (1, C) and (C, 1) arrays are
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
        weight, bias = source.resolve_names(weight, bias)
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
