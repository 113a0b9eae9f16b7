"""The exported SavedModel as its users load it: tf_keras + hub.KerasLayer, Keras 3
TFSMLayer, GradientTape through hub.load, the TF1 session loader (TF Serving's path),
and parity of the `tokens` signature with bilm-tf's activations."""

from __future__ import annotations

import copy
import json

import h5py
import keras  # Keras 3
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras  # Keras 2, what hub.KerasLayer is built on

import signatures
from hub_export.model.options import parse_options

from helpers import ATOL, SENTENCES, SMALL_OPTIONS, assert_outputs_close, padded

TOKENS, SEQUENCE_LEN = padded()
MIX_NAMES = {"aggregation/weights:0": (3,), "aggregation/scaling:0": ()}


def small_specs() -> list[signatures.OutputSpec]:
    lstm = parse_options(copy.deepcopy(SMALL_OPTIONS)).lstm
    return signatures.output_specs(lstm.projection_dim, lstm.n_layers)


OUTPUT_KEYS = {"word_emb", "lstm_outputs1", "lstm_outputs2", "elmo", "default", "sequence_len"}


def snapshot(variables) -> list[np.ndarray]:
    return [np.array(v.numpy(), copy=True) for v in variables]


def assert_only_mix_changed(variables, before: list[np.ndarray], mix_names: dict) -> None:
    """Every element of the mix weights and the scaling moved; nothing else did."""
    seen = set()
    for v, old in zip(variables, before):
        new = v.numpy()
        if v.name in mix_names:
            seen.add(v.name)
            assert np.all(new != old), f"{v.name} did not change in every element: {old} -> {new}"
            assert np.all(np.isfinite(new)), v.name
        else:
            np.testing.assert_array_equal(new, old, err_msg=f"{v.name} changed during fit")
    assert seen == set(mix_names)



def test_reference_inputs_are_meaningful(reference):
    """Guards the equality tests below: the outputs are non-trivial and differ by input."""
    for outputs in reference.values():
        assert np.abs(outputs["elmo"]).max() > 1e-3
        assert np.all(np.isfinite(outputs["elmo"]))
    np.testing.assert_array_equal(reference["default"]["sequence_len"], [7, 3, 5, 1])
    np.testing.assert_array_equal(reference["tokens"]["sequence_len"], SEQUENCE_LEN)
    assert set(reference["default"]) == set(reference["tokens"]) == OUTPUT_KEYS
    assert not np.any(reference["tokens"]["default"][3]), "no tokens -> zeros"


# 1. tf_keras + hub.KerasLayer on the `tokens` signature.

def test_tf_keras_tokens_signature_matches_hub_load(small_path, reference):
    tokens = tf_keras.Input(shape=(None,), dtype=tf.string, name="tokens")
    sequence_len = tf_keras.Input(shape=(), dtype=tf.int32, name="sequence_len")
    layer = hub.KerasLayer(small_path, signature="tokens", signature_outputs_as_dict=True)
    outputs = layer({"tokens": tokens, "sequence_len": sequence_len})
    model = tf_keras.Model(inputs={"tokens": tokens, "sequence_len": sequence_len}, outputs=outputs)
    assert layer.trainable_weights == []
    got = model.predict({"tokens": np.array(TOKENS), "sequence_len": np.array(SEQUENCE_LEN, np.int32)},
                        verbose=0)
    assert_outputs_close(got, reference["tokens"])


# 2. tf_keras fine-tuning trains the four mix scalars and nothing else.

