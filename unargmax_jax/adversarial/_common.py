"""What both searches share: argument checks, per-target PRNG keys and the progress bar."""

from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ._objectives import OBJECTIVES

CHUNK = 25  # steps per jitted chunk: the progress bar and the early exit look between chunks


# ------------------------------------------------------------------ validation
def _check_objective(objective) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {OBJECTIVES}, got {objective!r}")


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected an int >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value}")
    return int(value)


def _check_nonnegative_float(name: str, value, *, positive: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a finite number, got {value!r}") from None
    if isinstance(value, (bool, np.bool_)) or not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f"{name}: expected a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return number


def _check_targets(targets, classes: int) -> np.ndarray:
    """Targets as a 1-D int32 array of class ids in ``0..classes-1``."""
    arr = np.asarray(targets)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"targets: expected integer class ids, got dtype {arr.dtype}")
    if arr.ndim > 1:
        raise ValueError(f"targets: expected an int or a 1-D array of ids, got shape {arr.shape}")
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError("targets: expected at least one class id, got none")
    if arr.min() < 0 or arr.max() >= classes:
        bad = arr[(arr < 0) | (arr >= classes)]
        raise ValueError(f"targets: expected ids in 0..{classes - 1} (the model has {classes} classes), "
                         f"got {bad[:5].tolist()}")
    return arr.astype(np.int32)


def _logits_shape(fn, what: str, *args) -> tuple[int, np.dtype]:
    """Trace ``fn(*args)`` abstractly; return C and the dtype, checking for logits of shape (C,)."""
    try:
        out = jax.eval_shape(fn, *args)
    except Exception as err:  # a shape mismatch inside the model surfaces here, as any error type
        shapes = jax.tree_util.tree_map(lambda leaf: tuple(jnp.shape(leaf)), args[-1])
        raise ValueError(f"{what}: the model failed on an input of shape {shapes}: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape is None or len(shape) != 1 or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{what}: expected floating logits of shape (C,), got "
                         f"{'a ' + type(out).__name__ if shape is None else f'shape {shape} dtype {dtype}'}")
    if shape[0] < 2:
        raise ValueError(f"{what}: expected at least 2 classes, got logits of shape {shape}")
    return shape[0], dtype


# ------------------------------------------------------------------ PRNG keys
def _base_key(seed):
    """An explicit PRNG key from an int seed (or a key passed as is)."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
        return jax.random.PRNGKey(int(seed))
    if isinstance(seed, jax.Array) and (jnp.issubdtype(seed.dtype, jax.dtypes.prng_key)
                                        or (seed.dtype == jnp.uint32 and seed.shape == (2,))):
        return seed
    raise ValueError(f"seed: expected an int or a jax.random key, got {seed!r}")


def _target_keys(key, targets):
    # One key per target *value*: a target's result does not depend on which other
    # targets share the batch (one-target and multi-target runs agree).
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, targets)


# ------------------------------------------------------------------ progress
class _Progress:
    """A one-line progress bar on stderr, redrawn between jitted chunks."""

    def __init__(self, enabled: bool, label: str, total: int, *, width: int = 30):
        self.enabled, self.label, self.total, self.width = enabled, label, total, width

    def update(self, done: int, status: str) -> None:
        if not self.enabled:
            return
        filled = int(self.width * done / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        sys.stderr.write(f"\r{self.label} [{bar}] {done}/{self.total} steps, {status} ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
