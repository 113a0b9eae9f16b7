"""The built-in default model: a small biLM trained by hub_export's own trainer.

`python -m hub_export --version N` without `--options/--weights` exports this model, so a
fresh checkout makes a meaningful module with no download. Its weights and options ship
as package data (`hub_export/export/data/default_model/`), with `recipe.json`: how it was made
(corpus package and version, preprocessing, command, seed, training time, perplexities),
which the module card repeats. `default_model_recipe` holds the preparation code.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from hub_export.errors import HubExportError
from hub_export.files import sha256_file
from hub_export.model.options import BiLMOptions, load_options
from hub_export.model.weights import read_weights

NAME = "hub_export built-in default model (biLM trained on the State of the Union addresses)"

# The architecture: the original ELMo's design (char CNN of widths 1-5, two highway
# layers, two LSTM layers with projection, clipping, skip connections) scaled to train on
# two CPU cores in under two hours and to ship in a few MB. The filters add up to the
# projection width, so there is no CNN projection (as bilm-tf decides).
OPTIONS = {
    "char_cnn": {
        "embedding": {"dim": 16},
        "filters": [[1, 16], [2, 16], [3, 32], [4, 32], [5, 32]],
        "n_highway": 2,
        "activation": "relu",
        "n_characters": 262,
        "max_characters_per_token": 50,
    },
    "lstm": {
        "dim": 256,
        "projection_dim": 128,
        "n_layers": 2,
        "cell_clip": 3,
        "proj_clip": 3,
        "use_skip_connections": True,
    },
}


def data_dir() -> Path:
    return Path(str(resources.files("hub_export.export") / "data" / "default_model"))


def recipe() -> dict:
    """recipe.json: how the weights were made (see the module doc)."""
    return json.loads((data_dir() / "recipe.json").read_text(encoding="utf-8"))


def default_model() -> tuple[BiLMOptions, dict[str, np.ndarray], str]:
    """(options, weights, sha256 of the weight file) of the built-in model."""
    folder = data_dir()
    options_path, weights_path = folder / "options.json", folder / "weights.hdf5"
    if not weights_path.is_file() or not options_path.is_file():
        raise HubExportError(f"the built-in model's files are missing from {folder} (a broken "
                             "install?); reinstall hub_export, or export your own model with "
                             "--options and --weights")
    options = load_options(options_path)
    arrays = read_weights(weights_path, options)
    digest = sha256_file(weights_path)
    return options, arrays, digest
