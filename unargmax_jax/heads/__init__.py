"""Finding and validating a head (W, b) in the files users have.

A loader turns a file into a :class:`Head`: the weights ``W`` (C x d, one row per
token), an optional bias ``b`` (C,), the array names they came from and the file.

Supported formats (dispatch on the file name's ending, see ``load._FORMATS``; a ``.bin`` is
told apart by its first bytes; a directory stands for its ``model.safetensors``,
``model.safetensors.index.json``, ``flax_model.msgpack``, ``pytorch_model.bin`` or
``model.bin``, else its only head file):

* ``.npz`` (NumPy archives, as written by ``np.savez``; the published tool's format).
  Read with ``allow_pickle=False`` only: an object array is refused, never unpickled.
  Array names and shapes are read from the ``.npy`` headers, so only W and b are loaded.
* ``.safetensors`` and sharded checkpoints (``*.safetensors.index.json``, whose
  ``weight_map`` names a shard file per tensor). Every header is checked against the file
  (sizes, offsets, dtypes) before anything is read; tensors are memory-mapped through
  ``safetensors.safe_open(..., framework="numpy")``, except bfloat16 and float8, read from
  the mapped bytes and upcast (exactly) to float32 a block of rows at a time.
* ``.msgpack`` Flax checkpoints (``flax.serialization``; plain data, no pickle) and, in
  Python, a Flax params pytree (:func:`head_from_flax`): a ``Dense`` kernel [d, C]
  (transposed) with its bias, or a tied ``nn.Embed`` embedding [C, d]. Leaves are named
  by their ``/``-joined path without ``params/`` (``lm_head/kernel``); a safetensors-style
  name (``lm_head.weight``) given as ``--weight`` means the same module.
* ``.gguf`` (llama.cpp), through the optional ``gguf`` package
  (``pip install 'unargmax_jax[gguf]'``): tensors are dequantised with
  ``gguf.quants.dequantize`` a block of rows at a time. GGUF lists dimensions fastest
  first, so a head stored as ``[d, C]`` is read as C x d; the rows are checked against the
  vocabulary size (``tokenizer.ggml.tokens``) when the file has one. A ``gguf-split`` model
  (``*-00001-of-0000N.gguf``) is read whole from any of its shards.
* PyTorch zip checkpoints (``pytorch_model.bin``, ``.pt``, ``.pth``), without torch and
  without executing pickle: a restricted unpickler allows only what a state dict uses and
  refuses any other global by name; storages are read from the zip (:mod:`.pytorch`).
  Legacy non-zip torch files are refused with the conversion advice.
* CTranslate2 ``model.bin`` (the spec format read directly: float32/float16/bfloat16, int8
  and int16 with their ``_scale``, aliases), with ``vocabulary.json``/``.txt`` and the
  decoder's final LayerNorm (:mod:`.ctranslate2`).
* Marian binary models (``.bin``; float, and intgemm8/16 matrices followed by their float
  multiplier), with vocabularies from ``.spm``, ``.yml`` or ``.json`` (:mod:`.marian`).

Adding a format means writing one module with a ``_Format`` subclass (the ``_ArrayFile``
interface of :mod:`.formats`: ``entries``, ``read``, ``close`` and the default names) and
registering its ending in ``load._FORMATS``; the name resolution (:func:`.select._select`)
and validation (:func:`validate_head`) are shared.

Name resolution (the first name present wins; ``--weight``/``--bias`` override):

* npz: the weight is ``W`` (C x d), else the published tool's ``decoder_Wemb``, which its
  README documents as stored d x C and is transposed (unless a bias shows the file is
  already C x d). The bias is ``b``, or Marian's ``decoder_ff_logit_out_b`` next to
  ``decoder_Wemb``.
* safetensors (``SAFETENSORS_WEIGHT_NAMES``): an explicit head (``lm_head.weight``,
  GPT-NeoX's ``embed_out.weight``), then the input embeddings of models that tie them to
  the output (Llama ``model.embed_tokens``, GPT-2 ``transformer.wte``, BERT
  ``[bert.|model.]embeddings.word_embeddings``, T5/BART/Marian ``[model.]shared``,
  ``model.decoder.embed_tokens``), then BERT's masked-LM ``cls.predictions.decoder``. The
  bias is the head's own (``lm_head.bias``; ``cls.predictions.bias`` for BERT), else a
  Marian/BART ``final_logits_bias`` (stored (1, C)).
* gguf: ``output.weight`` (bias ``output.bias``), else the tied ``token_embd.weight``.
* PyTorch: the safetensors names, then ``PYTORCH_HEAD_NAMES`` (``decoder.out.weight``,
  ``generator.weight``, ...), each also under the ``PYTORCH_WRAPPERS`` (``state_dict.``,
  ``module.``, ...); the bias is the layer's own, else as for safetensors.
* CTranslate2: ``decoder/projection/weight`` (bias ``decoder/projection/bias``), else
  ``decoder/embeddings/weight``.
* Marian binary: ``decoder_ff_logit_out_W`` (stored d x C), else ``decoder_Wemb`` or
  ``Wemb``; the bias ``decoder_ff_logit_out_b``.

Token strings come from ``tokenizer.json`` or ``vocab.txt`` next to the weights, or GGUF
metadata (:mod:`unargmax_jax.heads.vocab`); the final LayerNorm/RMSNorm parameters from the
names in ``NORM_NAMES``.

Biases stored as (1, C) or (C, 1) are flattened. An explicit name that is not in the file
is an error; when no weight is found, the error lists the file's 2-D arrays.

Values: float16, bfloat16 and float8 are upcast to float32 (exactly); float32 and float64
are kept; integers are converted to float64 (exactly: magnitudes above 2^53 are refused);
GGUF quantised blocks become the float32 values llama.cpp computes. Verdicts are about
these values.

Modules: :mod:`.validate` (:func:`validate_head`, the errors), :mod:`.names` (the name
tables), :mod:`.head` (:class:`Head`, :class:`FinalNorm`), :mod:`.formats` (the interface
every format provides), one module per format (:mod:`.npz`, :mod:`.safetensors`,
:mod:`.gguf`, :mod:`.flax`, :mod:`.pytorch`, :mod:`.ctranslate2`, :mod:`.marian`), :mod:`.select` (choosing W and b in an opened file),
:mod:`.load` (:func:`load_head`, the registry), :mod:`.vocab` (token strings).
"""

