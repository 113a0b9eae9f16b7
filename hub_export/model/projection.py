"""Projection of the highway output to the LSTM input width P."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf

from hub_export.model.precision import matmul, matrix_variable


class Projection(tf.Module):
    """y = x W_proj + b_proj, or the identity when the weight file has no `CNN_proj`.

    bilm-tf creates no projection when the char-CNN filters already add up to P
    (`BiLMOptions.has_projection`); then the highway output is the token representation.
    """

    def __init__(self, weights: Mapping[str, np.ndarray] | None, trainable: bool = False,
                 dtype: tf.DType = tf.float32, name: str = "projection"):
        super().__init__(name=name)
        # Variable names carry the part's name (char_cnn/conv_0/kernel, ...).
        with self.name_scope:
            self.kernel = self.bias = None
            if weights is not None:
                self.kernel = matrix_variable(weights["CNN_proj/W_proj"], dtype, trainable, "kernel")
                self.bias = tf.Variable(weights["CNN_proj/b_proj"], trainable=trainable, name="bias")

    def weight_arrays(self) -> dict[str, np.ndarray]:
        """The variables back in the weight-file layout; empty without a projection."""
        if self.kernel is None:
            return {}
        return {"CNN_proj/W_proj": tf.cast(self.kernel, tf.float32).numpy(),
                "CNN_proj/b_proj": self.bias.numpy()}

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        """x float32 [N, F] -> [N, P]."""
        if self.kernel is None:
            return x
        return matmul(x, self.kernel) + self.bias
