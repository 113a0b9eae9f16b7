"""`embed` / `python -m hub_export embed`: a corpus into bilm-tf's hdf5 layout.

Values against the module's own `tokens` signature (atol 1e-6), long lines cut into
pieces, a SIGKILLed run resumed to the same file, and every bad input with its message.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorflow as tf

from hub_export.corpus.embed import Buffers, EmbedError, embed, run_record, scan_corpus
from hub_export.corpus.store import (
    PARTIAL,
    RUN_FILE,
    SENTENCE_DATASET,
    Store,
    Window,
    journaled_lines,
    write_json,
)
from hub_export.errors import OutputExistsError

import forked_cli
from helpers import SMALL_OPTIONS, require_shared_fixture

ATOL = 1e-6
SMALL_P = SMALL_OPTIONS["lstm"]["projection_dim"]


def fixture_lines() -> list[str]:
    """The 30 bilm-tf fixture sentences with an empty line after the 15th."""
    groups = json.loads((require_shared_fixture() / "lm_embeddings_sentences.json").read_text())
    sentences = [s for group in groups for s in group]
    return sentences[:15] + [""] + sentences[15:]


def write_corpus(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def module_outputs(module_path, token_lists: list[list[str]]) -> dict[str, np.ndarray]:
    """The module's outputs for each token list alone (a batch of one)."""
    fn = tf.saved_model.load(str(module_path)).signatures["tokens"]
    out = []
    for tokens in token_lists:
        result = fn(tokens=tf.constant([tokens], tf.string), sequence_len=tf.constant([len(tokens)]))
        out.append({name: value.numpy()[0] for name, value in result.items()})
    return out


def expected_all(o: dict) -> np.ndarray:
    """bilm-tf's layout: [word_emb, word_emb], then the LSTM layers, (3, n, 2P)."""
    word = o["word_emb"]
    return np.stack([np.concatenate([word, word], axis=-1), o["lstm_outputs1"], o["lstm_outputs2"]])


@pytest.fixture(scope="module")
def fixture_run(fixture_export, tmp_path_factory):
    """The fixture corpus embedded once per --layers value, and the module's own numbers."""
    folder = tmp_path_factory.mktemp("embed_fixture")
    lines = fixture_lines()
    corpus = write_corpus(folder / "corpus.txt", lines)
    # Small batches and windows so that batching, sorting and several parts all happen.
    outputs = {layers: embed(fixture_export.path, corpus, folder / f"{layers}.hdf5", layers=layers,
                             batch_size=4, window=8)
               for layers in ("all", "elmo", "default")}
    expected = module_outputs(fixture_export.path, [line.split() for line in lines if line])
    return lines, outputs, expected


def test_all_layers_equal_the_module(fixture_run):
    lines, outputs, expected = fixture_run
    result = outputs["all"]
    assert (result.lines, result.embedded, result.resumed, result.tokens) == (31, 31, 0, 744)
    assert not Path(str(result.path) + ".parts").exists()
    with h5py.File(result.path, "r") as f:
        assert sorted(f.keys(), key=int) == [str(i) for i in range(31)]
        want = iter(expected)
        for i, line in enumerate(lines):
            got = f[str(i)]
            assert got.dtype == np.float32
            if not line:
                assert got.shape == (3, 0, 32)
                continue
            o = next(want)
            assert got.shape == (3, len(line.split()), 32)
            np.testing.assert_allclose(got[()], expected_all(o), rtol=0, atol=ATOL)


def test_elmo_layer_equals_the_module(fixture_run):
    lines, outputs, expected = fixture_run
    with h5py.File(outputs["elmo"].path, "r") as f:
        assert len(f) == 31 and f["15"].shape == (0, 32)
        for i, o in zip([i for i, line in enumerate(lines) if line], expected):
            assert f[str(i)].shape == o["elmo"].shape
            np.testing.assert_allclose(f[str(i)][()], o["elmo"], rtol=0, atol=ATOL)


def test_default_layer_equals_the_module(fixture_run):
    lines, outputs, expected = fixture_run
    with h5py.File(outputs["default"].path, "r") as f:
        assert list(f.keys()) == [SENTENCE_DATASET]
        table = f[SENTENCE_DATASET][()]
    assert table.shape == (31, 32) and table.dtype == np.float32
    np.testing.assert_array_equal(table[15], np.zeros(32, np.float32))  # the empty line
    rows = [i for i, line in enumerate(lines) if line]
    np.testing.assert_allclose(table[rows], np.stack([o["default"] for o in expected]),
                               rtol=0, atol=ATOL)


