"""Flax heads: params pytrees (:func:`head_from_flax`) and ``.msgpack`` checkpoints."""

import functools
import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import linen as nn
from flax.core import freeze
from flax.serialization import msgpack_serialize
from hypothesis import given, settings
from hypothesis import strategies as st

from unargmax_jax.heads import HeadError, head_from_flax, load_head

rng = np.random.default_rng(2)


def normal(*shape):
    return rng.normal(size=shape).astype(np.float32)


class TinyLM(nn.Module):
    """Embedding, one hidden layer, a final LayerNorm, then both kinds of head."""

    classes: int = 13
    features: int = 5

    @nn.compact
    def __call__(self, ids):
        embed = nn.Embed(self.classes, self.features, name="embed_tokens")
        position = nn.Embed(32, self.features, name="embed_positions")
        hidden = embed(ids) + position(jnp.arange(ids.shape[0]))
        hidden = nn.LayerNorm(name="ln_f")(nn.tanh(nn.Dense(self.features, name="mlp")(hidden)))
        return hidden, nn.Dense(self.classes, name="lm_head")(hidden), embed.attend(hidden)


@pytest.fixture(scope="module")
def tiny_lm():
    model = TinyLM()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((4,), jnp.int32))
    hidden, logits, tied = model.apply(variables, jnp.array([1, 5, 9, 12]))
    return variables, np.asarray(hidden, np.float64), np.asarray(logits), np.asarray(tied)


# float32 parameters, d = 5: the module's float32 matmul against ours in float64.
TOL = dict(rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------- head_from_flax
def test_dense_head_matches_the_modules_output(tiny_lm):
    variables, hidden, logits, _ = tiny_lm
    head = head_from_flax(variables["params"])
    assert (head.weight_name, head.bias_name, head.source) == ("lm_head/kernel", "lm_head/bias", None)
    assert head.W.shape == (13, 5) and head.W.flags.c_contiguous
    np.testing.assert_array_equal(head.W, np.asarray(variables["params"]["lm_head"]["kernel"]).T)
    np.testing.assert_allclose(hidden @ head.W.T + head.b, logits, **TOL)
    assert head.tokens is None and head.tokens_source is None
    assert head_from_flax(variables["params"], bias=False).b is None


def test_tied_embedding_with_attend(tiny_lm):
    variables, hidden, _, tied = tiny_lm
    for path in ["embed_tokens", "params/embed_tokens", "embed_tokens/embedding", "/embed_tokens/"]:
        head = head_from_flax(variables, path=path)
        assert head.weight_name == "embed_tokens/embedding" and head.b is None and head.bias_name is None
        np.testing.assert_allclose(hidden @ head.W.T, tied, **TOL)
    # Without the lm_head, the token embedding (not the position table) is the head.
    params = {k: v for k, v in variables["params"].items() if k != "lm_head"}
    assert head_from_flax(params).weight_name == "embed_tokens/embedding"


@pytest.mark.parametrize("wrap", [
    lambda v: v,  # the whole variables dict
    lambda v: v["params"],
    freeze,
    lambda v: {"params": freeze(v["params"]), "batch_stats": {"bn": {"mean": np.zeros(3)}}},  # other collections
    lambda v: jax.tree_util.tree_map(np.asarray, dict(v)),
])
def test_the_params_tree_may_come_wrapped(tiny_lm, wrap):
    variables, hidden, logits, _ = tiny_lm
    head = head_from_flax(wrap(variables))
    assert head.weight_name == "lm_head/kernel"
    np.testing.assert_allclose(hidden @ head.W.T + head.b, logits, **TOL)


def test_weight_name_round_trips_as_path(tiny_lm):
    variables = tiny_lm[0]
    head = head_from_flax(variables)
    for path in [head.weight_name, f"params/{head.weight_name}", f"params/{head.weight_name} (transposed)", "lm_head"]:
        again = head_from_flax(variables, path=path)
        np.testing.assert_array_equal(again.W, head.W)
        assert again.weight_name == head.weight_name


def test_final_norm_in_the_tree(tiny_lm):
    variables = tiny_lm[0]
    assert head_from_flax(variables).norm is None  # "ln_f" alone is not an HF name
    params = {"transformer": {"ln_f": variables["params"]["ln_f"], "wte": variables["params"]["embed_tokens"]}}
    norm = head_from_flax(params).norm
    assert norm.kind == "layernorm" and norm.names == ("transformer/ln_f/scale", "transformer/ln_f/bias")
    assert norm.gamma.shape == (5,) and norm.eps is None
    llama = {"model": {"embed_tokens": {"embedding": normal(7, 3)}, "norm": {"weight": normal(3)}}}
    norm = head_from_flax(llama).norm
    assert (norm.kind, norm.beta, norm.names) == ("rmsnorm", None, ("model/norm/weight",))


def test_no_config_json_is_read_for_a_pytree(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"rms_norm_eps": 0.5}))
    (tmp_path / "vocab.txt").write_text("a\nb\nc\n")
    monkeypatch.chdir(tmp_path)
    head = head_from_flax({"model": {"embed_tokens": {"embedding": normal(3, 2)}, "norm": {"weight": normal(2)}}})
    assert head.norm.eps is None and head.tokens is None


