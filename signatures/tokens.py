"""The `tokens` signature: sentences already split into tokens.

Inputs `tokens`: string [B, max_length], each row's tokens first, then any padding
strings (ignored); `sequence_len`: int32 [B], the number of real tokens in each row,
0 <= sequence_len <= max_length. Outputs keep T = max_length.
"""

from __future__ import annotations

import tensorflow as tf

NAME = "tokens"
ALIASES = ()
INPUT_SPECS = {
    "tokens": tf.TensorSpec([None, None], tf.string, name="tokens"),
    "sequence_len": tf.TensorSpec([None], tf.int32, name="sequence_len"),
}
DOC = ("`tokens`: string [B, max_length] of tokens (padding after each row's tokens is "
       "ignored); `sequence_len`: int32 [B], real tokens per row, 0..max_length.")


def to_tokens(tokens: tf.Tensor, sequence_len: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Checks the inputs in-graph; a bad value fails the call with a message naming it."""
    # A loaded signature does not check the rank of what it is fed; without this a 1-D
    # `tokens` fails later with "slice index 1 of dimension 0 out of bounds".
    tokens = tf.ensure_shape(tokens, [None, None], name="tokens_must_be_2d")
    sequence_len = tf.ensure_shape(sequence_len, [None], name="sequence_len_must_be_1d")
    batch = tf.shape(tokens)[0]
    max_length = tf.shape(tokens)[1]
    n_lengths = tf.shape(sequence_len)[0]
    checks = [
        tf.debugging.Assert(
            tf.equal(n_lengths, batch),
            ["tokens and sequence_len must have the same batch size; tokens has", batch,
             "rows, sequence_len has", n_lengths, "entries"]),
        tf.debugging.Assert(
            tf.reduce_all(sequence_len >= 0),
            ["sequence_len must be >= 0; got sequence_len =", sequence_len], summarize=20),
        tf.debugging.Assert(
            tf.reduce_all(sequence_len <= max_length),
            ["sequence_len must be <= max_length (tokens.shape[1] =", max_length,
             "); got sequence_len =", sequence_len], summarize=20),
    ]
    with tf.control_dependencies(checks):
        # Forget sequence_len's static batch size: a call traced with mismatched static
        # sizes would otherwise fail shape inference ("Dimensions must be equal") before
        # the check above could name the inputs.
        sequence_len = tf.raw_ops.PlaceholderWithDefault(input=sequence_len, shape=[None])
        return tf.identity(tokens), tf.identity(sequence_len)
