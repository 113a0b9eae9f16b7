"""The token cache: precomputed token representations of a vocabulary, inside the module.

bilm-tf's README suggests precomputing the context-independent token representations
(char CNN + highway + projection) of a vocabulary to save their cost at inference; its
token-id path then fails on any word outside that vocabulary. Here the table is a
frozen variable of the exported module and the lookup happens in the graph: a token in
the vocabulary takes its row, any other token goes through the char CNN, in the same
call. Each distinct out-of-vocabulary token of a batch is computed once.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from hub_export.files import sha256_file
from hub_export.model.bilm import BiLM
from hub_export.model.char_ids import BOS_TOKEN, EOS_TOKEN, encode_tokens, token_char_ids

_CHUNK = 2048  # words per char-CNN batch while filling the table


class TokenCache(tf.Module):
    """A vocabulary's token representations, looked up in-graph.

    Args:
        bilm: BiLM whose `embed_char_rows` fills the table (and serves other tokens).
        words: the vocabulary, no repeats (`vocab.Vocabulary.distinct_words`).
        vocab_file: where to write the vocabulary as the module's asset (one word a line).
    """

    def __init__(self, bilm: BiLM, words: list[str], vocab_file: str | os.PathLike,
                 name: str = "token_cache"):
        super().__init__(name=name)
        self.bilm = bilm
        C = bilm.options.char_cnn.max_characters_per_token
        embed = tf.function(bilm.embed_char_rows, autograph=False,
                            input_signature=[tf.TensorSpec([None, C], tf.int32)])
        rows = []
        for start in range(0, len(words), _CHUNK):
            ids = np.stack([token_char_ids(w, C) for w in words[start:start + _CHUNK]])
            rows.append(embed(ids).numpy())
        with self.name_scope:
            self.embeddings = tf.Variable(np.concatenate(rows), trainable=False, name="embeddings")
        Path(vocab_file).write_text("".join(w + "\n" for w in words), encoding="utf-8")
        self.size = len(words)
        self.sha256 = sha256_file(vocab_file)
        # The vocabulary travels as an asset file (a constant of 800k strings would bloat
        # the graph); line k holds the word of table row k.
        self.vocab_asset = tf.saved_model.Asset(os.fspath(vocab_file))
        initializer = tf.lookup.TextFileInitializer(
            self.vocab_asset, key_dtype=tf.string, key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            value_dtype=tf.int64, value_index=tf.lookup.TextFileIndex.LINE_NUMBER)
        self.table = tf.lookup.StaticHashTable(initializer, default_value=-1)

    def token_embedding(self, tokens: tf.Tensor, sequence_len: tf.Tensor) -> tf.Tensor:
        """tokens string [B, T] + sequence_len int32 [B] -> float32 [B, T+2, P].

        The rows are framed like `encode_tokens`' ids: begin, the tokens, end, then
        padding rows (zeros here; the biLM masks them).
        """
        batch, width = tf.shape(tokens)[0], tf.shape(tokens)[1]
        steps = tf.minimum(tf.maximum(sequence_len, 0), width) + 2
        position = tf.range(width + 2)[None, :]
        body = tf.pad(tokens, [[0, 0], [1, 1]])  # token t at position t + 1
        # The literal "<S>"/"</S>" strings are exactly the boundary rows (bilm-tf maps
        # them so), so the frame can be written as strings and looked up like words.
        framed = tf.where(position == 0, BOS_TOKEN,
                          tf.where(position == steps[:, None] - 1, EOS_TOKEN, body))
        valid = position < steps[:, None]  # [B, T+2]
        index = self.table.lookup(framed)
        known = valid & (index >= 0)
        cached = tf.gather(tf.convert_to_tensor(self.embeddings), tf.maximum(index, 0))

        where_unknown = tf.where(valid & (index < 0))  # [N, 2]
        unique, inverse = tf.unique(tf.gather_nd(framed, where_unknown))
        C = self.bilm.options.char_cnn.max_characters_per_token
        # One-token sentences: row 1 of each framed encoding is the token's char ids.
        ids = encode_tokens(unique[:, None], tf.ones_like(unique, tf.int32), C)[:, 1]
        computed = tf.gather(self.bilm.embed_char_rows(ids), inverse)
        P = self.bilm.options.lstm.projection_dim
        scattered = tf.scatter_nd(where_unknown, computed, [batch, width + 2, P])
        return tf.where(known[:, :, None], cached, scattered)
