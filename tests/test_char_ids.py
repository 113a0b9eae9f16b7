"""Tests for hub_export.model.char_ids: hand-computed ids, and numpy vs in-graph agreement."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from hub_export.errors import InputError
from hub_export.model.char_ids import (
    BOS_CHAR,
    BOW,
    EOS_CHAR,
    EOW,
    PAD,
    Batcher,
    batch_sentences,
    encode_tokens,
    token_char_ids,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "bilm-tf"
C = 50

# Expected rows written out from the definition (ids already +1).
BEGIN_ROW = [259, 257, 260] + [261] * (C - 3)
END_ROW = [259, 258, 260] + [261] * (C - 3)


def word_row(byte_values, width=C):
    return [259] + [b + 1 for b in byte_values] + [260] + [261] * (width - 2 - len(byte_values))


def graph_ids(sentences, pad_token=b"", extra=0):
    """Run encode_tokens on `sentences`, padded to T (+ `extra` junk columns)."""
    time = max((len(s) for s in sentences), default=0) + extra
    padded = [list(s) + [pad_token] * (time - len(s)) for s in sentences]
    tokens = tf.constant(padded, dtype=tf.string, shape=[len(sentences), time])
    lengths = tf.constant([len(s) for s in sentences], dtype=tf.int32, shape=[len(sentences)])
    return encode_tokens(tokens, lengths).numpy(), time


def assert_same(sentences, **kwargs):
    want = batch_sentences(sentences)
    got, _ = graph_ids(sentences, **kwargs)
    assert got.dtype == np.int32
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    return want


# ---------------------------------------------------------------- constants, hand values


def test_constants():
    assert (BOS_CHAR, EOS_CHAR, BOW, EOW, PAD) == (256, 257, 258, 259, 260)


def test_ab_by_hand():
    ids = token_char_ids("ab")
    assert ids.dtype == np.int32 and ids.shape == (C,)
    assert ids.tolist() == [259, 98, 99, 260] + [261] * (C - 4)


def test_bytes_token_used_as_is():
    assert token_char_ids(b"\xff\x00").tolist() == [259, 256, 1, 260] + [261] * (C - 4)
    assert token_char_ids(b"ab").tolist() == token_char_ids("ab").tolist()


def test_multibyte_by_hand():
    # "é" is C3 A9 in UTF-8: two ids, one per byte.
    assert token_char_ids("é").tolist() == word_row([0xC3, 0xA9])


def test_empty_token_by_hand():
    assert token_char_ids("").tolist() == [259, 260] + [261] * (C - 2)


def test_boundary_tokens():
    assert token_char_ids("<S>").tolist() == BEGIN_ROW
    assert token_char_ids("</S>").tolist() == END_ROW
    assert token_char_ids(b"<S>").tolist() == BEGIN_ROW
    assert token_char_ids(b"</S>").tolist() == END_ROW
    # Only the exact literal is special.
    assert token_char_ids("<s>").tolist() == word_row(b"<s>")


def test_small_max_chars():
    assert token_char_ids("abcdef", max_chars=5).tolist() == [259, 98, 99, 100, 260]
    assert token_char_ids("<S>", max_chars=3).tolist() == [259, 257, 260]
    with pytest.raises(InputError, match="max_chars must be at least 3"):
        token_char_ids("a", max_chars=2)


def test_sentence_framing():
    ids = batch_sentences([["ab", "c"], ["x"], []])
    assert ids.dtype == np.int32 and ids.shape == (3, 4, C)
    zero = [0] * C
    assert ids[0].tolist() == [BEGIN_ROW, word_row(b"ab"), word_row(b"c"), END_ROW]
    # End row right after the last token, zeros after it.
    assert ids[1].tolist() == [BEGIN_ROW, word_row(b"x"), END_ROW, zero]
    assert ids[2].tolist() == [BEGIN_ROW, END_ROW, zero, zero]


def test_max_length_pads_and_checks():
    ids = batch_sentences([["a"]], max_length=3)
    assert ids.shape == (1, 5, C)
    assert ids[0, 2].tolist() == END_ROW
    assert not ids[0, 3:].any()
    with pytest.raises(InputError, match=r"sentences\[1\] has 3 tokens, more than max_length=2"):
        batch_sentences([["a"], ["a", "b", "c"]], max_length=2)


def test_empty_batch():
    assert batch_sentences([]).shape == (0, 2, C)
    got = encode_tokens(tf.zeros([0, 0], tf.string), tf.zeros([0], tf.int32)).numpy()
    assert got.shape == (0, 2, C)


def test_batcher_class():
    sentences = [["a", "b"], ["c"]]
    np.testing.assert_array_equal(Batcher().batch_sentences(sentences), batch_sentences(sentences))
    assert Batcher(max_chars=10).batch_sentences(sentences).shape == (2, 4, 10)


# ---------------------------------------------------------------- cut tokens


@pytest.mark.parametrize("n", [47, 48, 49, 60, 200])
def test_cut_keeps_first_48_bytes(n):
    token = "".join(chr(ord("a") + i % 26) for i in range(n))
    kept = token.encode()[:48]
    ids = token_char_ids(token)
    assert ids[0] == BOW + 1
    assert ids[1 : 1 + len(kept)].tolist() == [b + 1 for b in kept]
    assert ids[1 + len(kept)] == EOW + 1
    if n >= 49:
        assert len(kept) == 48 and ids[-1] == EOW + 1
    got, _ = graph_ids([[token]])
    np.testing.assert_array_equal(got[0, 1], ids)


def test_cut_mid_character():
    token = "a" * 47 + "é"  # 49 bytes; the cut keeps only C3 of C3 A9
    ids = token_char_ids(token)
    assert ids[1:49].tolist() == [ord("a") + 1] * 47 + [0xC3 + 1]
    assert ids[49] == EOW + 1
    got, _ = graph_ids([[token]])
    np.testing.assert_array_equal(got[0, 1], ids)


# ---------------------------------------------------------------- numpy vs graph


def test_graph_matches_unicode_and_edge_tokens():
    sentences = [
        ["naïve", "日本語", "👍🏽"],
        ["", "a\x00b", "<S>", "</S>"],
        [],
        ["x" * 47, "y" * 48, "z" * 49, "w" * 60, "v" * 200, "a" * 47 + "é"],
        [b"\xff\xfe", b"raw"],
    ]
    want = assert_same(sentences)
    # The NUL byte is kept as a byte (id 1), and the row does not end there.
    assert want[1, 2, :5].tolist() == [259, 98, 1, 99, 260]
    # Empty token: BOW then EOW.
    assert want[1, 1, :3].tolist() == [259, 260, 261]
    assert want[1, 3].tolist() == BEGIN_ROW and want[1, 4].tolist() == END_ROW
    # Emoji with skin tone: 8 UTF-8 bytes.
    assert want[0, 3, :10].tolist() == word_row("👍🏽".encode())[:10]


def test_graph_different_lengths_with_junk_padding():
    sentences = [["a", "bb", "ccc"], [], ["<S>"], ["dddd", "e"]]
    want = batch_sentences(sentences, max_length=5)
    # Junk beyond sequence_len must not leak, including boundary-looking strings.
    for junk in [b"junk", b"<S>", b"</S>", b""]:
        got, time = graph_ids(sentences, pad_token=junk, extra=2)
        assert time == 5
        np.testing.assert_array_equal(got, want)


def test_graph_in_tf_function_dynamic_shapes():
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.string),
            tf.TensorSpec([None], tf.int32),
        ]
    )
    def encode(tokens, lengths):
        return encode_tokens(tokens, lengths)

    sentences = [["Hello", "wörld", "!"], ["🙂"], []]
    tokens = tf.constant(
        [["Hello", "wörld", "!", "junk"], ["🙂", "junk", "</S>", "x"], ["<S>", "junk", "", "y"]]
    )
    got = encode(tokens, tf.constant([3, 1, 0], tf.int32)).numpy()
    np.testing.assert_array_equal(got, batch_sentences(sentences, max_length=4))
    # Same concrete function, other shapes, including empty ones.
    assert encode(tf.zeros([0, 0], tf.string), tf.zeros([0], tf.int32)).shape == (0, 2, C)
    assert encode(tf.zeros([2, 0], tf.string), tf.zeros([2], tf.int32)).numpy().tolist() == [
        [BEGIN_ROW, END_ROW],
        [BEGIN_ROW, END_ROW],
    ]


def test_graph_clips_bad_lengths():
    tokens = tf.constant([["a", "b"]])
    too_long = encode_tokens(tokens, tf.constant([9])).numpy()
    np.testing.assert_array_equal(too_long, batch_sentences([["a", "b"]]))
    negative = encode_tokens(tokens, tf.constant([-3])).numpy()
    np.testing.assert_array_equal(negative, batch_sentences([[]], max_length=2))


def test_graph_matches_fixture_sentences():
    path = FIXTURES / "lm_embeddings_sentences.json"
    if not path.exists():
        pytest.skip(f"bilm-tf fixture sentences not found: {path}")
    with open(path, encoding="utf-8") as f:
        groups = json.load(f)
    assert len(groups) == 3
    for group in groups:
        sentences = [line.split(" ") for line in group]
        want = assert_same(sentences)
        lengths = [len(s) for s in sentences]
        assert want.shape == (len(sentences), max(lengths) + 2, C)
        for b, n in enumerate(lengths):
            assert want[b, n + 1].tolist() == END_ROW
            assert not want[b, n + 2 :].any()


# ---------------------------------------------------------------- bad input


def test_non_list_sentence():
    with pytest.raises(InputError, match=r"sentences\[1\] must be a list or tuple of tokens, got str"):
        batch_sentences([["a"], "not a list"])


def test_non_string_token():
    with pytest.raises(InputError, match=r"sentences\[0\]\[2\] must be str or bytes, got int"):
        batch_sentences([["a", "b", 3]])
    with pytest.raises(InputError, match=r"sentences\[1\]\[0\] must be str or bytes, got NoneType"):
        batch_sentences([["a"], [None]])


def test_non_list_batch():
    with pytest.raises(InputError, match="sentences must be a list or tuple"):
        batch_sentences("a b c")
