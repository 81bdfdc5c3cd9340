"""Choosing the head in an opened file: weight and bias names, their layout, the final norm."""

from __future__ import annotations

import numpy as np

from . import vocab
from .formats import _ArrayFile, _Entry
from .head import FinalNorm, Head
from .names import _LAYERNORM_HINTS, NORM_NAMES
from .validate import HeadError, validate_head

_LISTED = 20  # 2-D arrays named in an error message, at most


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
