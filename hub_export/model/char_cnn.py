"""Character CNN: char ids -> per-filter max-pooled convolutions, concatenated."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf

from hub_export.model.options import CharCNNOptions

_ACTIVATIONS = {"relu": tf.nn.relu, "tanh": tf.nn.tanh}


class CharCNN(tf.Module):
    """Embeds each token's char ids and runs one valid convolution per filter width.

    Args:
        options: CharCNNOptions.
        weights: mapping from dataset name (`char_embed`, `CNN/W_cnn_i`, `CNN/b_cnn_i`)
            to shape-checked arrays, as `hub_export.model.weights.read_weights` returns them.
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
        C = self.options.max_characters_per_token
        # Tokens are far shorter than C: past a short prefix every row just repeats its
        # last id (the padding char, or 0 in a row that is no token). A window lying wholly
        # in that tail has one value per row, so the convolution runs over the prefix only
        # and that value joins the max once (the same convolution over one tail window, so
        # that it rounds as the full one did): the same max, without most of the positions.
        tail = char_ids[:, -1]
        varies = tf.reduce_any(char_ids != tail[:, None], axis=0)  # [C]
        # `used`: 1 + the last position where some row is not yet in its tail (>= 1).
        used = tf.maximum(tf.reduce_max(tf.where(varies, tf.range(1, C + 1), 0)), 1)
        tail_chars = tf.nn.embedding_lookup(self.char_embed, tail)  # [N, E]
        longest = tf.minimum(C, used + max(w for w, _ in self.options.filters) - 1)
        chars = tf.nn.embedding_lookup(self.char_embed, char_ids[:, :longest])  # [N, <=C, E]
        pooled = []
        for (width, _), kernel, bias in zip(self.options.filters, self.kernels, self.biases):
            head = chars[:, :tf.minimum(C, used + width - 1)]
            conv = tf.nn.conv1d(head, kernel, stride=1, padding="VALID")  # windows starting < used
            best = tf.reduce_max(conv, axis=1)
            tail_windows = C - width + 1 - used
            tail_window = tf.tile(tail_chars[:, None, :], [1, width, 1])  # [N, w, E]
            tail_value = tf.nn.conv1d(tail_window, kernel, stride=1, padding="VALID")[:, 0]
            best = tf.where(tail_windows > 0, tf.maximum(best, tail_value), best)
            # Bias after the max (adding a constant commutes with max exactly), then the
            # activation (bilm-tf's order; for relu and tanh, both monotonic, the two
            # orders agree anyway).
            pooled.append(self._activation(best + bias))  # [N, n]
        return tf.concat(pooled, axis=-1)
