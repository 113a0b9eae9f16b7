"""TF Serving warm-up file: its records, their dtypes, and that each one runs through the
session-based loader (TF Serving's path) with hub.load's outputs; --warmup-file reading."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from hub_export.errors import HubExportError, InputError
from hub_export.serving import warmup

from helpers import run_session

ATOL = 1e-6
SIGNATURE_NAMES = ("default", "serving_default", "tokens")
WARMUP_PATH = ("assets.extra", "tf_serving_warmup_requests")
# More than one batch (WARMUP_BATCH_SIZE), non-ASCII text, odd spacing and an empty sentence.
EXTRA_SENTENCES = [
    "Zürich's café serves crème brûlée — ☕ included .",
    "  spaces   around  and  between  ",
    "",
    "Short .",
    "One more sentence to fill the second batch .",
]




@pytest.fixture(scope="module")
def written_file(tmp_path_factory):
    """A warm-up file this test writes itself, with two batches of sentences."""
    path = tmp_path_factory.mktemp("warmup") / "assets.extra" / "tf_serving_warmup_requests"
    sentences = list(warmup.DEFAULT_SENTENCES) + EXTRA_SENTENCES
    count = warmup.write_warmup_file(path, sentences, model_name="elmo")
    return path, sentences, count


@pytest.fixture(params=["written", "exported"])
def warmup_file(request, small_path, written_file):
    """The file written here, and the one the exporter put into the version directory."""
    if request.param == "written":
        return written_file[0]
    path = small_path
    for part in WARMUP_PATH:
        path = f"{path}/{part}"
    if not tf.io.gfile.exists(path):
        pytest.skip(f"the export has no {'/'.join(WARMUP_PATH)} (exporter did not write one)")
    return path



def assert_outputs_close(got: dict, expected: dict, context: str) -> None:
    assert set(got) == set(expected), context
    for key, want in expected.items():
        have = np.asarray(got[key])
        assert have.dtype == want.dtype, f"{context}: {key}"
        assert have.shape == want.shape, f"{context}: {key}"
        if np.issubdtype(want.dtype, np.integer):
            np.testing.assert_array_equal(have, want, err_msg=f"{context}: {key}")
        else:
            np.testing.assert_allclose(have, want, atol=ATOL, rtol=0, err_msg=f"{context}: {key}")


def requests_of(path) -> list:
    records = warmup.read_warmup_file(path)
    assert records, path
    for record in records:
        assert isinstance(record, prediction_log_pb2.PredictionLog)
        assert record.WhichOneof("log_type") == "predict_log"
    return [record.predict_log.request for record in records]


# The file and its records.

def test_warmup_file_has_a_request_per_signature(warmup_file):
    requests = requests_of(warmup_file)
    names = [r.model_spec.signature_name for r in requests]
    assert set(SIGNATURE_NAMES) <= set(names)
    assert all(r.model_spec.name == "elmo" for r in requests)


def test_written_file_batches_every_sentence(written_file):
    path, sentences, count = written_file
    requests = requests_of(path)
    n_batches = math.ceil(len(sentences) / warmup.WARMUP_BATCH_SIZE)
    assert n_batches == 2
    assert count == len(requests) == n_batches * len(SIGNATURE_NAMES)
    assert [r.model_spec.signature_name for r in requests] == list(SIGNATURE_NAMES) * n_batches
    sent = [s.decode("utf-8") for r in requests if r.model_spec.signature_name == "default"
            for s in tf.make_ndarray(r.inputs["default"])]
    assert sent == sentences
    for r in requests:
        assert 1 <= r.inputs[next(iter(r.inputs))].tensor_shape.dim[0].size \
            <= warmup.WARMUP_BATCH_SIZE


def test_warmup_request_dtypes_match_the_signatures(warmup_file, session):
    _, meta = session
    for r in requests_of(warmup_file):
        name = r.model_spec.signature_name
        sig = meta.signature_def[name]
        assert set(r.inputs) == set(sig.inputs), name
        for key, proto in r.inputs.items():
            # The session feed would silently cast; TF Serving would reject a wrong dtype.
            assert proto.dtype == sig.inputs[key].dtype, f"{name}: {key}"
        if name == "tokens":
            assert r.inputs["sequence_len"].dtype == tf.int32.as_datatype_enum
            assert r.inputs["tokens"].dtype == tf.string.as_datatype_enum
            tokens = tf.make_ndarray(r.inputs["tokens"])
            lengths = tf.make_ndarray(r.inputs["sequence_len"])
            assert tokens.ndim == 2 and lengths.shape == (tokens.shape[0],)
            assert lengths.dtype == np.int32
            for row, n in zip(tokens, lengths):
                assert all(row[:n]), "a real token is empty"
                assert not any(row[n:]), "padding must be empty strings"
        else:
            assert r.inputs["default"].dtype == tf.string.as_datatype_enum
            assert len(r.inputs["default"].tensor_shape.dim) == 1


def test_warmup_requests_run_through_the_session_loader(warmup_file, session, loaded):
    """TF Serving replays each record through the session; outputs equal hub.load's."""
    batches = {}
    for i, r in enumerate(requests_of(warmup_file)):
        name = r.model_spec.signature_name
        feeds = {key: tf.make_ndarray(proto) for key, proto in r.inputs.items()}
        got = run_session(session, name, feeds)
        outputs = loaded.signatures[name](**{k: tf.constant(v) for k, v in feeds.items()})
        expected = {k: v.numpy() for k, v in outputs.items()}
        assert_outputs_close(got, expected, f"record {i} ({name})")
        assert np.all(np.isfinite(got["elmo"]))
        batches.setdefault(i // len(SIGNATURE_NAMES), {})[name] = got
    # Each batch's `tokens` request splits the sentences as the `default` signature does.
    for outputs in batches.values():
        if set(outputs) == set(SIGNATURE_NAMES):
            assert_outputs_close(outputs["tokens"], outputs["default"], "tokens vs default")
            assert_outputs_close(outputs["serving_default"], outputs["default"], "alias")


def test_written_file_defaults(tmp_path):
    path = tmp_path / "deep" / "dir" / "warmup"
    count = warmup.write_warmup_file(path)
    requests = requests_of(path)
    assert count == len(requests) == len(SIGNATURE_NAMES)
    sentences = tf.make_ndarray(requests[0].inputs["default"])
    assert [s.decode() for s in sentences] == list(warmup.DEFAULT_SENTENCES)
    named = warmup.warmup_requests(["a b"], model_name="my_model")
    assert {r.predict_log.request.model_spec.name for r in named} == {"my_model"}


def test_default_sentences_are_varied():
    lengths = [len(s.split()) for s in warmup.DEFAULT_SENTENCES]
    assert 4 <= len(lengths) <= 6
    assert min(lengths) <= 4 and max(lengths) >= 25
    assert all(isinstance(s, str) and s == s.strip() for s in warmup.DEFAULT_SENTENCES)


@pytest.mark.parametrize("sentences, match", [
    ([], r"warm-up sentences: empty"),
    (["ok", b"bytes"], r"warm-up sentences\[1\]: expected a str"),
    ("one string", r"warm-up sentences: expected a list of strings, got str"),
    (["x"] * (warmup.MAX_WARMUP_RECORDS * warmup.WARMUP_BATCH_SIZE),
     r"TF Serving reads at most 1000"),
])
def test_warmup_requests_reject_bad_sentences(sentences, match):
    with pytest.raises(InputError, match=match):
        warmup.warmup_requests(sentences)


def test_read_warmup_file_errors(tmp_path):
    missing = tmp_path / "absent"
    with pytest.raises(HubExportError, match=re.escape(str(missing))):
        warmup.read_warmup_file(missing)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"this is not a TFRecord file at all, just some text\n")
    with pytest.raises(HubExportError, match=re.escape(str(garbage))):
        warmup.read_warmup_file(garbage)


# --warmup-file: the user's sentences.

def test_read_sentences_file(tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_bytes("\ufeffFirst sentence .\r\n\r\n   \n  Zürich ☕ café  \nlast".encode("utf-8"))
    assert warmup.read_sentences_file(path) == ["First sentence .", "Zürich ☕ café", "last"]
    assert warmup.read_sentences_file(str(path)) == ["First sentence .", "Zürich ☕ café", "last"]


@pytest.mark.parametrize("content, problem", [
    (None, ": file not found"),
    (b"", ": no sentences"),
    (b"\n  \n\t\n\r\n", ": no sentences"),
    (b"fine line\nbad \xff\xfe byte\n", r": line 2 is not UTF-8 \(byte 0xff at byte 5 of the line\)"),
    ("latin-1 caf\u00e9\n".encode("latin-1"), ": line 1 is not UTF-8"),
    ("dir", " is a directory, not a text file"),
])
def test_read_sentences_file_errors(tmp_path, content, problem):
    path = tmp_path / "warmup.txt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(HubExportError, match=re.escape(f"--warmup-file: {path}") + problem):
        warmup.read_sentences_file(path)
