"""The serving client helpers: REST bodies in both forms, decoded by TF Serving's rules
and run through the session-based loader; REST replies in both forms; gRPC requests and
responses; concurrent calls of the loaded signatures."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import threading

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from hub_export.errors import HubExportError, InputError
from hub_export.serving import client as serving

from helpers import SENTENCES, TOKENS, assert_outputs_close, padded, run_session

FORMS = ["instances", "inputs"]





def run_hub(loaded, name: str, feeds: dict) -> dict:
    outputs = loaded.signatures[name](**{k: tf.constant(v) for k, v in feeds.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def padded_tokens():
    rows, lengths = padded()
    return (np.array([[t.encode() for t in row] for row in rows], dtype=object),
            np.array(lengths, np.int32))


def test_reference_is_meaningful(reference):
    np.testing.assert_array_equal(reference["default"]["sequence_len"], [7, 3, 5, 1])
    np.testing.assert_array_equal(reference["tokens"]["sequence_len"], [4, 2, 2, 0])
    for outputs in reference.values():
        assert np.abs(outputs["elmo"]).max() > 1e-3
    assert not np.any(reference["tokens"]["default"][3]), "no tokens -> zeros"


# REST bodies.

def test_rest_body_sentences():
    assert serving.rest_body(sentences=["a b", "c"]) == {
        "signature_name": "default", "instances": ["a b", "c"]}
    body = serving.rest_body(sentences=["a b", "c"], signature="serving_default", form="inputs")
    assert body == {"signature_name": "serving_default", "inputs": {"default": ["a b", "c"]}}


def test_rest_body_tokens_pads_rows():
    rows = [["a", "b", "c"], ["d"], []]
    assert serving.rest_body(tokens=rows) == {
        "signature_name": "tokens",
        "instances": [{"tokens": ["a", "b", "c"], "sequence_len": 3},
                      {"tokens": ["d", "", ""], "sequence_len": 1},
                      {"tokens": ["", "", ""], "sequence_len": 0}]}
    assert serving.rest_body(tokens=rows, form="inputs") == {
        "signature_name": "tokens",
        "inputs": {"tokens": [["a", "b", "c"], ["d", "", ""], ["", "", ""]],
                   "sequence_len": [3, 1, 0]}}
    assert rows == [["a", "b", "c"], ["d"], []], "the caller's lists are left alone"


@pytest.mark.parametrize("kwargs, match", [
    (dict(sentences=["a"], tokens=[["a"]]), "exactly one of sentences= .* not both"),
    (dict(), "exactly one of sentences= .* got neither"),
    (dict(tokens=[["a", 3]]), r"tokens\[0\]\[1\]: expected a str token, got int 3"),
    (dict(tokens=[["a"], "bc"]), r"tokens\[1\]: expected a list of str tokens, got str"),
    (dict(tokens=[]), "tokens: empty"),
    (dict(sentences=["ok", None]), r"sentences\[1\]: expected a str, got NoneType"),
    (dict(sentences="a b c"), "sentences: expected a list of strings, got str"),
    (dict(sentences=["a"], form="rows"), "form: 'rows' is not one of 'instances', 'inputs'"),
    (dict(sentences=["a"], signature="tokens"), "signature: 'tokens' does not take sentences"),
    (dict(tokens=[["a"]], signature="default"), "signature: 'default' does not take tokens"),
])
def test_rest_body_rejects_bad_inputs(kwargs, match):
    with pytest.raises(InputError, match=match):
        serving.rest_body(**kwargs)
    if "form" not in kwargs:
        with pytest.raises(InputError, match=match):
            serving.predict_request(**kwargs)


CASES = [("sentences", "default"), ("sentences", "serving_default"), ("tokens", "tokens")]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind, signature", CASES)
def test_rest_body_through_the_session_loader(session, reference, kind, signature, form):
    """A REST body, decoded as TF Serving decodes it, gives hub.load's outputs."""
    given = {"sentences": SENTENCES} if kind == "sentences" else {"tokens": TOKENS}
    body = json.loads(json.dumps(serving.rest_body(**given, signature=signature, form=form)))
    assert body["signature_name"] == signature and form in body
    sig = session[1].signature_def[signature]
    feeds = serving.rest_body_to_feeds(body, sig.inputs)
    for key, value in feeds.items():
        assert value.dtype == tf.as_dtype(sig.inputs[key].dtype).as_numpy_dtype or \
            (value.dtype == object and sig.inputs[key].dtype == tf.string.as_datatype_enum), key
    assert_outputs_close(run_session(session, signature, feeds), reference["default" if kind == "sentences" else "tokens"])

    # The gRPC request carries the same tensors, with the signature's dtypes.
    request = serving.predict_request(**given, signature=signature, model_name="elmo")
    assert request.model_spec.name == "elmo"
    assert request.model_spec.signature_name == signature
    for key, proto in request.inputs.items():
        assert proto.dtype == sig.inputs[key].dtype, key
    request_feeds = serving.request_feeds(request)
    assert set(request_feeds) == set(feeds)
    for key, value in feeds.items():
        assert request_feeds[key].dtype == value.dtype, key
        np.testing.assert_array_equal(request_feeds[key], value, err_msg=key)