def test_bare_dense_and_boxed_params():
    variables = nn.Dense(7).init(jax.random.PRNGKey(1), jnp.zeros((1, 3)))
    head = head_from_flax(variables)  # {"params": {"kernel", "bias"}}: a layer with no module name
    assert (head.weight_name, head.bias_name, head.W.shape) == ("kernel", "bias", (7, 3))
    boxed = nn.Dense(7, kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(), (None, "vocab")),
                     name="lm_head")
    x = jnp.arange(3.0)[None]
    variables = nn.Sequential([boxed]).init(jax.random.PRNGKey(2), x)
    head = head_from_flax(variables)
    out = nn.Sequential([boxed]).apply(variables, x)
    np.testing.assert_allclose(np.asarray(x, np.float64) @ head.W.T + head.b, np.asarray(out), **TOL)


def test_bfloat16_params_are_upcast_exactly():
    kernel = normal(3, 4).astype(ml_dtypes.bfloat16)
    head = head_from_flax({"head": {"kernel": jnp.asarray(kernel)}})
    assert head.W.dtype == np.float32
    np.testing.assert_array_equal(head.W, kernel.T.astype(np.float32))


@pytest.mark.parametrize("params, expected", [
    # Named head modules in the documented order, whatever the sizes.
    ({"head": {"kernel": normal(4, 3)}, "classifier": {"kernel": normal(4, 9)}}, "head/kernel"),
    ({"logits": {"kernel": normal(4, 3)}, "embed_tokens": {"embedding": normal(30, 4)}}, "logits/kernel"),
    ({"my_lm_head": {"kernel": normal(4, 3)}, "wte": {"embedding": normal(30, 4)}}, "my_lm_head/kernel"),
    # Embedding-like names, never a position or token-type table.
    ({"wpe": {"embedding": normal(64, 4)}, "tok_emb": {"embedding": normal(9, 4)}}, "tok_emb/embedding"),
    ({"pos_embedding": {"embedding": normal(64, 4)}, "mlp": {"kernel": normal(4, 8)}}, "mlp/kernel"),
    # Nothing known: the Dense kernel with the most classes, before any unnamed embedding.
    ({"a": {"kernel": normal(4, 6)}, "b": {"kernel": normal(4, 11)}, "c": {"table": {"embedding": normal(50, 4)}}},
     "b/kernel"),
    # Two modules of the same name: the wider one.
    ({"enc": {"head": {"kernel": normal(4, 3)}}, "dec": {"head": {"kernel": normal(4, 5)}}}, "dec/head/kernel"),
])
def test_which_module_is_the_head(params, expected):
    assert head_from_flax(params).weight_name == expected


@settings(max_examples=20, deadline=None, derandomize=True)
@given(d=st.integers(1, 6), classes=st.integers(1, 9), with_bias=st.booleans(),
       name=st.sampled_from(["lm_head", "output", "proj", "classifier"]))
def test_any_dense_head_is_its_kernel_transposed(d, classes, with_bias, name):
    kernel = np.arange(d * classes, dtype=np.float32).reshape(d, classes) / 8
    module = {"kernel": kernel, **({"bias": np.arange(classes, dtype=np.float32)} if with_bias else {})}
    head = head_from_flax({"params": {name: module, "norm": {"scale": np.ones(d)}}})
    np.testing.assert_array_equal(head.W, kernel.T)
    assert (head.b is not None) == with_bias and head.weight_name == f"{name}/kernel"
    x = np.linspace(-1, 1, d)
    expected = x @ kernel + (module["bias"] if with_bias else 0)
    np.testing.assert_allclose(head.W @ x + (head.b if with_bias else 0), expected, rtol=1e-12)