def test_window_memory_is_used_again_once_written_and_only_where_it_fits():
    buffers = Buffers()
    first, second = buffers.take((10, 4)), buffers.take((10, 4))
    assert not np.shares_memory(first, second)  # two windows in flight: two arrays
    buffers.give(first)
    smaller = buffers.take((6, 4))
    assert smaller.shape == (6, 4) and np.shares_memory(smaller, first)
    buffers.give(smaller)
    larger = buffers.take((40, 4))
    assert larger.shape == (40, 4) and not np.shares_memory(larger, first)


def test_long_lines_are_embedded_in_pieces(small_export, tmp_path):
    result, _, _ = small_export
    words = [f"w{i}" for i in range(23)]
    corpus = write_corpus(tmp_path / "corpus.txt", [" ".join(words), "short line", ""])
    embed(result.path, corpus, tmp_path / "all.hdf5", max_tokens=10)
    embed(result.path, corpus, tmp_path / "default.hdf5", layers="default", max_tokens=10)
    # 23 tokens, at most 10 at a time: pieces of 10, 10 and 3 tokens, each from zero state.
    pieces = module_outputs(result.path, [words[:10], words[10:20], words[20:]])
    short = module_outputs(result.path, [["short", "line"]])[0]
    with h5py.File(tmp_path / "all.hdf5", "r") as f:
        assert f["0"].shape == (3, 23, 2 * SMALL_P)
        np.testing.assert_allclose(f["0"][()], np.concatenate([expected_all(o) for o in pieces], axis=1),
                                   rtol=0, atol=ATOL)
        np.testing.assert_allclose(f["1"][()], expected_all(short), rtol=0, atol=ATOL)
        assert f["2"].shape == (3, 0, 2 * SMALL_P)
    # The line's `default` is the mean of its joined elmo: the pieces' means weighted by size.
    joined = np.concatenate([o["elmo"] for o in pieces])
    with h5py.File(tmp_path / "default.hdf5", "r") as f:
        np.testing.assert_allclose(f[SENTENCE_DATASET][0], joined.mean(axis=0), rtol=0, atol=ATOL)
        np.testing.assert_allclose(f[SENTENCE_DATASET][1], short["default"], rtol=0, atol=ATOL)


def test_tokens_are_split_on_whitespace_like_bilm_tf(small_export, tmp_path):
    result, _, _ = small_export
    corpus = tmp_path / "corpus.txt"
    # Tabs, doubled and trailing spaces, CRLF and a last line without a newline.
    corpus.write_bytes(b"a  b\tc \r\n   \nd")
    assert scan_corpus(corpus).lines == 3
    embed(result.path, corpus, tmp_path / "out.hdf5", layers="elmo")
    want = module_outputs(result.path, [["a", "b", "c"], ["d"]])
    with h5py.File(tmp_path / "out.hdf5", "r") as f:
        np.testing.assert_allclose(f["0"][()], want[0]["elmo"], rtol=0, atol=ATOL)
        assert f["1"].shape == (0, 2 * SMALL_P)
        np.testing.assert_allclose(f["2"][()], want[1]["elmo"], rtol=0, atol=ATOL)


def test_an_empty_corpus_gives_an_empty_layout(small_export, tmp_path):
    result, _, _ = small_export
    corpus = write_corpus(tmp_path / "empty.txt", [])
    embed(result.path, corpus, tmp_path / "all.hdf5")
    embed(result.path, corpus, tmp_path / "default.hdf5", layers="default")
    with h5py.File(tmp_path / "all.hdf5", "r") as f:
        assert len(f) == 0
    with h5py.File(tmp_path / "default.hdf5", "r") as f:
        assert f[SENTENCE_DATASET].shape == (0, 2 * SMALL_P)


# --------------------------------------------------------------------------- kill and resume


def random_corpus(path: Path, n_lines: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("abcdefghij"), rng.integers(1, 9))) for _ in range(500)]
    lines = [" ".join(rng.choice(words, rng.integers(0, 40))) for _ in range(n_lines)]
    return write_corpus(path, lines)


def assert_same_file(a: Path, b: Path) -> None:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa.keys()) == sorted(fb.keys())
        for name in fa:
            assert fa[name].shape == fb[name].shape, name
            np.testing.assert_array_equal(fa[name][()], fb[name][()], err_msg=name)


