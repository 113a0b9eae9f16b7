"""Training data: the vocabulary rules, the files, and the windows of the sentence stream."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from hub_export.errors import VocabError
from hub_export.model.char_ids import BOS_TOKEN, EOS_TOKEN, token_char_ids
from hub_export.model.vocab import SPECIAL_TOKENS, Vocabulary, write_vocab
from hub_export.train.data import (
    DataError,
    WindowBatcher,
    corpus_stats,
    data_files,
    read_file_sentences,
    sentence_stream,
)


def load_training_vocab(path, counts=None):
    return Vocabulary(path).check_training(counts)

SENTENCES = [["the", "cat", "sat"], ["a", "dog"], ["the", "zebra", "ran", "far", "away"],
             ["hi"], ["the", "cat", "ran"]]


def vocab_file(tmp_path, words, name="vocab.txt"):
    path = tmp_path / name
    path.write_text("\n".join(words) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def vocab(tmp_path):
    counts = collections.Counter(w for s in SENTENCES for w in s)
    del counts["zebra"]  # one word outside the vocabulary: its target is <UNK>
    return load_training_vocab(vocab_file(tmp_path, list(SPECIAL_TOKENS) + sorted(counts)))


def all_windows(sentences, vocab, batch_size, unroll_steps):
    return list(WindowBatcher(iter(sentences), vocab, batch_size, unroll_steps, max_chars=12))


def pairs_of_rows(batches, vocab, direction):
    """Per row, the (input token, target word) pairs read in order across the windows."""
    words = {}
    for b in batches:
        for row in range(b.weights.shape[0]):
            for t in range(b.weights.shape[1]):
                if b.weights[row, t]:
                    chars = tuple(b.chars[direction, row, t])
                    words.setdefault(row, []).append((chars, vocab.words[b.targets[direction, row, t]]))
    return words


def expected_pairs(sentence, vocab, reverse):
    tokens = [BOS_TOKEN] + sentence + [EOS_TOKEN]
    if reverse:
        tokens = tokens[::-1]
    known = set(vocab.words)
    return [(tuple(token_char_ids(a, 12)), b if b in known else "<UNK>")
            for a, b in zip(tokens[:-1], tokens[1:])]


@pytest.mark.parametrize("batch_size,unroll_steps", [(1, 4), (2, 3), (3, 7), (8, 2)])
def test_every_pair_once_in_stream_order(vocab, batch_size, unroll_steps):
    batches = all_windows(SENTENCES, vocab, batch_size, unroll_steps)
    assert sum(b.n_tokens for b in batches) == sum(len(s) + 1 for s in SENTENCES)
    for direction in (0, 1):
        rows = pairs_of_rows(batches, vocab, direction)
        # Rows take the next sentence when theirs is used up; replay that assignment.
        got = sorted(p for row in rows.values() for p in row)
        want = sorted(p for s in SENTENCES for p in expected_pairs(s, vocab, direction == 1))
        assert got == want
    # Within a row, a sentence's pairs are consecutive and in order.
    first = pairs_of_rows(all_windows(SENTENCES, vocab, 1, unroll_steps), vocab, 0)[0]
    assert first == [p for s in SENTENCES for p in expected_pairs(s, vocab, False)]


def test_directions_share_positions_and_padding(vocab):
    batches = all_windows(SENTENCES, vocab, 2, 5)
    last = batches[-1]
    assert last.weights.min() == 0.0  # the data ran out inside the last window
    assert (last.token_rows[:, last.weights == 0] == 0).all()
    assert (last.char_rows[0] == 0).all()
    # Position by position, the backward stream reads the same sentence reversed: the
    # first input of a sentence is <S> forwards and </S> backwards.
    b = batches[0]
    assert tuple(b.chars[0, 0, 0]) == tuple(token_char_ids(BOS_TOKEN, 12))
    assert tuple(b.chars[1, 0, 0]) == tuple(token_char_ids(EOS_TOKEN, 12))
    assert vocab.words[b.targets[1, 0, 0]] == "sat"
    assert vocab.words[b.targets[0, 0, 0]] == "the"


def test_distinct_tokens_embedded_once(vocab):
    (batch,) = all_windows(SENTENCES, vocab, 1, 40)
    distinct = {w for s in SENTENCES for w in s} | {BOS_TOKEN, EOS_TOKEN}
    assert batch.char_rows.shape == (len(distinct) + 1, 12)  # + the padding row
    assert len({tuple(r) for r in batch.char_rows}) == batch.char_rows.shape[0]


def test_repeating_stream_never_ends_and_reshuffles(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("\n".join(" ".join(s) for s in SENTENCES) + "\n\n  \n")
    stream = sentence_stream([str(path)], "--train-prefix", shuffle=True, repeat=True, seed=3)
    drawn = [next(stream) for _ in range(5 * len(SENTENCES))]
    for k in range(5):  # each pass is a permutation of the (non-empty) lines
        assert sorted(map(tuple, drawn[k * 5:(k + 1) * 5])) == sorted(map(tuple, SENTENCES))
    assert len({tuple(map(tuple, drawn[k * 5:(k + 1) * 5])) for k in range(5)}) > 1


def test_write_vocab_orders_by_count_then_word(tmp_path):
    counts = collections.Counter({"b": 3, "a": 3, "c": 5, "rare": 1})
    path = tmp_path / "v.txt"
    assert write_vocab(path, counts, min_count=2) == 6
    assert path.read_text().split("\n")[:-1] == list(SPECIAL_TOKENS) + ["c", "a", "b"]
    load_training_vocab(path, counts)  # passes its own order check


@pytest.mark.parametrize("words,message", [
    (["the", "<S>", "</S>", "<UNK>"], r"line 1 should be <S> but is 'the'"),
    (["<S>", "<UNK>", "</S>", "the"], r"line 2 should be </S> but is '<UNK>'"),
    (["<S>", "</S>"], r"line 3 should be <UNK> but is the end of the file"),
    (["<S>", "</S>", "<UNK>"], r"only the special tokens"),
    (["<S>", "</S>", "<UNK>", "the", "cat", "the"], r"line 6: 'the' is listed again \(first on line 4\)"),
])
def test_vocab_rules(tmp_path, words, message):
    with pytest.raises(VocabError, match=message):
        load_training_vocab(vocab_file(tmp_path, words))


def test_vocab_must_follow_the_counts(tmp_path):
    counts = collections.Counter({"the": 10, "cat": 2, "ran": 5})
    path = vocab_file(tmp_path, list(SPECIAL_TOKENS) + ["the", "cat", "ran"])
    with pytest.raises(VocabError, match=r"line 6: 'ran' occurs 5 times in the training files "
                                         r"but comes after 'cat' \(2 times\)"):
        load_training_vocab(path, counts)
    load_training_vocab(path)  # without counts the order is not checked


def test_data_file_errors(tmp_path):
    with pytest.raises(DataError, match=r"--train-prefix: no file matches '.*nothing\*\.txt'"):
        data_files(str(tmp_path / "nothing*.txt"), "--train-prefix")
    with pytest.raises(DataError, match=r"the folder .*missing does not exist"):
        data_files(str(tmp_path / "missing" / "*.txt"), "--train-prefix")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(DataError, match=r"hold no sentence \(every line is empty\)"):
        corpus_stats([str(empty)], "--train-prefix")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"bad.txt: line 2 is not UTF-8 \(byte 0xff at byte 5"):
        read_file_sentences(str(bad), "--train-prefix")


def test_corpus_stats_counts_words(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a b  a\n\nc\n")
    stats = corpus_stats([str(path)], "--train-prefix")
    assert (stats.n_tokens, stats.n_sentences) == (4, 2)
    assert stats.counts == collections.Counter({"a": 2, "b": 1, "c": 1})
    assert read_file_sentences(str(path), "x") == [["a", "b", "a"], ["c"]]


def test_unigram_perplexity_by_hand(tmp_path):
    from hub_export.train.data import unigram_perplexity

    (tmp_path / "train.txt").write_text("a a b\nb c\n")
    (tmp_path / "test.txt").write_text("a zz\n")
    vocab = load_training_vocab(vocab_file(tmp_path, list(SPECIAL_TOKENS) + ["a", "b"]))
    # Training targets, both directions: a 4, b 4, <UNK> (c) 2, </S> 2, <S> 2 -> 14.
    # Test targets: a 2, <UNK> (zz) 2, </S> 1, <S> 1.
    p = {"a": 4 / 14, "unk": 2 / 14, "eos": 2 / 14, "bos": 2 / 14}
    want = np.exp(-(2 * np.log(p["a"]) + 2 * np.log(p["unk"]) + np.log(p["eos"]) + np.log(p["bos"])) / 6)
    got = unigram_perplexity([str(tmp_path / "train.txt")], [str(tmp_path / "test.txt")], vocab)
    assert got == pytest.approx(want, rel=1e-12)
