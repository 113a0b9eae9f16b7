"""Tests for hub_export.model.weights: one test per error, the spec table, and the valid cases.

Weight files are made by conftest's `write_model` (SMALL_OPTIONS, seeded random weights)
and then damaged with h5py. Every error test pins the message: it must name the file,
the dataset and, where it applies, the expected and the found shape.
"""

from __future__ import annotations

import copy
import re

import h5py
import numpy as np
import pytest

from hub_export.errors import WeightsError
from hub_export.model.options import load_options, parse_options
from hub_export.model.weights import (
    WeightSpec,
    read_weights,
    weight_specs,
    write_weights,
)

from helpers import FULL_SIZE_OPTIONS, SMALL_OPTIONS, random_weights, write_model

SMALL = parse_options(copy.deepcopy(SMALL_OPTIONS))
FULL_SIZE = parse_options(copy.deepcopy(FULL_SIZE_OPTIONS))

# SMALL_OPTIONS with projection_dim equal to the filter channels 4 + 8 + 16 = 28.
NO_PROJECTION_OPTIONS = copy.deepcopy(SMALL_OPTIONS)
NO_PROJECTION_OPTIONS["lstm"]["projection_dim"] = 28


@pytest.fixture
def small_weights(tmp_path):
    """A valid weights.hdf5 for SMALL_OPTIONS, to damage in each test."""
    _, weights_path = write_model(tmp_path / "model", copy.deepcopy(SMALL_OPTIONS))
    return weights_path


def replace_dataset(path, name, data):
    with h5py.File(path, "a") as f:
        del f[name]
        f.create_dataset(name, data=data)


def file_and(path, *parts: str) -> str:
    """Regex: the file path first, then each part (escaped) in order, across lines."""
    return "(?s)" + re.escape(f"{path}: ") + ".*".join(re.escape(p) for p in parts)


# ---------------------------------------------------------------------------- file errors


def test_file_not_found(tmp_path):
    path = tmp_path / "weights.hdf5"
    with pytest.raises(WeightsError, match=file_and(path, "weight file not found")):
        read_weights(path, SMALL)


def test_not_hdf5(tmp_path):
    path = tmp_path / "weights.hdf5"
    path.write_text("char_embed 0.1 0.2 0.3\n")
    with pytest.raises(WeightsError, match=file_and(path, "not an HDF5 file")):
        read_weights(path, SMALL)


def test_truncated(small_weights):
    data = small_weights.read_bytes()
    path = small_weights.with_name("truncated.hdf5")
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=file_and(
            path, f"HDF5 file is truncated: it has {len(data) // 2} bytes", str(len(data)))):
        read_weights(path, SMALL)


# ------------------------------------------------------------------------- dataset errors


def test_missing_dataset(small_weights):
    with h5py.File(small_weights, "a") as f:
        del f["CNN_high_0/W_carry"]
    # 28 = 4 + 8 + 16 filter channels.
    with pytest.raises(WeightsError, match=file_and(
            small_weights, "the datasets do not match the options",
            "missing dataset CNN_high_0/W_carry, expected shape (28, 28)")):
        read_weights(small_weights, SMALL)


def test_unexpected_dataset(small_weights):
    with h5py.File(small_weights, "a") as f:
        f.create_dataset("CNN_high_1/W_carry", data=np.zeros((28, 28), np.float32))
    # SMALL_OPTIONS has one highway layer, so CNN_high_1 is one too many.
    with pytest.raises(WeightsError, match=file_and(
            small_weights, "the datasets do not match the options",
            "unexpected dataset CNN_high_1/W_carry, shape (28, 28)")):
        read_weights(small_weights, SMALL)


def test_unexpected_projection(tmp_path):
    options_path, weights_path = write_model(tmp_path, copy.deepcopy(NO_PROJECTION_OPTIONS))
    options = load_options(options_path)
    with h5py.File(weights_path, "a") as f:
        f.create_dataset("CNN_proj/W_proj", data=np.zeros((28, 28), np.float32))
        f.create_dataset("CNN_proj/b_proj", data=np.zeros((28,), np.float32))
    with pytest.raises(WeightsError, match=file_and(
            weights_path, "the datasets do not match the options",
            "unexpected dataset CNN_proj/W_proj, shape (28, 28)",
            "unexpected dataset CNN_proj/b_proj, shape (28,)", "no CNN_proj")):
        read_weights(weights_path, options)