def test_sigkilled_run_resumes_to_the_same_file(small_export, tmp_path):
    """SIGKILL mid-run: the output is not there yet (no half-written file under its name),
    and --resume completes it, without recomputing saved lines, to a file equal to an
    uninterrupted run's."""
    result, _, _ = small_export
    corpus = random_corpus(tmp_path / "corpus.txt", 2000)
    output = tmp_path / "out.hdf5"
    parts = tmp_path / "out.hdf5.parts"
    flags = ["--module", str(result.path), "--input", str(corpus), "--output", str(output),
             "--batch-size", "16", "--window", "50"]
    run = forked_cli.Run(["embed", "--quiet", *flags], tmp_path, tmp_path / "logs")
    assert forked_cli.kill_when(run, lambda: journaled_lines(parts) >= 150, timeout=120), (
        run.stderr())

    assert not output.exists(), "the run finished before the kill; the test proved nothing"
    assert not list(parts.glob("*.hdf5")), "nothing in the parts directory poses as hdf5"
    saved = journaled_lines(parts)
    assert 150 <= saved < 2000

    resumed = forked_cli.run(["embed", "--resume", *flags], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == str(output)
    # The saved lines were kept, not recomputed.
    match = re.search(r"embed: ([\d,]+) of 2,000 lines were already embedded", resumed.stderr)
    assert match and int(match.group(1).replace(",", "")) == saved, resumed.stderr
    assert not parts.exists()

    whole = embed(result.path, corpus, tmp_path / "whole.hdf5", batch_size=16, window=50)
    assert whole.lines == 2000
    assert_same_file(output, whole.path)


def test_ctrl_c_stops_cleanly_and_keeps_what_was_computed(small_export, tmp_path):
    result, _, _ = small_export
    corpus = random_corpus(tmp_path / "corpus.txt", 1500)
    output = tmp_path / "out.hdf5"
    parts = tmp_path / "out.hdf5.parts"
    # A shell starts a background job (`pytest ... &`) with SIGINT ignored, and a child
    # inherits that: give the embed process the default, as a terminal's Ctrl-C finds it.
    proc = subprocess.Popen([sys.executable, "-m", "hub_export", "embed", "--quiet", "--module",
                             str(result.path), "--input", str(corpus), "--output", str(output),
                             "--batch-size", "16", "--window", "50"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not journaled_lines(parts):
        assert proc.poll() is None
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert re.search(r"^error: interrupted; what was embedded is kept in .*out\.hdf5\.parts/: run "
                     r"again with --resume to finish$", stderr, re.M), stderr
    assert "Traceback" not in stderr and stdout == ""
    assert not output.exists() and (parts / "run.json").exists()
    saved = journaled_lines(parts)
    assert saved >= 50
    resumed = embed(result.path, corpus, output, batch_size=16, window=50, resume=True)
    assert (resumed.resumed, resumed.embedded) == (saved, 1500 - saved)


def test_resume_of_a_finished_run_changes_nothing(small_export, tmp_path):
    result, _, _ = small_export
    corpus = random_corpus(tmp_path / "corpus.txt", 30)
    output = tmp_path / "out.hdf5"
    embed(result.path, corpus, output)
    before = output.read_bytes()
    again = embed(result.path, corpus, output, resume=True)
    assert (again.embedded, again.resumed) == (0, 30)
    assert output.read_bytes() == before


def test_overwrite_replaces_the_output(small_export, tmp_path):
    result, _, _ = small_export
    output = tmp_path / "out.hdf5"
    embed(result.path, random_corpus(tmp_path / "a.txt", 20, seed=1), output)
    embed(result.path, random_corpus(tmp_path / "b.txt", 7, seed=2), output, overwrite=True)
    with h5py.File(output, "r") as f:
        assert len(f) == 7


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus.txt", ["the cat sat", "", "on the mat"])


def test_missing_input(small_export, tmp_path):
    with pytest.raises(EmbedError, match=r"--input: .*nope\.txt: file not found"):
        embed(small_export[0].path, tmp_path / "nope.txt", tmp_path / "out.hdf5")


def test_input_is_a_directory(small_export, tmp_path):
    with pytest.raises(EmbedError, match=r"--input: .* is a directory, not a text file"):
        embed(small_export[0].path, tmp_path, tmp_path / "out.hdf5")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_input(small_export, corpus, tmp_path):
    corpus.chmod(0)
    with pytest.raises(EmbedError, match=r"--input: .*corpus\.txt: cannot read: Permission denied"):
        embed(small_export[0].path, corpus, tmp_path / "out.hdf5")


def test_non_utf8_line_is_named(small_export, tmp_path):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes(b"fine line\nanother\ncaf\xe9 au lait\nlast\n")
    with pytest.raises(EmbedError, match=r"latin1\.txt: line 3 is not UTF-8 \(byte 0xe9 at "
                                         r"byte 4 of the line\)"):
        embed(small_export[0].path, corpus, tmp_path / "out.hdf5")
    assert not (tmp_path / "out.hdf5").exists() and not (tmp_path / "out.hdf5.parts").exists()


def test_output_exists(small_export, corpus, tmp_path):
    (tmp_path / "out.hdf5").write_bytes(b"someone's file")
    with pytest.raises(OutputExistsError, match=r"out\.hdf5 already exists; pass --overwrite"):
        embed(small_export[0].path, corpus, tmp_path / "out.hdf5")
    assert (tmp_path / "out.hdf5").read_bytes() == b"someone's file"


def test_unfinished_run_needs_resume_or_overwrite(small_export, corpus, tmp_path):
    parts = tmp_path / "out.hdf5.parts"
    parts.mkdir()
    (parts / "run.json").write_text("{}")
    with pytest.raises(EmbedError, match=r"out\.hdf5\.parts holds an unfinished run .*--resume"):
        embed(small_export[0].path, corpus, tmp_path / "out.hdf5")


def test_resume_refuses_other_flags(small_export, corpus, tmp_path):
    output = tmp_path / "out.hdf5"
    embed(small_export[0].path, corpus, output)
    # Bring back what a killed run leaves: its record, no output yet.
    run = {"format": 1, "module": "m", "module_sha256": "x", "input": str(corpus),
           "input_sha256": scan_corpus(corpus).sha256, "input_lines": 3, "layers": "all",
           "max_tokens": 256}
    output.unlink()
    (tmp_path / "out.hdf5.parts").mkdir()
    (tmp_path / "out.hdf5.parts" / "run.json").write_text(json.dumps(run))
    with pytest.raises(EmbedError, match=r"--resume: .* belongs to a run with another module"):
        embed(small_export[0].path, corpus, output, resume=True)
    from hub_export.corpus.embed import module_fingerprint

    run["module_sha256"] = module_fingerprint(small_export[0].path)
    (tmp_path / "out.hdf5.parts" / "run.json").write_text(json.dumps(run))
    with pytest.raises(EmbedError, match=r"was started with --layers all, this run asks for "
                                         r"--layers elmo"):
        embed(small_export[0].path, corpus, output, layers="elmo", resume=True)


def test_resume_reports_a_damaged_part(small_export, corpus, tmp_path):
    from hub_export.corpus.embed import module_fingerprint

    parts = tmp_path / "out.hdf5.parts"
    parts.mkdir()
    info = scan_corpus(corpus)
    (parts / "run.json").write_text(json.dumps({
        "format": 1, "module": "m", "module_sha256": module_fingerprint(small_export[0].path),
        "input": str(corpus), "input_sha256": info.sha256, "input_lines": info.lines,
        "layers": "all", "max_tokens": 256}))
    (parts / "part-000000000000.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(EmbedError, match=r"part-000000000000\.hdf5: not a readable part of this "
                                         r"run .*; delete it and run again with --resume"):
        embed(small_export[0].path, corpus, tmp_path / "out.hdf5", resume=True)


def test_resume_refuses_a_different_finished_output(small_export, corpus, tmp_path):
    output = tmp_path / "out.hdf5"
    with h5py.File(output, "w") as f:
        f.create_dataset("0", data=np.zeros((3, 1, 2 * SMALL_P), np.float32))
    with pytest.raises(EmbedError, match=r"does not hold the 3 lines of the input"):
        embed(small_export[0].path, corpus, output, resume=True)


@pytest.mark.parametrize("make, pattern", [
    (lambda d: d / "missing", r"--module: .*missing: no such directory"),
    (lambda d: d, r"--module: .* is not an exported module \(no saved_model\.pb\); give an "
                  r"export's version directory"),
], ids=["missing", "empty-directory"])
def test_not_a_module(corpus, tmp_path, make, pattern):
    module = tmp_path / "module"
    module.mkdir()
    with pytest.raises(EmbedError, match=pattern):
        embed(make(module), corpus, tmp_path / "out.hdf5")


def test_model_directory_instead_of_a_version(small_export, corpus, tmp_path):
    model_dir = small_export[0].path.parent  # <tmp>/elmo, holding version 1
    with pytest.raises(EmbedError, match=r"not an exported module .* holds the version "
                                         r"directories 1: give one, e\.g\. --module .*elmo/1"):
        embed(model_dir, corpus, tmp_path / "out.hdf5")


def test_saved_model_that_is_not_an_export(corpus, tmp_path):
    other = tf.Module()
    other.f = tf.function(lambda x: {"y": x + 1.0}, input_signature=[tf.TensorSpec([None])])
    tf.saved_model.save(other, str(tmp_path / "other"), signatures={"serving_default": other.f})
    with pytest.raises(EmbedError, match=r"is a SavedModel but not a hub_export module: it has "
                                         r"no 'tokens' signature \(it has: serving_default\)"):
        embed(tmp_path / "other", corpus, tmp_path / "out.hdf5")


@pytest.mark.parametrize("kwargs, pattern", [
    ({"layers": "top"}, r"--layers: got 'top'; allowed: all, elmo, default"),
    ({"batch_size": 0}, r"--batch-size: must be a positive integer, got 0"),
    ({"max_tokens": -3}, r"--max-tokens: must be a positive integer, got -3"),
    ({"resume": True, "overwrite": True}, r"--resume and --overwrite contradict each other"),
], ids=["layers", "batch-size", "max-tokens", "resume-and-overwrite"])
def test_bad_flags(small_export, corpus, tmp_path, kwargs, pattern):
    with pytest.raises(EmbedError, match=pattern):
        embed(small_export[0].path, corpus, tmp_path / "out.hdf5", **kwargs)


def test_cli_reports_errors_without_a_traceback(small_export, tmp_path):
    run = ["embed", "--module", str(small_export[0].path), "--output", str(tmp_path / "out.hdf5")]
    missing = forked_cli.run(run + ["--input", str(tmp_path / "nope.txt")], tmp_path, timeout=120)
    assert missing.returncode == 2, missing.stderr
    assert re.search(r"^error: --input: .*nope\.txt: file not found$", missing.stderr, re.M)
    assert "Traceback" not in missing.stderr and missing.stdout == ""

    usage = forked_cli.run(run[:1] + ["--output", "x.hdf5"], tmp_path, timeout=60)
    assert usage.returncode == 1 and "embed needs --module, --input" in usage.stderr

    from hub_export.corpus.beam import beam_available

    beam = forked_cli.run(run + ["--input", str(tmp_path / "nope.txt"), "--runner", "DirectRunner"],
                          tmp_path, timeout=120)
    assert beam.returncode == 2 and "Traceback" not in beam.stderr
    want = (r"^error: --input: .*nope\.txt: file not found$" if beam_available()
            else r"^error: --runner: Apache Beam is not installed")
    assert re.search(want, beam.stderr, re.M), beam.stderr


def test_resume_after_a_kill_between_rename_and_cleanup(small_export, tmp_path):
    """The output is in place but the parts directory is not yet removed: nothing is
    embedded again and the output stays as it is."""
    result, _, _ = small_export
    corpus = random_corpus(tmp_path / "corpus.txt", 40)
    output = tmp_path / "out.hdf5"
    embed(result.path, corpus, output, window=16)
    before = output.read_bytes()
    # Bring back the parts directory as it was right after the rename.
    parts = tmp_path / "out.hdf5.parts"
    parts.mkdir()
    info = scan_corpus(corpus)
    write_json(parts / RUN_FILE, run_record(result.path, info, "all", 256))
    store = Store(parts, "all", 40, 3, 2 * SMALL_P, resume=False)
    for first in range(0, 40, 16):
        lines = np.arange(first, min(first + 16, 40))
        store.add(Window(lines=lines, n_tokens=np.zeros(len(lines), np.int64),
                         values=np.zeros((0, 2 * SMALL_P), np.float32)))
    store.close()
    (parts / PARTIAL).unlink()
    again = embed(result.path, corpus, output, window=16, resume=True)
    assert (again.embedded, again.resumed) == (0, 40)
    assert output.read_bytes() == before and not parts.exists()


@pytest.mark.parametrize("layers", ["all", "elmo", "default"])
def test_a_corpus_of_empty_lines(small_export, tmp_path, layers):
    result, _, _ = small_export
    corpus = write_corpus(tmp_path / "blank.txt", ["", "", ""])
    embed(result.path, corpus, tmp_path / "out.hdf5", layers=layers)
    with h5py.File(tmp_path / "out.hdf5", "r") as f:
        if layers == "default":
            np.testing.assert_array_equal(f[SENTENCE_DATASET][()], np.zeros((3, 2 * SMALL_P)))
        else:
            shape = (3, 0, 2 * SMALL_P) if layers == "all" else (0, 2 * SMALL_P)
            assert [f[str(i)].shape for i in range(3)] == [shape] * 3
