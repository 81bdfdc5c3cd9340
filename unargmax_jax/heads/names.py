"""The array names each format looks for: weights, biases, final norms (first present wins)."""

from __future__ import annotations

# npz: the published tool's names; its README documents ``decoder_Wemb`` as stored d x C.
DEFAULT_WEIGHT_NAMES = ("W", "decoder_Wemb")
DEFAULT_BIAS_NAMES = {"W": ("b",), "decoder_Wemb": ("b", "decoder_ff_logit_out_b")}
TRANSPOSED_WEIGHT_NAMES = ("decoder_Wemb",)

# safetensors: explicit heads first, then tied input embeddings, then BERT's MLM decoder
# (which HF drops from the file when it is tied, keeping only its bias).
_BERT_BIAS_NAMES = ("cls.predictions.bias", "cls.predictions.decoder.bias", "final_logits_bias")
SAFETENSORS_WEIGHT_NAMES = (
    "lm_head.weight",
    "embed_out.weight",
    "model.embed_tokens.weight",
    "transformer.wte.weight",
    "embeddings.word_embeddings.weight",
    "bert.embeddings.word_embeddings.weight",
    "model.embeddings.word_embeddings.weight",
    "shared.weight",
    "model.shared.weight",
    "model.decoder.embed_tokens.weight",
    "cls.predictions.decoder.weight",
)
SAFETENSORS_BIAS_NAMES = {
    "lm_head.weight": ("lm_head.bias", "final_logits_bias"),
    "embeddings.word_embeddings.weight": _BERT_BIAS_NAMES,
    "bert.embeddings.word_embeddings.weight": _BERT_BIAS_NAMES,
    "model.embeddings.word_embeddings.weight": _BERT_BIAS_NAMES,
    "cls.predictions.decoder.weight": _BERT_BIAS_NAMES,
}
SAFETENSORS_OTHER_BIAS_NAMES = ("final_logits_bias",)  # Marian/BART add it to any head's logits
GGUF_WEIGHT_NAMES = ("output.weight", "token_embd.weight")
GGUF_BIAS_NAMES = {"output.weight": ("output.bias",)}
DIRECTORY_FILE_NAMES = ("model.safetensors", "model.safetensors.index.json", "flax_model.msgpack", "pytorch_model.bin",
                        "model.bin")
# The final norm before the head: (gamma, beta) names, the first pair present wins.
NORM_NAMES = (
    ("model.norm.weight", "model.norm.bias"),  # Llama, Mistral, SmolLM, Qwen: RMSNorm
    ("transformer.ln_f.weight", "transformer.ln_f.bias"),  # GPT-2
    ("gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias"),
    ("model.decoder.final_layer_norm.weight", "model.decoder.final_layer_norm.bias"),  # OPT, BART
    ("model.final_layernorm.weight", "model.final_layernorm.bias"),
    ("cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias"),  # BERT MLM
    ("cls.predictions.transform.LayerNorm.gamma", "cls.predictions.transform.LayerNorm.beta"),
    ("output_norm.weight", "output_norm.bias"),  # GGUF
    ("model/norm/weight", "model/norm/bias"),  # Flax trees (HF Flax Llama, GPT-2, BERT)
    ("model/norm/scale", "model/norm/bias"),
    ("transformer/ln_f/scale", "transformer/ln_f/bias"),
    ("model/decoder/final_layer_norm/scale", "model/decoder/final_layer_norm/bias"),  # OPT
    ("cls/predictions/transform/LayerNorm/scale", "cls/predictions/transform/LayerNorm/bias"),
    ("lm_head/layer_norm/scale", "lm_head/layer_norm/bias"),  # RoBERTa MLM
    ("decoder/layer_norm/gamma", "decoder/layer_norm/beta"),  # CTranslate2 (pre-norm decoders)
)
_LAYERNORM_HINTS = ("ln_f", "layer_norm", "layernorm")
_EPS_KEYS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon")

# Flax modules whose kernel/embedding is the head, most specific first; then tied embeddings.
# ``embed_out`` is GPT-NeoX's head; ``decoder`` is the untied MLM decoder of BERT/RoBERTa
# (a tied one has no params of its own: HF applies it with the embedding's kernel).
FLAX_HEAD_MODULES = ("lm_head", "head", "output", "logits", "classifier", "embed_out", "decoder")
FLAX_EMBED_MODULES = ("embed_tokens", "wte", "embedding", "word_embeddings", "token_embd", "tok_embeddings",
                      "embed", "shared")
# Embedding tables of positions, token types or segments are never the vocabulary.
_FLAX_NOT_VOCABULARY = ("pos", "wpe", "type", "segment")
# Hugging Face Flax models keep some heads' biases outside the layer: Bart/Marian/Pegasus
# add ``final_logits_bias`` (1, C) to any head; BERT's and RoBERTa's MLM heads tied to
# ``word_embeddings`` have ``cls/predictions/bias`` and ``lm_head/bias``.
FLAX_OTHER_BIAS_NAMES = ("final_logits_bias",)
FLAX_TIED_BIAS_NAMES = ("cls/predictions/bias", "lm_head/bias")

# PyTorch state dicts: the safetensors names, else the heads of hand-written seq2seq models
# (the PyTorch tutorial's ``decoder.out``, OpenNMT's ``generator``, fairseq's
# ``output_projection``), each also under the wrappers training scripts save them in.
PYTORCH_HEAD_NAMES = ("decoder.out.weight", "out.weight", "generator.weight", "decoder.output_projection.weight",
                      "output_projection.weight", "decoder.fc_out.weight", "fc_out.weight")
PYTORCH_WRAPPERS = ("", "state_dict.", "model_state_dict.", "model.", "module.", "state_dict.module.")
# CTranslate2 specs: the decoder's output projection (often an alias of the embeddings).
CT2_WEIGHT_NAMES = ("decoder/projection/weight", "projection/weight", "decoder/embeddings/weight")
CT2_BIAS_NAMES = {"decoder/projection/weight": ("decoder/projection/bias",),
                  "projection/weight": ("projection/bias",)}
CT2_VOCABULARY_FILES = ("vocabulary.json", "vocabulary.txt", "target_vocabulary.json", "target_vocabulary.txt",
                        "shared_vocabulary.json", "shared_vocabulary.txt")
# Marian: an untied output layer [d, C], else the tied decoder or shared embeddings [C, d].
MARIAN_WEIGHT_NAMES = ("decoder_ff_logit_out_W", "decoder_Wemb", "Wemb")
MARIAN_BIAS_NAME = "decoder_ff_logit_out_b"