from .flax import head_from_flax as head_from_flax
from .head import FinalNorm as FinalNorm
from .head import Head as Head
from .load import example_head_path as example_head_path
from .load import load_head as load_head
from .names import DEFAULT_BIAS_NAMES as DEFAULT_BIAS_NAMES
from .names import DEFAULT_WEIGHT_NAMES as DEFAULT_WEIGHT_NAMES
from .names import DIRECTORY_FILE_NAMES as DIRECTORY_FILE_NAMES
from .names import FLAX_EMBED_MODULES as FLAX_EMBED_MODULES
from .names import FLAX_HEAD_MODULES as FLAX_HEAD_MODULES
from .names import FLAX_OTHER_BIAS_NAMES as FLAX_OTHER_BIAS_NAMES
from .names import FLAX_TIED_BIAS_NAMES as FLAX_TIED_BIAS_NAMES
from .names import GGUF_BIAS_NAMES as GGUF_BIAS_NAMES
from .names import GGUF_WEIGHT_NAMES as GGUF_WEIGHT_NAMES
from .names import NORM_NAMES as NORM_NAMES
from .names import SAFETENSORS_BIAS_NAMES as SAFETENSORS_BIAS_NAMES
from .names import SAFETENSORS_OTHER_BIAS_NAMES as SAFETENSORS_OTHER_BIAS_NAMES
from .names import SAFETENSORS_WEIGHT_NAMES as SAFETENSORS_WEIGHT_NAMES
from .names import TRANSPOSED_WEIGHT_NAMES as TRANSPOSED_WEIGHT_NAMES
from .validate import HeadError as HeadError
from .validate import HeadTypeError as HeadTypeError
from .validate import aligned as aligned
from .validate import validate_head as validate_head
