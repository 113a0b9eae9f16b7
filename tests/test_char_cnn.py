"""hub_export.model.char_cnn.CharCNN against the independent numpy reference."""

import copy

import numpy as np
import pytest
import tensorflow as tf

from hub_export.model.char_cnn import CharCNN
from hub_export.model.char_ids import batch_sentences
from hub_export.model.options import parse_options

from helpers import SMALL_OPTIONS, random_weights
from numpy_bilm import np_char_cnn

ATOL = 1e-5


def make_options(activation="relu", filters=None, max_chars=50, embedding_dim=4):
    raw = copy.deepcopy(SMALL_OPTIONS)
    raw["char_cnn"]["activation"] = activation
    raw["char_cnn"]["max_characters_per_token"] = max_chars
    raw["char_cnn"]["embedding"]["dim"] = embedding_dim
    if filters is not None:
        raw["char_cnn"]["filters"] = filters
    return parse_options(raw)


def random_ids(rng, n, width, zero_fraction=0.2):
    ids = rng.integers(1, 262, size=(n, width)).astype(np.int32)
    ids[rng.random((n, width)) < zero_fraction] = 0
    return ids


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("filters,max_chars", [
    ([[1, 4], [2, 8], [3, 16]], 50),
    ([[1, 3], [4, 5], [7, 6]], 50),
    ([[2, 5], [12, 3]], 12),  # a filter as wide as the row: one position only
])
def test_matches_numpy(activation, filters, max_chars):
    options = make_options(activation, filters, max_chars)
    arrays = random_weights(options, seed=3)
    cnn = CharCNN(options.char_cnn, arrays)
    rng = np.random.default_rng(0)
    ids = random_ids(rng, 17, max_chars)
    got = cnn(tf.constant(ids)).numpy()
    want = np_char_cnn(arrays, options, ids)
    assert got.shape == (17, options.char_cnn.n_filters)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_real_tokens_match_numpy(activation):
    options = make_options(activation)
    arrays = random_weights(options, seed=4)
    cnn = CharCNN(options.char_cnn, arrays)
    ids = batch_sentences([["The", "naïve", "café", "日本語", "x" * 60], []]).reshape(-1, 50)
    np.testing.assert_allclose(cnn(tf.constant(ids)).numpy(), np_char_cnn(arrays, options, ids),
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_padding_id_embeds_to_zero(activation):
    options = make_options(activation)
    arrays = random_weights(options, seed=5)
    cnn = CharCNN(options.char_cnn, arrays)
    # The stored table has no row for id 0; the model's table starts with a zero row and
    # then the stored rows unchanged.
    table = cnn.char_embed.numpy()
    assert table.shape == (262, options.char_cnn.embedding_dim)
    np.testing.assert_array_equal(table[0], 0.0)
    np.testing.assert_array_equal(table[1:], arrays["char_embed"])
    # An all-zero row sees only zero vectors: every window gives its bias, so the output
    # is activation(bias) for each filter (not zero: the biases still act).
    got = cnn(tf.zeros([2, 50], tf.int32)).numpy()
    biases = np.concatenate([arrays[f"CNN/b_cnn_{k}"] for k in range(3)]).astype(np.float64)
    want = np.maximum(biases, 0) if activation == "relu" else np.tanh(biases)
    np.testing.assert_allclose(got, np.stack([want, want]), atol=ATOL, rtol=0)
    assert np.any(got != 0)


def test_activation_choice_matters():
    # relu and tanh give different outputs on the same weights (so both tests above
    # really exercise the option).
    relu, tanh = make_options("relu"), make_options("tanh")
    arrays = random_weights(relu, seed=6)
    ids = tf.constant(random_ids(np.random.default_rng(1), 5, 50))
    a = CharCNN(relu.char_cnn, arrays)(ids).numpy()
    b = CharCNN(tanh.char_cnn, arrays)(ids).numpy()
    np.testing.assert_allclose(b, np_char_cnn(arrays, tanh, ids.numpy()), atol=ATOL, rtol=0)
    assert np.abs(a - b).max() > 1e-2
    assert (a >= 0).all() and (np.abs(b) < 1).all()


def test_char_position_matters():
    # Sliding windows, not a bag of characters: moving a character changes the output.
    options = make_options("relu", [[2, 8], [3, 8]])
    arrays = random_weights(options, seed=7)
    cnn = CharCNN(options.char_cnn, arrays)
    ids = batch_sentences([["ab", "ba"]])[0, 1:3]
    out = cnn(tf.constant(ids)).numpy()
    np.testing.assert_allclose(out, np_char_cnn(arrays, options, ids), atol=ATOL, rtol=0)
    assert np.abs(out[0] - out[1]).max() > 1e-3


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_windows_in_the_padding_tail(activation):
    """The convolution skips the windows that lie wholly in a row's constant tail and
    takes their one value instead. Rows of every length (alone and together), a row as
    long as C (no tail window), all-zero rows and a row whose tail is not the padding
    char, against the numpy reference that convolves every position."""
    C = 20
    options = make_options(activation, [[1, 4], [3, 8], [7, 16]], C)
    arrays = random_weights(options, seed=6)
    cnn = CharCNN(options.char_cnn, arrays)
    rng = np.random.default_rng(1)
    rows = []
    for length in range(C + 1):  # `length` leading ids, then the padding char (id 261)
        row = np.full(C, 261, np.int32)
        row[:length] = rng.integers(1, 260, size=length)
        rows.append(row)
    rows.append(np.zeros(C, np.int32))
    rows.append(np.concatenate([rng.integers(1, 260, size=3), np.full(C - 3, 5)]).astype(np.int32))
    ids = np.stack(rows)
    batches = [ids, ids[:8], np.zeros((3, C), np.int32)] + [ids[k:k + 1] for k in range(len(ids))]
    tail_decides = False
    for batch in batches:
        want = np_char_cnn(arrays, options, batch)
        np.testing.assert_allclose(cnn(tf.constant(batch)).numpy(), want, atol=ATOL, rtol=0)
        # Without the windows past `used + 6` (all tail windows of the width-7 filter, some
        # of the others'), would the reference give something else? Then the tail's value
        # decides some outputs, and a convolution that dropped it would fail above.
        used = max(1, max((k + 1 for k in range(C) if np.any(batch[:, k] != batch[:, -1])), default=0))
        if used + 6 < C:
            tail_decides |= not np.allclose(np_char_cnn(arrays, options, batch[:, :used + 6]), want,
                                            atol=ATOL, rtol=0)
    assert tail_decides
