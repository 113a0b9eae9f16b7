"""`python -m hub_export serving-config`: models.config for TF Serving."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from hub_export.errors import HubExportError
from hub_export.serving.config import (
    Batching,
    BatchingParameters,
    build_config,
    parse_labels,
    write_batching,
    write_config,
)

import forked_cli


@pytest.fixture
def base(tmp_path, small_export):
    """exported/elmo/{2,3}: two copies of a real SavedModel, side by side."""
    root = tmp_path / "exported"
    for version in (2, 3):
        shutil.copytree(small_export[0].path, root / "elmo" / str(version))
    return root


def parse(path) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())


def test_all_versions_with_label(base):
    path = write_config(base, name="elmo", labels={"stable": 3})
    assert path == base / "models.config"
    config = parse(path)
    (model,) = config.model_config_list.config
    assert model.name == "elmo"
    assert model.base_path == str((base / "elmo").resolve())
    assert model.model_platform == "tensorflow"
    assert list(model.model_version_policy.specific.versions) == [2, 3]
    assert dict(model.version_labels) == {"stable": 3}


def test_latest_policy_and_serving_root(base):
    config = build_config(base, latest=1, serving_root="/models")
    (model,) = config.model_config_list.config
    assert model.base_path == "/models/elmo"
    assert model.model_version_policy.latest.num_versions == 1
    with pytest.raises(HubExportError, match=r"--label stable=2: version 2 is not among the served versions \(3\)"):
        build_config(base, latest=1, labels={"stable": 2})


def test_refuses_missing_version(base):
    with pytest.raises(HubExportError, match=r"version 4: .*elmo/4 does not exist \(found on disk: 2, 3\)"):
        build_config(base, versions=[3, 4])


def test_refuses_directory_without_saved_model(base):
    (base / "elmo" / "5").mkdir()
    with pytest.raises(HubExportError, match=r"version 5: .*elmo/5 holds no SavedModel"):
        build_config(base)
    assert not (base / "models.config").exists()


def test_refuses_label_to_absent_version(base):
    with pytest.raises(HubExportError, match=r"--label stable=9: version 9 is not among the served versions \(2, 3\)"):
        build_config(base, labels={"stable": 9})


def test_refuses_bad_label_syntax_and_missing_model(base, tmp_path):
    with pytest.raises(HubExportError, match=r"--label: expected NAME=VERSION like stable=3, got 'stable'"):
        parse_labels(["stable"])
    with pytest.raises(HubExportError, match=r"no version directories found"):
        build_config(base, name="other")
    with pytest.raises(HubExportError, match=r"--base: .*nowhere is not a directory"):
        build_config(tmp_path / "nowhere")


def parse_batching(path) -> BatchingParameters:
    return text_format.Parse(path.read_text(), BatchingParameters())


def test_cli(base):
    ok = forked_cli.run(["serving-config", "--base", str(base), "--versions", "2,3", "--label",
                         "stable=3", "--label", "canary=2", "--num-batch-threads", "4"], base)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == [str(base / "models.config"), str(base / "batching.config")]
    assert dict(parse(base / "models.config").model_config_list.config[0].version_labels) == {
        "stable": 3, "canary": 2}
    batching = parse_batching(base / "batching.config")
    assert batching.num_batch_threads.value == 4
    assert batching.max_batch_size.value == Batching.max_batch_size
    bad = forked_cli.run(["serving-config", "--base", str(base), "--versions", "3,7"], base)
    assert bad.returncode == 2
    assert "error: version 7:" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_without_batching(base):
    ok = forked_cli.run(["serving-config", "--base", str(base), "--no-batching"], base)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == [str(base / "models.config")]
    assert not (base / "batching.config").exists()
    clash = forked_cli.run(["serving-config", "--base", str(base), "--no-batching",
                            "--max-batch-size", "8"], base)
    assert clash.returncode == 1
    assert "--no-batching writes no batching.config, so --max-batch-size" in clash.stderr


# TF Serving's request batching (--enable_batching --batching_parameters_file).

def test_batching_file_parses_as_tf_serving_batching_parameters(base):
    path = write_batching(base)
    assert path == base / "batching.config"
    params = parse_batching(path)
    assert params.pad_variable_length_inputs
    assert params.max_batch_size.value == 64
    assert params.batch_timeout_micros.value == 10_000
    # Left to the server: its CPU count, its default queue.
    assert not params.HasField("num_batch_threads")
    assert not params.HasField("max_enqueued_batches")
    assert not params.allowed_batch_sizes  # no padding of the batch dimension

    params = parse_batching(write_batching(base, Batching(max_batch_size=16, batch_timeout_micros=0,
                                                          max_enqueued_batches=3)))
    assert (params.max_batch_size.value, params.batch_timeout_micros.value,
            params.max_enqueued_batches.value) == (16, 0, 3)
    assert params.HasField("batch_timeout_micros")  # 0 is written, not left to the default


@pytest.mark.parametrize("field, value, pattern", [
    ("max_batch_size", 0, r"--max-batch-size: must be an integer >= 1, got 0"),
    ("batch_timeout_micros", -1, r"--batch-timeout-micros: must be an integer >= 0, got -1"),
    ("num_batch_threads", 2.5, r"--num-batch-threads: must be an integer >= 1, got 2.5"),
])
def test_batching_refuses_bad_values(base, field, value, pattern):
    with pytest.raises(HubExportError, match=pattern):
        write_batching(base, Batching(**{field: value}))
    assert not (base / "batching.config").exists()


def merge_like_tf_serving(requests: list[list[list[str]]]) -> np.ndarray:
    """Concatenates `tokens` requests along the batch as TF Serving's batching session
    does with pad_variable_length_inputs: each request's tensor is padded to the longest
    with its own first element (batching_util.cc: `pad_value(input.flat<T>()(0))`)."""
    width = max(len(rows[0]) for rows in requests)
    merged = []
    for rows in requests:
        first = rows[0][0]
        merged += [row + [first] * (width - len(row)) for row in rows]
    return np.array(merged, dtype=object)


def test_batched_tokens_padded_with_real_words_equal_empty_padding(loaded):
    """Two `tokens` requests of different lengths merged by the server: the shorter one's
    padding positions hold its first word, not "". Each sentence's outputs equal those of
    its own request padded with "", and positions past `sequence_len` stay 0."""
    short = [["dogs", "bark"], ["hello", ""]], [2, 1]
    long = [["the", "cat", "sat", "on", "the", "mat"], ["a", "dog", "barked", "", "", ""]], [6, 3]
    tokens = merge_like_tf_serving([short[0], long[0]])
    assert tokens.shape == (4, 6) and set(tokens[:2, 2:].ravel()) == {"dogs"}  # a real word
    lengths = np.array(short[1] + long[1], np.int32)
    batched = loaded.signatures["tokens"](tokens=tf.constant(tokens),
                                          sequence_len=tf.constant(lengths))
    alone = [loaded.signatures["tokens"](tokens=tf.constant(rows), sequence_len=tf.constant(n))
             for rows, n in (short, long)]
    rows = [(alone[0], 0), (alone[0], 1), (alone[1], 0), (alone[1], 1)]
    for key in ("word_emb", "lstm_outputs1", "lstm_outputs2", "elmo", "default"):
        got = batched[key].numpy()
        assert np.abs(got).max() > 1e-3, key
        for i, (own, j) in enumerate(rows):
            want = own[key].numpy()[j]
            if key == "default":
                np.testing.assert_allclose(got[i], want, atol=1e-6, rtol=0, err_msg=key)
                continue
            n = lengths[i]
            np.testing.assert_allclose(got[i, :n], want[:n], atol=1e-6, rtol=0,
                                       err_msg=f"{key}, sentence {i}")
            assert not np.any(got[i, n:]), f"{key}, sentence {i}: padding positions must be 0"
