"""TF Serving warm-up requests: `assets.extra/tf_serving_warmup_requests`.

TF Serving replays the PredictionLog records of this TFRecord file right after it loads
a version and before it serves it, so the first real request does not pay for graph
optimisation and memory allocation. Each record is a PredictRequest for one signature:
`default` and `serving_default` (input `default`, DT_STRING [B]) and `tokens` (`tokens`
DT_STRING [B, max_length] padded with "", `sequence_len` DT_INT32 [B]).

Sentences are sent in batches of at most WARMUP_BATCH_SIZE, so that a server with
request batching and a small `max_batch_size` still accepts them (a warm-up request it
rejects fails the model's load). TF Serving reads at most MAX_WARMUP_RECORDS records.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

import signatures
from hub_export.errors import HubExportError, InputError
from hub_export.serving.client import (
    TOKEN_SIGNATURES,
    check_sentences,
    predict_request,
    split_sentence,
)
from hub_export.textfiles import read_lines

# Realistic sentences of different lengths, tokens separated by spaces (the `default`
# signature splits on spaces only, so punctuation is spaced out).
DEFAULT_SENTENCES = (
    "Thank you !",
    "The quick brown fox jumps over the lazy dog .",
    "Can you recommend a good book about the history of science ?",
    "She deposited the cheque at the bank and then sat on the river bank .",
    "After the meeting ran late , the committee agreed to postpone the final vote on the new "
    "budget until next Tuesday , when every member will have read the report .",
)

WARMUP_BATCH_SIZE = 8
MAX_WARMUP_RECORDS = 1000  # TF Serving refuses to load a version with more.


def _warmup_signatures() -> list[str]:
    """`default`, `serving_default`, `tokens`: every signature of the module."""
    return signatures.signature_names()


def warmup_requests(sentences: Sequence[str], model_name: str = "elmo"
                    ) -> list[prediction_log_pb2.PredictionLog]:
    """PredictionLog records holding one PredictRequest per signature and batch.

    Args:
        sentences: list of str, tokens separated by spaces. For `tokens` each sentence is
            split as the `default` signature splits it.
        model_name: the served model's name, written to `model_spec.name`.

    Returns:
        For each batch of at most WARMUP_BATCH_SIZE sentences, a request for `default`,
        `serving_default` and `tokens`, in that order.

    Raises:
        InputError: `sentences` is empty, holds a non-str, or needs more records than
            TF Serving reads.
    """
    sentences = check_sentences(sentences, what="warm-up sentences")
    names = _warmup_signatures()
    n_batches = -(-len(sentences) // WARMUP_BATCH_SIZE)
    if n_batches * len(names) > MAX_WARMUP_RECORDS:
        limit = MAX_WARMUP_RECORDS // len(names) * WARMUP_BATCH_SIZE
        raise InputError(f"warm-up sentences: {len(sentences)} sentences would make "
                         f"{n_batches * len(names)} warm-up records; TF Serving reads at most "
                         f"{MAX_WARMUP_RECORDS}, so give at most {limit} sentences")
    records = []
    for start in range(0, len(sentences), WARMUP_BATCH_SIZE):
        batch = sentences[start:start + WARMUP_BATCH_SIZE]
        for name in names:
            if name in TOKEN_SIGNATURES:
                request = predict_request(tokens=[split_sentence(s) for s in batch],
                                          signature=name, model_name=model_name)
            else:
                request = predict_request(sentences=batch, signature=name, model_name=model_name)
            record = prediction_log_pb2.PredictionLog()
            record.predict_log.request.CopyFrom(request)
            records.append(record)
    return records


def write_warmup_file(path: str | os.PathLike, sentences: Sequence[str] = DEFAULT_SENTENCES,
                      model_name: str = "elmo") -> int:
    """Writes `warmup_requests(sentences, model_name)` as a TFRecord file at `path`.

    The parent directory is created if needed. Returns the number of records written.
    """
    records = warmup_requests(sentences, model_name=model_name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    return len(records)


def read_warmup_file(path: str | os.PathLike) -> list[prediction_log_pb2.PredictionLog]:
    """The PredictionLog records of a warm-up file.

    Raises:
        HubExportError: the file is missing or is not a TFRecord file of PredictionLogs.
    """
    path = Path(path)
    if not path.is_file():
        raise HubExportError(f"{path}: no such warm-up file")
    records = []
    try:
        for i, raw in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()):
            record = prediction_log_pb2.PredictionLog()
            try:
                record.ParseFromString(raw)
            except Exception as e:  # google.protobuf.message.DecodeError
                raise HubExportError(f"{path}: record {i} is not a PredictionLog ({e})") from e
            records.append(record)
    except tf.errors.OpError as e:
        raise HubExportError(f"{path}: not a TFRecord file ({e.message.splitlines()[0]})") from e
    return records


def read_sentences_file(path: str | os.PathLike) -> list[str]:
    """The user's warm-up sentences (`--warmup-file`): UTF-8 text, one sentence a line.

    Blank lines are skipped; surrounding whitespace (and a UTF-8 byte-order mark) is
    removed.

    Raises:
        HubExportError: the file is missing, unreadable, not UTF-8, or has no sentences;
            the message starts with "--warmup-file: <path>:".
    """
    sentences = [line.strip() for _, line in read_lines(path, "--warmup-file")]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise HubExportError(f"--warmup-file: {path}: no sentences (the file is empty or every "
                             "line is blank)")
    return sentences


__all__ = ["DEFAULT_SENTENCES", "MAX_WARMUP_RECORDS", "WARMUP_BATCH_SIZE", "read_sentences_file",
           "read_warmup_file", "warmup_requests", "write_warmup_file"]
