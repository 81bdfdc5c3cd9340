"""The solver's stages, one module each, run in order by :mod:`unargmax_jax.engine`.

Each stage module owns the maths of its stage (pure per-token functions that the caller
vmaps), its jitted batch kernels, and a ``run(ctx, evidence, phases)`` that takes the
rows still undecided, decides what it can and records its witnesses and certificates in
the shared :class:`~unargmax_jax.solve.evidence.Evidence` (``ctx``: the run's
:class:`~unargmax_jax.solve.context.Context`; ``phases``: where the run is, for resume):

1. :mod:`.screen`: cheap candidate points, one blocked product each;
2. :mod:`.ascent`: smoothed-margin ascent (optax) over top-k competitors;
3. :mod:`.pdhg`: restarted primal-dual LP solves with row generation;
4. :mod:`.rational`: exact rational LPs for margins no float bound can sign.
"""
