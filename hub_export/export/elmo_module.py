"""The exported module: the biLM, the layer mix (`elmo`) and the signatures.

`ElmoModule` computes the output dict of `signatures.outputs` from tokens + lengths;
`build_saveable` wraps it in the object that `tf.saved_model.save` writes: TF Hub's
reusable SavedModel (`__call__`, `variables`, `trainable_variables`,
`regularization_losses`), the named signatures, and single-argument endpoints for
Keras 3's `TFSMLayer`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

# Private: TF has no public API to trace a function in the context `tf.saved_model.save`
# traces in (its cache key includes the save options), so without it the saver traces
# every function again. tests/test_export.py::test_the_saver_traces_nothing_again fails,
# naming this import, if the pinned TensorFlow changes either side of that.
from tensorflow.python.saved_model import save_context

import signatures
from hub_export.errors import HubExportError
from hub_export.export.token_cache import TokenCache
from hub_export.model.bilm import BiLM
from hub_export.model.char_ids import encode_tokens
from hub_export.model.precision import COMPUTE_DTYPES

TRAINABLE_CHOICES = ("mix", "all")
LAYER_NORM_EPSILON = 1e-12  # bilm-tf's weight_layers uses this in its layer norm

# Keras 3 TFSMLayer calls an endpoint with one positional argument; these take the
# sentence vector or the {tokens, sequence_len} dict. `*_training` apply dropout.
KERAS_ENDPOINTS = {
    "embed_sentences": ("sentences", False),
    "embed_tokens": ("tokens", False),
    "embed_sentences_training": ("sentences", True),
    "embed_tokens_training": ("tokens", True),
}


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """How the module mixes and trains; the defaults reproduce the TF Hub module.

    Args:
        trainable: str. "mix": only the mix weights and the scale are trainable; "all":
            every biLM variable is trainable too (TF Hub version 1's behaviour).
        layer_norm: bool. Normalise each layer over a sentence's tokens before mixing.
        scalar_mix_init: tuple of float or None. Initial mix weights (before softmax),
            one per layer including the token layer; None means zeros.
        freeze_mix: bool. Make the mix weights and the scale non-trainable.
        l2_coef: float. Coefficient of the l2 regularization loss on the mix weights.
        dropout: float. Dropout rate applied to `elmo` when `training=True`.
        projection_dim: int or None. A trainable projection of `elmo` and `default` to
            this width.
        seed: int. Seed for the initial projection kernel.
        compute_dtype: str. "float32" (equal to the reference) or "bfloat16" (about
            1e-2 from float32, faster only on CPUs with bfloat16 instructions; see
            `hub_export.model.precision`).
    """

    trainable: str = "mix"
    layer_norm: bool = False
    scalar_mix_init: tuple[float, ...] | None = None
    freeze_mix: bool = False
    l2_coef: float = 0.0
    dropout: float = 0.0
    projection_dim: int | None = None
    seed: int = 0
    compute_dtype: str = "float32"

    def validate(self, n_layers: int) -> None:
        """Raises HubExportError naming the flag and the value that is wrong."""
        if self.trainable not in TRAINABLE_CHOICES:
            raise HubExportError(f"--trainable: got {self.trainable!r}; allowed: mix, all")
        if self.scalar_mix_init is not None:
            if len(self.scalar_mix_init) != n_layers + 1:
                raise HubExportError(
                    f"--scalar-mix-init: got {len(self.scalar_mix_init)} values "
                    f"({','.join(map(str, self.scalar_mix_init))}); the model has {n_layers} LSTM "
                    f"layers, so it needs {n_layers + 1} (token layer first)")
            if not all(math.isfinite(v) for v in self.scalar_mix_init):
                raise HubExportError(f"--scalar-mix-init: values must be finite, got {self.scalar_mix_init}")
        if not (math.isfinite(self.l2_coef) and self.l2_coef >= 0):
            raise HubExportError(f"--l2-coef: must be a number >= 0, got {self.l2_coef}")
        if not (0.0 <= self.dropout < 1.0):
            raise HubExportError(f"--dropout: must be in [0, 1), got {self.dropout}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise HubExportError(f"--compute-dtype: got {self.compute_dtype!r}; allowed: "
                                 f"{', '.join(COMPUTE_DTYPES)}")
        if self.compute_dtype != "float32" and self.trainable == "all":
            raise HubExportError(f"--compute-dtype {self.compute_dtype} goes with --trainable mix "
                                 "only: fine-tuning the biLM itself needs float32 weights")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise HubExportError(f"--projection-dim: must be a positive integer, got {self.projection_dim}")


class ElmoModule(tf.Module):
    """biLM + layer mix: tokens and lengths -> the `signatures.outputs` dict.

    Args:
        bilm: BiLM. Its variables become trainable only with `config.trainable == "all"`.
        config: ExportConfig.
        token_cache: TokenCache or None. Precomputed token representations of a
            vocabulary; the outputs are the same with or without it.
    """

    def __init__(self, bilm: BiLM, config: ExportConfig = ExportConfig(),
                 token_cache: TokenCache | None = None, name: str = "elmo"):
        super().__init__(name=name)
        self.token_cache = token_cache
        lstm = bilm.options.lstm
        config.validate(lstm.n_layers)
        self.bilm = bilm
        self.config = config
        self.n_layers = lstm.n_layers
        n_mix = lstm.n_layers + 1
        init = np.asarray(config.scalar_mix_init or [0.0] * n_mix, np.float32)
        with tf.name_scope("aggregation"):
            self.mix_weights = tf.Variable(init, trainable=not config.freeze_mix, name="weights")
            self.scaling = tf.Variable(1.0, trainable=not config.freeze_mix, name="scaling")
        self.output_projection = None
        width = 2 * lstm.projection_dim
        if config.projection_dim:
            rng = np.random.default_rng(config.seed)
            limit = math.sqrt(6.0 / (width + config.projection_dim))
            with tf.name_scope("output_projection"):
                self.output_projection = (
                    tf.Variable(rng.uniform(-limit, limit, (width, config.projection_dim))
                                .astype(np.float32), name="kernel"),
                    tf.Variable(np.zeros(config.projection_dim, np.float32), name="bias"),
                )
        self.output_specs = signatures.output_specs(
            lstm.projection_dim, lstm.n_layers, config.projection_dim)
        # One trace of the biLM that every endpoint calls: traced once per endpoint, the
        # same graph would be traced and written four times.
        token_specs = signatures.tokens.INPUT_SPECS
        self._bilm_outputs = tf.function(
            self.bilm_outputs, autograph=False,
            input_signature=[token_specs["tokens"], token_specs["sequence_len"]])

    @property
    def module_trainable_variables(self) -> list[tf.Variable]:
        """The variables fine-tuning may change (four scalars by default)."""
        own = [self.mix_weights, self.scaling] if not self.config.freeze_mix else []
        if self.output_projection:
            own += list(self.output_projection)
        if self.config.trainable == "all":
            own += list(self.bilm.variables)
        return own

    def l2_loss(self) -> tf.Tensor:
        return self.config.l2_coef * tf.reduce_sum(tf.square(self.mix_weights))

    def _layer_norm(self, x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        # Statistics over one sentence's tokens. bilm-tf and AllenNLP pool them over the
        # whole batch, which makes a sentence's embedding depend on its neighbours; per
        # sentence they are the same for a batch of one and batch-invariant otherwise.
        m = tf.cast(mask, x.dtype)[:, :, None]  # [B, T, 1]
        count = tf.maximum(tf.reduce_sum(m, axis=[1, 2]) * tf.cast(tf.shape(x)[2], x.dtype), 1.0)
        mean = tf.reduce_sum(x * m, axis=[1, 2]) / count  # [B]
        centered = (x - mean[:, None, None]) * m
        var = tf.reduce_sum(tf.square(centered), axis=[1, 2]) / count
        return centered * tf.math.rsqrt(var + LAYER_NORM_EPSILON)[:, None, None]

    def bilm_outputs(self, tokens: tf.Tensor, sequence_len: tf.Tensor) -> dict:
        """tokens string [B, T] + sequence_len int32 [B] -> the biLM's layers, mask and
        lengths (what every endpoint shares; `training` changes only the mix)."""
        if self.token_cache is None:
            ids = encode_tokens(tokens, sequence_len, self.bilm.options.char_cnn.max_characters_per_token)
            out = self.bilm(ids)
        else:
            steps = tf.clip_by_value(sequence_len, 0, tf.shape(tokens)[1]) + 2
            out = self.bilm.contextualize(self.token_cache.token_embedding(tokens, sequence_len), steps)
        return {k: out[k] for k in ("word_emb", "lstm_outputs", "sequence_len", "mask")}

    def embed(self, tokens: tf.Tensor, sequence_len: tf.Tensor, training: bool = False) -> dict:
        """tokens string [B, T] + sequence_len int32 [B] -> the output dict."""
        out = self._bilm_outputs(tokens, sequence_len)
        mask = out["mask"]
        word_emb = out["word_emb"]
        layers = [tf.concat([word_emb, word_emb], axis=-1)] + out["lstm_outputs"]
        if self.config.layer_norm:
            layers = [self._layer_norm(x, mask) for x in layers]
        # bilm-tf adds 1/(L+1) before the softmax; it cancels out but is kept to match.
        weights = tf.nn.softmax(self.mix_weights + 1.0 / (self.n_layers + 1))
        elmo = self.scaling * tf.add_n([weights[j] * x for j, x in enumerate(layers)])
        if training and self.config.dropout:
            elmo = tf.nn.dropout(elmo, rate=self.config.dropout)
        if self.output_projection:
            kernel, bias = self.output_projection
            elmo = tf.einsum("btw,wk->btk", elmo, kernel) + bias
        elmo = tf.where(mask[:, :, None], elmo, 0.0)
        n = out["sequence_len"]
        # A sentence with no tokens has an all-zero elmo: dividing by max(n, 1) keeps
        # its `default` at 0 instead of 0/0.
        default = tf.reduce_sum(elmo, axis=1) / tf.cast(tf.maximum(n, 1), tf.float32)[:, None]
        values = {"word_emb": word_emb, "elmo": elmo, "default": default, "sequence_len": n}
        for layer, h in enumerate(out["lstm_outputs"], start=1):
            values[f"lstm_outputs{layer}"] = h
        result = {}
        for spec in self.output_specs:
            value = values[spec.name]
            value.set_shape(spec.shape)
            result[spec.name] = value
        return result

    def call(self, inputs, training: bool = False) -> dict:
        """`inputs`: the sentence vector, or a dict with `tokens` and `sequence_len`."""
        if isinstance(inputs, dict):
            tokens, sequence_len = signatures.tokens.to_tokens(inputs["tokens"], inputs["sequence_len"])
        else:
            tokens, sequence_len = signatures.default.to_tokens(inputs)
        return self.embed(tokens, sequence_len, training=training)


# What `tf.saved_model.save` is given. TF keys its trace caches on the save options while
# it saves, so functions traced outside that context are all traced again there (the
# tracing step of an export, again: `python benchmarks/bench.py` times an export);
# `build_saveable` traces inside the same context instead.
SAVE_OPTIONS = tf.saved_model.SaveOptions()


def build_saveable(module: ElmoModule) -> tuple[tf.Module, dict]:
    """The object to save, and its signatures, with every function traced once.

    Returns:
        (root, signatures) for `tf.saved_model.save(root, path, signatures=...,
        options=SAVE_OPTIONS)`.
    """
    with save_context.save_context(SAVE_OPTIONS):
        return _build_saveable(module)


def _build_saveable(module: ElmoModule) -> tuple[tf.Module, dict]:
    root = tf.train.Checkpoint()
    root.module = module
    root.variables = list(module.variables)
    root.trainable_variables = list(module.module_trainable_variables)
    loss = tf.function(module.l2_loss, input_signature=[])
    loss.get_concrete_function()
    root.regularization_losses = [loss]
    call = tf.function(module.call, autograph=False)
    sentence_spec = signatures.default.INPUT_SPECS["default"]
    token_specs = dict(signatures.tokens.INPUT_SPECS)
    # TF Hub's reusable SavedModel: __call__(inputs, training) for both input
    # structures and both training values, traced now since a loaded one cannot trace.
    # The specs carry the names TF gives the inputs of such a trace: the saver traces
    # again for a spec that differs from the one recorded, if only by its name.
    for spec in (tf.TensorSpec([None], tf.string, name="inputs"),
                 {k: tf.TensorSpec(s.shape, s.dtype, name=f"inputs_{k}")
                  for k, s in token_specs.items()}):
        for training in (False, True):
            call.get_concrete_function(spec, training=training)
    root.__call__ = call

    for endpoint, (kind, training) in KERAS_ENDPOINTS.items():
        spec = sentence_spec if kind == "sentences" else token_specs
        fn = tf.function(lambda inputs, training=training: call(inputs, training=training),
                         input_signature=[spec], autograph=False)
        fn.get_concrete_function()
        setattr(root, endpoint, fn)

    @tf.function(input_signature=[sentence_spec], autograph=False)
    def default(default):
        return call(default, training=False)

    @tf.function(input_signature=[token_specs["tokens"], token_specs["sequence_len"]],
                 autograph=False)
    def tokens(tokens, sequence_len):
        return call({"tokens": tokens, "sequence_len": sequence_len}, training=False)

    fns = {"default": default.get_concrete_function(), "tokens": tokens.get_concrete_function()}
    for module_ in signatures.SIGNATURES.values():
        for alias in module_.ALIASES:
            fns[alias] = fns[module_.NAME]
    return root, fns
