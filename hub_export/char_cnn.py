"""Character CNN: char ids -> per-filter max-pooled convolutions, concatenated."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf

from hub_export.options import CharCNNOptions

_ACTIVATIONS = {"relu": tf.nn.relu, "tanh": tf.nn.tanh}


class CharCNN(tf.Module):
    """Embeds each token's char ids and runs one valid convolution per filter width.

    Args:
        options: CharCNNOptions.
        weights: mapping from dataset name (`char_embed`, `CNN/W_cnn_i`, `CNN/b_cnn_i`)
            to shape-checked arrays, as `hub_export.weights.read_weights` returns them.
        trainable: bool. Whether the variables are trainable.
    """

    def __init__(self, options: CharCNNOptions, weights: Mapping[str, np.ndarray],
                 trainable: bool = False, name: str = "char_cnn"):
        super().__init__(name=name)
        self.options = options
        self._activation = _ACTIVATIONS[options.activation]
        # Variable names carry the part's name (char_cnn/conv_0/kernel, ...).
        with self.name_scope:
            embed = weights["char_embed"]
            # The weight file has no row for id 0: char ids are offset by +1 so that 0 means
            # "no token", and that padding id must embed to zeros.
            embed = np.concatenate([np.zeros((1, embed.shape[1]), np.float32), embed])
            self.char_embed = tf.Variable(embed, trainable=trainable, name="char_embed")
            self.kernels, self.biases = [], []
            for i in range(len(options.filters)):
                # bilm-tf ran conv2d over a [1, C] "image", so its kernels are [1, w, E, n];
                # dropping the unit height gives the conv1d layout [w, E, n].
                kernel = weights[f"CNN/W_cnn_{i}"][0]
                self.kernels.append(tf.Variable(kernel, trainable=trainable, name=f"conv_{i}/kernel"))
                self.biases.append(tf.Variable(weights[f"CNN/b_cnn_{i}"], trainable=trainable,
                                               name=f"conv_{i}/bias"))

    def weight_arrays(self) -> dict[str, np.ndarray]:
        """The variables back in the weight-file layout (no padding row, [1, w, E, n] kernels)."""
        arrays = {"char_embed": self.char_embed.numpy()[1:]}
        for i, (kernel, bias) in enumerate(zip(self.kernels, self.biases)):
            arrays[f"CNN/W_cnn_{i}"] = kernel.numpy()[None]
            arrays[f"CNN/b_cnn_{i}"] = bias.numpy()
        return arrays

    def __call__(self, char_ids: tf.Tensor) -> tf.Tensor:
        """char_ids int32 [N, C] -> float32 [N, n_filters]."""
        chars = tf.nn.embedding_lookup(self.char_embed, char_ids)  # [N, C, E]
        pooled = []
        for kernel, bias in zip(self.kernels, self.biases):
            conv = tf.nn.conv1d(chars, kernel, stride=1, padding="VALID") + bias  # [N, C-w+1, n]
            # Max over positions first, then the activation (bilm-tf's order; for relu
            # and tanh, both monotonic, the two orders agree anyway).
            pooled.append(self._activation(tf.reduce_max(conv, axis=1)))  # [N, n]
        return tf.concat(pooled, axis=-1)
