"""bilm-tf's cached-token path: the token-embedding dump and the TokenBatcher.

The dump must equal the exported module's `word_emb` of every vocabulary word; the
TokenBatcher's ids must be bilm-tf's (vocabulary id + 1, `<S>`/`</S>` around each
sentence, 0 for padding and, without `<UNK>`, for unknown words).
"""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import tensorflow as tf

from hub_export.corpus.token_embeddings import TokenBatcher, dump_token_embeddings
from hub_export.errors import HubExportError, VocabError
from hub_export.model.vocab import Vocabulary

import forked_cli
from helpers import require_shared_fixture

ATOL = 1e-6


@pytest.fixture(scope="module")
def bilm_tf():
    """The bilm-tf fixture folder (skips without ../shared)."""
    return require_shared_fixture()


@pytest.fixture(scope="module")
def fixture_dump(bilm_tf, tmp_path_factory):
    # batch_size 100: the 448 words go through the char CNN in five calls.
    return dump_token_embeddings(bilm_tf / "vocab_test.txt", bilm_tf / "options.json",
                                 bilm_tf / "lm_weights.hdf5",
                                 tmp_path_factory.mktemp("tokens") / "tokens.hdf5", batch_size=100)


def test_dump_equals_the_module_word_emb(fixture_dump, fixture_export, bilm_tf):
    words = Vocabulary(bilm_tf / "vocab_test.txt").words
    assert len(words) == 448 and words[207] == "<S>" and words[257] == "</S>"
    with h5py.File(fixture_dump, "r") as f:
        assert list(f.keys()) == ["embedding"]
        table = f["embedding"][()]
    assert table.shape == (448, 16) and table.dtype == np.float32
    # Each word as a one-token sentence; `<S>` and `</S>` get their boundary rows there too.
    fn = tf.saved_model.load(str(fixture_export.path)).signatures["tokens"]
    out = fn(tokens=tf.constant([[w] for w in words]), sequence_len=tf.ones([len(words)], tf.int32))
    np.testing.assert_allclose(table, out["word_emb"].numpy()[:, 0, :], rtol=0, atol=ATOL)
    # Context does not change a word's row: `care` inside a sentence, position 2.
    sentence = fn(tokens=tf.constant([["take", "good", "care", "."]]), sequence_len=tf.constant([4]))
    np.testing.assert_allclose(table[words.index("care")], sentence["word_emb"].numpy()[0, 2],
                               rtol=0, atol=ATOL)
    assert not np.allclose(table[207], table[257])


def test_token_batcher_ids_on_the_fixture_vocabulary(bilm_tf):
    batcher = TokenBatcher(bilm_tf / "vocab_test.txt")
    vocab = batcher.vocab
    # vocab_test.txt: Bournemouth, concept, care, were, ... on lines 1-4; <S> on line 208,
    # </S> on line 258; no <UNK>.
    assert (vocab.size, vocab.bos, vocab.eos, vocab.unk) == (448, 207, 257, -1)
    ids = batcher.batch_sentences([["Bournemouth", "concept", "care"], ["were", "zzz-unknown"]])
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, [[208, 1, 2, 3, 258],
                                        [208, 4, 0, 258, 0]])  # unknown -> -1 + 1 = 0
    assert batcher.unknown_words([["were", "zzz-unknown"]]) == [(0, 1, "zzz-unknown")]


def test_token_batcher_follows_bilm_tf_vocabulary_rules(tmp_path):
    vocab_file = tmp_path / "vocab.txt"
    # <UNK> present; !!!MAXTERMID takes no id; a repeated word looks up to its last id;
    # whitespace is stripped; CRLF line ends.
    vocab_file.write_bytes(b"<S>\r\n</S>\r\n<UNK>\r\n the \r\n!!!MAXTERMID\r\ncat\r\nthe\r\n")
    batcher = TokenBatcher(vocab_file)
    assert batcher.vocab.words == ["<S>", "</S>", "<UNK>", "the", "cat", "the"]
    ids = batcher.batch_sentences([["the", "cat", "dog"], []])
    np.testing.assert_array_equal(ids, [[1, 6, 5, 3, 2],
                                        [1, 2, 0, 0, 0]])
    assert batcher.batch_sentences([]).shape == (0, 2)
    with pytest.raises(HubExportError, match=r"sentences\[0\]\[1\] must be str, got int"):
        batcher.batch_sentences([["the", 3]])


def test_vocabulary_errors(tmp_path):
    with pytest.raises(VocabError, match=r"--vocab: .*nope\.txt: file not found"):
        Vocabulary(tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"<S>\n</S>\nna\xefve\n")
    with pytest.raises(VocabError, match=r"bad\.txt: line 3 is not UTF-8 \(byte 0xef at byte 3"):
        Vocabulary(bad)


@pytest.mark.parametrize("content, pattern", [
    ("the\ncat\n</S>\n", r"no <S> line; the token path needs both <S> and </S>"),
    ("the\ncat\n", r"no <S> or </S> line"),
    ("<S>\n</S>\nthe\n\ncat\n", r"line 4 is empty; remove it \(ids count lines\)"),
    ("", r"no words in the file"),
], ids=["no-bos", "no-bos-eos", "blank-line", "empty"])
def test_dump_refuses_unusable_vocabularies(small_model, tmp_path, content, pattern):
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text(content)
    with pytest.raises(VocabError, match=pattern):
        dump_token_embeddings(vocab_file, *small_model, tmp_path / "tokens.hdf5")
    assert not (tmp_path / "tokens.hdf5").exists()


def test_dump_refuses_an_existing_output(small_model, tmp_path):
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("<S>\n</S>\nthe\n")
    (tmp_path / "tokens.hdf5").write_bytes(b"keep me")
    with pytest.raises(HubExportError, match=r"tokens\.hdf5 already exists; pass --overwrite"):
        dump_token_embeddings(vocab_file, *small_model, tmp_path / "tokens.hdf5")
    assert (tmp_path / "tokens.hdf5").read_bytes() == b"keep me"
    dump_token_embeddings(vocab_file, *small_model, tmp_path / "tokens.hdf5", overwrite=True)
    with h5py.File(tmp_path / "tokens.hdf5", "r") as f:
        assert f["embedding"].shape == (3, 8)


def test_cli_dump_token_embeddings(small_model, tmp_path):
    options_path, weights_path = small_model
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("<S>\n</S>\n<UNK>\nthe\ncat\n")
    args = ["dump-token-embeddings", "--options", str(options_path), "--weights",
            str(weights_path), "--vocab", str(vocab_file), "--output", str(tmp_path / "tokens.hdf5")]
    done = forked_cli.run(args, tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "tokens.hdf5")
    assert "[2/2] embedding 5 words into" in done.stderr
    with h5py.File(tmp_path / "tokens.hdf5", "r") as f:
        assert f["embedding"].shape == (5, 8)
    # A bad input: exit status 2 and one message, before TensorFlow reads any weights.
    vocab_file.write_text("the\ncat\n")
    bad = forked_cli.run(args[:-1] + [str(tmp_path / "other.hdf5")], tmp_path, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert re.search(r"^error: --vocab: .*vocab\.txt: no <S> or </S> line", bad.stderr, re.M)
