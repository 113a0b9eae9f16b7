"""bilm-tf's cached-token path: the token-embedding file and the `TokenBatcher`.

bilm-tf can run its biLM on token ids instead of characters: `dump_token_embeddings`
writes the context-independent representation (char CNN, highway, projection) of every
vocabulary word to an hdf5 file, and `TokenBatcher` turns sentences into the ids that
index it. This module writes the same file from an options.json + weights.hdf5 and
gives a numpy `TokenBatcher` with the same ids, for code written against that path.

The file: one dataset `embedding`, float32 [vocab_size, P], row k the representation of
vocabulary word k (file order), computed from that word's characters alone (`<S>` and
`</S>` from their special character rows), as bilm-tf computes it.

The vocabulary, as bilm-tf's `Vocabulary` reads it (`hub_export.model.vocab`).

Token ids, as bilm-tf's `TokenBatcher.batch_sentences` makes them: int64
[n_sentences, max_len + 2]; row i is `<S>`, the sentence's words, `</S>`, then 0s, with
every id being the vocabulary id + 1, so that 0 is free to mean padding (bilm-tf adds a
zero row in front of the embedding table when it loads this file). A word outside the
vocabulary gets the id of `<UNK>` + 1; in a vocabulary without `<UNK>` that is
-1 + 1 = 0, the padding id, exactly as in bilm-tf (its token path then treats the word
as padding); `TokenBatcher.unknown_words` lists such words so that callers can tell.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from hub_export import atomic
from hub_export.errors import HubExportError, VocabError
from hub_export.model.bilm import BiLM
from hub_export.model.char_ids import BOS_TOKEN, EOS_TOKEN, token_char_ids
from hub_export.model.vocab import Vocabulary
from hub_export.progress import Progress

EMBEDDING_DATASET = "embedding"
DEFAULT_BATCH_SIZE = 4096  # words per char-CNN call while dumping


def _check_sentences(sentences) -> None:
    if not isinstance(sentences, (list, tuple)):
        raise HubExportError(f"sentences must be a list of token lists, got {type(sentences).__name__}")
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, (list, tuple)):
            raise HubExportError(f"sentences[{i}] must be a list of tokens, got {type(sentence).__name__}")
        for j, token in enumerate(sentence):
            if not isinstance(token, str):
                raise HubExportError(f"sentences[{i}][{j}] must be str, got {type(token).__name__}")


class TokenBatcher:
    """bilm-tf's `TokenBatcher`: `TokenBatcher(vocab_file).batch_sentences(sentences)`.

    Args:
        vocab_file: the vocabulary the token-embedding file was dumped from.

    Example:
        batcher = TokenBatcher("vocab.txt")
        ids = batcher.batch_sentences([["The", "cat"], ["Hello"]])  # int64 [2, 4]
        # ids[1] == [bos + 1, id("Hello") + 1, eos + 1, 0]
    """

    def __init__(self, vocab_file: str | os.PathLike):
        self.vocab = Vocabulary(vocab_file)

    def batch_sentences(self, sentences) -> np.ndarray:
        """Token lists (without `<S>`/`</S>`) -> int64 [n, max_len + 2], 0 for padding.

        An empty list of sentences gives shape (0, 2) (bilm-tf fails on `max()` of
        nothing).
        """
        _check_sentences(sentences)
        width = max((len(s) for s in sentences), default=0) + 2
        ids = np.zeros((len(sentences), width), dtype=np.int64)
        vocab = self.vocab
        for k, sentence in enumerate(sentences):
            row = [vocab.bos] + [vocab.word_to_id(w) for w in sentence] + [vocab.eos]
            # +1: id 0 is padding, and the embedding table gets a zero row in front.
            ids[k, : len(row)] = np.asarray(row, np.int64) + 1
        return ids

    def unknown_words(self, sentences) -> list[tuple[int, int, str]]:
        """(sentence, position, word) of every word the vocabulary does not hold."""
        _check_sentences(sentences)
        return [(i, j, w) for i, s in enumerate(sentences) for j, w in enumerate(s)
                if w not in self.vocab]


def _check_dumpable(vocab: Vocabulary) -> None:
    where = f"--vocab: {vocab.path}"
    if vocab.size == 0:
        raise VocabError(f"{where}: no words in the file")
    missing = [t for t, i in ((BOS_TOKEN, vocab.bos), (EOS_TOKEN, vocab.eos)) if i < 0]
    if missing:
        # bilm-tf overwrites the last word's characters with the missing marker's row
        # (index -1), so its dump would be wrong; and its token path needs both ids.
        raise VocabError(f"{where}: no {' or '.join(missing)} line; the token path needs "
                         f"both {BOS_TOKEN} and {EOS_TOKEN} in the vocabulary")
    for word, line in zip(vocab.words, vocab.lines):
        if not word:
            # bilm-tf's char conversion fails on an empty word; skipping it would shift
            # every later id away from what TokenBatcher gives.
            raise VocabError(f"{where}: line {line} is empty; remove it (ids count lines)")


def token_embeddings(bilm: BiLM, words: list[str], batch_size: int = DEFAULT_BATCH_SIZE):
    """Yields (first row, float32 [n, P]) for `words`, `batch_size` words at a time.

    Each word's representation comes from its own character row, as a one-token input,
    so it equals the module's `word_emb` for that word in any sentence.
    """
    C = bilm.options.char_cnn.max_characters_per_token

    @tf.function(input_signature=[tf.TensorSpec([None, 1, C], tf.int32)], autograph=False)
    def embed(char_ids):
        return bilm.token_embedding(char_ids)[:, 0, :]

    for start in range(0, len(words), batch_size):
        chunk = words[start: start + batch_size]
        rows = np.stack([token_char_ids(w, C) for w in chunk])[:, None, :]
        yield start, embed(tf.constant(rows)).numpy()


def dump_token_embeddings(vocab_path: str | os.PathLike, options_path: str | os.PathLike,
                          weights_path: str | os.PathLike, output: str | os.PathLike,
                          overwrite: bool = False, batch_size: int = DEFAULT_BATCH_SIZE,
                          progress: Progress | None = None) -> Path:
    """Writes bilm-tf's token-embedding file for a vocabulary (see the module doc).

    Args:
        vocab_path: the vocabulary, one word a line, with `<S>` and `</S>`.
        options_path, weights_path: the biLM's options.json and weights.hdf5.
        output: the hdf5 file to write; written beside it and put in place at the end, so
            an interrupted or failed dump leaves no output.
        overwrite: replace an existing output.
        batch_size: words per char-CNN call.
        progress: where to report the steps; None for silence.

    Returns:
        The output path.

    Raises:
        HubExportError: naming the file, line or value that is wrong (VocabError,
            OptionsError, WeightsError among them); OutputExistsError, WriteError (the
            OS refused to write the output: full disk, read-only, no permission).
    """
    output = Path(output)
    if output.is_dir():
        raise HubExportError(f"--output: {output} is a directory; give a file name such as "
                             "tokens.hdf5")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise HubExportError(f"--batch-size: must be a positive integer, got {batch_size!r}")
    atomic.check_new_file(output, "--output", overwrite)
    vocab = Vocabulary(vocab_path)
    _check_dumpable(vocab)
    progress = progress or Progress(0, stream=None)
    with progress.step("reading options and weights into the biLM"):
        bilm = BiLM.from_files(options_path, weights_path)
    # Written beside the output and linked into place at the end (`atomic`): an
    # interrupted or failed dump leaves no output, and of two dumps to one output
    # without `overwrite` one wins.
    with atomic.new_files([(output, "--output")], overwrite) as (tmp,):
        with progress.step(f"embedding {vocab.size:,} words into {output}"):
            shape = (vocab.size, bilm.options.lstm.projection_dim)
            # A full disk is met before HDF5 writes (see `atomic.new_hdf5`).
            with atomic.new_hdf5(tmp, int(np.prod(shape)) * 4, 1) as f:
                # Filled chunk by chunk: the table is never held whole in memory (the
                # original model's 793k-word vocabulary makes it 1.6 GB).
                table = f.create_dataset(EMBEDDING_DATASET, shape, dtype=np.float32)
                for start, rows in token_embeddings(bilm, vocab.words, batch_size):
                    table[start: start + len(rows)] = rows
    return output
