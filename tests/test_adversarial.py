"""Adversarial input search: continuous (projected Adam) and discrete (GCG) against outside truth.

Truth comes from elsewhere: HiGHS on the margin LP of a linear head over a box, the convex
hull of the rows for a bias-free head on a ball, the engine's certificate for a planted
unargmaxable row, and brute-force enumeration of every prompt of a tiny model.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from helpers import highs_margins, hull_vertices_argmaxable

import unargmax_jax as ua
from unargmax_jax.adversarial import (ContinuousResult, TokenResult, _smoothed_margin, continuous_search, log_prob,
                                      margin, token_search)

PLANTED = 7  # the row planted at the midpoint of rows 3 and 5, with a lower bias
BOX = 1.0  # hidden states searched in [-1, 1]^d


class TinyLM(nn.Module):
    """Embedding -> mean pool -> tanh layer (hidden state) -> Dense head."""

    vocab: int = 50
    dim: int = 8
    classes: int = 50

    def setup(self):
        self.embed = nn.Embed(self.vocab, self.dim)
        self.mlp = nn.Dense(self.dim)
        self.head = nn.Dense(self.classes)

    def hidden(self, embeddings):
        return jnp.tanh(self.mlp(jnp.mean(embeddings, axis=0)))

    def head_logits(self, hidden):
        return self.head(hidden)

    def embed_logits(self, embeddings):
        return self.head(self.hidden(embeddings))

    def __call__(self, ids):
        return self.embed_logits(self.embed(ids))


# Module-level functions, so every test reuses one compiled search per (function, projection).
def head_logits(params, hidden):
    return TinyLM().apply(params, hidden, method=TinyLM.head_logits)


def lm_embed_logits(params, embeddings):
    return TinyLM().apply(params, embeddings, method=TinyLM.embed_logits)


def clip_to_box(x):
    return jnp.clip(x, -BOX, BOX)


def into_unit_ball(x):
    return x / jnp.maximum(jnp.linalg.norm(x), 1.0)


def with_head(params, W, b):
    params = jax.tree_util.tree_map(lambda leaf: leaf, params)  # a copy of the containers
    params["params"]["head"] = {"kernel": jnp.asarray(W.T), "bias": jnp.asarray(b)}
    return params


@pytest.fixture(scope="module")
def lm():
    """TinyLM with a random head and bias, row 7 planted at the midpoint of rows 3 and 5."""
    params = TinyLM().init(jax.random.PRNGKey(0), jnp.zeros(4, jnp.int32))
    W = np.array(params["params"]["head"]["kernel"]).T
    b = (np.random.default_rng(0).normal(size=W.shape[0]) * 0.3).astype(np.float32)
    W[PLANTED] = (W[3] + W[5]) / 2  # exact in float32 up to one rounding of each sum; ua.check certifies it
    b[PLANTED] = (b[3] + b[5]) / 2 - 0.5
    return with_head(params, W, b), W, b


@pytest.fixture(scope="module")
def box_search(lm):
    params, W, b = lm
    return continuous_search(head_logits, params, jnp.zeros(8), jnp.arange(W.shape[0]), project=clip_to_box)


# ------------------------------------------------------------------ margin helper
def test_margin_and_log_prob_by_hand():
    z = jnp.array([1.0, 3.0, 2.0, -1.0])
    assert float(margin(z, 1)) == 1.0
    assert float(margin(z, 2)) == -1.0
    assert float(margin(jnp.array([1.0, 3.0, 3.0]), 1)) == 0.0  # a tie is not a strict argmax
    batch = jnp.stack([z, -z])
    np.testing.assert_array_equal(margin(batch, jnp.array([1, 3])), [1.0, 2.0])
    np.testing.assert_allclose(log_prob(z, 0), 1.0 - np.log(np.sum(np.exp(np.asarray(z, np.float64)))), rtol=1e-6)
    # bfloat16 logits are judged in float32
    assert margin(z.astype(jnp.bfloat16), 1).dtype == jnp.float32


def test_smoothed_margin_brackets_the_exact_margin():
    z = jnp.asarray(np.random.default_rng(1).normal(size=20) * 3, jnp.float32)
    for target in (0, 7):
        for tau in (0.01, 0.3, 2.0):
            exact = float(margin(z, target))
            smooth = float(_smoothed_margin(z, target, tau))
            # z_t - tau lse_{j != t}(z_j / tau) lies in [m - tau log(C - 1), m]; 1e-5: float32 rounding
            assert exact - tau * np.log(19) - 1e-5 <= smooth <= exact + 1e-5


# ----------------------------------------------------------- continuous: truth
def test_continuous_reaches_exactly_the_argmaxable_targets_on_a_box(lm, box_search):
    params, W, b = lm
    result = box_search
    truth = highs_margins(W, b, -BOX, BOX)
    report = ua.check(W, b, domain=ua.Box(-BOX, BOX))
    assert report.verdict[PLANTED] == -1  # certified unargmaxable
    np.testing.assert_array_equal(report.verdict == 1, truth > 0)  # engine and HiGHS agree
    argmaxable = truth > 0
    assert 20 < argmaxable.sum() < W.shape[0]  # a non-trivial mix of both kinds

    reached = np.asarray(result.reached)
    np.testing.assert_array_equal(reached, argmaxable)
    assert not reached[PLANTED] and float(result.margin[PLANTED]) <= 0
    assert np.all(np.asarray(result.margin)[~argmaxable] <= 0)
    # No input beats the LP optimum; the search gets within 0.02 of it (logit gaps here are O(1)).
    margins = np.asarray(result.margin, np.float64)
    assert np.all(margins <= truth + 1e-5)
    assert np.all(margins >= truth - 0.02)
    # The inputs are feasible, and the reported numbers are a direct recomputation.
    inputs = np.asarray(result.inputs)
    assert inputs.shape == (W.shape[0], 8) and np.all(np.abs(inputs) <= BOX)
    logits = inputs.astype(np.float64) @ W.T.astype(np.float64) + b
    own = logits[np.arange(W.shape[0]), np.arange(W.shape[0])]
    rivals = np.where(np.eye(W.shape[0], dtype=bool), -np.inf, logits).max(axis=1)
    np.testing.assert_allclose(margins, own - rivals, atol=1e-5)
    assert result.best_step.dtype == jnp.int32 and np.all((result.best_step >= 0) & (result.best_step <= 300))


def linear_head(W, x):
    return jnp.matmul(W, x, precision=jax.lax.Precision.HIGHEST)


def test_continuous_on_a_ball_matches_the_convex_hull():
    # Without bias every argmax region is a cone, so on a ball around 0 the argmaxable
    # rows are exactly the vertices of the convex hull of the rows (qhull is the truth).
    W = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    truth = hull_vertices_argmaxable(W)
    assert 5 < truth.sum() < 25
    result = continuous_search(linear_head, jnp.asarray(W), jnp.zeros(3), jnp.arange(30), project=into_unit_ball,
                               noise=0.1)
    np.testing.assert_array_equal(np.asarray(result.reached), truth)
    assert np.all(np.linalg.norm(np.asarray(result.inputs), axis=1) <= 1 + 1e-6)


def test_continuous_over_input_embeddings(lm):
    params, W, _ = lm
    x0 = params["params"]["embed"]["embedding"][jnp.array([1, 2, 3, 4])]  # (T, d) = (4, 8)
    targets = jnp.array([0, 4, PLANTED])
    for objective in ("margin", "log_prob"):
        result = continuous_search(lm_embed_logits, params, x0, targets, steps=60, objective=objective,
                                   project=clip_to_box)
        assert isinstance(result, ContinuousResult)
        assert result.inputs.shape == (3, 4, 8) and result.margin.shape == (3,) and result.reached.dtype == bool
        assert np.all(np.abs(np.asarray(result.inputs)) <= BOX)
        logits = jax.vmap(lm_embed_logits, in_axes=(None, 0))(params, result.inputs)
        np.testing.assert_allclose(result.margin, margin(logits, targets), atol=1e-6)
        np.testing.assert_allclose(result.log_prob, log_prob(logits, targets), atol=1e-6)
        np.testing.assert_array_equal(result.reached, np.asarray(result.margin) > 0)
        assert not result.reached[2]  # unargmaxable at the head, so through the whole network too
    # log_prob objective: the kept iterate is the best by log-probability, not worse than the start
    start = log_prob(lm_embed_logits(params, x0), targets)
    assert np.all(np.asarray(result.log_prob) >= np.asarray(start) - 1e-6)


def test_continuous_keeps_the_best_iterate_not_the_last():
    # A "projection" that drifts x upwards while the margin of class 0 falls as x grows:
    # every step makes things worse, so the best iterate is the (projected) start.
    def drifting_logits(params, x):
        return jnp.stack([-x[0], jnp.zeros(())])

    def drift(x):
        return x + 1.0

    result = continuous_search(drifting_logits, None, jnp.zeros(1), 0, steps=30, project=drift)
    assert int(result.best_step[0]) == 0
    np.testing.assert_array_equal(result.inputs, [[1.0]])
    assert float(result.margin[0]) == -1.0 and not result.reached[0]


def test_continuous_temperature_option(lm):
    params, W, b = lm
    # A small fixed-scale smoothing still reaches an argmaxable target.
    result = continuous_search(head_logits, params, jnp.zeros(8), jnp.array([0]), project=clip_to_box, steps=50,
                               temperature=0.05)
    assert bool(result.reached[0]) == (highs_margins(W, b, -BOX, BOX, ids=[0])[0] > 0)


# ----------------------------------------------------- continuous: consistency
def test_continuous_one_target_equals_its_entry_in_a_batch_and_is_seeded(lm):
    params, *_ = lm
    kwargs = dict(steps=40, project=clip_to_box, noise=0.3, seed=3)
    many = continuous_search(head_logits, params, jnp.zeros(8), jnp.array([2, 11, 5]), **kwargs)
    one = continuous_search(head_logits, params, jnp.zeros(8), 11, **kwargs)
    for field in ContinuousResult._fields:
        np.testing.assert_allclose(np.asarray(getattr(one, field))[0], np.asarray(getattr(many, field))[1],
                                   rtol=1e-5, atol=1e-6, err_msg=field)
    again = continuous_search(head_logits, params, jnp.zeros(8), jnp.array([2, 11, 5]), **kwargs)
    for field in ContinuousResult._fields:
        np.testing.assert_array_equal(getattr(again, field), getattr(many, field), err_msg=field)
    other = continuous_search(head_logits, params, jnp.zeros(8), jnp.array([2, 11, 5]), **{**kwargs, "seed": 4})
    assert not np.array_equal(other.inputs, many.inputs)  # the seed drives the starting noise
    keyed = continuous_search(head_logits, params, jnp.zeros(8), jnp.array([2, 11, 5]),
                              **{**kwargs, "seed": jax.random.PRNGKey(3)})
    np.testing.assert_array_equal(keyed.inputs, many.inputs)  # an int seed is that key


def test_continuous_traces_once_per_shape(lm):
    params, *_ = lm
    traces = []

    def counted(params, x):
        traces.append(1)  # runs only while JAX traces
        return head_logits(params, x)

    continuous_search(counted, params, jnp.zeros(8), jnp.array([1, 2]), steps=30, project=clip_to_box)
    first = len(traces)
    continuous_search(counted, params, jnp.ones(8), jnp.array([3, 4]), steps=30, project=clip_to_box)
    assert len(traces) == first


def test_continuous_progress_bar_goes_to_stderr(lm, capsys):
    params, *_ = lm
    continuous_search(head_logits, params, jnp.zeros(8), jnp.arange(3), steps=30, project=clip_to_box, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "30/30 steps" in captured.err and "continuous" in captured.err


# ---------------------------------------------------------- token search (GCG)
class PairLM(nn.Module):
    """Two-token prompts over a 12-token vocabulary: small enough to enumerate every prompt."""

    vocab: int = 12

    def setup(self):
        self.embed = nn.Embed(self.vocab, 4)
        self.mlp = nn.Dense(16)
        self.head = nn.Dense(self.vocab)

    def embed_logits(self, embeddings):
        return self.head(jnp.tanh(self.mlp(embeddings.reshape(-1))))

    def __call__(self, ids):
        return self.embed_logits(self.embed(ids))


def pair_embed_logits(params, embeddings):
    return PairLM().apply(params, embeddings, method=PairLM.embed_logits)


GCG = dict(steps=40, top_k=4, batch_size=16, seed=0)


@pytest.fixture(scope="module")
def pair_lm():
    """PairLM, its embedding table, every prompt and the margin of every target after it."""
    params = PairLM().init(jax.random.PRNGKey(1), jnp.zeros(2, jnp.int32))
    table = params["params"]["embed"]["embedding"]
    prompts = jnp.array(list(itertools.product(range(12), repeat=2)))
    logits = jax.vmap(lambda ids: pair_embed_logits(params, table[ids]))(prompts)
    margins = np.asarray(margin(logits[None, :, :], jnp.arange(12)[:, None]), np.float64)  # (target, prompt)
    # No margin sits within float32 rounding of 0, so the verdicts below cannot flip.
    assert np.min(np.abs(margins)) > 1e-4
    return params, table, np.asarray(prompts), margins


@pytest.fixture(scope="module")
def pair_search(pair_lm):
    params, table, *_ = pair_lm
    return token_search(pair_embed_logits, params, table, jnp.zeros(2, jnp.int32), jnp.arange(12), **GCG)


def test_token_search_reaches_every_reachable_target_and_no_other(pair_lm, pair_search):
    params, table, prompts, margins = pair_lm
    result = pair_search
    assert isinstance(result, TokenResult)
    reachable = margins.max(axis=1) > 0
    assert 0 < (~reachable).sum() and reachable.sum() > 6  # both kinds present
    np.testing.assert_array_equal(np.asarray(result.reached), reachable)
    # The reported margin of each prompt is the brute-force margin of that prompt.
    index = np.asarray(result.ids) @ np.array([12, 1])
    np.testing.assert_allclose(result.margin, margins[np.arange(12), index], atol=1e-6)
    logits = jax.vmap(lambda ids: pair_embed_logits(params, table[ids]))(result.ids)
    np.testing.assert_allclose(result.log_prob, log_prob(logits, jnp.arange(12)), atol=1e-6)
    # Reached targets stop early; the others use the whole budget.
    steps = np.asarray(result.steps_taken)
    assert np.all(steps[~reachable] == GCG["steps"]) and np.all(steps[reachable] < GCG["steps"])
    # The initial prompt (0, 0) already wins for the target it makes the argmax: zero steps.
    start_winner = int(np.argmax(margins[:, 0]))
    assert steps[start_winner] == 0 and np.array_equal(result.ids[start_winner], [0, 0])


def test_token_search_respects_editable_positions_and_allowed_tokens(pair_lm):
    params, table, _, margins = pair_lm
    allowed = np.ones(12, bool)
    allowed[[3, 4, 5]] = False
    result = token_search(pair_embed_logits, params, table, jnp.array([9, 0]), jnp.arange(12), editable=[1],
                          allowed_tokens=allowed, **GCG)
    ids = np.asarray(result.ids)
    assert np.all(ids[:, 0] == 9)
    assert np.all(allowed[ids[:, 1]])
    # Truth for this restricted search space: prompts (9, v) with v allowed (or the start, 0).
    options = 9 * 12 + np.flatnonzero(allowed)
    reachable = margins[:, options].max(axis=1) > 0
    assert np.all(np.asarray(result.reached) <= reachable)  # never claims the impossible
    mask = np.array([False, True])
    same = token_search(pair_embed_logits, params, table, jnp.array([9, 0]), jnp.arange(12), editable=mask,
                        allowed_tokens=allowed, **GCG)
    np.testing.assert_array_equal(same.ids, result.ids)  # a bool mask and positions agree


def test_token_search_one_target_equals_its_entry_and_is_seeded(pair_lm, pair_search):
    params, table, *_ = pair_lm
    for target in (4, 9):
        one = token_search(pair_embed_logits, params, table, jnp.zeros(2, jnp.int32), target, **GCG)
        np.testing.assert_array_equal(one.ids[0], pair_search.ids[target])
        np.testing.assert_array_equal(one.steps_taken[0], pair_search.steps_taken[target])
        np.testing.assert_allclose(one.margin[0], pair_search.margin[target], atol=1e-6)
    again = token_search(pair_embed_logits, params, table, jnp.zeros(2, jnp.int32), jnp.arange(12), **GCG)
    for field in TokenResult._fields:
        np.testing.assert_array_equal(getattr(again, field), getattr(pair_search, field), err_msg=field)


def test_token_search_log_prob_objective_and_progress(pair_lm, capsys):
    params, table, _, margins = pair_lm
    start = jnp.zeros(2, jnp.int32)
    result = token_search(pair_embed_logits, params, table, start, jnp.arange(12), objective="log_prob",
                          progress=True, **GCG)
    initial = log_prob(pair_embed_logits(params, table[start]), jnp.arange(12))
    assert np.all(np.asarray(result.log_prob) >= np.asarray(initial))  # only improvements are accepted
    assert np.all(np.asarray(result.reached) <= (margins.max(axis=1) > 0))
    captured = capsys.readouterr()
    assert captured.out == "" and "gcg [" in captured.err


# ------------------------------------------------------------------ validation
def bad_continuous_calls(params):
    x0 = jnp.zeros(8)
    call = continuous_search
    return [
        (lambda: call(head_logits, params, x0, np.array([1.0])), "targets: expected integer class ids, got dtype float"),
        (lambda: call(head_logits, params, x0, np.array([True])), "targets: expected integer class ids, got dtype bool"),
        (lambda: call(head_logits, params, x0, 50), r"targets: expected ids in 0\.\.49 .*got \[50\]"),
        (lambda: call(head_logits, params, x0, [-1, 2]), r"got \[-1\]"),
        (lambda: call(head_logits, params, x0, np.zeros((2, 2), int)), "1-D array of ids, got shape"),
        (lambda: call(head_logits, params, x0, np.array([], int)), "at least one class id"),
        (lambda: call(head_logits, params, x0, 1, steps=0), "steps: expected an int >= 1, got 0"),
        (lambda: call(head_logits, params, x0, 1, steps=2.5), "steps: expected an int >= 1, got 2.5"),
        (lambda: call(head_logits, params, x0, 1, objective="hinge"), "objective: expected one of .*got 'hinge'"),
        (lambda: call(head_logits, params, x0, 1, learning_rate=0.0), "learning_rate: expected a finite number > 0"),
        (lambda: call(head_logits, params, x0, 1, noise=-1.0), "noise: expected a finite number >= 0"),
        (lambda: call(head_logits, params, x0, 1, seed="x"), "seed: expected an int or a jax.random key"),
        (lambda: call(head_logits, params, jnp.zeros(8, jnp.int32), 1), "x0: expected a floating array, got dtype int32"),
        (lambda: call(head_logits, params, jnp.zeros(5), 1), r"f\(params, x0\): the model failed on an input of shape"),
        (lambda: call(lambda p, x: jnp.outer(x, x), params, x0, 1), r"expected floating logits of shape \(C,\), got shape \(8, 8\)"),
        (lambda: call(head_logits, params, x0, 1, project=lambda x: x[:4]), r"project: expected it to return shape \(8,\)"),
    ]


def test_continuous_search_rejects_bad_inputs_clearly(lm):
    params, *_ = lm
    for call, message in bad_continuous_calls(params):
        with pytest.raises(ValueError, match=message):
            call()


def test_token_search_rejects_bad_inputs_clearly(pair_lm):
    params, table, *_ = pair_lm
    ids = jnp.zeros(2, jnp.int32)
    call = token_search
    cases = [
        (lambda: call(pair_embed_logits, params, table, ids, 12), r"targets: expected ids in 0\.\.11"),
        (lambda: call(pair_embed_logits, params, table, ids, 1.0), "targets: expected integer class ids"),
        (lambda: call(pair_embed_logits, params, table, jnp.zeros((1, 2), jnp.int32), 1),
         r"prompt_ids: expected a non-empty 1-D integer array \(T,\), got shape \(1, 2\)"),
        (lambda: call(pair_embed_logits, params, table, jnp.zeros(2), 1), "prompt_ids: .*got shape .* dtype float32"),
        (lambda: call(pair_embed_logits, params, table, jnp.array([0, 12]), 1),
         r"prompt_ids: expected ids in 0\.\.11 \(embedding_table has 12 rows\), got \[12\]"),
        (lambda: call(pair_embed_logits, params, table[0], ids, 1), r"embedding_table: expected a floating array of shape \(V, d\)"),
        (lambda: call(pair_embed_logits, params, table[:, :3], ids, 1), r"the model failed on an input of shape \(2, 3\)"),
        (lambda: call(pair_embed_logits, params, table, jnp.zeros(3, jnp.int32), 1), r"input of shape \(3, 4\)"),
        (lambda: call(pair_embed_logits, params, table, ids, 1, steps=0), "steps: expected an int >= 1, got 0"),
        (lambda: call(pair_embed_logits, params, table, ids, 1, top_k=0), "top_k: expected an int >= 1"),
        (lambda: call(pair_embed_logits, params, table, ids, 1, batch_size=-3), "batch_size: expected an int >= 1"),
        (lambda: call(pair_embed_logits, params, table, ids, 1, objective="ce"), "objective: expected one of"),
        (lambda: call(pair_embed_logits, params, table, ids, 1, editable=[]), "at least one editable position"),
        (lambda: call(pair_embed_logits, params, table, ids, 1, editable=[2]), r"editable: expected positions in 0\.\.1"),
        (lambda: call(pair_embed_logits, params, table, ids, 1, editable=np.ones(3, bool)), r"bool mask of shape \(2,\)"),
        (lambda: call(pair_embed_logits, params, table, ids, 1, allowed_tokens=np.ones(5, bool)),
         r"allowed_tokens: expected a bool mask of shape \(12,\), got shape \(5,\)"),
        (lambda: call(pair_embed_logits, params, table, ids, 1, allowed_tokens=np.zeros(12, bool)), "at least one allowed"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            bad()
