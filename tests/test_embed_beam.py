"""`embed --runner DirectRunner`: the same job as a Beam pipeline (RunInference over the
module), merged into the same hdf5 file as the local path."""

from __future__ import annotations

import dataclasses
import io

import h5py
import numpy as np
import pytest

from hub_export.corpus.beam import _NoMeter, beam_available, embed_beam, read_window, window_specs
from hub_export.corpus.embed import (
    DEFAULT_MAX_TOKENS,
    embed,
    embed_window,
    load_module,
    run_record,
    scan_corpus,
)
from hub_export.corpus.store import RUN_FILE, EmbedError, Store, parts_dir, write_json
from hub_export.errors import OutputExistsError

import forked_cli
from test_embed import random_corpus

needs_beam = pytest.mark.skipif(
    not beam_available(), reason="apache-beam is not installed (the hub_export[beam] extra; "
                                 ".ci/run installs it)")


def assert_close_files(a, b, atol=1e-6):
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa.keys()) == sorted(fb.keys())
        for name in fa:
            assert fa[name].shape == fb[name].shape, name
            np.testing.assert_allclose(fa[name][()], fb[name][()], atol=atol, rtol=0, err_msg=name)


def test_window_specs_read_back_every_line(tmp_path):
    corpus = random_corpus(tmp_path / "c.txt", 23, seed=4)
    lines = corpus.read_text().split("\n")[:-1]
    specs = window_specs(corpus, 23, 5)
    assert [(s.first, s.count) for s in specs] == [(0, 5), (5, 5), (10, 5), (15, 5), (20, 3)]
    read = [item for s in specs for item in read_window(s, str(corpus))]
    assert read == [(i, line.split()) for i, line in enumerate(lines)]


@needs_beam
@pytest.mark.parametrize("layers", ["all", "default"])
def test_direct_runner_equals_the_local_path(small_export, tmp_path, layers):
    module = small_export[0].path
    corpus = random_corpus(tmp_path / "corpus.txt", 200, seed=7)
    local = embed(module, corpus, tmp_path / "local.hdf5", layers=layers, batch_size=16)
    beam = embed_beam(module, corpus, tmp_path / "beam.hdf5", runner="DirectRunner",
                      layers=layers, batch_size=16, window=32)
    assert (beam.lines, local.lines) == (200, 200)
    assert not (tmp_path / "beam.hdf5.parts").exists()
    assert_close_files(tmp_path / "beam.hdf5", tmp_path / "local.hdf5")


@needs_beam
def test_cli_runner_and_bad_options(small_export, tmp_path):
    corpus = random_corpus(tmp_path / "corpus.txt", 40, seed=1)
    out = tmp_path / "out.hdf5"
    ok = forked_cli.run(["embed", "--module", str(small_export[0].path), "--input", str(corpus),
                         "--output", str(out), "--runner", "DirectRunner", "--quiet"], tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    local = embed(small_export[0].path, corpus, tmp_path / "local.hdf5")
    assert_close_files(out, local.path)
    with pytest.raises(OutputExistsError, match=r"already exists; pass --overwrite"):
        embed_beam(small_export[0].path, corpus, out)
    with pytest.raises(EmbedError, match=r"--beam-options: .*not valid pipeline options"):
        embed_beam(small_export[0].path, corpus, tmp_path / "x.hdf5", beam_options="--runner")


@pytest.mark.skipif(beam_available(), reason="checks the message shown without apache-beam")
def test_without_beam_the_message_says_how_to_install(small_export, tmp_path):
    corpus = random_corpus(tmp_path / "corpus.txt", 3)
    with pytest.raises(EmbedError, match=r"Apache Beam is not installed: pip install -e '\.\[beam\]'"):
        embed_beam(small_export[0].path, corpus, tmp_path / "o.hdf5")


def test_read_window_leaves_out_saved_lines(tmp_path):
    corpus = random_corpus(tmp_path / "c.txt", 12, seed=5)
    lines = corpus.read_text().split("\n")[:-1]
    spec = dataclasses.replace(window_specs(corpus, 12, 6)[1], skip=(0, 2, 3))
    assert read_window(spec, str(corpus)) == [(i, lines[i].split()) for i in (7, 10, 11)]


@needs_beam
def test_resume_embeds_only_what_an_interrupted_merge_left(small_export, tmp_path):
    """A merge killed midway: its journal holds whole and partial windows of the pipeline's
    grid; the Beam run with --resume embeds only the other lines and equals the local path.
    What a killed worker left of a part is removed."""
    module = small_export[0].path
    corpus = random_corpus(tmp_path / "corpus.txt", 100, seed=3)
    local = embed(module, corpus, tmp_path / "local.hdf5", layers="all", batch_size=16)
    output = tmp_path / "beam.hdf5"
    parts = parts_dir(output)
    parts.mkdir()
    write_json(parts / RUN_FILE, run_record(module, scan_corpus(corpus), "all", DEFAULT_MAX_TOKENS))
    loaded = load_module(module)
    store = Store(parts, "all", 100, loaded.n_layers + 1, loaded.width("all"), resume=False)
    texts = corpus.read_text().split("\n")
    for lines in (range(0, 40), range(50, 55)):
        store.add(embed_window(loaded, [(i, texts[i].split()) for i in lines], "all", 16,
                                DEFAULT_MAX_TOKENS, _NoMeter()))
    store.close()
    # A worker of a run with other windows, killed while writing a part, left its
    # staging folder (nobody holds it).
    stale = parts / ".part-000000000070.hdf5.tmp-killed"
    stale.mkdir()
    (stale / "part-000000000070.hdf5").write_bytes(b"half a part")
    said = io.StringIO()
    result = embed_beam(module, corpus, output, layers="all", batch_size=16, window=32,
                        resume=True, progress=said)
    assert not stale.exists()
    # Windows 0-31 (saved), 32-63 (partly: 40-49 and 56-63 to do), 64-95, 96-99. A line
    # embedded twice would make the merge refuse its part.
    assert "DirectRunner: 3 window(s) of up to 32 lines to embed" in said.getvalue()
    assert (result.resumed, result.embedded) == (100, 0)
    assert_close_files(output, local.path)
