"""deferred_weights: the big matrices streamed from the weight file into the saved
checkpoint give the same files as saving a module that holds them."""

from __future__ import annotations

import copy

import h5py
import numpy as np
import pytest
import tensorflow as tf

from conftest import SMALL_OPTIONS, export_model, write_model
from hub_export import deferred_weights
from hub_export.bilm import BiLM
from hub_export.deferred_weights import DeferredWeights
from hub_export.elmo_module import ElmoModule, ExportConfig, build_saveable
from hub_export.errors import WeightsError
from hub_export.options import load_options
from hub_export.precision import matrix_variable
from hub_export.export import _deferred_datasets
from hub_export.weights import WeightReader, read_weights, weight_specs

W_0 = "RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/W_0"
VARIABLE_FILES = ("variables/variables.index", "variables/variables.data-00000-of-00001")


@pytest.fixture
def model(tmp_path):
    return write_model(tmp_path / "model", copy.deepcopy(SMALL_OPTIONS), seed=3)


def test_export_writes_the_files_of_a_module_holding_the_weights(tmp_path, model, monkeypatch):
    # Blocks of 96 bytes: every matrix of the small model takes several, some ragged.
    monkeypatch.setattr(deferred_weights, "CHUNK_BYTES", 96)
    filled = []
    fill = DeferredWeights.fill
    monkeypatch.setattr(DeferredWeights, "fill",
                        lambda self, d: (filled.extend(v.name for v, _ in self.pending), fill(self, d)))
    options_path, weights_path = model
    config = ExportConfig(trainable="all")  # the flag a streamed variable must keep
    streamed = export_model(tmp_path / "out", options_path, weights_path, config=config).path

    options = load_options(options_path)
    bilm = BiLM(options, read_weights(weights_path, options), trainable=config.trainable == "all")
    root, fns = build_saveable(ElmoModule(bilm, config))
    held = tmp_path / "held"
    tf.saved_model.save(root, str(held), signatures=fns)

    # 2 layers x 2 directions x (input, recurrent, projection) + 2 highway + projection.
    assert len(filled) == 15, filled
    for name in VARIABLE_FILES:
        assert (streamed / name).read_bytes() == (held / name).read_bytes(), name
    fingerprint = tf.saved_model.experimental.read_fingerprint
    assert fingerprint(str(streamed)).checkpoint_hash == fingerprint(str(held)).checkpoint_hash


def test_with_a_token_cache_only_the_lstm_is_streamed(model):
    options = load_options(model[0])
    lstm = [s.name for s in weight_specs(options)
            if s.name.startswith("RNN_") and s.name.rsplit("/", 1)[1] in ("W_0", "W_P_0")]
    # The cache computes token representations before the save: those stay in memory.
    assert _deferred_datasets(options, with_token_cache=True) == lstm
    assert set(_deferred_datasets(options, with_token_cache=False)) == set(lstm) | {
        "CNN_high_0/W_carry", "CNN_high_0/W_transform", "CNN_proj/W_proj"}


def test_non_finite_value_in_a_streamed_matrix(tmp_path, model):
    options_path, weights_path = model
    with h5py.File(weights_path, "r+") as f:
        f[W_0][11, 40] = np.nan
    with pytest.raises(WeightsError, match=rf"dataset {W_0} has non-finite values \(1 NaN, 0 Inf; "
                                           r"the first at index \[11, 40\]\)"):
        export_model(tmp_path / "out", options_path, weights_path)
    # Found as the matrix is streamed, after the save: the half-written export is gone.
    assert list((tmp_path / "out" / "elmo").iterdir()) == []


def test_blocks_give_the_rows_and_transposes_the_parts_take(model, monkeypatch):
    monkeypatch.setattr(deferred_weights, "CHUNK_BYTES", 40)
    options_path, weights_path = model
    options = load_options(options_path)
    value = read_weights(weights_path, options)[W_0]  # [16, 96]
    with WeightReader(weights_path, options) as reader:
        deferred = DeferredWeights(reader, [W_0])
        matrix = deferred[W_0]
        for part, expected in [(matrix, value), (matrix[:8].T, value[:8].T),
                               (matrix[8:].T, value[8:].T), (matrix[3:5], value[3:5])]:
            assert part.shape == expected.shape
            blocks = list(part.blocks(reader))
            assert len(blocks) > 1
            np.testing.assert_array_equal(np.concatenate(blocks), expected)
        with pytest.raises(TypeError, match="only takes a block of rows"):
            matrix[:, 3]
        with pytest.raises(TypeError, match="only takes a block of rows"):
            matrix.T[:2]


def test_a_deferred_matrix_is_float32_only(model):
    options_path, weights_path = model
    options = load_options(options_path)
    with WeightReader(weights_path, options) as reader:
        matrix = DeferredWeights(reader, [W_0])[W_0]
        with pytest.raises(ValueError, match="kernel: a deferred matrix cannot be stored as bfloat16"):
            matrix_variable(matrix, tf.bfloat16, False, "kernel")
        with pytest.raises(ValueError, match="only 2-D datasets can be deferred"):
            DeferredWeights(reader, ["CNN/W_cnn_0"])


@pytest.mark.parametrize("architecture", ["no_projection", "three_layers"])
def test_streamed_variables_equal_the_weights_in_other_architectures(tmp_path, architecture):
    from test_bilm_architectures import ARCHITECTURES

    options_path, weights_path = write_model(tmp_path / "model", ARCHITECTURES[architecture], seed=5)
    path = export_model(tmp_path / "out", options_path, weights_path).path
    options = load_options(options_path)
    held = BiLM(options, read_weights(weights_path, options))
    keys = deferred_weights._checkpoint_keys(path)
    reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
    for variable in held.variables:
        saved = reader.get_tensor(keys[variable.name.split(":")[0]])
        np.testing.assert_array_equal(saved, variable.numpy(), err_msg=variable.name)


def test_checksums_right_with_the_pure_python_crc(tmp_path, model, monkeypatch):
    # google-crc32c falls back to pure Python where its C extension is missing.
    from google_crc32c import python as slow

    monkeypatch.setattr(deferred_weights, "_CRC_IN_C", False)
    monkeypatch.setattr(deferred_weights.google_crc32c, "extend", slow.extend)
    options_path, weights_path = model
    path = export_model(tmp_path / "out", options_path, weights_path, write_warmup=False).path
    options = load_options(options_path)
    value = read_weights(weights_path, options)[W_0]
    keys = deferred_weights._checkpoint_keys(path)
    # Restoring checks every checksum.
    saved = tf.train.load_checkpoint(str(path / "variables" / "variables")).get_tensor(
        keys["lstm/lstm_1/backward/input_kernel"])
    np.testing.assert_array_equal(saved, value[:8].T)