def test_tf_keras_fit_trains_only_the_mix(small_path, loaded):
    tf_keras.utils.set_random_seed(0)
    sentences = tf_keras.Input(shape=(), dtype=tf.string)
    layer = hub.KerasLayer(small_path, trainable=True, output_key="elmo")
    pooled = tf_keras.layers.GlobalAveragePooling1D()(layer(sentences))
    model = tf_keras.Model(sentences, tf_keras.layers.Dense(1)(pooled))
    model.compile(optimizer=tf_keras.optimizers.SGD(learning_rate=1.0), loss="mse")

    assert len(layer.trainable_weights) == 2
    assert sum(int(np.prod(w.shape)) for w in layer.trainable_weights) == 4
    assert {w.name: tuple(w.shape) for w in layer.trainable_weights} == MIX_NAMES
    # The layer's weights are exactly the module's variables (the head's are not among them).
    assert sorted(w.name for w in layer.weights) == sorted(v.name for v in loaded.variables)
    assert len(layer.non_trainable_weights) == len(loaded.variables) - 2

    before = snapshot(layer.weights)
    targets = np.random.default_rng(0).normal(size=(len(SENTENCES), 1)).astype(np.float32)
    history = model.fit(np.array(SENTENCES), targets, batch_size=len(SENTENCES), epochs=1,
                        shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert_only_mix_changed(layer.weights, before, MIX_NAMES)


# 3. Gradients through hub.load, eagerly and in a tf.function.

def test_gradient_tape_through_hub_load(loaded):
    assert {v.name: tuple(v.shape) for v in loaded.trainable_variables} == MIX_NAMES
    sentences = tf.constant(SENTENCES)

    def gradients():
        with tf.GradientTape() as tape:
            outputs = loaded(sentences, training=False)
            loss = tf.reduce_sum(tf.square(outputs["elmo"])) + tf.reduce_sum(outputs["default"])
        return tape.gradient(loss, loaded.trainable_variables)

    results = []
    for fn in (gradients, tf.function(gradients)):
        grads = fn()
        assert len(grads) == 2
        for g, v in zip(grads, loaded.trainable_variables):
            assert g is not None, v.name
            assert tuple(g.shape) == tuple(v.shape)
            assert np.all(np.isfinite(g.numpy())), v.name
        flat = np.concatenate([np.ravel(g.numpy()) for g in grads])
        assert np.count_nonzero(flat) > 0
        results.append(flat)
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-6)


# 4. Keras 3: TFSMLayer on the single-argument endpoints, in a functional model.
# Keras 3's functional API accepts string inputs here. Its data adapters reject numpy
# unicode arrays ("ValueError: Invalid dtype: str736"), so the data goes in as tf tensors.

KERAS3_NAMES = {"aggregation_weights:0": (3,), "aggregation_scaling:0": ()}


@pytest.mark.parametrize("endpoint", ["embed_sentences", "embed_tokens"])
def test_keras3_tfsm_layer(small_path, reference, endpoint):
    keras.utils.set_random_seed(0)
    layer = keras.layers.TFSMLayer(small_path, call_endpoint=endpoint,
                                   call_training_endpoint=f"{endpoint}_training", trainable=True)
    if endpoint == "embed_sentences":
        inputs = keras.Input(shape=(), dtype="string")
        data = tf.constant(SENTENCES)
        expected = reference["default"]
    else:
        inputs = {"tokens": keras.Input(shape=(None,), dtype="string", name="tokens"),
                  "sequence_len": keras.Input(shape=(), dtype="int32", name="sequence_len")}
        data = {"tokens": tf.constant(TOKENS), "sequence_len": tf.constant(SEQUENCE_LEN, tf.int32)}
        expected = reference["tokens"]
    outputs = layer(inputs)
    embedder = keras.Model(inputs, outputs)
    assert_outputs_close({k: np.asarray(v) for k, v in embedder(data).items()}, expected)

    assert {w.name: tuple(w.shape) for w in layer.trainable_weights} == KERAS3_NAMES
    pooled = keras.layers.GlobalAveragePooling1D()(outputs["elmo"])
    model = keras.Model(inputs, keras.layers.Dense(1)(pooled))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="mse")
    before = snapshot(layer.weights)
    targets = np.random.default_rng(0).normal(size=(len(SENTENCES), 1)).astype(np.float32)
    history = model.fit(tf.data.Dataset.from_tensors((data, targets)), epochs=1, shuffle=False,
                        verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert_only_mix_changed(layer.weights, before, KERAS3_NAMES)


# 5. The TF1 session loader, as TF Serving reads the SavedModel.

def _dim(size: int) -> int | None:
    return None if size == -1 else size


@pytest.mark.parametrize("name", ["default", "serving_default", "tokens"])
def test_session_loader_signatures(small_path, reference, name):
    contract = signatures.SIGNATURES["tokens" if name == "tokens" else "default"]
    specs = small_specs()
    if name == "tokens":
        feed_values = {"tokens": np.array(TOKENS, dtype=object),
                       "sequence_len": np.array(SEQUENCE_LEN, np.int32)}
        expected = reference["tokens"]
    else:
        feed_values = {"default": np.array(SENTENCES, dtype=object)}
        expected = reference["default"]

    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], small_path)
        assert {"default", "serving_default", "tokens"} <= set(meta.signature_def)
        sig = meta.signature_def[name]
        assert set(sig.inputs) == set(contract.INPUT_SPECS)
        for key, spec in contract.INPUT_SPECS.items():
            info = sig.inputs[key]
            assert tf.as_dtype(info.dtype) == spec.dtype, key
            assert [_dim(d.size) for d in info.tensor_shape.dim] == list(spec.shape), key
        assert set(sig.outputs) == OUTPUT_KEYS == {s.name for s in specs}
        for spec in specs:
            info = sig.outputs[spec.name]
            assert tf.as_dtype(info.dtype) == spec.dtype, spec.name
            assert [_dim(d.size) for d in info.tensor_shape.dim] == list(spec.shape), spec.name
        feeds = {sig.inputs[key].name: value for key, value in feed_values.items()}
        fetches = {key: info.name for key, info in sig.outputs.items()}
        got = sess.run(fetches, feed_dict=feeds)
    assert_outputs_close(got, expected)


