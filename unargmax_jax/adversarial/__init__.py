r"""Adversarial inputs: search through a whole network for inputs that make a target the argmax.

The engine (:func:`unargmax_jax.check`) decides argmaxability for the *head alone*, on a
convex feature domain. This module asks the end-to-end question for one or more target
classes t of a model's next-token logits z(x): find an input x with

.. math:: m_t(x) = z_t(x) - \max_{j \ne t} z_j(x) > 0

and make that margin (or :math:`\log \mathrm{softmax}(z(x))_t`) as large as possible.
A positive margin is a witness that t is producible by greedy decoding from x; a failed
search proves nothing (the searches are local).

Two searches, both vmapped over targets, with the step loop jitted in fixed-size chunks
so a progress bar can be drawn in Python between chunks:

* :func:`continuous_search`: projected Adam on a continuous input (input embeddings, or
  a hidden state at some layer, through a user function ``f(params, x) -> logits``).
* :func:`token_search`: greedy coordinate gradient (GCG; Zou et al. 2023, "Universal and
  Transferable Adversarial Attacks on Aligned Language Models", arXiv:2307.15043,
  Algorithm 1) over the token ids of a prompt.

Both return the best iterate seen (not the last) and re-evaluate it with a separate call
of the model, in at least float32, to fill ``margin``, ``log_prob`` and ``reached``.

The pieces: the objectives (:mod:`._objectives`), the checks, keys and progress bar both
searches share (:mod:`._common`), the continuous search (:mod:`._continuous`) and GCG
(:mod:`._tokens`).
"""

from ._common import CHUNK as CHUNK
from ._continuous import FINAL_TEMPERATURE_RATIO as FINAL_TEMPERATURE_RATIO
from ._continuous import ContinuousResult as ContinuousResult
from ._continuous import continuous_search as continuous_search
from ._objectives import OBJECTIVES as OBJECTIVES
from ._objectives import _smoothed_margin as _smoothed_margin
from ._objectives import log_prob as log_prob
from ._objectives import margin as margin
from ._tokens import TokenResult as TokenResult
from ._tokens import token_search as token_search

__all__ = [
    "ContinuousResult",
    "TokenResult",
    "continuous_search",
    "log_prob",
    "margin",
    "token_search",
]
