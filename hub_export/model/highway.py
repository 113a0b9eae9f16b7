"""Highway layers over the concatenated char-CNN filters."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf

from hub_export.model.precision import matrix_variable, product


class Highway(tf.Module):
    """`n_highway` highway layers in the TF (bilm-tf) weight layout.

    Each layer: g = sigmoid(x W_carry + b_carry); y = g * relu(x W_transform + b_transform)
    + (1 - g) * x. The transform is always ReLU, whatever `char_cnn.activation` says.
    (AllenNLP stores the negated carry weights and gates the other branch; the weight
    files hold the TF form, which is the one used here.)

    Args:
        n_layers: int. Number of highway layers (0 makes this the identity).
        weights: mapping with `CNN_high_k/{W,b}_{carry,transform}` arrays.
        trainable: bool.
        dtype: tf.DType. Compute dtype of the matrices (see `precision`).
    """

    def __init__(self, n_layers: int, weights: Mapping[str, np.ndarray],
                 trainable: bool = False, dtype: tf.DType = tf.float32, name: str = "highway"):
        super().__init__(name=name)
        # Variable names carry the part's name (char_cnn/conv_0/kernel, ...).
        with self.name_scope:
            self.layers = []
            for k in range(n_layers):
                layer = {}
                for part in ("W_carry", "b_carry", "W_transform", "b_transform"):
                    value, name_ = weights[f"CNN_high_{k}/{part}"], f"highway_{k}/{part}"
                    # Matrices are held as [out, in] and applied on the left of x^T: see
                    # __call__.
                    layer[part] = (matrix_variable(value.T, dtype, trainable, name_) if part[0] == "W"
                                   else tf.Variable(value, trainable=trainable, name=name_))
                self.layers.append(layer)

    def weight_arrays(self) -> dict[str, np.ndarray]:
        """The variables back in the weight-file layout (float32)."""
        arrays = {}
        for k, layer in enumerate(self.layers):
            for part, v in layer.items():
                value = tf.cast(v, tf.float32).numpy()
                arrays[f"CNN_high_{k}/{part}"] = np.ascontiguousarray(value.T) if part[0] == "W" else value
        return arrays

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        """x float32 [N, F] -> [N, F]."""
        if not self.layers:
            return x
        # Feature-major, W [out, in] @ x^T [in, N]: the form oneDNN's f32 GEMM runs faster
        # than x @ W here (`python benchmarks/bench_gemm_forms.py` times both).
        x = tf.transpose(x)
        for layer in self.layers:
            gate = tf.sigmoid(product(layer["W_carry"], x) + layer["b_carry"][:, None])
            transform = tf.nn.relu(product(layer["W_transform"], x) + layer["b_transform"][:, None])
            x = gate * transform + (1.0 - gate) * x
        return tf.transpose(x)
