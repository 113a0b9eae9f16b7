"""Bad inputs: every one fails with a message that names the flag, file or input and the
value, never with a raw traceback; odd but legal sentences give finite outputs.

Three layers: the CLI (`python -m hub_export`, in a process of its own: `forked_cli`),
the library (`hub_export.export.exporter.export`), and the exported module's inputs (the
`tokens` and `default` signatures and `__call__` of the reloaded SavedModel).
"""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from hub_export.errors import HubExportError, OptionsError, WeightsError
from hub_export.export.elmo_module import ExportConfig
from hub_export.export.exporter import export

import forked_cli
from helpers import SMALL_OPTIONS, write_model

P = SMALL_OPTIONS["lstm"]["projection_dim"]
N_LAYERS = SMALL_OPTIONS["lstm"]["n_layers"]


# --------------------------------------------------------------------------- CLI


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return forked_cli.run(["--quiet", *args], cwd, timeout=120)


def assert_clean_failure(proc: subprocess.CompletedProcess, code: int, pattern: str) -> None:
    """Exit status `code`, `pattern` in stderr, no traceback, nothing on stdout."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert re.search(pattern, proc.stderr, re.M), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""


# Usage errors: absl rejects these while parsing flags, before TensorFlow is imported.
@pytest.mark.parametrize("args, pattern", [
    (["--version", "0"], r"flag --version=0: 0 is not a positive integer"),
    (["--version", "-1"], r"flag --version=-1: -1 is not a positive integer"),
    (["--version", "abc"], r"flag --version=abc: invalid literal for int\(\).*'abc'"),
    ([], r"--version is required"),
    (["--version", "1", "--options", "opts.json"],
     r"--options and --weights go together.*--options=opts\.json, --weights=None"),
    (["--version", "1", "--projection-dim", "0"],
     r"flag --projection-dim=0: 0 is not a positive integer"),
], ids=["version-0", "version-negative", "version-not-int", "version-missing",
        "options-without-weights", "projection-dim-0"])
def test_cli_usage_errors(tmp_path, args, pattern):
    proc = run_cli(tmp_path, *args)
    assert_clean_failure(proc, 1, pattern)
    assert not (tmp_path / "exported").exists()


def test_cli_missing_options_file(tmp_path):
    _, weights = write_model(tmp_path / "model", copy.deepcopy(SMALL_OPTIONS))
    proc = run_cli(tmp_path, "--version", "1", "--options", "nope.json", "--weights", str(weights))
    assert_clean_failure(proc, 2, r"^error: nope\.json: options file not found$")
    assert not (tmp_path / "exported" / "elmo" / "1").exists()


def test_cli_weights_not_hdf5(tmp_path):
    options, _ = write_model(tmp_path / "model", copy.deepcopy(SMALL_OPTIONS))
    (tmp_path / "weights.hdf5").write_text("not hdf5 at all\n")
    proc = run_cli(tmp_path, "--version", "1", "--options", str(options), "--weights", "weights.hdf5")
    assert_clean_failure(proc, 2, r"^error: weights\.hdf5: not an HDF5 file")
    assert not (tmp_path / "exported" / "elmo" / "1").exists()


def test_cli_existing_version_without_overwrite(tmp_path):
    version_dir = tmp_path / "exported" / "elmo" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "saved_model.pb").write_bytes(b"the first export")
    proc = run_cli(tmp_path, "--version", "1")
    assert_clean_failure(proc, 2, r"^error: exported/elmo/1 already exists; pass --overwrite")
    assert sorted(p.name for p in version_dir.iterdir()) == ["saved_model.pb"]
    assert (version_dir / "saved_model.pb").read_bytes() == b"the first export"
    assert sorted(p.name for p in version_dir.parent.iterdir()) == ["1"]  # no temporaries


@pytest.mark.parametrize("args, pattern", [
    (["--scalar-mix-init", "0,x,1"], r"^error: --scalar-mix-init: expected numbers like 0,0,1, got 0,x,1$"),
    (["--name", "a/b"], r"^error: --name: got 'a/b'; use letters, digits"),
], ids=["scalar-mix-not-number", "name-with-slash"])
def test_cli_bad_values(tmp_path, args, pattern):
    proc = run_cli(tmp_path, "--version", "1", *args)
    assert_clean_failure(proc, 2, pattern)
    assert not (tmp_path / "exported" / "elmo").exists()


# ----------------------------------------------------------------------- library


@pytest.mark.parametrize("version", [0, -1, True, "3", 1.0])
def test_export_version_not_positive_int(tmp_path, version):
    with pytest.raises(HubExportError, match=re.escape(
            f"--version: must be a positive integer, got {version!r}")):
        export(version, output_dir=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["a/b", "", "..", ".hidden"])
def test_export_bad_name(tmp_path, name):
    with pytest.raises(HubExportError, match=re.escape(f"--name: got {name!r}; use letters")):
        export(1, output_dir=tmp_path, name=name)


def test_export_options_without_weights(tmp_path, small_model):
    options, _ = small_model
    with pytest.raises(HubExportError, match="--options and --weights go together"):
        export(1, options, None, output_dir=tmp_path / "out")


def test_export_missing_weights_file(tmp_path, small_model):
    options, _ = small_model
    missing = tmp_path / "missing.hdf5"
    with pytest.raises(WeightsError, match=re.escape(f"{missing}: weight file not found")):
        export(1, options, missing, output_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "elmo" / "1").exists()


def test_export_weights_is_a_folder(tmp_path, small_model):
    options, _ = small_model
    with pytest.raises(WeightsError, match=re.escape(
            f"{tmp_path}: is a folder, expected an HDF5 weight file")):
        export(1, options, tmp_path, output_dir=tmp_path / "out")


def test_export_options_unreadable(tmp_path, small_model):
    # Tests may run as root, where permissions do not stop a read; a folder always does.
    _, weights = small_model
    with pytest.raises(OptionsError, match=re.escape(f"{tmp_path}: cannot read options file")):
        export(1, tmp_path, weights, output_dir=tmp_path / "out")


def test_export_options_not_json(tmp_path, small_model):
    _, weights = small_model
    options = tmp_path / "options.json"
    options.write_text("{'char_cnn': ")
    with pytest.raises(OptionsError, match=re.escape(f"{options}: not valid JSON")):
        export(1, options, weights, output_dir=tmp_path / "out")


def test_export_bad_activation(tmp_path, small_model):
    options, weights = small_model
    raw = json.loads(options.read_text())
    raw["char_cnn"]["activation"] = "sigmoid"
    options.write_text(json.dumps(raw))
    with pytest.raises(OptionsError, match=re.escape(str(options)) +
                       r": char_cnn\.activation: got .*sigmoid.*; allowed values: relu, tanh"):
        export(1, options, weights, output_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "elmo" / "1").exists()


@pytest.mark.parametrize("config, pattern", [
    (ExportConfig(scalar_mix_init=(0.0, 1.0)),
     r"--scalar-mix-init: got 2 values \(0\.0,1\.0\); the model has 2 LSTM layers, so it needs 3"),
    (ExportConfig(scalar_mix_init=(0.0, math.nan, 1.0)),
     r"--scalar-mix-init: values must be finite, got \(0\.0, nan, 1\.0\)"),
    (ExportConfig(dropout=1.5), r"--dropout: must be in \[0, 1\), got 1\.5"),
    (ExportConfig(dropout=-0.1), r"--dropout: must be in \[0, 1\), got -0\.1"),
    (ExportConfig(l2_coef=-1.0), r"--l2-coef: must be a number >= 0, got -1\.0"),
    (ExportConfig(l2_coef=math.inf), r"--l2-coef: must be a number >= 0, got inf"),
    (ExportConfig(trainable="some"), r"--trainable: got 'some'; allowed: mix, all"),
    (ExportConfig(projection_dim=0), r"--projection-dim: must be a positive integer, got 0"),
], ids=["mix-count", "mix-nan", "dropout-high", "dropout-negative", "l2-negative", "l2-inf",
        "trainable", "projection-dim"])
def test_export_bad_config(tmp_path, small_model, config, pattern):
    options, weights = small_model
    with pytest.raises(HubExportError, match=pattern):
        export(1, options, weights, output_dir=tmp_path / "out", config=config)
    assert not (tmp_path / "out" / "elmo" / "1").exists()


def test_export_existing_version_and_archive(tmp_path, small_model):
    options, weights = small_model
    version_dir = tmp_path / "elmo" / "2"
    version_dir.mkdir(parents=True)
    (version_dir / "keep.txt").write_text("first")
    with pytest.raises(HubExportError, match=re.escape(
            f"{version_dir} already exists; pass --overwrite to replace it")):
        export(2, options, weights, output_dir=tmp_path)
    assert (version_dir / "keep.txt").read_text() == "first"

    archive = tmp_path / "elmo-3.tar.gz"
    archive.write_bytes(b"old archive")
    with pytest.raises(HubExportError, match=re.escape(f"{archive} already exists")):
        export(3, options, weights, output_dir=tmp_path, archive=True)
    assert archive.read_bytes() == b"old archive"
    assert not (tmp_path / "elmo" / "3").exists()


def test_export_output_dir_is_a_file(tmp_path):
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(HubExportError, match=re.escape(
            f"--output-dir: {out} exists and is not a directory")):
        export(1, output_dir=out)


# ------------------------------------------------------------- signature inputs


@pytest.fixture(scope="module")
def module(small_export):
    result, _, _ = small_export
    return hub.load(str(result.path))


TOKENS = tf.constant([["a", "b", ""], ["c", "", ""]])


def call_tokens_signature(module, tokens, sequence_len):
    return module.signatures["tokens"](tokens=tokens, sequence_len=sequence_len)


def call_dict(module, tokens, sequence_len):
    return module({"tokens": tokens, "sequence_len": sequence_len})


@pytest.mark.parametrize("call", [call_tokens_signature, call_dict], ids=["signature", "call"])
@pytest.mark.parametrize("tokens, sequence_len, pattern", [
    (TOKENS, [4, 1],
     r"sequence_len must be <= max_length \(tokens\.shape\[1\] =\] \[3\] \[\); "
     r"got sequence_len =\] \[4 1\]"),
    (TOKENS, [-1, 1], r"sequence_len must be >= 0; got sequence_len =\] \[-1 1\]"),
    (TOKENS, [1, 1, 1],
     r"tokens and sequence_len must have the same batch size; tokens has\] \[2\] "
     r"\[rows, sequence_len has\] \[3\] \[entries"),
    (TOKENS, [1],
     r"tokens and sequence_len must have the same batch size; tokens has\] \[2\] "
     r"\[rows, sequence_len has\] \[1\] \[entries"),
], ids=["longer-than-max-length", "negative", "more-lengths", "fewer-lengths"])
def test_bad_token_values(module, call, tokens, sequence_len, pattern):
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        call(module, tokens, tf.constant(sequence_len, tf.int32))


@pytest.mark.parametrize("tokens, sequence_len, pattern", [
    (tf.constant(["a", "b"]), [1, 1],
     r"Shape of tensor tokens \[2\] is not compatible with expected shape \[\?,\?\]"),
    (tf.constant([[["a"]]]), [1],
     r"Shape of tensor tokens \[1,1,1\] is not compatible with expected shape \[\?,\?\]"),
    (TOKENS, [[1, 1]],
     r"Shape of tensor sequence_len \[1,2\] is not compatible with expected shape \[\?\]"),
], ids=["tokens-1d", "tokens-3d", "sequence-len-2d"])
def test_tokens_signature_wrong_rank(module, tokens, sequence_len, pattern):
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        call_tokens_signature(module, tokens, tf.constant(sequence_len, tf.int32))


def test_tokens_signature_wrong_dtype(module):
    # TensorFlow's own check of a signature's input types; it numbers the input (inputs
    # in sorted order: #0 is sequence_len) instead of naming it.
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"input #0\(zero-based\) was expected to be a int32 tensor "
                             r"but is a int64 tensor"):
        call_tokens_signature(module, TOKENS, tf.constant([1, 1], tf.int64))


@pytest.mark.parametrize("tokens, sequence_len, pattern", [
    (tf.constant(["a", "b"]), tf.constant([1, 1]),
     r"'tokens': <tf\.Tensor '[^']*' shape=\(2,\) dtype=string>"),
    (TOKENS, tf.constant([1, 1], tf.int64),
     r"'sequence_len': <tf\.Tensor '[^']*' shape=\(2,\) dtype=int64>"),
], ids=["tokens-1d", "sequence-len-int64"])
def test_call_dict_wrong_structure(module, tokens, sequence_len, pattern):
    # A loaded __call__ matches its inputs against the traced specs; the message lists
    # what it got, so the input and its shape/dtype are named.
    with pytest.raises(ValueError, match=r"(?s)Could not find matching concrete function.*" + pattern):
        call_dict(module, tokens, sequence_len)


# ------------------------------------------------------- odd but legal sentences

LONG = " ".join(f"w{i % 37}" for i in range(1000))
TOKEN_300 = "x" + "é" * 149 + "x"  # 300 bytes; the 48-byte cut falls inside an "é"
assert len(TOKEN_300.encode()) == 300

# (sentences, expected sequence_len)
SENTENCES = {
    "empty-batch": ([], []),
    "empty-string": ([""], [0]),
    "spaces-only": (["   "], [0]),
    "token-300-bytes": ([TOKEN_300], [1]),
    "1000-tokens": ([LONG], [1000]),
    "non-ascii": (["naïve café 日本語 👍"], [4]),
    "invalid-utf8": ([b"\xff\xfe abc \xc3"], [3]),
    "mixed-batch": ([" a  b ", "", "   ", TOKEN_300], [2, 0, 0, 1]),
}


def _strings(sentences):
    return tf.constant([s.encode() if isinstance(s, str) else s for s in sentences], tf.string)


@pytest.mark.parametrize("how", ["default", "call", "call-training"])
@pytest.mark.parametrize("case", list(SENTENCES))
def test_odd_sentences_give_finite_outputs(module, case, how):
    sentences, lengths = SENTENCES[case]
    x = _strings(sentences)
    if how == "default":
        out = module.signatures["default"](default=x)
    else:
        out = module(x, training=how == "call-training")
    out = {k: v.numpy() for k, v in out.items()}
    batch, time = len(lengths), max(lengths, default=0)

    assert out["sequence_len"].tolist() == lengths
    widths = {"word_emb": P, "elmo": 2 * P, **{f"lstm_outputs{i}": 2 * P
                                              for i in range(1, N_LAYERS + 1)}}
    assert set(out) == {*widths, "default", "sequence_len"}
    for name, width in widths.items():
        assert out[name].shape == (batch, time, width), name
    assert out["default"].shape == (batch, 2 * P)
    for name, value in out.items():
        if name != "sequence_len":
            assert np.isfinite(value).all(), f"{name} has NaN/Inf for {case}"
    mask = np.arange(time)[None, :] < np.asarray(lengths, np.int64).reshape(batch, 1)
    for name in widths:
        assert not out[name][~mask].any(), f"{name} is not zero past sequence_len"
    for row, n in enumerate(lengths):
        if n == 0:
            assert not out["default"][row].any(), "a sentence without tokens must give zeros"
        else:
            assert out["default"][row].any()


def test_tokens_signature_zero_lengths(module):
    out = call_tokens_signature(module, TOKENS, tf.constant([0, 0], tf.int32))
    assert out["sequence_len"].numpy().tolist() == [0, 0]
    for name, value in out.items():
        value = value.numpy()
        if name != "sequence_len":
            assert np.isfinite(value).all() and not value.any(), name
    assert out["elmo"].shape == (2, 3, 2 * P)
