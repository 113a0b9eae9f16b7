"""--compute-dtype bfloat16: bf16 matrices, float32 everywhere else, close to float32."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from hub_export.errors import HubExportError
from hub_export.export.elmo_module import ExportConfig

from helpers import export_model

SENTENCES = ["the cat sat on the mat .", "naïve café", "", "a b c d e f g h i j"]


@pytest.fixture(scope="module")
def modules(small_export, tmp_path_factory):
    plain, options_path, weights_path = small_export
    half = export_model(tmp_path_factory.mktemp("bf16"), options_path, weights_path,
                        config=ExportConfig(compute_dtype="bfloat16"))
    return hub.load(str(plain.path)), hub.load(str(half.path)), half


def test_bfloat16_close_to_float32(modules):
    full, half, _ = modules
    x = tf.constant(SENTENCES)
    a, b = full.signatures["default"](default=x), half.signatures["default"](default=x)
    for key in ("word_emb", "lstm_outputs1", "lstm_outputs2", "elmo", "default"):
        assert b[key].dtype == tf.float32
        diff = np.abs(a[key].numpy() - b[key].numpy())
        # bfloat16 keeps 8 significant bits: ~0.4% of each product's magnitude.
        assert diff.max() < 0.05, (key, diff.max())
        assert diff.max() > 0, f"{key}: identical, so bfloat16 was not used"
    np.testing.assert_array_equal(a["sequence_len"], b["sequence_len"])
    assert not np.any(b["elmo"][2].numpy()) and not np.any(b["default"][2].numpy())


def test_bfloat16_variables_and_four_scalars(modules):
    _, half, result = modules
    dtypes = {v.name: v.dtype for v in half.variables}
    assert dtypes["lstm/lstm_0/forward/recurrent_kernel:0"] == tf.bfloat16
    assert dtypes["lstm/lstm_0/forward/bias:0"] == tf.float32
    assert dtypes["char_cnn/char_embed:0"] == tf.float32
    assert result.manifest["export_flags"]["compute_dtype"] == "bfloat16"
    assert sum(int(np.prod(v.shape)) for v in half.trainable_variables) == 4
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(half(tf.constant(["a b"]))["default"])
    grads = tape.gradient(loss, half.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)


def test_bfloat16_refused_with_trainable_all(small_export, tmp_path):
    _, options_path, weights_path = small_export
    with pytest.raises(HubExportError, match="--compute-dtype bfloat16 goes with --trainable mix"):
        export_model(tmp_path, options_path, weights_path,
                     config=ExportConfig(compute_dtype="bfloat16", trainable="all"))
    with pytest.raises(HubExportError, match="--compute-dtype: got 'float16'; allowed: float32, bfloat16"):
        export_model(tmp_path, options_path, weights_path, config=ExportConfig(compute_dtype="float16"))