def test_predict_request_sequence_len_is_int32():
    request = serving.predict_request(tokens=[["a", "b"], ["c"]])
    assert request.inputs["sequence_len"].dtype == tf.int32.as_datatype_enum
    assert request.inputs["tokens"].dtype == tf.string.as_datatype_enum
    assert [d.size for d in request.inputs["tokens"].tensor_shape.dim] == [2, 2]
    np.testing.assert_array_equal(tf.make_ndarray(request.inputs["sequence_len"]), [2, 1])
    assert tf.make_ndarray(request.inputs["tokens"]).tolist() == [[b"a", b"b"], [b"c", b""]]


# TF Serving's REST decoding rules, as rest_body_to_feeds applies them.

SENTENCE_INPUTS = {"default": tf.TensorSpec([None], tf.string)}
TOKEN_INPUTS = {"tokens": tf.TensorSpec([None, None], tf.string),
                "sequence_len": tf.TensorSpec([None], tf.int32)}


@pytest.mark.parametrize("body", [
    {"instances": ["a b", "c"]},
    {"instances": [{"default": "a b"}, {"default": "c"}]},
    {"inputs": ["a b", "c"]},
    {"inputs": {"default": ["a b", "c"]}},
    {"signature_name": "default", "instances": [{"b64": base64.b64encode(b"a b").decode()}, "c"]},
])
def test_rest_rules_single_input(body):
    feeds = serving.rest_body_to_feeds(body, SENTENCE_INPUTS)
    assert list(feeds) == ["default"]
    assert feeds["default"].dtype == object
    assert feeds["default"].tolist() == [b"a b", b"c"]


def test_rest_rules_dtype_sources(session):
    body = {"inputs": {"tokens": [["x"]], "sequence_len": [1]}}
    sources = [TOKEN_INPUTS, session[1].signature_def["tokens"].inputs,
               {"tokens": tf.string, "sequence_len": tf.int32},
               {"tokens": "string", "sequence_len": "int32"}]
    for source in sources:
        feeds = serving.rest_body_to_feeds(body, source)
        assert feeds["sequence_len"].dtype == np.int32
        assert feeds["tokens"].tolist() == [[b"x"]]


@pytest.mark.parametrize("body, match", [
    ({"instances": ["a"], "inputs": ["a"]}, "exactly one of \"instances\""),
    ({"signature_name": "tokens"}, "exactly one of \"instances\""),
    ({"instances": ["a"]}, "instances: bare values need a single-input signature"),
    ({"inputs": [["a"]]}, "inputs: a bare value needs a single-input signature"),
    ({"instances": []}, "instances: empty"),
    ({"instances": {"tokens": ["a"]}}, "instances: expected a list"),
    ({"instances": [{"tokens": ["a"], "sequence_len": 1},
                    {"tokens": ["a", "b"], "sequence_len": 2}]}, r"instance 1 has shape \[2\]"),
    ({"instances": [{"tokens": ["a"]}]}, r"instances\[0\]: .*missing \['sequence_len'\]"),
    ({"inputs": {"tokens": [["a"]], "sequence_len": [1], "extra": [0]}}, r"unknown \['extra'\]"),
    ({"inputs": {"tokens": [["a", "b"], ["c"]], "sequence_len": [2, 1]}}, "ragged"),
    ({"inputs": {"tokens": [["a", 7]], "sequence_len": [2]}}, "expected a string, got int 7"),
    ({"inputs": {"tokens": [["a"]], "sequence_len": [1.0]}}, "expected an integer"),
    ({"inputs": {"tokens": [["a"]], "sequence_len": [2 ** 31]}}, "out of range for int32"),
    ({"inputs": {"tokens": [[{"b64": "%%"}]], "sequence_len": [1]}}, "invalid base64"),
    (["a"], "body: expected a JSON object"),
])
def test_rest_rules_reject(body, match):
    with pytest.raises(InputError, match=match):
        serving.rest_body_to_feeds(body, TOKEN_INPUTS)