def test_session_loader_batch_one(small_path, reference):
    """One sentence a request, as a server often gets them: in a TF1 session the first
    such run makes the LSTM's batch-1 copies and later ones read them; each sentence's
    outputs are those it has inside the batch of three."""
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], small_path)
        sig = meta.signature_def["default"]
        fetches = {key: info.name for key, info in sig.outputs.items()}
        for _ in range(2):
            for i, sentence in enumerate(SENTENCES):
                got = sess.run(fetches, {sig.inputs["default"].name: np.array([sentence], dtype=object)})
                n = int(got["sequence_len"][0])
                assert n == reference["default"]["sequence_len"][i]
                for key in ("word_emb", "lstm_outputs1", "lstm_outputs2", "elmo"):
                    np.testing.assert_allclose(got[key][0], reference["default"][key][i, :n],
                                               atol=ATOL, rtol=0, err_msg=f"{key}, sentence {i}")
                np.testing.assert_allclose(got["default"][0], reference["default"]["default"][i],
                                           atol=ATOL, rtol=0)


# 6. Parity of the exported `tokens` signature with bilm-tf on fixture batch 0.

def test_fixture_tokens_signature_matches_bilm_tf(fixture_export):
    from helpers import SHARED_FIXTURE

    sentences = json.loads((SHARED_FIXTURE / "lm_embeddings_sentences.json").read_text())
    batch = [sentences[k][0].split(" ") for k in range(3)]
    lengths = [len(tokens) for tokens in batch]
    width = max(lengths)
    padded = [tokens + [""] * (width - len(tokens)) for tokens in batch]
    module = hub.load(str(fixture_export.path))
    out = module.signatures["tokens"](tokens=tf.constant(padded),
                                      sequence_len=tf.constant(lengths, tf.int32))
    top = out["lstm_outputs2"].numpy()
    assert top.shape == (3, width, 32)
    np.testing.assert_array_equal(out["sequence_len"].numpy(), lengths)
    for k in range(3):
        with h5py.File(SHARED_FIXTURE / f"lm_embeddings_{k}.hdf5", "r") as f:
            expected = np.concatenate(list(f["0"][()]), axis=-1)  # (2, n, 16) -> (n, 32)
        n = lengths[k]
        assert expected.shape == (n, 32)
        np.testing.assert_allclose(top[k, :n], expected, atol=ATOL, rtol=0, err_msg=f"row {k}")
        assert not np.any(top[k, n:]), "positions past the sentence must be 0"
