"""The token cache (--vocab): same outputs as the char CNN, for any token."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from hub_export.errors import HubExportError
from hub_export.model.vocab import Vocabulary

from helpers import export_model

VOCAB = ["the", "cat", "sat", "on", "mat", ".", "naïve", "<S>", "the", "", "  dog  "]
SENTENCES = [
    "the cat sat on the mat .",          # all in the vocabulary
    "the zebra sat on a naïve mat",      # mixed
    "unknown words only here",           # none in the vocabulary
    "",                                  # empty
    "<S> cat </S> dog dog zebra zebra",  # boundary strings, repeats, in and out
]


@pytest.fixture(scope="module")
def modules(small_export, tmp_path_factory):
    plain, options_path, weights_path = small_export
    folder = tmp_path_factory.mktemp("token_cache")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    cached = export_model(folder / "exported", options_path, weights_path, vocab_path=vocab)
    return hub.load(str(plain.path)), hub.load(str(cached.path)), cached


def test_cached_equals_uncached(modules):
    plain, cached, _ = modules
    x = tf.constant(SENTENCES)
    a, b = plain.signatures["default"](default=x), cached.signatures["default"](default=x)
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-6, rtol=0, err_msg=key)
    tokens = tf.constant([["the", "zebra", "pad", "pad"], ["", "cat", "mat", "x"]])
    lengths = tf.constant([2, 4])
    a = plain.signatures["tokens"](tokens=tokens, sequence_len=lengths)
    b = cached.signatures["tokens"](tokens=tokens, sequence_len=lengths)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-6, rtol=0, err_msg=key)


def test_table_holds_the_vocabulary(modules):
    _, cached, result = modules
    table = [v for v in cached.variables if "token_cache/embeddings" in v.name]
    assert len(table) == 1 and not table[0].trainable
    # Blank lines and repeats dropped, </S> added: the, cat, sat, on, mat, ., naïve, <S>, dog, </S>.
    assert table[0].shape == (10, 8)
    assert result.manifest["source"]["token_cache"]["size"] == 10
    assert "token cache: 10 words" in (result.path / "assets.extra" / "README.md").read_text()
    assert sum(int(np.prod(v.shape)) for v in cached.trainable_variables) == 4


def read_vocab(path):
    return Vocabulary(path).distinct_words()


def test_read_vocab_errors(tmp_path):
    with pytest.raises(HubExportError, match=r"--vocab: .*missing.txt: file not found"):
        read_vocab(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfeoops\n")
    with pytest.raises(HubExportError, match=r"--vocab: .*bad.txt: line 2 is not UTF-8"):
        read_vocab(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(HubExportError, match=r"--vocab: .*empty.txt: no tokens in the file"):
        read_vocab(empty)
