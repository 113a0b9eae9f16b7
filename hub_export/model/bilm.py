"""The bidirectional language model behind ELMo, in TF2.

Rebuilt from the two files every ELMo model ships as (options.json + weights.hdf5), to
give the numbers of the original bilm-tf code (allenai/bilm-tf) and of AllenNLP's
`_ElmoBiLm`. See ../shared/MODEL.md for the arithmetic. Unlike both references this
module is stateless: every call starts from zero LSTM states unless states are passed in.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from hub_export.model.char_cnn import CharCNN
from hub_export.model.highway import Highway
from hub_export.model.lstm import BiLSTM, LayerState
from hub_export.model.options import BiLMOptions, load_options
from hub_export.model.precision import COMPUTE_DTYPES
from hub_export.model.projection import Projection
from hub_export.model.weights import WeightReader


class BiLM(tf.Module):
    """char ids -> token representation and the LSTM layers of both directions.

    Args:
        options: BiLMOptions.
        weights: dataset name -> array: a `WeightReader` (each dataset is read once, as
            its variable is made) or the dict `read_weights` returns.
        trainable: bool. Whether the biLM variables are trainable (fine-tuning all).
        compute_dtype: str. "float32" (exact) or "bfloat16" (see `precision`).

    Example:
        >>> bilm = BiLM.from_files("options.json", "weights.hdf5")
        >>> out = bilm(batch_sentences([["Hello", "world"]]))
        >>> out["lstm_outputs"][1].shape  # [1, 2, 2P]
    """

    def __init__(self, options: BiLMOptions, weights: Mapping[str, np.ndarray],
                 trainable: bool = False, compute_dtype: str = "float32", name: str = "bilm"):
        super().__init__(name=name)
        self.options = options
        self.compute_dtype = compute_dtype
        dtype = COMPUTE_DTYPES[compute_dtype]
        self.char_cnn = CharCNN(options.char_cnn, weights, trainable)
        self.highway = Highway(options.char_cnn.n_highway, weights, trainable, dtype)
        self.projection = Projection(weights if options.has_projection else None, trainable, dtype)
        self.lstm = BiLSTM(options.lstm, weights, trainable, dtype)

    @classmethod
    def from_files(cls, options_path: str | os.PathLike, weights_path: str | os.PathLike,
                   trainable: bool = False) -> "BiLM":
        options = load_options(options_path)
        with WeightReader(weights_path, options) as weights:
            return cls(options, weights, trainable)

    def weight_arrays(self) -> dict[str, np.ndarray]:
        """Every weight in the bilm-tf file layout (float32), what `read_weights` gives for
        the file these variables came from: the inverse of loading, for dumping a trained
        biLM."""
        arrays = {}
        for part in (self.char_cnn, self.highway, self.projection, self.lstm):
            arrays.update(part.weight_arrays())
        return arrays

    def embed_char_rows(self, char_ids: tf.Tensor) -> tf.Tensor:
        """char_ids int32 [N, C], one token per row -> float32 [N, P]."""
        C = self.options.char_cnn.max_characters_per_token
        # Deal with a corner case: conv1d on CPU returns a wrongly shaped tensor for an
        # empty batch, so one all-padding row always rides along and is dropped after.
        rows = tf.concat([char_ids, tf.zeros([1, C], char_ids.dtype)], axis=0)
        return self.projection(self.highway(self.char_cnn(rows)))[:-1]

    def token_embedding(self, char_ids: tf.Tensor) -> tf.Tensor:
        """char_ids int32 [B, T, C] -> float32 [B, T, P] (not masked)."""
        shape = tf.shape(char_ids)
        x = self.embed_char_rows(tf.reshape(char_ids, [-1, self.options.char_cnn.max_characters_per_token]))
        return tf.reshape(x, [shape[0], shape[1], self.options.lstm.projection_dim])

    def __call__(self, char_ids: tf.Tensor,
                 initial_state: Sequence[LayerState] | None = None) -> dict:
        """Runs the biLM on framed char ids.

        Args:
            char_ids: int32 [B, T+2, C], as `char_ids.batch_sentences` or
                `char_ids.encode_tokens` make them (begin row, tokens, end row, zero rows).
            initial_state: optional per-layer (c [2, B, D], h [2, B, P]), axis 0 the
                direction (0 forward, 1 backward). Zeros when None.

        Returns:
            dict with
              `word_emb` float32 [B, T, P]: the token representation;
              `lstm_outputs`: list of n_layers float32 [B, T, 2P], forward half first;
              `sequence_len` int32 [B]: tokens per row;
              `mask` bool [B, T];
              `final_state`: per layer (c, h) after each row's last step, for replaying
                the stateful references.
            Begin/end positions are removed and every position t >= sequence_len is 0.
        """
        char_ids = tf.convert_to_tensor(char_ids, tf.int32)
        # A row's steps are its non-zero char-id rows: begin, tokens, end (bilm-tf's rule).
        steps = tf.reduce_sum(tf.cast(tf.reduce_any(char_ids > 0, axis=2), tf.int32), axis=1)
        return self.contextualize(self.token_embedding(char_ids), steps, initial_state)

    def contextualize(self, tokens: tf.Tensor, steps: tf.Tensor,
                      initial_state: Sequence[LayerState] | None = None) -> dict:
        """The biLSTM over token representations that are already computed.

        Args:
            tokens: float32 [B, T+2, P], begin row, token rows, end row, then padding.
            steps: int32 [B], the rows of each sentence that count (its tokens + 2).
            initial_state: as for `__call__`.

        Returns:
            The dict of `__call__`.
        """
        sequence_len = tf.maximum(steps - 2, 0)
        max_steps = tf.shape(tokens)[1]
        mask_tm = tf.transpose(tf.sequence_mask(steps, max_steps))  # [T+2, B]
        x = tf.transpose(tokens, [1, 0, 2])  # [T+2, B, P]
        # The backward stack reads each row from its own end token: reverse the valid
        # part of every row, leave the padding where it is.
        x_bw = tf.reverse_sequence(x, steps, seq_axis=0, batch_axis=1)
        layer_outputs, final_state = self.lstm(tf.stack([x, x_bw]), mask_tm, initial_state)

        mask = tf.sequence_mask(sequence_len, max_steps - 2)  # [B, T]

        def strip(t):  # [B, T+2, W] -> [B, T, W] without begin/end, exactly 0 past the end
            return tf.where(mask[:, :, None], t[:, 1:-1], 0.0)

        lstm_outputs = []
        for h in layer_outputs:  # [2, T+2, B, P]
            bw = tf.reverse_sequence(h[1], steps, seq_axis=0, batch_axis=1)
            both = tf.transpose(tf.concat([h[0], bw], axis=-1), [1, 0, 2])  # [B, T+2, 2P]
            lstm_outputs.append(strip(both))
        return {
            "word_emb": strip(tokens),
            "lstm_outputs": lstm_outputs,
            "sequence_len": sequence_len,
            "mask": mask,
            "final_state": final_state,
        }
