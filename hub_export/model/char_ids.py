"""Character ids: how tokens become the integer rows the ELMo char CNN reads.

The convention is the one of the original bilm-tf code (``UnicodeCharsVocabulary`` and
``Batcher``), because the trained ``char_embed`` matrix is indexed by exactly these ids:

* A token is taken as its UTF-8 bytes (a ``str`` is encoded, dropping anything that
  cannot be encoded, like bilm-tf's ``word.encode('utf-8', 'ignore')``; ``bytes`` are
  used as they are). The bytes are cut to ``max_chars - 2`` so that the begin-word and
  end-word marks still fit; the cut counts bytes, so it may split a multi-byte character.
* The row, ``max_chars`` wide, is ``[BOW, byte, ..., byte, EOW, PAD, PAD, ...]``.
* Every id is then shifted by +1, so that id 0 is never used by a real character row and
  stays free to mean "no token here" (the all-zero rows that pad short sentences).
  ``char_embed`` in the weight file has no row for id 0; the model adds a zero row.
* The literal tokens ``<S>`` and ``</S>`` are the sentence boundaries. They do not get
  their bytes spelled out but the special rows ``[BOW, BOS_CHAR, EOW, PAD, ...] + 1`` and
  ``[BOW, EOS_CHAR, EOW, PAD, ...] + 1`` (in bilm-tf they are vocabulary entries whose
  char ids are overwritten with these rows).
* A sentence of n tokens becomes n + 2 rows: the begin-sentence row, the n token rows,
  the end-sentence row right after the last token, then all-zero rows up to T + 2, where
  T is the length of the longest sentence in the batch.

Two implementations are given, and they must agree id for id:

* :func:`token_char_ids` / :func:`batch_sentences` (and :class:`Batcher`): plain numpy,
  a reference that follows bilm-tf step by step, for Python callers and for tests.
* :func:`encode_tokens`: pure TensorFlow ops, vectorised over every token, usable in a
  ``tf.function`` with dynamic shapes and so saveable in a SavedModel signature that
  takes strings.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from hub_export.errors import InputError

# Special character ids, before the +1 shift. Byte values use 0..255, so the special
# marks sit just above them.
BOS_CHAR = 256  # stands for "begin of sentence" inside the <S> row
EOS_CHAR = 257  # stands for "end of sentence" inside the </S> row
BOW = 258  # begin of word: first id of every row
EOW = 259  # end of word: right after the last byte
PAD = 260  # fills the row after EOW

# The width bilm-tf was trained with (options.json: char_cnn.max_characters_per_token).
DEFAULT_MAX_CHARS = 50

BOS_TOKEN = "<S>"
EOS_TOKEN = "</S>"
_BOS_TOKEN_BYTES = BOS_TOKEN.encode("utf-8")
_EOS_TOKEN_BYTES = EOS_TOKEN.encode("utf-8")


def _check_max_chars(max_chars) -> int:
    # bool is an int subclass; True as a width is surely a mistake.
    if isinstance(max_chars, bool) or not isinstance(max_chars, (int, np.integer)):
        raise InputError(f"max_chars must be an int, got {type(max_chars).__name__}")
    max_chars = int(max_chars)
    # The boundary rows need three slots (BOW, BOS/EOS_CHAR, EOW), and a word row needs
    # BOW and EOW plus room for at least one byte to tell tokens apart.
    if max_chars < 3:
        raise InputError(f"max_chars must be at least 3, got {max_chars}")
    return max_chars


def _boundary_row(mark: int, max_chars: int) -> np.ndarray:
    row = np.full([max_chars], PAD, dtype=np.int32)
    row[0] = BOW
    row[1] = mark
    row[2] = EOW
    return row + 1


def _token_bytes(token) -> bytes:
    if isinstance(token, bytes):
        return token
    # 'ignore' as in bilm-tf: a str that cannot be encoded (lone surrogates) loses those
    # code points instead of failing the whole batch.
    return token.encode("utf-8", "ignore")


def token_char_ids(token, max_chars: int = DEFAULT_MAX_CHARS) -> np.ndarray:
    """Char ids (already shifted by +1) of one token: int32 array of shape [max_chars].

    ``token`` is a ``str`` (encoded as UTF-8) or ``bytes`` (used as is). ``<S>`` and
    ``</S>`` give the begin-sentence and end-sentence rows.
    """
    max_chars = _check_max_chars(max_chars)
    if not isinstance(token, (str, bytes)):
        raise InputError(f"token must be str or bytes, got {type(token).__name__}")
    raw = _token_bytes(token)
    if raw == _BOS_TOKEN_BYTES:
        return _boundary_row(BOS_CHAR, max_chars)
    if raw == _EOS_TOKEN_BYTES:
        return _boundary_row(EOS_CHAR, max_chars)
    # Keep room for BOW and EOW; the cut is on bytes, like bilm-tf.
    raw = raw[: max_chars - 2]
    row = np.full([max_chars], PAD, dtype=np.int32)
    row[0] = BOW
    row[1 : len(raw) + 1] = np.frombuffer(raw, dtype=np.uint8)
    row[len(raw) + 1] = EOW
    return row + 1


def _check_sentences(sentences) -> None:
    if not isinstance(sentences, (list, tuple)):
        raise InputError(
            f"sentences must be a list or tuple of token lists, got {type(sentences).__name__}"
        )
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, (list, tuple)):
            raise InputError(
                f"sentences[{i}] must be a list or tuple of tokens, got {type(sentence).__name__}"
            )
        for j, token in enumerate(sentence):
            if not isinstance(token, (str, bytes)):
                raise InputError(
                    f"sentences[{i}][{j}] must be str or bytes, got {type(token).__name__}"
                )


def batch_sentences(
    sentences, max_chars: int = DEFAULT_MAX_CHARS, max_length: int | None = None
) -> np.ndarray:
    """Char ids of a batch of tokenised sentences, as bilm-tf's ``Batcher.batch_sentences``.

    ``sentences`` is a list of token lists. Returns int32 of shape [B, T + 2, max_chars],
    T being the longest sentence (or ``max_length`` when given). Sentence b with n tokens
    fills rows 0..n+1 (begin row, tokens, end row); the rows after are all zero.
    """
    max_chars = _check_max_chars(max_chars)
    _check_sentences(sentences)
    if max_length is None:
        max_length = max((len(s) for s in sentences), default=0)
    else:
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)):
            raise InputError(f"max_length must be an int or None, got {type(max_length).__name__}")
        max_length = int(max_length)
        if max_length < 0:
            raise InputError(f"max_length must be >= 0, got {max_length}")
        for i, sentence in enumerate(sentences):
            if len(sentence) > max_length:
                raise InputError(
                    f"sentences[{i}] has {len(sentence)} tokens, more than max_length={max_length}"
                )

    # Zero-filled so that rows after the end-sentence row read as "no token".
    out = np.zeros([len(sentences), max_length + 2, max_chars], dtype=np.int32)
    bos_row = _boundary_row(BOS_CHAR, max_chars)
    eos_row = _boundary_row(EOS_CHAR, max_chars)
    # Real text repeats words a lot; spelling each distinct token once is cheaper.
    cache: dict = {}
    for i, sentence in enumerate(sentences):
        out[i, 0] = bos_row
        for j, token in enumerate(sentence, start=1):
            row = cache.get(token)
            if row is None:
                row = cache[token] = token_char_ids(token, max_chars)
            out[i, j] = row
        out[i, len(sentence) + 1] = eos_row
    return out


class Batcher:
    """bilm-tf style batcher: ``Batcher(max_chars).batch_sentences(sentences)``.

    Unlike bilm-tf it needs no vocabulary file: the char ids depend only on the bytes.
    """

    def __init__(self, max_chars: int = DEFAULT_MAX_CHARS):
        self.max_chars = _check_max_chars(max_chars)

    def batch_sentences(self, sentences) -> np.ndarray:
        return batch_sentences(sentences, max_chars=self.max_chars)


def encode_tokens(tokens, sequence_len, max_chars: int = DEFAULT_MAX_CHARS) -> tf.Tensor:
    """Char ids of a padded string batch, in TensorFlow ops only.

    ``tokens`` is a tf.string tensor [B, T]; ``sequence_len`` an int tensor [B]. Tokens of
    sentence b at positions >= sequence_len[b] are ignored (they may hold anything).
    Returns int32 [B, T + 2, max_chars], equal to
    ``batch_sentences([row[:n] for row, n in ...], max_chars, max_length=T)``.

    No step depends on tensor values in Python, so B and T may be unknown (None) in a
    ``tf.function`` input signature. ``sequence_len`` is clipped to [0, T] so that bad
    lengths cannot make the ops fail; callers are expected to validate them first.
    """
    max_chars = _check_max_chars(max_chars)
    width = max_chars - 2  # bytes kept per token

    tokens = tf.convert_to_tensor(tokens, dtype=tf.string)
    if tokens.shape.rank is not None and tokens.shape.rank != 2:
        raise InputError(f"tokens must have rank 2 [batch, time], got shape {tokens.shape}")
    sequence_len = tf.cast(tf.convert_to_tensor(sequence_len), tf.int32)
    if sequence_len.shape.rank is not None and sequence_len.shape.rank != 1:
        raise InputError(f"sequence_len must have rank 1 [batch], got shape {sequence_len.shape}")

    batch = tf.shape(tokens)[0]
    time = tf.shape(tokens)[1]

    # --- one row per token, [B, T, C] ---
    # Byte substr, not char: bilm-tf cuts the UTF-8 bytes, even inside a character.
    cut = tf.strings.substr(tokens, 0, width, unit="BYTE")
    n_bytes = tf.strings.length(cut, unit="BYTE")  # [B, T], 0..width
    # decode_raw zero-pads short strings to `width`. The padding is not read: a NUL byte
    # is a legal byte, so where the token ends comes from n_bytes, never from the values.
    raw = tf.cast(tf.io.decode_raw(cut, tf.uint8, fixed_length=width), tf.int32)
    raw = tf.reshape(raw, [batch, time, width])
    # Shift the bytes one slot right so that slot k holds byte k-1 (slot 0 is BOW), and
    # pad to C slots; the slots that are not bytes are overwritten below.
    spelled = tf.pad(raw, [[0, 0], [0, 0], [1, 1]])  # [B, T, C]

    slot = tf.range(max_chars, dtype=tf.int32)  # [C]
    n = n_bytes[:, :, tf.newaxis]  # [B, T, 1]
    word = tf.where(slot <= n, spelled, PAD)
    word = tf.where(slot == n + 1, EOW, word)
    word = tf.where(slot == 0, BOW, word)
    word = word + 1  # id 0 is kept for "no token"

    # The literal boundary tokens (compared before the cut) get the boundary rows.
    bos_row = tf.constant(_boundary_row(BOS_CHAR, max_chars))  # [C]
    eos_row = tf.constant(_boundary_row(EOS_CHAR, max_chars))
    is_bos = tf.equal(tokens, BOS_TOKEN)[:, :, tf.newaxis]
    is_eos = tf.equal(tokens, EOS_TOKEN)[:, :, tf.newaxis]
    word = tf.where(is_bos, bos_row, word)
    word = tf.where(is_eos, eos_row, word)

    # --- frame each sentence, [B, T + 2, C] ---
    # Token t goes to row t + 1; rows 0 and T + 1 are placeholders, replaced below.
    framed = tf.pad(word, [[0, 0], [1, 1], [0, 0]])
    length = tf.clip_by_value(sequence_len, 0, time)[:, tf.newaxis, tf.newaxis]  # [B,1,1]
    row = tf.range(time + 2, dtype=tf.int32)[tf.newaxis, :, tf.newaxis]  # [1, T+2, 1]
    # Rows past the sentence end are zero, which also hides junk padding tokens.
    framed = tf.where(row <= length, framed, 0)
    framed = tf.where(row == 0, bos_row, framed)
    # The end row goes right after the last real token, not at the end of the padding.
    framed = tf.where(row == length + 1, eos_row, framed)
    return framed
