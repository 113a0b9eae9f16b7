"""Training data for the biLM: files, the vocabulary, and windows of a sentence stream.

The scheme is bilm-tf's (`LMDataset`, `BidirectionalLMDataset`):
- A training file holds one tokenized sentence per line (tokens split on whitespace).
  Files are read one at a time, in random order, their sentences shuffled; the stream
  goes round the files forever when training and once when evaluating. Empty lines
  carry no text and are skipped.
- Each sentence is wrapped as `<S> w1 ... wn </S>`, and gives n + 1 (input, next token)
  pairs: inputs `<S> w1 ... wn`, targets `w1 ... wn </S>`.
- Each of the batch rows is its own stream: it takes the next sentence whenever its
  current one is used up, so sentences run across window boundaries and the LSTM state
  is carried from one window to the next.
- The backward LM reads the reversed sentence `</S> wn ... w1 <S>` the same way. Here
  the two directions read the same sentences in the same rows (bilm-tf shuffles its
  reverse stream separately; sharing the order changes nothing in expectation and lets
  one mask serve both directions).
- Inputs are characters (the char ids of `char_ids.token_char_ids`, the inference ids;
  bilm-tf trains on ids one lower with 261 characters, the same embedding rows);
  targets are vocabulary ids, `<UNK>` for a word outside the vocabulary.

The vocabulary file, as bilm-tf's README asks for it: one word a line, `<S>`, `</S>`,
`<UNK>` on the first three lines, then the words by descending count in the training
data (the sampled softmax draws negatives from a log-uniform distribution over the ids,
which assumes that order).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import random
from typing import Iterable, Iterator

import numpy as np

from hub_export.errors import DataError
from hub_export.model.char_ids import BOS_TOKEN, EOS_TOKEN, token_char_ids
from hub_export.model.vocab import Vocabulary
from hub_export.textfiles import read_lines


def data_files(pattern: str, flag: str) -> list[str]:
    """The files a `--train-prefix`/`--test-prefix` glob names, sorted; at least one."""
    if not pattern:
        raise DataError(f"{flag}: empty pattern; expected a glob such as 'data/train/*.txt'")
    files = sorted(p for p in glob.glob(pattern) if not os.path.isdir(p))
    if not files:
        where = os.path.dirname(pattern) or "."
        hint = "" if os.path.isdir(where) else f" (the folder {where} does not exist)"
        raise DataError(f"{flag}: no file matches {pattern!r}{hint}")
    return files


def read_file_sentences(path: str, flag: str) -> list[list[str]]:
    """The non-empty lines of one data file, each split on whitespace.

    Raises:
        DataError: the file cannot be read, or a line is not UTF-8 (with its number).
    """
    sentences = []
    for _, line in read_lines(path, flag, "text file", DataError):
        tokens = line.split()
        if tokens:
            sentences.append(tokens)
    return sentences


@dataclasses.dataclass(frozen=True)
class CorpusStats:
    """Word counts of a set of data files (one pass over them)."""

    counts: collections.Counter
    n_tokens: int  # words, `<S>`/`</S>` not counted (bilm-tf's n_train_tokens)
    n_sentences: int


def corpus_stats(files: Iterable[str], flag: str) -> CorpusStats:
    """Counts the words of every file; refuses a set of files with no sentence at all."""
    counts: collections.Counter = collections.Counter()
    n_sentences = 0
    files = list(files)
    for path in files:
        for sentence in read_file_sentences(path, flag):
            counts.update(sentence)
            n_sentences += 1
    if n_sentences == 0:
        raise DataError(f"{flag}: the {len(files)} file(s) matched hold no sentence (every "
                        f"line is empty): {', '.join(files[:3])}{' ...' if len(files) > 3 else ''}")
    return CorpusStats(counts, sum(counts.values()), n_sentences)


def sentence_stream(files: list[str], flag: str, shuffle: bool, repeat: bool,
                    seed: int = 0) -> Iterator[list[str]]:
    """Sentences of the files, one file in memory at a time (bilm-tf's shard order)."""
    rng = random.Random(seed)
    while True:
        order = list(files)
        if shuffle:
            rng.shuffle(order)
        for path in order:
            sentences = read_file_sentences(path, flag)
            if shuffle:
                rng.shuffle(sentences)
            yield from sentences
        if not repeat:
            return


@dataclasses.dataclass
class Batch:
    """One window of every row, for both directions (axis 0: 0 forward, 1 backward).

    char_rows: int32 [U, C], the inference char ids of each distinct token of the batch
        (row 0: all zeros, for positions past the data). A batch repeats most of its
        words (and both directions hold the same ones), so the char CNN runs on these
        rows only and its output is gathered: about a third of the work.
    token_rows: int32 [2, B, T], the row of `char_rows` of the input at each position.
    targets: int32 [2, B, T], vocabulary ids of the next token.
    weights: float32 [B, T], 1 where the position holds a real (input, target) pair; 0
        only after the data ran out (evaluation).
    """

    char_rows: np.ndarray
    token_rows: np.ndarray
    targets: np.ndarray
    weights: np.ndarray

    @property
    def chars(self) -> np.ndarray:
        """int32 [2, B, T, C]: the char ids at every position."""
        return self.char_rows[self.token_rows]

    @property
    def n_tokens(self) -> int:
        return int(self.weights.sum())


class WindowBatcher:
    """Cuts a sentence stream into `Batch`es of `batch_size` rows x `unroll_steps` steps.

    Iteration ends when the stream is exhausted and every row has used up its sentence;
    the last batch is then padded (weights 0). A repeating stream never ends.
    """

    def __init__(self, sentences: Iterator[list[str]], vocab: Vocabulary, batch_size: int,
                 unroll_steps: int, max_chars: int):
        self._sentences = sentences
        self._vocab = vocab
        self.batch_size, self.unroll_steps, self.max_chars = batch_size, unroll_steps, max_chars
        self._chars: dict[str, np.ndarray] = {}
        self._padding = np.zeros([max_chars], np.int32)
        self._ids = {w: i for i, w in enumerate(vocab.words)}
        self._unk = vocab.unk
        # Per row: (forward ids, backward ids, forward chars, backward chars, position).
        self._rows: list = [None] * batch_size
        self._exhausted = False

    def _char_row(self, token: str) -> np.ndarray:
        row = self._chars.get(token)
        if row is None:
            row = self._chars[token] = token_char_ids(token, self.max_chars)
        return row

    def _next_sentence(self):
        if self._exhausted:
            return None
        try:
            words = next(self._sentences)
        except StopIteration:
            self._exhausted = True
            return None
        forward = [BOS_TOKEN] + words + [EOS_TOKEN]
        backward = [EOS_TOKEN] + words[::-1] + [BOS_TOKEN]
        ids = [np.array([self._ids.get(w, self._unk) for w in s], np.int32) for s in (forward, backward)]
        return [ids[0], ids[1], forward, backward, 0]

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        B, T = self.batch_size, self.unroll_steps
        rows: dict[str, int] = {}
        token_rows = np.zeros([2, B, T], np.int32)
        targets = np.zeros([2, B, T], np.int32)
        weights = np.zeros([B, T], np.float32)
        for i in range(B):
            t = 0
            while t < T:
                row = self._rows[i]
                if row is None or row[4] >= len(row[0]) - 1:
                    row = self._rows[i] = self._next_sentence()
                    if row is None:
                        break
                fw_ids, bw_ids, fw_words, bw_words, pos = row
                n = min(len(fw_ids) - 1 - pos, T - t)
                for d, words in enumerate((fw_words, bw_words)):
                    token_rows[d, i, t:t + n] = [rows.setdefault(w, len(rows) + 1)
                                                 for w in words[pos:pos + n]]
                targets[0, i, t:t + n] = fw_ids[pos + 1:pos + n + 1]
                targets[1, i, t:t + n] = bw_ids[pos + 1:pos + n + 1]
                weights[i, t:t + n] = 1.0
                row[4] = pos + n
                t += n
        if not weights.any():
            raise StopIteration
        char_rows = np.stack([self._padding] + [self._char_row(w) for w in rows])
        return Batch(char_rows, token_rows, targets, weights)


def unigram_perplexity(train_files: list[str], test_files: list[str], vocab: Vocabulary) -> float:
    """The perplexity of a unigram model on what the biLM predicts, for comparison.

    The unigram model is the relative frequency of each target in the training files
    (words outside the vocabulary count as `<UNK>`; each sentence adds one `</S>` target
    forwards and one `<S>` backwards); it is scored on the targets of the test files,
    both directions, as `evaluate` scores the biLM.
    """
    ids = {w: i for i, w in enumerate(vocab.words)}

    def target_counts(files: list[str], flag: str) -> np.ndarray:
        counts = np.zeros(vocab.size, np.float64)
        for path in files:
            for sentence in read_file_sentences(path, flag):
                for word in sentence:
                    counts[ids.get(word, vocab.unk)] += 2  # a target in each direction
                counts[vocab.bos] += 1
                counts[vocab.eos] += 1
        return counts

    train = target_counts(train_files, "--train-prefix")
    test = target_counts(test_files, "--test-prefix")
    seen = test > 0
    if (train[seen] == 0).any():
        missing = vocab.words[int(np.argmax(seen & (train == 0)))]
        raise DataError(f"{missing!r} is a test target never seen in the training files: a "
                        "unigram model gives it probability 0")
    log_p = np.log(train[seen] / train.sum())
    return float(np.exp(-(test[seen] * log_p).sum() / test.sum()))
