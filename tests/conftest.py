"""Shared test fixtures: the bilm-tf reference fixture and small model files."""

from __future__ import annotations

import copy
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from helpers import (
    FULL_SIZE_OPTIONS,
    SENTENCES,
    SMALL_OPTIONS,
    export_model,
    padded,
    require_shared_fixture,
    write_model,
)


@pytest.fixture
def shared_fixture() -> Path:
    """The bilm-tf fixture folder; skips the test when ../shared is absent."""
    return require_shared_fixture()


@pytest.fixture
def small_model(tmp_path) -> tuple[Path, Path]:
    """(options.json, weights.hdf5) of SMALL_OPTIONS with seeded random weights."""
    return write_model(tmp_path / "small", copy.deepcopy(SMALL_OPTIONS))


@pytest.fixture(scope="session")
def full_size_model(tmp_path_factory) -> tuple[Path, Path]:
    """The original ELMo architecture with seeded random weights (about 374 MB on disk)."""
    return write_model(tmp_path_factory.mktemp("full_size"), copy.deepcopy(FULL_SIZE_OPTIONS))


@pytest.fixture(scope="session")
def small_export(tmp_path_factory):
    """SMALL_OPTIONS (skip connections on) exported as <tmp>/elmo/1 with the default flags.

    Yields (ExportResult, options_path, weights_path). Needs nothing from ../shared.
    """
    folder = tmp_path_factory.mktemp("small_export")
    options_path, weights_path = write_model(folder / "model", copy.deepcopy(SMALL_OPTIONS))
    return export_model(folder / "exported", options_path, weights_path), options_path, weights_path


@pytest.fixture(scope="session")
def fixture_export(tmp_path_factory):
    """The bilm-tf fixture model exported as <tmp>/elmo/1 (skips without ../shared)."""
    folder = require_shared_fixture()
    out = tmp_path_factory.mktemp("fixture_export")
    return export_model(out, folder / "options.json", folder / "lm_weights.hdf5")


@pytest.fixture(scope="module")
def small_path(small_export) -> str:
    return str(small_export[0].path)


@pytest.fixture(scope="module")
def loaded(small_path):
    """`hub.load` of the small export."""
    import tensorflow_hub as hub

    return hub.load(small_path)


@pytest.fixture(scope="module")
def session(small_path):
    """(tf.compat.v1.Session, MetaGraphDef) as TF Serving loads the SavedModel."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        sess = tf.compat.v1.Session(graph=graph)
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], small_path)
    yield sess, meta
    sess.close()


@pytest.fixture(scope="module")
def reference(loaded) -> dict:
    """`hub.load`'s signature outputs, as numpy, for helpers.SENTENCES (`default`) and
    helpers.TOKENS (`tokens`): what every other way of calling the module must give."""
    import tensorflow as tf

    rows, lengths = padded()
    by_sentence = loaded.signatures["default"](default=tf.constant(SENTENCES))
    by_tokens = loaded.signatures["tokens"](tokens=tf.constant(rows),
                                            sequence_len=tf.constant(lengths, tf.int32))
    return {"default": {k: v.numpy() for k, v in by_sentence.items()},
            "tokens": {k: v.numpy() for k, v in by_tokens.items()}}
