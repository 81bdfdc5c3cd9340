"""What comes with a head: token strings, the final norm, and Flax params/msgpack heads."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax.serialization import msgpack_serialize
from safetensors.numpy import save_file

from unargmax_jax.heads import HeadError, head_from_flax, load_head
from unargmax_jax.heads.vocab import read_vocabulary


def _safetensors_dir(tmp_path, tensors, **files):
    tmp_path.mkdir(exist_ok=True)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    for name, text in files.items():
        (tmp_path / name.replace("_", ".", 1)).write_text(text, encoding="utf-8")
    return tmp_path


W = np.arange(24, dtype=np.float32).reshape(6, 4) / 7


# ----------------------------------------------------------------- token strings
@pytest.mark.parametrize("model", [
    {"type": "BPE", "vocab": {"a": 0, "Ġb": 1, "c": 2, "d": 3}},
    {"type": "WordPiece", "vocab": {"a": 0, "Ġb": 1, "c": 2, "d": 3}},
    {"type": "Unigram", "vocab": [["a", 0.0], ["Ġb", -1.0], ["c", -2.0], ["d", -3.0]]},
])
def test_tokenizer_json_kinds_and_added_tokens(tmp_path, model):
    tokenizer = {"model": model, "added_tokens": [{"id": 4, "content": "<eos>"}, {"id": 3, "content": "[D]"}]}
    directory = _safetensors_dir(tmp_path, {"lm_head.weight": W}, tokenizer_json=json.dumps(tokenizer))
    head = load_head(directory)
    # Six rows, five strings: the padding row has None. Added tokens override by id.
    assert head.tokens == ("a", "Ġb", "c", "[D]", "<eos>", None)
    assert head.tokens_source == str(directory / "tokenizer.json")
    assert load_head(directory, tokens=False).tokens is None


def test_vocab_txt_and_damaged_tokenizer_json(tmp_path):
    lines = "[PAD]\n[CLS]\nhello\n##lo\nwörld\n\n"  # the empty line is token 5's (empty) string
    directory = _safetensors_dir(tmp_path, {"lm_head.weight": W}, vocab_txt=lines, tokenizer_json="{not json")
    head = load_head(directory)
    assert head.tokens == ("[PAD]", "[CLS]", "hello", "##lo", "wörld", "")
    assert head.tokens_source == str(directory / "vocab.txt")  # the damaged tokenizer.json was passed over


def test_longer_vocabulary_is_cut_and_none_found_is_none(tmp_path):
    assert read_vocabulary(tmp_path) == (None, None)
    directory = _safetensors_dir(tmp_path, {"lm_head.weight": W[:2]}, vocab_txt="a\nb\nc\n")
    assert load_head(directory).tokens == ("a", "b")


# -------------------------------------------------------------------- final norm
@pytest.mark.parametrize("tensors, config, kind, names, eps", [
    ({"model.norm.weight": np.full(4, 2.0, np.float32)}, {"rms_norm_eps": 1e-5}, "rmsnorm",
     ("model.norm.weight",), 1e-5),
    ({"transformer.ln_f.weight": np.ones(4, np.float32), "transformer.ln_f.bias": np.zeros(4, np.float32)},
     {"layer_norm_epsilon": 1e-6}, "layernorm", ("transformer.ln_f.weight", "transformer.ln_f.bias"), 1e-6),
    ({"model.decoder.final_layer_norm.weight": np.ones(4, np.float32)}, {}, "layernorm",
     ("model.decoder.final_layer_norm.weight",), None),
])
def test_final_norm_is_found(tmp_path, tensors, config, kind, names, eps):
    directory = _safetensors_dir(tmp_path, {"lm_head.weight": W, **tensors}, config_json=json.dumps(config))
    norm = load_head(directory).norm
    assert (norm.kind, norm.names, norm.eps) == (kind, names, eps)
    np.testing.assert_array_equal(norm.gamma, tensors[names[0]])
    assert (norm.beta is None) == (len(names) == 1)


def test_a_norm_of_the_wrong_width_is_ignored(tmp_path):
    directory = _safetensors_dir(tmp_path, {"lm_head.weight": W, "model.norm.weight": np.ones(5, np.float32)})
    assert load_head(directory).norm is None


def test_gguf_norm_tokens_and_eps(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_token_list(["<s>", "Ġhi", "Ġдом", "x", "y", "z"])
    writer.add_tensor("token_embd.weight", W)
    writer.add_tensor("output_norm.weight", np.full(4, 0.5, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    head = load_head(path)
    np.testing.assert_array_equal(head.W, W)
    assert head.tokens == ("<s>", "Ġhi", "Ġдом", "x", "y", "z")
    assert head.norm.kind == "rmsnorm" and head.norm.names == ("output_norm.weight",)
    assert head.norm.eps == pytest.approx(1e-6)


# --------------------------------------------------------------------------- flax
class _LM(nn.Module):
    classes: int = 11

    @nn.compact
    def __call__(self, ids):
        embed = nn.Embed(self.classes, 6, name="embed_tokens")
        hidden = nn.tanh(nn.Dense(6, name="mlp")(embed(ids)))
        return hidden, nn.Dense(self.classes, name="lm_head")(hidden), embed.attend(hidden)


@pytest.fixture(scope="module")
def flax_model():
    model = _LM()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((3,), jnp.int32))
    return model, variables


def test_head_from_flax_matches_the_modules(flax_model):
    model, variables = flax_model
    hidden, logits, tied = model.apply(variables, jnp.array([1, 4, 7]))
    hidden = np.asarray(hidden, np.float64)
    dense = head_from_flax(variables)  # the whole variables dict is accepted too
    assert (dense.weight_name, dense.bias_name) == ("lm_head/kernel", "lm_head/bias")
    np.testing.assert_allclose(hidden @ dense.W.T + dense.b, logits, rtol=1e-5, atol=1e-5)
    embed = head_from_flax(variables["params"], path="params/embed_tokens")
    assert embed.weight_name == "embed_tokens/embedding" and embed.b is None
    np.testing.assert_allclose(hidden @ embed.W.T, tied, rtol=1e-5, atol=1e-5)
    assert head_from_flax(variables, bias=False).b is None


def test_flax_msgpack_files(flax_model, tmp_path):
    _, variables = flax_model
    path = tmp_path / "flax_model.msgpack"
    path.write_bytes(msgpack_serialize(jax.tree_util.tree_map(np.asarray, dict(variables["params"]))))
    from_file = load_head(tmp_path)  # a directory holding flax_model.msgpack
    np.testing.assert_array_equal(from_file.W, head_from_flax(variables).W)
    assert load_head(path, weight="embed_tokens").weight_name == "embed_tokens/embedding"
    (tmp_path / "junk.msgpack").write_bytes(b"\xc1\xc1\xc1")
    with pytest.raises(HeadError, match=r"junk.msgpack: not a readable Flax msgpack file"):
        load_head(tmp_path / "junk.msgpack")


def test_flax_errors_list_the_candidates(flax_model):
    _, variables = flax_model
    with pytest.raises(HeadError, match=r"no Dense kernel or Embed embedding at 'nope'; 2-D leaves: .*lm_head/kernel"):
        head_from_flax(variables, path="nope")
    with pytest.raises(HeadError, match="expected a Flax params tree"):
        head_from_flax([1, 2, 3])
    with pytest.raises(HeadError, match=r"no weight array to use as the head; 2-D arrays in the file: none"):
        head_from_flax({"params": {"scale": np.ones(3)}})