def test_errors_list_the_candidates(tiny_lm):
    variables = tiny_lm[0]
    with pytest.raises(HeadError, match=r"no Dense kernel or Embed embedding at 'nope'; 2-D leaves: .*"
                                        r"'lm_head/kernel'.*\(5, 13\)"):
        head_from_flax(variables, path="nope")
    with pytest.raises(HeadError, match=r"expected a Flax params tree .*got list"):
        head_from_flax([np.ones((2, 2))])
    with pytest.raises(HeadError, match=r"2-D arrays in the file: \['norm/w'\] \(shapes \(3, 3\)\) "
                                        r"\(choose one with path=\.\.\.\)"):
        head_from_flax({"norm": {"w": np.ones((3, 3)), "scale": np.ones(3)}})
    with pytest.raises(HeadError, match=r"lm_head/kernel.*expected finite weights"):
        head_from_flax({"lm_head": {"kernel": np.full((2, 3), np.nan)}})
    with pytest.raises(HeadError, match=r"expected a bias of shape \(3,\)"):
        head_from_flax({"lm_head": {"kernel": np.ones((2, 3)), "bias": np.ones(4)}})
    with pytest.raises(HeadError, match="expected 2-D weights"):
        head_from_flax({"lm_head": {"kernel": np.ones((2, 3)), "bias": np.ones(3)}}, path="lm_head/bias")


# ------------------------------------------------------------------ msgpack files
def write_msgpack(path, params):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgpack_serialize(jax.tree_util.tree_map(np.asarray, params)))
    return path


def test_msgpack_file_and_directory(tiny_lm, tmp_path):
    variables, hidden, logits, tied = tiny_lm
    path = write_msgpack(tmp_path / "flax_model.msgpack", dict(variables["params"]))
    for where in [path, tmp_path]:
        head = load_head(where)
        assert head.source == str(path) and head.weight_name == "lm_head/kernel"
        np.testing.assert_allclose(hidden @ head.W.T + head.b, logits, **TOL)
    head = load_head(path, weight="embed_tokens", no_bias=True)
    np.testing.assert_allclose(hidden @ head.W.T, tied, **TOL)
    # weight_name goes back in as --weight (the CLI re-runs with it).
    assert load_head(path, weight=load_head(path).weight_name).weight_name == "lm_head/kernel"
    assert load_head(path, weight="lm_head", bias="lm_head/bias").bias_name == "lm_head/bias"


def test_msgpack_tokens_and_eps_come_from_files_beside_it(tmp_path):
    params = {"model": {"embed_tokens": {"embedding": normal(4, 3)}, "norm": {"weight": normal(3)}}}
    path = write_msgpack(tmp_path / "flax_model.msgpack", params)
    (tmp_path / "config.json").write_text(json.dumps({"rms_norm_eps": 1e-6}))
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": [["<unk>", 0.0], ["▁a", -1.0]]}}))
    head = load_head(path)
    assert head.tokens == ("<unk>", "▁a", None, None)
    assert head.tokens_source == str(tmp_path / "tokenizer.json")
    assert head.norm.kind == "rmsnorm" and head.norm.eps == 1e-6
    assert load_head(path, tokens=False).tokens is None


