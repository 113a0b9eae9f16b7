"""Shared test fixtures: the bilm-tf reference fixture and small model files."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from hub_export.options import parse_options
from hub_export.weights import random_weights, write_weights

# ../shared beside the checkout; tests that need it skip with this reason when absent.
SHARED_FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "bilm-tf"

# The original ELMo model's options (elmo_2x4096_512_2048cnn_2xhighway).
FULL_SIZE_OPTIONS = {
    "char_cnn": {
        "embedding": {"dim": 16},
        "filters": [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]],
        "n_highway": 2,
        "activation": "relu",
        "n_characters": 262,
        "max_characters_per_token": 50,
    },
    "lstm": {
        "dim": 4096,
        "projection_dim": 512,
        "n_layers": 2,
        "cell_clip": 3,
        "proj_clip": 3,
        "use_skip_connections": True,
    },
}

# A small model with the original's features switched on (skip connections, clips).
SMALL_OPTIONS = {
    "char_cnn": {
        "embedding": {"dim": 4},
        "filters": [[1, 4], [2, 8], [3, 16]],
        "n_highway": 1,
        "activation": "relu",
        "n_characters": 262,
        "max_characters_per_token": 50,
    },
    "lstm": {
        "dim": 24,
        "projection_dim": 8,
        "n_layers": 2,
        "cell_clip": 3,
        "proj_clip": 3,
        "use_skip_connections": True,
    },
}


def require_shared_fixture() -> Path:
    if not (SHARED_FIXTURE / "lm_weights.hdf5").exists():
        pytest.skip(f"bilm-tf reference fixture not found at {SHARED_FIXTURE} "
                    "(it lives in ../shared beside the checkout)")
    return SHARED_FIXTURE


@pytest.fixture
def shared_fixture() -> Path:
    """The bilm-tf fixture folder; skips the test when ../shared is absent."""
    return require_shared_fixture()


def write_model(directory: Path, raw_options: dict, seed: int = 0) -> tuple[Path, Path]:
    """Writes options.json and a seeded random weights.hdf5 for `raw_options`."""
    directory.mkdir(parents=True, exist_ok=True)
    options_path = directory / "options.json"
    weights_path = directory / "weights.hdf5"
    options_path.write_text(json.dumps(raw_options))
    write_weights(weights_path, random_weights(parse_options(raw_options), seed))
    return options_path, weights_path


@pytest.fixture
def small_model(tmp_path) -> tuple[Path, Path]:
    """(options.json, weights.hdf5) of SMALL_OPTIONS with seeded random weights."""
    return write_model(tmp_path / "small", copy.deepcopy(SMALL_OPTIONS))


@pytest.fixture(scope="session")
def full_size_model(tmp_path_factory) -> tuple[Path, Path]:
    """The original ELMo architecture with seeded random weights (about 374 MB on disk)."""
    return write_model(tmp_path_factory.mktemp("full_size"), copy.deepcopy(FULL_SIZE_OPTIONS))


def export_model(output_dir: Path, options_path: Path | None, weights_path: Path | None,
                 version: int = 1, name: str = "elmo", **kwargs):
    """Exports with hub_export.export.export, silently; returns the ExportResult."""
    from hub_export.export import export

    return export(version, options_path, weights_path, output_dir=output_dir, name=name, **kwargs)


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


def run_session(session, name: str, feeds: dict) -> dict:
    """Runs signature `name` on the session loader, as TF Serving does: feeds by tensor name."""
    sess, meta = session
    sig = meta.signature_def[name]
    assert set(feeds) == set(sig.inputs), name
    feed_dict = {sig.inputs[key].name: value for key, value in feeds.items()}
    return sess.run({key: info.name for key, info in sig.outputs.items()}, feed_dict=feed_dict)