def test_wrong_shape(small_weights):
    # One row too many: 262 instead of n_characters - 1 = 261.
    replace_dataset(small_weights, "char_embed", np.zeros((262, 4), np.float32))
    with pytest.raises(WeightsError, match=file_and(
            small_weights, "dataset char_embed has shape (262, 4), expected (261, 4)")):
        read_weights(small_weights, SMALL)


def test_nan_value(small_weights):
    with h5py.File(small_weights, "a") as f:
        f["CNN/b_cnn_1"][3] = np.nan
    with pytest.raises(WeightsError, match=file_and(
            small_weights, "dataset CNN/b_cnn_1 has non-finite values (1 NaN, 0 Inf",
            "index [3]")):
        read_weights(small_weights, SMALL)


def test_inf_value(small_weights):
    with h5py.File(small_weights, "a") as f:
        f["CNN_high_0/W_transform"][2, 5] = -np.inf
    with pytest.raises(WeightsError, match=file_and(
            small_weights, "dataset CNN_high_0/W_transform has non-finite values (0 NaN, 1 Inf",
            "index [2, 5]")):
        read_weights(small_weights, SMALL)


def test_integer_dtype(small_weights):
    replace_dataset(small_weights, "CNN/b_cnn_0", np.zeros((4,), np.int32))
    with pytest.raises(WeightsError, match=file_and(
            small_weights, "dataset CNN/b_cnn_0 has dtype int32, expected a float type")):
        read_weights(small_weights, SMALL)


# ---------------------------------------------------------------------------- valid cases


def test_fixture_weights(shared_fixture):
    options = load_options(shared_fixture / "options.json")
    arrays = read_weights(shared_fixture / "lm_weights.hdf5", options)
    specs = weight_specs(options)
    # 1 char_embed + 5 filters x 2 + 2 highway x 4 + 2 CNN_proj + 2 directions x 2 layers x 3.
    assert len(specs) == 1 + 10 + 8 + 2 + 12
    assert set(arrays) == {s.name for s in specs}
    for spec in specs:
        assert arrays[spec.name].dtype == np.float32, spec.name
        assert arrays[spec.name].shape == spec.shape, spec.name
    assert arrays["char_embed"].shape == (261, 4)  # one row fewer than n_characters


def test_full_size_spec_count():
    specs = weight_specs(FULL_SIZE)
    # Counted from the definition:
    #   char_embed                                    1
    #   7 filters x (W_cnn_i, b_cnn_i)               14
    #   2 highway x (W/b x carry/transform)           8
    #   CNN_proj: 2048 filter channels != 512 -> W, b  2
    #   2 directions x 2 layers x (W_0, B, W_P_0)    12
    #                                               ---
    #                                                37
    assert len(specs) == 37
    assert len({s.name for s in specs}) == 37
    by_name = {s.name: s for s in specs}
    assert by_name["char_embed"].shape == (261, 16)
    assert by_name["CNN/W_cnn_6"].shape == (1, 7, 16, 1024)
    assert by_name["CNN_high_1/W_transform"].shape == (2048, 2048)
    assert by_name["CNN_proj/W_proj"].shape == (2048, 512)
    assert by_name["RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/W_0"] == WeightSpec(
        "RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/W_0", (1024, 16384), "lstm_1/backward/kernel")
    assert by_name["RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/W_P_0"].shape == (4096, 512)


def test_no_projection_specs(tmp_path):
    options = parse_options(copy.deepcopy(NO_PROJECTION_OPTIONS))
    assert not options.has_projection
    specs = weight_specs(options)
    assert not [s for s in specs if s.name.startswith("CNN_proj")]
    assert len(specs) == len(weight_specs(SMALL)) - 2
    # And a file written for them reads back.
    options_path, weights_path = write_model(tmp_path, copy.deepcopy(NO_PROJECTION_OPTIONS))
    assert set(read_weights(weights_path, load_options(options_path))) == {s.name for s in specs}


def test_random_weights_seeded():
    first, again, other = (random_weights(SMALL, seed) for seed in (7, 7, 8))
    assert set(first) == {s.name for s in weight_specs(SMALL)}
    for name in first:
        assert first[name].dtype == np.float32
        assert np.isfinite(first[name]).all()
        np.testing.assert_array_equal(first[name], again[name])
        assert not np.array_equal(first[name], other[name]), name


def test_write_read_round_trip(tmp_path):
    arrays = random_weights(SMALL, seed=3)
    path = tmp_path / "weights.hdf5"
    write_weights(path, arrays)
    back = read_weights(path, SMALL)
    assert set(back) == set(arrays)
    for name, value in arrays.items():
        assert back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name], value)
