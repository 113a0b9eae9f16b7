"""What several test files share: the model options they use, the bilm-tf fixture's
place, and small functions to write, export and run models. (Fixtures are in conftest.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hub_export.model.options import BiLMOptions, parse_options
from hub_export.model.weights import weight_specs, write_weights

ATOL = 1e-6  # float32 outputs compared across loaders and clients
# The inputs the session loader, REST, gRPC and the Keras wrappers are compared on (the
# `reference` fixture): mixed lengths, non-ASCII words, and a sentence with no tokens.
SENTENCES = ["the cat sat on the mat .", "a dog barked", "Zürich's café ☕ opens early", "hello"]
TOKENS = [["the", "cat", "sat", "on"], ["a", "dog"], ["Zürich", "☕"], []]


def padded(tokens: list[list[str]] = TOKENS) -> tuple[list[list[str]], list[int]]:
    """Token rows padded with "" to the longest, and their lengths (the `tokens` inputs)."""
    width = max(len(row) for row in tokens)
    return [row + [""] * (width - len(row)) for row in tokens], [len(row) for row in tokens]


def assert_outputs_close(got: dict, expected: dict, atol: float = ATOL) -> None:
    """Same keys, dtypes and shapes; floats within `atol`, integers (or atol 0) exactly."""
    assert set(got) == set(expected)
    for key, want in expected.items():
        want = np.asarray(want)
        have = np.asarray(got[key])
        assert have.dtype == want.dtype, key
        assert have.shape == want.shape, key
        if np.issubdtype(want.dtype, np.integer) or atol == 0:
            np.testing.assert_array_equal(have, want, err_msg=key)
        else:
            np.testing.assert_allclose(have, want, atol=atol, rtol=0, err_msg=key)


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


def random_weights(options: BiLMOptions, seed: int) -> dict[str, np.ndarray]:
    """Seeded random weights of the right shapes, scaled so activations stay in range.

    Used for tests of other architectures and for benchmarks; the numbers mean nothing,
    but every run with the same seed gives the same bytes.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in weight_specs(options):
        leaf = spec.name.rsplit("/", 1)[-1]
        if leaf.startswith("b_") or leaf == "B":
            value = rng.uniform(-0.1, 0.1, spec.shape)
        elif leaf == "char_embed":
            value = rng.uniform(-1.0, 1.0, spec.shape)
        else:
            fan_in = int(np.prod(spec.shape[:-1]))
            limit = np.sqrt(3.0 / fan_in)  # unit variance out for unit variance in
            value = rng.uniform(-limit, limit, spec.shape)
        arrays[spec.name] = value.astype(np.float32)
    return arrays


def write_model(directory: Path, raw_options: dict, seed: int = 0) -> tuple[Path, Path]:
    """Writes options.json and a seeded random weights.hdf5 for `raw_options`."""
    directory.mkdir(parents=True, exist_ok=True)
    options_path = directory / "options.json"
    weights_path = directory / "weights.hdf5"
    options_path.write_text(json.dumps(raw_options))
    write_weights(weights_path, random_weights(parse_options(raw_options), seed))
    return options_path, weights_path


def export_model(output_dir: Path, options_path: Path | None, weights_path: Path | None,
                 version: int = 1, name: str = "elmo", **kwargs):
    """Exports with hub_export.export.exporter.export, silently; returns the ExportResult."""
    from hub_export.export.exporter import export

    return export(version, options_path, weights_path, output_dir=output_dir, name=name, **kwargs)


def run_session(session, name: str, feeds: dict) -> dict:
    """Runs signature `name` on the session loader, as TF Serving does: feeds by tensor name."""
    sess, meta = session
    sig = meta.signature_def[name]
    assert set(feeds) == set(sig.inputs), name
    feed_dict = {sig.inputs[key].name: value for key, value in feeds.items()}
    return sess.run({key: info.name for key, info in sig.outputs.items()}, feed_dict=feed_dict)
