"""Flax heads: a params pytree in Python (:func:`head_from_flax`) and ``.msgpack`` checkpoints.

A ``Dense`` kernel [d, C] (transposed) with its bias, or a tied ``nn.Embed`` embedding
[C, d]. Leaves are named by their ``/``-joined path without ``params/``
(``lm_head/kernel``); a safetensors-style name (``lm_head.weight``) given as ``--weight``
means the same module. ``.msgpack`` files are read with ``flax.serialization`` (plain data,
no pickle).

(``from flax... import`` below is the third-party library: imports are absolute.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .formats import _Entry, _Format
from .head import Head
from .names import (_FLAX_NOT_VOCABULARY, FLAX_EMBED_MODULES, FLAX_HEAD_MODULES, FLAX_OTHER_BIAS_NAMES,
                    FLAX_TIED_BIAS_NAMES)
from .select import _describe, _is_matrix, _select
from .validate import HeadError

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

    def resolve_names(self, weight: str | None, bias: str | None) -> tuple[str | None, str | None]:
        """A module path or leaf for the weight (as :func:`head_from_flax`), the leaf a bias name means."""
        return _flax_weight_name(self, weight), self.resolve(bias, ("bias",))

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