@pytest.mark.parametrize("params, weight, bias", [
    # FlaxLlamaForCausalLM, untied and tied.
    ({"model": {"embed_tokens": {"embedding": normal(9, 4)}, "norm": {"weight": normal(4)}},
      "lm_head": {"kernel": normal(4, 9)}}, "lm_head/kernel", None),
    ({"model": {"embed_tokens": {"embedding": normal(9, 4)}, "layers": {"0": {"mlp": {"up_proj": {"kernel": normal(4, 16)}}}}}},
     "model/embed_tokens/embedding", None),
    # FlaxGPT2LMHeadModel: tied wte, a wider position table beside it.
    ({"transformer": {"wte": {"embedding": normal(9, 4)}, "wpe": {"embedding": normal(32, 4)},
                      "ln_f": {"scale": normal(4), "bias": normal(4)}}}, "transformer/wte/embedding", None),
    # FlaxBertForMaskedLM: tied decoder, its bias in cls/predictions.
    ({"bert": {"embeddings": {"word_embeddings": {"embedding": normal(9, 4)},
                              "position_embeddings": {"embedding": normal(32, 4)},
                              "token_type_embeddings": {"embedding": normal(2, 4)}}},
      "cls": {"predictions": {"bias": normal(9), "transform": {"dense": {"kernel": normal(4, 4), "bias": normal(4)},
                                                               "LayerNorm": {"scale": normal(4), "bias": normal(4)}}}}},
     "bert/embeddings/word_embeddings/embedding", "cls/predictions/bias"),
    # FlaxRobertaForMaskedLM: tied, bias at lm_head/bias, lm_head/dense is d x d.
    ({"roberta": {"embeddings": {"word_embeddings": {"embedding": normal(9, 4)}}},
      "lm_head": {"dense": {"kernel": normal(4, 4)}, "bias": normal(9), "layer_norm": {"scale": normal(4), "bias": normal(4)}}},
     "roberta/embeddings/word_embeddings/embedding", "lm_head/bias"),
    # FlaxBartForConditionalGeneration: shared embedding, final_logits_bias stored (1, C).
    ({"model": {"shared": {"embedding": normal(9, 4)}, "decoder": {"embed_positions": {"embedding": normal(34, 4)}}},
      "final_logits_bias": normal(1, 9)}, "model/shared/embedding", "final_logits_bias"),
])
def test_hugging_face_flax_checkpoints(tmp_path, params, weight, bias):
    path = write_msgpack(tmp_path / "flax_model.msgpack", params)
    head = load_head(tmp_path)
    assert (head.weight_name, head.bias_name) == (weight, bias)
    assert head.W.shape == (9, 4)
    leaf = lambda name: functools.reduce(lambda tree, key: tree[key], name.split("/"), params)  # noqa: E731
    np.testing.assert_array_equal(head.W, leaf(weight).T if weight.endswith("kernel") else leaf(weight))
    if bias is not None:
        np.testing.assert_array_equal(head.b, leaf(bias).reshape(-1))
    assert load_head(path, no_bias=True).b is None


def test_safetensors_style_names_in_a_msgpack(tmp_path):
    params = {"model": {"embed_tokens": {"embedding": normal(9, 4)}}, "lm_head": {"kernel": normal(4, 9), "bias": normal(9)}}
    path = write_msgpack(tmp_path / "flax_model.msgpack", params)
    head = load_head(path, weight="model.embed_tokens.weight", no_bias=True)
    assert head.weight_name == "model/embed_tokens/embedding"
    head = load_head(path, weight="lm_head.weight", bias="lm_head.bias")
    assert (head.weight_name, head.bias_name) == ("lm_head/kernel", "lm_head/bias")
    np.testing.assert_array_equal(head.W, params["lm_head"]["kernel"].T)


def test_msgpack_errors(tmp_path):
    path = write_msgpack(tmp_path / "m.msgpack", {"lm_head": {"kernel": normal(4, 3)}, "mlp": {"kernel": normal(4, 4)}})
    with pytest.raises(HeadError, match=r"m\.msgpack: no Dense kernel or Embed embedding at 'head'; "
                                        r"2-D leaves: \['lm_head/kernel', 'mlp/kernel'\] \(shapes \(4, 3\), \(4, 4\)\)"):
        load_head(path, weight="head")
    with pytest.raises(HeadError, match=r"m\.msgpack: no bias array named 'nope'"):
        load_head(path, bias="nope")
    (tmp_path / "junk.msgpack").write_bytes(b"\xc1\xc1\xc1")
    with pytest.raises(HeadError, match=r"junk\.msgpack: not a readable Flax msgpack file"):
        load_head(tmp_path / "junk.msgpack")
    (tmp_path / "array.msgpack").write_bytes(msgpack_serialize(normal(3, 2)))
    with pytest.raises(HeadError, match=r"array\.msgpack: expected a Flax params tree"):
        load_head(tmp_path / "array.msgpack")
    (tmp_path / "scalars.msgpack").write_bytes(msgpack_serialize({"step": 3, "name": "x"}))
    with pytest.raises(HeadError, match=r"scalars\.msgpack: no weight array to use as the head; 2-D arrays in the file: none"):
        load_head(tmp_path / "scalars.msgpack")
