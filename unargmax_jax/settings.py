"""The configuration of a check: every knob in one documented, immutable record.

Build it once (``Settings(...)`` or :func:`settings_from`) and pass it down; the engine
derives batch sizes, tolerances and budgets from it in one place
(:func:`unargmax_jax.solve.context.make_context`). ``check(W, b, **options)`` accepts the
fields as keywords too, for compatibility.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from . import bounds

TIES = ("strict", "first")


class Settings(NamedTuple):
    """How a check runs. Results depend on these fields only (and on the head and domain).

    Attributes:
        ties: ``"strict"``: an exact duplicate row (and bias) is unargmaxable; ``"first"``:
            the lowest id of a tied group can win, as ``jnp.argmax`` breaks ties.
        seed: PRNG seed of the screen's random starting points.
        chunk_size: tokens per batch of the screen (ascent and PDHG batches are capped
            further by memory); None: 128 on CPU, 1024 on GPU and TPU, where a product of
            128 tokens by the head is too short to keep the device busy between dispatches
            (then capped so a batch's logits stay within a 1/16 of the device's memory).
        competitors: size k of each token's competitor set in ascent and PDHG; 0 picks
            ``max(32, 2 (d + 1))``, capped by C - 1 and 1024.
        braid_steps: braid-reflect steps (Grivas et al., 2022) after the second screening
            pass; 0 skips them.
        ascent_steps: optax steps of smoothed-margin ascent per token.
        pdhg_iterations: PDHG iterations per token, in total over its rounds; 0 skips PDHG.
        pdhg_round_iterations: PDHG iterations between competitor-set refreshes.
        pdhg_adaptive_step: PDLP's adaptive step size instead of a fixed one (see
            :func:`unargmax_jax.solve.pdhg.solve`).
        basis_rounds: row-generation rounds of the float64 basis stage per token (each adds
            the rows most violated at the LP's vertex and re-solves from the last basis).
        simplex_pivots: pivots per token of the basis stage's batched simplex on a box
            (:mod:`unargmax_jax.solve.simplex`); 0 picks 8 (d + 1). A token that runs out
            goes on to the per-token HiGHS path.
        basis_token_seconds: time limit of the basis stage per token (HiGHS's own time limit
            included); a token that runs out keeps its interval.
        rational_max_dim: the exact rational stage runs only when d is at most this.
        rational_seconds: time limit of the exact rational stage, for all its tokens.
        free_box_radius: on ``Free`` with a bias, margins are solved (and reported) on the
            box of this radius.
        max_seconds: stop starting new work after this long (None: no limit); the rest
            stays undecided.
        shard: split each batch's tokens across all local devices.
        checkpoint_seconds: with a checkpoint file, how often the screen saves it.
        half_witnesses: keep witnesses as float16 points where the domain allows it (a box
            with float16 bounds): the witness table is then half the head's float32 size.
        background_compile: compile the later stages' kernels on a second thread while a
            large head's first screening pass runs; results do not depend on it.
        dot_algorithm: the ``DotAlgorithmPreset`` name every bound's product runs with,
            padded for it (:data:`unargmax_jax.bounds.ALGORITHMS`); None: the backend's
            (:func:`unargmax_jax.bounds.backend_algorithm`). A check records the one used.
        bf16_screen: first screen every token with one bfloat16 pass (``BF16_BF16_F32``,
            with its own larger pad) and redo at full precision only the tokens it leaves
            undecided; None: on for GPU and TPU, where bfloat16 runs 6-15x the float32
            rate, off on CPU, where XLA computes that preset as float32 (no gain).
        symmetric_screen: run the first full-precision pass over the symmetric Gram matrix
            :math:`W P W^T` (each block read for its rows' and its columns' tokens: about half
            the all-pairs product) when one device screens most of a head on a ball or a
            box of equal widths (:mod:`unargmax_jax.solve.symmetric`).
    """

    ties: str = "strict"
    seed: int = 0
    chunk_size: int | None = None
    competitors: int = 0
    braid_steps: int = 16
    ascent_steps: int = 300
    pdhg_iterations: int = 8192
    pdhg_round_iterations: int = 512
    pdhg_adaptive_step: bool = False
    basis_rounds: int = 40
    simplex_pivots: int = 0
    basis_token_seconds: float = 20.0
    rational_max_dim: int = 64
    rational_seconds: float = 60.0
    free_box_radius: float = 1e4
    max_seconds: float | None = None
    shard: bool = True
    checkpoint_seconds: float = 30.0
    half_witnesses: bool = True
    background_compile: bool = True
    dot_algorithm: str | None = None
    bf16_screen: bool | None = None
    symmetric_screen: bool = True


# Fields that change how long a run takes or how it is scheduled, never its results: a
# checkpoint saved under other values of these is still resumed.
SCHEDULING_FIELDS = ("max_seconds", "checkpoint_seconds", "background_compile", "basis_token_seconds")


def settings_from(settings: Settings | None = None, **options) -> Settings:
    """``settings`` (default ``Settings()``) with ``options`` replacing fields, validated.

    Raises:
        TypeError: an option that is not a field.
        ValueError: a field with a value outside its range.
    """
    unknown = set(options) - set(Settings._fields)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; expected some of {list(Settings._fields)}")
    settings = (settings or Settings())._replace(**options)
    if settings.ties not in TIES:
        raise ValueError(f"ties must be 'strict' or 'first', got {settings.ties!r}")
    if settings.chunk_size is not None and not (isinstance(settings.chunk_size, int) and settings.chunk_size > 0):
        raise ValueError(f"chunk_size must be a positive int or None, got {settings.chunk_size!r}")
    return for_backend(settings)


FAST_BACKENDS = ("gpu", "cuda", "rocm", "tpu")  # where a bfloat16 product outruns float32
CHUNK_SIZES = {"cpu": 128, "accelerator": 1024}  # default tokens per screening batch


def for_backend(settings: Settings) -> Settings:
    """``settings`` with ``dot_algorithm``, ``bf16_screen`` and ``chunk_size`` chosen for
    JAX's default backend where they are None, so that a report records what ran.

    Raises:
        ValueError: a dot algorithm that is unknown or does not fit the working dtype.
    """
    dtype = "float64" if jax.config.jax_enable_x64 else "float32"
    algorithm = settings.dot_algorithm or bounds.backend_algorithm(dtype=dtype)
    bounds.algorithm_spec(algorithm, dtype)
    accelerator = jax.default_backend() in FAST_BACKENDS
    fast = settings.bf16_screen
    if fast is None:
        fast = dtype == "float32" and accelerator
    elif fast not in (True, False):
        raise ValueError(f"bf16_screen must be True, False or None, got {fast!r}")
    chunk = settings.chunk_size or CHUNK_SIZES["accelerator" if accelerator else "cpu"]
    return settings._replace(dot_algorithm=algorithm, bf16_screen=bool(fast and dtype == "float32"), chunk_size=chunk)
