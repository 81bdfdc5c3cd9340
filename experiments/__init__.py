"""Experiments that use unargmax_jax on real models (not part of the installed package)."""
