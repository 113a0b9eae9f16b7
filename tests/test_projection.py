"""hub_export.model.projection.Projection against the numpy reference."""

import copy

import numpy as np
import tensorflow as tf

from hub_export.model.options import parse_options
from hub_export.model.projection import Projection
from hub_export.model.weights import weight_specs

from helpers import SMALL_OPTIONS, random_weights
from numpy_bilm import np_projection

ATOL = 1e-5


def test_with_projection_matches_numpy():
    options = parse_options(copy.deepcopy(SMALL_OPTIONS))  # filters 28 -> P 8
    assert options.has_projection
    names = {s.name for s in weight_specs(options)}
    assert {"CNN_proj/W_proj", "CNN_proj/b_proj"} <= names
    arrays = random_weights(options, seed=21)
    x = np.random.default_rng(0).normal(size=(7, 28)).astype(np.float32)
    got = Projection(arrays)(tf.constant(x)).numpy()
    assert got.shape == (7, 8)
    np.testing.assert_allclose(got, np_projection(arrays, options, x), atol=ATOL, rtol=0)
    # The bias is applied (not just the matmul).
    np.testing.assert_allclose(Projection(arrays)(tf.zeros([1, 28])).numpy()[0],
                               arrays["CNN_proj/b_proj"], atol=ATOL, rtol=0)


def test_filters_summing_to_projection_dim_means_identity():
    raw = copy.deepcopy(SMALL_OPTIONS)
    raw["char_cnn"]["filters"] = [[1, 2], [2, 2], [3, 4]]  # 8 == projection_dim
    options = parse_options(raw)
    assert not options.has_projection
    names = {s.name for s in weight_specs(options)}
    assert not any(n.startswith("CNN_proj") for n in names)
    arrays = random_weights(options, seed=22)
    assert "CNN_proj/W_proj" not in arrays
    x = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    got = Projection(None)(tf.constant(x)).numpy()
    np.testing.assert_array_equal(got, x)
    np.testing.assert_allclose(np_projection(arrays, options, x), x, atol=0, rtol=0)
