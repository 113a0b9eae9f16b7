"""The language model's parts: weights out again exactly as they came in, bilm-tf's
initialisation, the losses and the optimizer."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from hub_export.model.bilm import BiLM
from hub_export.model.options import load_options, parse_options
from hub_export.model.weights import read_weights, weight_specs
from hub_export.train.language_model import LanguageModel, initial_softmax, initial_weights
from hub_export.train.trainer import Adagrad

from helpers import SMALL_OPTIONS, require_shared_fixture


def test_weight_arrays_give_back_the_file():
    folder = require_shared_fixture()
    options = load_options(folder / "options.json")
    arrays = read_weights(folder / "lm_weights.hdf5", options)
    back = BiLM(options, arrays).weight_arrays()
    assert sorted(back) == sorted(arrays)
    for name, value in arrays.items():
        assert back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_initial_weights_follow_bilm_tf():
    options = parse_options(SMALL_OPTIONS)
    arrays = initial_weights(options, seed=5)
    assert {k: v.shape for k, v in arrays.items()} == {s.name: s.shape for s in weight_specs(options)}
    assert (arrays["CNN_high_0/b_carry"] == -2.0).all()
    assert (arrays["CNN_high_0/b_transform"] == 0.0).all()
    assert np.abs(arrays["CNN/W_cnn_0"]).max() <= 0.05
    assert np.abs(arrays["char_embed"]).max() <= 1.0
    w0 = arrays["RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/W_0"]
    assert np.abs(w0).max() <= np.sqrt(6.0 / sum(w0.shape))
    again = initial_weights(options, seed=5)
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)


def small_model(vocab_size=50):
    options = parse_options(SMALL_OPTIONS)
    P = options.lstm.projection_dim
    return LanguageModel(options, initial_weights(options, 0), initial_softmax(vocab_size, P, 0))


def test_full_softmax_loss_is_the_cross_entropy():
    model = small_model()
    rng = np.random.default_rng(0)
    top = rng.normal(size=[2, 3, 4, 8]).astype(np.float32)
    targets = rng.integers(0, 50, size=[2, 3, 4]).astype(np.int32)
    losses = model.token_losses(top, targets).numpy()
    logits = top.reshape(-1, 8) @ model.softmax_w.numpy().T + model.softmax_b.numpy()
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    want = -log_p[np.arange(24), targets.reshape(-1)].reshape(2, 3, 4)
    np.testing.assert_allclose(losses, want, rtol=1e-5)
    # With at least as many negatives as words, the full softmax is used.
    np.testing.assert_array_equal(model.token_losses(top, targets, n_negative=50).numpy(), losses)
    sampled = model.token_losses(top, targets, n_negative=10, seed=1).numpy()
    assert sampled.shape == (2, 3, 4) and np.isfinite(sampled).all()
    assert not np.allclose(sampled, losses)


def test_dropout_is_seeded_and_off_by_default():
    model = small_model()
    C = 50
    char_rows = np.stack([np.zeros(C, np.int32)] + [np.full(C, k + 2, np.int32) for k in range(4)])
    token_rows = np.array([[[1, 2, 3]], [[3, 2, 4]]], np.int32)
    weights = np.ones([1, 3], np.float32)
    state = model.zero_state(1)
    plain = model.top_outputs(char_rows, token_rows, weights, state)[0].numpy()
    a = model.top_outputs(char_rows, token_rows, weights, state, 0.5, tf.constant([1, 2]))[0].numpy()
    b = model.top_outputs(char_rows, token_rows, weights, state, 0.5, tf.constant([1, 2]))[0].numpy()
    c = model.top_outputs(char_rows, token_rows, weights, state, 0.5, tf.constant([1, 3]))[0].numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, plain)
    assert np.array_equal(plain, model.top_outputs(char_rows, token_rows, weights, state)[0].numpy())


def test_adagrad_sparse_equals_dense():
    rng = np.random.default_rng(0)
    start = rng.normal(size=[6, 3]).astype(np.float32)
    values = rng.normal(size=[4, 3]).astype(np.float32)
    indices = tf.constant([1, 4, 1, 0])  # a repeated row is summed, as densifying would
    sparse_var, dense_var = tf.Variable(start), tf.Variable(start)
    sparse_opt, dense_opt = Adagrad([sparse_var], 0.2), Adagrad([dense_var], 0.2)
    grad = tf.IndexedSlices(tf.constant(values), indices, tf.constant([6, 3]))
    for _ in range(3):
        sparse_opt.apply([grad], [sparse_var])
        dense_opt.apply([tf.convert_to_tensor(grad)], [dense_var])
    np.testing.assert_allclose(sparse_var.numpy(), dense_var.numpy(), rtol=1e-6)
    # TF1 Adagrad by hand for the dense case.
    var, acc = start.astype(np.float64), np.ones_like(start, np.float64)
    g = tf.convert_to_tensor(grad).numpy().astype(np.float64)
    for _ in range(3):
        acc += g * g
        var -= 0.2 * g / np.sqrt(acc)
    np.testing.assert_allclose(dense_var.numpy(), var, rtol=1e-5)
    untouched = [2, 3, 5]
    np.testing.assert_array_equal(sparse_var.numpy()[untouched], start[untouched])


@pytest.mark.parametrize("vocab_size", [3, 20])
def test_initial_softmax_shapes(vocab_size):
    s = initial_softmax(vocab_size, 8, seed=0)
    assert s["softmax/W"].shape == (vocab_size, 8) and (s["softmax/b"] == 0).all()
