"""The biLM as a language model: the `BiLM` plus the output softmax, for training.

The forward LM predicts each next token from the forward stack's top output, the
backward LM each previous token from the backward stack's; the loss is the mean of the
two cross-entropies (bilm-tf's `total_loss`). The softmax over the vocabulary is
shared by both directions, and is sampled (`tf.nn.sampled_softmax_loss`, log-uniform
negatives) when training with fewer negatives than words, as in bilm-tf; evaluation
always uses the full softmax.

Fresh weights follow bilm-tf's initializers, so that its hyper-parameters (Adagrad 0.2,
clipping at 10) behave as they did there.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from hub_export.model.bilm import BiLM
from hub_export.model.lstm import LayerState
from hub_export.model.options import BiLMOptions
from hub_export.model.weights import SOFTMAX_B, SOFTMAX_W, weight_specs


def initial_weights(options: BiLMOptions, seed: int) -> dict[str, np.ndarray]:
    """Fresh biLM weights in the weight-file layout, drawn as bilm-tf draws them."""
    rng = np.random.default_rng(seed)
    cnn = options.char_cnn
    arrays = {}
    for spec in weight_specs(options):
        name, shape = spec.name, spec.shape
        leaf = name.rsplit("/", 1)[-1]
        if name == "char_embed":
            value = rng.uniform(-1.0, 1.0, shape)
        elif leaf.startswith("W_cnn"):
            if cnn.activation == "relu":  # Kim et al. (2015): +-0.05
                value = rng.uniform(-0.05, 0.05, shape)
            else:
                value = rng.normal(0.0, np.sqrt(1.0 / (shape[1] * cnn.embedding_dim)), shape)
        elif leaf == "b_carry":
            value = np.full(shape, -2.0)  # highway gates start mostly closed: carry x through
        elif leaf in ("W_carry", "W_transform", "W_proj"):
            value = rng.normal(0.0, np.sqrt(1.0 / shape[0]), shape)
        elif leaf in ("W_0", "W_P_0"):  # TF LSTMCell's default: Glorot uniform
            limit = np.sqrt(6.0 / (shape[0] + shape[1]))
            value = rng.uniform(-limit, limit, shape)
        else:  # every other bias
            value = np.zeros(shape)
        arrays[name] = value.astype(np.float32)
    return arrays


def initial_softmax(vocab_size: int, projection_dim: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, 1])
    return {SOFTMAX_W: rng.normal(0.0, 1.0 / np.sqrt(projection_dim),
                                  (vocab_size, projection_dim)).astype(np.float32),
            SOFTMAX_B: np.zeros([vocab_size], np.float32)}


class LanguageModel(tf.Module):
    """A trainable `BiLM` and its softmax.

    Args:
        options: BiLMOptions.
        weights: the biLM's arrays in the weight-file layout.
        softmax: `softmax/W` [V, P] and `softmax/b` [V].
    """

    def __init__(self, options: BiLMOptions, weights: Mapping[str, np.ndarray],
                 softmax: Mapping[str, np.ndarray], name: str = "language_model"):
        super().__init__(name=name)
        self.options = options
        self.bilm = BiLM(options, weights, trainable=True)
        with self.name_scope:
            self.softmax_w = tf.Variable(softmax[SOFTMAX_W], name="softmax/W")
            self.softmax_b = tf.Variable(softmax[SOFTMAX_B], name="softmax/b")

    @property
    def vocab_size(self) -> int:
        return int(self.softmax_w.shape[0])

    def zero_state(self, batch_size: int) -> list[LayerState]:
        return self.bilm.lstm.zero_state(batch_size)

    def top_outputs(self, char_rows: tf.Tensor, token_rows: tf.Tensor, weights: tf.Tensor,
                    state: Sequence[LayerState], dropout: float = 0.0,
                    seed: tf.Tensor | None = None) -> tuple[tf.Tensor, list[LayerState]]:
        """The top layer of both stacks over one window (`train.data.Batch`'s layout).

        Args:
            char_rows: int32 [U, C]: the char ids of the batch's distinct tokens.
            token_rows: int32 [2, B, T]: the row at each position of the forward stream
                and of the reversed stream.
            weights: float32 [B, T]: 1 at real positions; the state is held past them.
            state: per layer (c, h) carried from the previous window.
            dropout: rate on every LSTM layer's input and on the top output (bilm-tf).
            seed: int32 [2], the stateless seed of the dropout masks.

        Returns:
            (top float32 [2, B, T, P], final state per layer).
        """
        tokens = tf.gather(self.bilm.embed_char_rows(char_rows), token_rows)  # [2, B, T, P]
        x = tf.transpose(tokens, [0, 2, 1, 3])  # [2, T, B, P]
        mask = tf.transpose(weights > 0)  # [T, B]
        outputs, final_state = self.bilm.lstm(x, mask, state, dropout=dropout, seed=seed)
        top = outputs[-1]
        if dropout:
            top = tf.nn.experimental.stateless_dropout(top, dropout, seed + 1000)
        return tf.transpose(top, [0, 2, 1, 3]), final_state

    def token_losses(self, top: tf.Tensor, targets: tf.Tensor, n_negative: int = 0,
                     seed: int | None = None) -> tf.Tensor:
        """Cross-entropy of every position, float32 [2, B, T].

        n_negative > 0 and below the vocabulary size: the sampled softmax of training.
        """
        P = self.options.lstm.projection_dim
        flat_top = tf.reshape(top, [-1, P])
        flat_targets = tf.reshape(targets, [-1])
        if 0 < n_negative < self.vocab_size:
            losses = tf.nn.sampled_softmax_loss(
                weights=self.softmax_w, biases=self.softmax_b,
                labels=tf.cast(flat_targets[:, None], tf.int64), inputs=flat_top,
                num_sampled=n_negative, num_classes=self.vocab_size, seed=seed)
        else:
            logits = tf.matmul(flat_top, self.softmax_w, transpose_b=True) + self.softmax_b
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=flat_targets,
                                                                    logits=logits)
        return tf.reshape(losses, tf.shape(targets))

    def weight_arrays(self, include_softmax: bool = False) -> dict[str, np.ndarray]:
        arrays = self.bilm.weight_arrays()
        if include_softmax:
            arrays[SOFTMAX_W] = self.softmax_w.numpy()
            arrays[SOFTMAX_B] = self.softmax_b.numpy()
        return arrays
