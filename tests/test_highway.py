"""hub_export.model.highway.Highway against the numpy reference, and the carry-gate convention."""

import copy

import numpy as np
import pytest
import tensorflow as tf

from hub_export.model.highway import Highway
from hub_export.model.options import parse_options
from hub_export.model.weights import weight_specs

from helpers import SMALL_OPTIONS, random_weights
from numpy_bilm import np_highway

ATOL = 1e-5
F = 28  # sum of SMALL_OPTIONS filters


def options_with(n_highway):
    raw = copy.deepcopy(SMALL_OPTIONS)
    raw["char_cnn"]["n_highway"] = n_highway
    return parse_options(raw)


def inputs(seed=0, n=9):
    # Mixed signs so that the ReLU of the transform and the x branch differ.
    return np.random.default_rng(seed).normal(0.0, 1.5, (n, F)).astype(np.float32)


@pytest.mark.parametrize("n_highway", [0, 1, 3])
def test_matches_numpy(n_highway):
    options = options_with(n_highway)
    arrays = random_weights(options, seed=11)
    names = {s.name for s in weight_specs(options)}
    assert sum(n.startswith("CNN_high_") for n in names) == 4 * n_highway
    x = inputs()
    got = Highway(n_highway, arrays)(tf.constant(x)).numpy()
    want = np_highway(arrays, n_highway, x)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    if n_highway == 0:
        np.testing.assert_array_equal(got, x)
    else:
        assert np.abs(got - x).max() > 1e-2


def one_layer(carry_bias):
    arrays = random_weights(options_with(1), seed=12)
    arrays["CNN_high_0/W_carry"] = np.zeros((F, F), np.float32)
    arrays["CNN_high_0/b_carry"] = np.full((F,), carry_bias, np.float32)
    return arrays


def test_open_carry_gate_gives_relu_transform():
    # g = sigmoid(+large) = 1: the output is relu(x W_transform + b_transform).
    arrays = one_layer(+50.0)
    x = inputs(1)
    got = Highway(1, arrays)(tf.constant(x)).numpy()
    want = np.maximum(x.astype(np.float64) @ arrays["CNN_high_0/W_transform"]
                      + arrays["CNN_high_0/b_transform"], 0.0)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    assert (got >= 0).all() and (x < 0).any()
    np.testing.assert_allclose(np_highway(arrays, 1, x), want, atol=1e-12, rtol=0)


def test_closed_carry_gate_passes_x():
    # g = sigmoid(-large) = 0: the output is x itself (negative values kept).
    arrays = one_layer(-50.0)
    x = inputs(2)
    got = Highway(1, arrays)(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, x, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np_highway(arrays, 1, x), x, atol=1e-12, rtol=0)


def test_half_open_gate_and_transform_is_relu_for_tanh_models():
    # g = 0.5 exactly; the transform is ReLU even when the char CNN activation is tanh.
    raw = copy.deepcopy(SMALL_OPTIONS)
    raw["char_cnn"]["activation"] = "tanh"
    arrays = random_weights(parse_options(raw), seed=13)
    arrays["CNN_high_0/W_carry"] = np.zeros((F, F), np.float32)
    arrays["CNN_high_0/b_carry"] = np.zeros((F,), np.float32)
    x = inputs(3)
    pre = x.astype(np.float64) @ arrays["CNN_high_0/W_transform"] + arrays["CNN_high_0/b_transform"]
    got = Highway(1, arrays)(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, 0.5 * np.maximum(pre, 0) + 0.5 * x, atol=ATOL, rtol=0)
    assert np.abs(np.tanh(pre) - np.maximum(pre, 0)).max() > 0.1


def test_layers_apply_in_order():
    # Layer 0 then layer 1 (swapping their weights changes the result).
    options = options_with(2)
    arrays = random_weights(options, seed=14)
    swapped = dict(arrays)
    for part in ("W_carry", "b_carry", "W_transform", "b_transform"):
        swapped[f"CNN_high_0/{part}"] = arrays[f"CNN_high_1/{part}"]
        swapped[f"CNN_high_1/{part}"] = arrays[f"CNN_high_0/{part}"]
    x = inputs(4)
    a = Highway(2, arrays)(tf.constant(x)).numpy()
    b = Highway(2, swapped)(tf.constant(x)).numpy()
    np.testing.assert_allclose(a, np_highway(arrays, 2, x), atol=ATOL, rtol=0)
    np.testing.assert_allclose(b, np_highway(swapped, 2, x), atol=ATOL, rtol=0)
    assert np.abs(a - b).max() > 1e-3
