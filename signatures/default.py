"""The `default` signature: untokenized sentences.

Input `default`: string [B], one sentence per element, tokens separated by spaces. The
key is `default` because that is the name the TF1 Hub module gave a single unnamed
input. Sentences are split on single spaces in-graph and empty pieces are dropped, so
doubled, leading and trailing spaces add no tokens. `serving_default` (what TF Serving
calls when no signature is named) is the same function.
"""

from __future__ import annotations

import tensorflow as tf

NAME = "default"
ALIASES = ("serving_default",)
INPUT_SPECS = {"default": tf.TensorSpec([None], tf.string, name="default")}
DOC = ("`default`: string [B] of untokenized sentences, split on spaces "
       "(empty pieces dropped).")


def to_tokens(sentences: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """string [B] -> (tokens string [B, T], sequence_len int32 [B])."""
    pieces = tf.strings.split(sentences, sep=" ")  # ragged [B, None]
    pieces = tf.ragged.boolean_mask(pieces, tf.strings.length(pieces) > 0)
    tokens = pieces.to_tensor(default_value="")
    return tokens, tf.cast(pieces.row_lengths(), tf.int32)
