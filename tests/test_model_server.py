"""A real tensorflow_model_server on 127.0.0.1, when one is installed (it is not on the
project's own machines: no server binary installs from the registries they reach)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from hub_export.serving.config import write_batching, write_config

SERVER = shutil.which("tensorflow_model_server")
pytestmark = pytest.mark.skipif(
    SERVER is None, reason="no tensorflow_model_server binary on PATH (TF Serving's server is "
    "not installable here; run this where the tensorflow/serving image or package is)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rest_and_grpc_against_a_real_server(small_export, tmp_path):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from hub_export.serving.client import (
        parse_predict_response,
        parse_rest_reply,
        predict_request,
        rest_body,
    )

    base = tmp_path / "exported"
    shutil.copytree(small_export[0].path, base / "elmo" / "3")
    config = write_config(base, name="elmo", labels={"stable": 3})
    batching = write_batching(base)  # served as the README says: request batching on
    grpc_port, rest_port = free_port(), free_port()
    server = subprocess.Popen(
        [SERVER, f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         "--rest_api_host=127.0.0.1", "--grpc_socket_path=", f"--model_config_file={config}",
         "--allow_version_labels_for_unavailable_models", "--enable_batching",
         f"--batching_parameters_file={batching}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        status_url = f"http://127.0.0.1:{rest_port}/v1/models/elmo"
        deadline = time.monotonic() + 120
        while True:
            try:
                status = json.load(urllib.request.urlopen(status_url, timeout=2))
                if status["model_version_status"][0]["state"] == "AVAILABLE":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "server never became AVAILABLE"
            time.sleep(0.5)

        module = hub.load(str(base / "elmo" / "3"))
        sentences = ["the cat sat on the mat", "hello world"]
        expected = module.signatures["default"](default=tf.constant(sentences))
        for form in ("instances", "inputs"):
            body = json.dumps(rest_body(sentences=sentences, form=form)).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{rest_port}/v1/models/elmo/labels/stable:predict", data=body,
                headers={"Content-Type": "application/json"})
            got = parse_rest_reply(json.load(urllib.request.urlopen(request, timeout=60)))
            for key, value in expected.items():
                np.testing.assert_allclose(got[key], value.numpy(), atol=1e-5, err_msg=(form, key))

        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
        tokens = [["the", "cat", "sat"], ["hello"]]
        got = parse_predict_response(stub.Predict(predict_request(tokens=tokens), timeout=60))
        want = module.signatures["tokens"](tokens=tf.constant([["the", "cat", "sat"], ["hello", "", ""]]),
                                           sequence_len=tf.constant([3, 1]))
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value.numpy(), atol=1e-6, err_msg=key)

        # Requests of different lengths at once, which the server may merge into one
        # batch padded to the longest: each sentence's outputs are those of its request
        # alone, and its positions past sequence_len are 0 (the reply's T may be longer).
        from concurrent.futures import ThreadPoolExecutor

        requests = [[["dogs", "bark"]], [["the", "cat", "sat", "on", "the", "mat"], ["a", "dog"]]]
        with ThreadPoolExecutor(len(requests)) as pool:
            replies = list(pool.map(lambda rows: parse_predict_response(
                stub.Predict(predict_request(tokens=rows), timeout=60)), requests))
        for rows, got in zip(requests, replies):
            width = max(map(len, rows))
            want = module.signatures["tokens"](
                tokens=tf.constant([r + [""] * (width - len(r)) for r in rows]),
                sequence_len=tf.constant([len(r) for r in rows]))
            for i, row in enumerate(rows):
                n = len(row)
                np.testing.assert_allclose(got["elmo"][i, :n], want["elmo"].numpy()[i, :n],
                                           atol=1e-6, err_msg=row)
                assert not np.any(got["elmo"][i, n:]), row
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