# REST replies and gRPC responses.

def row_reply(outputs: dict) -> dict:
    batch = len(outputs["sequence_len"])
    return {"predictions": [{k: v[i].tolist() for k, v in outputs.items()} for i in range(batch)]}


def column_reply(outputs: dict) -> dict:
    return {"outputs": {k: v.tolist() for k, v in outputs.items()}}


@pytest.mark.parametrize("build", [row_reply, column_reply])
@pytest.mark.parametrize("kind", ["sentences", "tokens"])
def test_parse_rest_reply_round_trips(reference, build, kind):
    expected = reference["default" if kind == "sentences" else "tokens"]
    reply = json.loads(json.dumps(build(expected)))
    got = serving.parse_rest_reply(reply)
    assert got["sequence_len"].dtype == np.int32
    assert all(got[k].dtype == np.float32 for k in got if k != "sequence_len")
    assert_outputs_close(got, expected, atol=0)  # float32 -> JSON -> float32 is exact


def test_parse_rest_reply_other_shapes():
    assert serving.parse_rest_reply({"predictions": [[1, 2], [3, 4]]})["predictions"].dtype \
        == np.float32
    got = serving.parse_rest_reply({"outputs": [0.5, 1.5]})
    np.testing.assert_array_equal(got["outputs"], np.array([0.5, 1.5], np.float32))
    nan = serving.parse_rest_reply(json.loads('{"outputs": {"x": [NaN, 1]}}'))["x"]
    assert np.isnan(nan[0]) and nan[1] == 1
    with pytest.raises(serving.ServingReplyError, match="TF Serving returned an error: boom"):
        serving.parse_rest_reply({"error": "boom"})
    with pytest.raises(HubExportError, match="exactly one of \"predictions\""):
        serving.parse_rest_reply({"result": []})
    with pytest.raises(HubExportError, match=r"predictions\[1\]: outputs"):
        serving.parse_rest_reply({"predictions": [{"a": 1}, {"b": 1}]})
    with pytest.raises(HubExportError, match="expected numbers"):
        serving.parse_rest_reply({"outputs": {"elmo": [[1.0, True]]}})


@pytest.mark.parametrize("kind", ["sentences", "tokens"])
def test_parse_predict_response(reference, kind):
    expected = reference["default" if kind == "sentences" else "tokens"]
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "elmo"
    for key, value in expected.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
    response = predict_pb2.PredictResponse.FromString(response.SerializeToString())
    assert response.outputs["sequence_len"].dtype == tf.int32.as_datatype_enum
    assert_outputs_close(serving.parse_predict_response(response), expected, atol=0)


# Concurrency: TF Serving runs requests on many threads at once.

def concurrent_jobs():
    """(signature, feeds) pairs on different inputs."""
    jobs = []
    for i in range(8):
        if i % 2 == 0:
            batch = [SENTENCES[(i // 2 + k) % len(SENTENCES)] for k in range(1 + i // 2)]
            jobs.append(("default", {"default": np.array(batch, object)}))
        else:
            rows = [TOKENS[(i // 2 + k) % len(TOKENS)] for k in range(1 + i // 2)]
            request = serving.predict_request(tokens=rows)
            jobs.append(("tokens", serving.request_feeds(request)))
    return jobs


@pytest.mark.parametrize("path", ["hub_load", "session"])
def test_concurrent_calls_match_serial_calls(loaded, session, path):
    def call(name, feeds):
        return run_hub(loaded, name, feeds) if path == "hub_load" else \
            run_session(session, name, feeds)

    jobs = concurrent_jobs() * 2
    serial = [call(name, feeds) for name, feeds in jobs]
    start = threading.Barrier(8)

    def job(index):
        if index < 8:
            start.wait(timeout=30)
        return call(*jobs[index])

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(job, range(len(jobs))))
    for index, (got, want) in enumerate(zip(parallel, serial)):
        try:
            assert_outputs_close(got, want)
        except AssertionError as e:
            raise AssertionError(f"job {index} ({jobs[index][0]})") from e
